"""COPY/ADD written as a layer tar by `buildpy.executor.copy`: real files in, the tar read back
with tarfile. The image below is a stack of snapshot dirs made by hand (overlay form, topmost
first); selections are built from real files here, not by the context reader."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from buildpy.executor.copy import CopyError, CopySpec, apply_chmod, copy_inline_layer, copy_layer
from buildpy.planner.context import Entry, Match, Selection

_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo"}
T0 = 1_500_000_000  # the sources' mtime


# --- helpers -----------------------------------------------------------------------------------


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return root


def stamp(root: Path, mtime: int = T0) -> None:
    """Every path below `root` (and it) gets `mtime`, so the expected times are known."""
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))


def entry(root: Path, rel: str) -> Entry:
    p = root / rel if rel else root
    st = os.lstat(p)
    kind = _KINDS[stat.S_IFMT(st.st_mode)]
    return Entry(rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size if kind == "file" else 0,
                 int(st.st_mtime), os.readlink(p) if kind == "symlink" else "", "", 0, (st.st_dev, st.st_ino))


def walk(root: Path, rel: str) -> list[Entry]:
    out = []
    for name in sorted(os.listdir(root / rel if rel else root)):
        r = f"{rel}/{name}" if rel else name
        e = entry(root, r)
        out.append(e)
        if e.kind == "dir":
            out.extend(walk(root, r))
    return out


def match(root: Path, source: str, rel: str | None = None) -> Match:
    """What the context reader gives for `source` (its path cleaned, or `rel` for a wildcard)."""
    rel = os.path.normpath("/" + source).lstrip("/") if rel is None else rel
    e = entry(root, rel)
    return Match(source, e, tuple(walk(root, rel)) if e.kind == "dir" else ())


def select(root: Path, *sources: str | tuple[str, str]) -> Selection:
    return Selection(tuple(match(root, *s) if isinstance(s, tuple) else match(root, s) for s in sources))


def read(layer) -> tuple[bytes, dict[str, tarfile.TarInfo], dict[str, bytes]]:  # noqa: ANN001
    """The layer's tar bytes, its entries by name (in order), the files' contents."""
    data = layer.tar().read()
    layer.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        infos = t.getmembers()
        contents = {i.name: t.extractfile(i).read() for i in infos if i.isfile()}  # type: ignore[union-attr]
    return data, {i.name: i for i in infos}, contents


def layer_of(root: Path, spec: CopySpec, *sources: str | tuple[str, str], lowers: list[Path] = ()):  # noqa: ANN201
    return read(copy_layer(select(root, *sources), root, spec, list(lowers)))


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = write(tmp_path / "ctx", {"a.txt": "a\n", "b.txt": "b\n", "src/x": "x\n", "src/sub/y": "y\n"})
    (root / "src").chmod(0o700)
    (root / "src" / "sub").chmod(0o750)
    (root / "a.txt").chmod(0o644)
    (root / "src" / "x").chmod(0o755)
    stamp(root)
    return root


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """One snapshot: /etc/passwd, /etc/group, /opt (0711), /srv/data and /data -> /srv/data."""
    low = write(tmp_path / "low", {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        "etc/group": "root:x:0:\nstaff:x:50:app\n",
        "srv/data/keep": "k\n",
    })
    (low / "opt").mkdir()
    (low / "opt").chmod(0o711)
    os.symlink("/srv/data", low / "data")
    stamp(low, 1_000)
    return low


# --- destinations ------------------------------------------------------------------------------


def test_file_into_a_dir_made_with_its_parents(ctx):
    _, e, files = layer_of(ctx, CopySpec(dest="/app/"), "a.txt")
    assert list(e) == ["app", "app/a.txt"]
    assert e["app"].isdir() and e["app"].mode == 0o755 and (e["app"].uid, e["app"].gid) == (0, 0)
    assert e["app"].mtime == 0  # made, no epoch
    f = e["app/a.txt"]
    assert f.isfile() and f.mode == 0o644 and (f.uid, f.gid) == (0, 0) and f.mtime == T0
    assert files["app/a.txt"] == b"a\n"


def test_file_to_a_new_name_relative_to_workdir(ctx):
    _, e, files = layer_of(ctx, CopySpec(dest="x/b.txt", workdir="/w"), "a.txt")
    assert list(e) == ["w", "w/x", "w/x/b.txt"]
    assert files["w/x/b.txt"] == b"a\n"


def test_nested_parents_made_0755_root_at_the_epoch(ctx):
    _, e, _ = layer_of(ctx, CopySpec(dest="/x/y/z/", source_date_epoch=T0 + 5), "a.txt")
    assert list(e) == ["x", "x/y", "x/y/z", "x/y/z/a.txt"]
    for d in ("x", "x/y", "x/y/z"):
        assert e[d].isdir() and e[d].mode == 0o755 and (e[d].uid, e[d].gid, e[d].mtime) == (0, 0, T0 + 5)


def test_dir_copies_its_contents_and_the_dest_takes_its_mtime(ctx):
    _, e, files = layer_of(ctx, CopySpec(dest="/app"), "src")
    assert list(e) == ["app", "app/sub", "app/sub/y", "app/x"]
    assert e["app"].mode == 0o755 and e["app"].mtime == T0  # made as a parent is, then the source's mtime
    assert e["app/sub"].mode == 0o750 and e["app/x"].mode == 0o755
    assert files["app/sub/y"] == b"y\n"


def test_existing_dir_without_slash_takes_the_file_and_keeps_its_metadata(ctx, image):
    _, e, _ = layer_of(ctx, CopySpec(dest="/opt"), "a.txt", lowers=[image])
    assert list(e) == ["opt", "opt/a.txt"]
    assert e["opt"].mode == 0o711 and e["opt"].mtime == 1_000 and e["opt"].uid == os.getuid()


def test_without_the_image_the_same_dest_is_the_file(ctx):
    _, e, files = layer_of(ctx, CopySpec(dest="/opt"), "a.txt")
    assert list(e) == ["opt"] and files["opt"] == b"a\n"


def test_symlinked_dest_dir_in_the_image_is_followed_inside_it(ctx, image):
    _, e, _ = layer_of(ctx, CopySpec(dest="/data/"), "a.txt", lowers=[image])
    assert list(e) == ["srv", "srv/data", "srv/data/a.txt"]
    assert "data" not in e


def test_a_symlink_named_in_a_dir_is_replaced_but_a_dest_symlink_is_written_through(ctx, tmp_path):
    low = tmp_path / "l2"
    (low / "app").mkdir(parents=True)
    os.symlink("/etc/shadow", low / "app" / "a.txt")
    os.symlink("real.txt", low / "app" / "link")
    _, e, _ = layer_of(ctx, CopySpec(dest="/app/"), "a.txt", lowers=[low])
    assert list(e) == ["app", "app/a.txt"] and e["app/a.txt"].isfile()
    _, e, _ = layer_of(ctx, CopySpec(dest="/app/link"), "a.txt", lowers=[low])
    assert list(e) == ["app", "app/real.txt"]


def test_dir_onto_an_image_dir_overwrites_below_but_keeps_the_top(ctx, tmp_path):
    low = tmp_path / "l3"
    (low / "app" / "sub").mkdir(parents=True)
    (low / "app").chmod(0o711)
    (low / "app" / "sub").chmod(0o777)
    stamp(low, 1_000)
    _, e, _ = layer_of(ctx, CopySpec(dest="/app"), "src", lowers=[low])
    assert e["app"].mode == 0o711 and e["app"].mtime == T0  # kept, but the source's mtime
    assert e["app/sub"].mode == 0o750 and e["app/sub"].mtime == T0  # the source's, as fsutil overwrites


def test_lower_layers_are_read_topmost_first(ctx, tmp_path, image):
    upper = tmp_path / "up"
    upper.mkdir()
    (upper / "opt").write_text("now a file\n")
    with pytest.raises(CopyError, match="non-directory: /opt"):
        layer_of(ctx, CopySpec(dest="/opt/"), "a.txt", lowers=[upper, image])
    _, e, _ = layer_of(ctx, CopySpec(dest="/opt/"), "a.txt", lowers=[image, upper])
    assert list(e) == ["opt", "opt/a.txt"]


def test_a_file_cannot_replace_an_image_dir(ctx, tmp_path):
    low = tmp_path / "l4"
    (low / "app" / "x").mkdir(parents=True)
    with pytest.raises(CopyError, match="cannot replace to directory /app/x with file") as err:
        layer_of(ctx, CopySpec(dest="/app"), "src", lowers=[low])
    assert "\n" not in str(err.value)
    (low / "app" / "x").rmdir()
    (low / "app" / "sub" / "y").mkdir(parents=True)  # deeper: below a directory the copy writes over
    with pytest.raises(CopyError, match="cannot replace to directory /app/sub/y with file"):
        layer_of(ctx, CopySpec(dest="/app"), "src", lowers=[low])


def test_several_sources_need_a_dest_ending_in_a_slash(ctx):
    with pytest.raises(CopyError, match="must be a directory and end with a /"):
        layer_of(ctx, CopySpec(dest="/m"), "a.txt", "b.txt")
    with pytest.raises(CopyError, match="must be a directory and end with a /"):
        layer_of(ctx, CopySpec(dest="/m"), ("*.txt", "a.txt"), ("*.txt", "b.txt"))
    _, e, _ = layer_of(ctx, CopySpec(dest="/m/"), ("*.txt", "a.txt"), ("*.txt", "b.txt"))
    assert list(e) == ["m", "m/a.txt", "m/b.txt"]


def test_a_followed_source_symlink_keeps_the_written_name(ctx):
    os.symlink("a.txt", ctx / "link")
    sel = Selection((Match("link", entry(ctx, "a.txt")),))
    _, e, files = read(copy_layer(sel, ctx, CopySpec(dest="/d/"), []))
    assert list(e) == ["d", "d/link"] and files["d/link"] == b"a\n"


def test_link_ignores_the_image_unless_chmod_is_given(ctx, image):
    _, e, _ = layer_of(ctx, CopySpec(dest="/opt", link=True), "a.txt", lowers=[image])
    assert list(e) == ["opt"] and e["opt"].isfile()
    _, e, _ = layer_of(ctx, CopySpec(dest="/opt", link=True, chmod="600"), "a.txt", lowers=[image])
    assert list(e) == ["opt", "opt/a.txt"]


# --- owners and modes --------------------------------------------------------------------------


def test_chown_by_name_from_the_image(ctx, image):
    _, e, _ = layer_of(ctx, CopySpec(dest="/o/", chown="app:staff"), "a.txt", lowers=[image])
    assert (e["o/a.txt"].uid, e["o/a.txt"].gid) == (1000, 50)
    assert (e["o"].uid, e["o"].gid) == (1000, 50)  # a made parent is the user's too
    _, e, _ = layer_of(ctx, CopySpec(dest="/opt/", chown="app"), "a.txt", lowers=[image])
    assert (e["opt/a.txt"].uid, e["opt/a.txt"].gid) == (1000, 1000)
    assert e["opt"].uid == os.getuid()  # an existing parent is left as it is


def test_chown_of_an_unknown_name_is_one_line(ctx, image):
    with pytest.raises(CopyError, match="--chown=nobody: unable to find user nobody") as err:
        layer_of(ctx, CopySpec(dest="/o/", chown="nobody"), "a.txt", lowers=[image])
    assert "\n" not in str(err.value)


def test_chown_numeric(ctx):
    _, e, _ = layer_of(ctx, CopySpec(dest="/o/", chown="5"), "src")
    assert {(i.uid, i.gid) for i in e.values()} == {(5, 5)}
    _, e, _ = layer_of(ctx, CopySpec(dest="/o/", chown="5:6"), "a.txt")
    assert (e["o/a.txt"].uid, e["o/a.txt"].gid) == (5, 6)


def test_context_files_are_roots_but_a_stages_keep_their_owners(ctx):
    os.chown(ctx / "a.txt", 7, 8)
    _, e, _ = layer_of(ctx, CopySpec(dest="/o/"), "a.txt")
    assert (e["o/a.txt"].uid, e["o/a.txt"].gid) == (0, 0)
    _, e, _ = layer_of(ctx, CopySpec(dest="/o/", from_context=False), "a.txt")
    assert (e["o/a.txt"].uid, e["o/a.txt"].gid) == (7, 8)


def test_chmod_octal_applies_to_copies_and_made_parents(ctx):
    _, e, _ = layer_of(ctx, CopySpec(dest="/new/", chmod="0640"), "a.txt")
    assert e["new/a.txt"].mode == 0o640
    assert e["new"].mode == 0o640  # fsutil's MkdirAll uses the octal mode (BuildKit >= 0.21)
    _, e, _ = layer_of(ctx, CopySpec(dest="/d", chmod="4750"), "src")
    assert e["d/sub"].mode == 0o4750 and e["d/x"].mode == 0o4750
    assert e["d"].mode == 0o750  # made: Go's Mkdir drops the set-id bit of a plain number


def test_chmod_symbolic_is_relative_to_each_entry(ctx):
    _, e, _ = layer_of(ctx, CopySpec(dest="/s.txt", chmod="u+x,g-r"), "a.txt")
    assert e["s.txt"].mode == 0o704
    _, e, _ = layer_of(ctx, CopySpec(dest="/d/", chmod="go+X"), "src")
    assert e["d"].mode == 0o755  # made with a symbolic mode: 0755
    assert e["d/sub"].mode == 0o751  # a dir gets X (0750 before)
    assert e["d/sub/y"].mode == 0o644  # a file without x does not
    assert e["d/x"].mode == 0o755


def test_chmod_leaves_symlinks_alone(ctx):
    os.symlink("x", ctx / "src" / "ln")
    _, e, _ = layer_of(ctx, CopySpec(dest="/d/", chmod="600"), "src")
    assert e["d/ln"].issym() and e["d/ln"].mode == 0o777


@pytest.mark.parametrize(("mode", "chmod", "is_dir", "want"), [
    (0o644, "u+x,g-r", False, 0o704),
    (0o755, "go=u-w", True, 0o755),
    (0o600, "=r", False, 0o444),
    (0o644, "+X", False, 0o644),
    (0o644, "+X", True, 0o755),
    (0o644, "u+x,g+X", False, 0o744),  # X looks at the mode before the change (BSD setmode)
    (0o644, "u+s,+t", False, 0o5644),
    (0o4755, "a=rx", False, 0o555),
    (0o1755, "a=rx", True, 0o1555),  # "a" does not cover the sticky bit
    (0o644, "o+s", False, 0o644),  # set-id bits need u or g
    (0o640, "o=g", False, 0o644),
    (0o600, 0o7755, False, 0o7755),
])
def test_apply_chmod(mode, chmod, is_dir, want):
    assert apply_chmod(mode, chmod, is_dir) == want


# --- links -------------------------------------------------------------------------------------


def test_symlinks_are_copied_as_symlinks(ctx):
    os.symlink("../a.txt", ctx / "src" / "rel")
    os.symlink("/etc/passwd", ctx / "src" / "abs")
    _, e, _ = layer_of(ctx, CopySpec(dest="/d/"), "src")
    assert e["d/rel"].issym() and e["d/rel"].linkname == "../a.txt"
    assert e["d/abs"].issym() and e["d/abs"].linkname == "/etc/passwd"


def test_hardlinks_stay_hardlinks_to_the_first_name(ctx):
    os.link(ctx / "src" / "x", ctx / "src" / "sub" / "hard")
    os.link(ctx / "src" / "x", ctx / "src" / "a-hard")
    data, e, files = layer_of(ctx, CopySpec(dest="/d/"), "src")
    names = list(e)
    first = names.index("d/a-hard")
    assert e["d/a-hard"].isfile() and files["d/a-hard"] == b"x\n"
    for other in ("d/sub/hard", "d/x"):
        assert e[other].islnk() and e[other].linkname == "d/a-hard" and names.index(other) > first
    assert data.count(b"x\n") == 1


def test_hardlinks_are_not_kept_across_sources(ctx):
    os.link(ctx / "a.txt", ctx / "hard.txt")
    _, e, _ = layer_of(ctx, CopySpec(dest="/d/"), "a.txt", "hard.txt")
    assert e["d/a.txt"].isfile() and e["d/hard.txt"].isfile()


# --- ADD ---------------------------------------------------------------------------------------


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def ti(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o640
    info.mtime = T0
    for k, v in kw.items():
        setattr(info, k, v)
    return info


SAMPLE = [(ti("inside", tarfile.DIRTYPE, uid=7, gid=8), None), (ti("inside/file.txt", uid=7, gid=8), b"inside\n"),
          (ti("implied/deep.txt"), b"deep\n")]


@pytest.mark.parametrize("compress", [
    lambda b: b, gzip.compress, bz2.compress, lzma.compress, lambda b: zstandard.ZstdCompressor().compress(b),
], ids=["tar", "gzip", "bzip2", "xz", "zstd"])
def test_add_extracts_an_archive_known_by_its_content(tmp_path, compress):
    ctx = write(tmp_path / "c", {"archive.bin": compress(make_tar(SAMPLE))})
    _, e, files = layer_of(ctx, CopySpec(dest="/ex/", add=True, chmod="0600"), "archive.bin")
    assert list(e) == ["ex", "ex/implied", "ex/implied/deep.txt", "ex/inside", "ex/inside/file.txt"]
    f = e["ex/inside/file.txt"]
    assert (f.uid, f.gid, f.mode, f.mtime) == (7, 8, 0o640, T0)  # the archive's, --chmod not applied
    assert files["ex/inside/file.txt"] == b"inside\n"
    assert e["ex"].mode == 0o755  # BuildKit makes the destination 0755 for an archive
    assert (e["ex/implied"].mode, e["ex/implied"].uid, e["ex/implied"].mtime) == (0o755, 0, 0)


def test_add_with_chown_owns_the_entries_but_not_implied_dirs(tmp_path):
    ctx = write(tmp_path / "c", {"a.tar": make_tar(SAMPLE)})
    _, e, _ = layer_of(ctx, CopySpec(dest="/ex", add=True, chown="5:6"), "a.tar")
    assert (e["ex/inside/file.txt"].uid, e["ex/inside/file.txt"].gid) == (5, 6)
    assert (e["ex"].uid, e["ex"].gid) == (5, 6)
    assert (e["ex/implied"].uid, e["ex/implied"].gid) == (0, 0)


def test_add_unpack_false_and_copy_keep_the_archive_as_a_file(tmp_path):
    ctx = write(tmp_path / "c", {"a.tar.gz": gzip.compress(make_tar(SAMPLE)), "plain.gz": b"not gzip"})
    _, e, files = layer_of(ctx, CopySpec(dest="/ex/", add=True, unpack=False), "a.tar.gz")
    assert list(e) == ["ex", "ex/a.tar.gz"]
    _, e, _ = layer_of(ctx, CopySpec(dest="/ex/"), "a.tar.gz")
    assert list(e) == ["ex", "ex/a.tar.gz"]
    _, e, files = layer_of(ctx, CopySpec(dest="/ex/", add=True), "plain.gz")
    assert files == {"ex/plain.gz": b"not gzip"}


def test_add_cleans_names_and_keeps_them_inside_the_destination(tmp_path):
    ctx = write(tmp_path / "c", {"a.tar": make_tar([
        (ti("/abs/x"), b"1"), (ti("a/../b"), b"2"), (ti("./c"), b"3"),
        (ti("l", tarfile.SYMTYPE, linkname="/etc"), None), (ti("l/passwd"), b"4"),
        (ti("up", tarfile.SYMTYPE, linkname="../../.."), None), (ti("up/evil"), b"5"),
    ])})
    _, e, files = layer_of(ctx, CopySpec(dest="/ex/", add=True), "a.tar")
    assert files == {"ex/abs/x": b"1", "ex/b": b"2", "ex/c": b"3", "ex/etc/passwd": b"4", "ex/evil": b"5"}
    assert e["ex/l"].issym() and e["ex/l"].linkname == "/etc"
    assert all(name.startswith("ex") for name in e)


@pytest.mark.parametrize(("member", "message"), [
    ((ti("../../etc/cron.d/x"), b"x"), "'../../etc/cron.d/x' points outside the destination"),
    ((ti("h", tarfile.LNKTYPE, linkname="../../etc/passwd"), None), "'h' links to '../../etc/passwd'"),
    ((ti("dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None), "'dev' is a device file"),
    ((ti("d/.wh.x"), b""), "whiteout name"),
])
def test_add_refuses_entries_that_escape_or_cannot_be_held(tmp_path, member, message):
    ctx = write(tmp_path / "c", {"a.tar": make_tar([member])})
    with pytest.raises(CopyError) as err:
        layer_of(ctx, CopySpec(dest="/ex/", add=True), "a.tar")
    assert str(err.value).startswith("ADD a.tar: entry ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_add_keeps_archive_hardlinks_in_tar_order(tmp_path):
    ctx = write(tmp_path / "c", {"a.tar": make_tar([(ti("z"), b"zz"), (ti("a", tarfile.LNKTYPE, linkname="z"), None)])})
    data, e, files = layer_of(ctx, CopySpec(dest="/ex/", add=True), "a.tar")
    assert list(e) == ["ex", "ex/a", "ex/z"]
    assert files == {"ex/a": b"zz"} and e["ex/z"].islnk() and e["ex/z"].linkname == "ex/a"


def test_add_of_a_damaged_archive_is_one_line(tmp_path):
    good = gzip.compress(make_tar([(ti("big"), os.urandom(1 << 17))]))
    ctx = write(tmp_path / "c", {"bad.tar.gz": good[: len(good) // 2]})  # its first header still reads
    with pytest.raises(CopyError, match="ADD bad.tar.gz: not a readable archive") as err:
        layer_of(ctx, CopySpec(dest="/ex/", add=True), "bad.tar.gz")
    assert "\n" not in str(err.value)


# --- --parents ---------------------------------------------------------------------------------


def test_parents_keep_the_path_after_the_pivot(tmp_path):
    ctx = write(tmp_path / "c", {"a/b/c.txt": "c\n", "x/y/z.txt": "z\n", "x/y/w.txt": "w\n"})
    (ctx / "a" / "b").chmod(0o750)
    stamp(ctx)
    spec = CopySpec(dest="/p/", parents=True)
    _, e, files = layer_of(ctx, spec, "a/b/c.txt", "x/./y/z.txt", ("./x/./y/*.txt", "x/y/w.txt"))
    assert files == {"p/a/b/c.txt": b"c\n", "p/y/z.txt": b"z\n", "p/y/w.txt": b"w\n"}
    assert "p/x" not in e
    assert e["p/a/b"].mode == 0o750 and e["p/a/b"].mtime == T0  # from the source's directory


def test_parents_of_a_directory_copies_it_under_its_path(ctx):
    _, e, _ = layer_of(ctx, CopySpec(dest="/p/", parents=True), "src/sub")
    assert list(e) == ["p", "p/src", "p/src/sub", "p/src/sub/y"]
    assert e["p/src"].mode == 0o700 and e["p/src/sub"].mode == 0o750


def test_parents_give_an_existing_dir_on_the_way_only_the_sources_mode(ctx, tmp_path):
    low = tmp_path / "l5"
    (low / "p" / "src").mkdir(parents=True)
    (low / "p" / "src").chmod(0o777)
    stamp(low, 1_000)
    _, e, _ = layer_of(ctx, CopySpec(dest="/p/", parents=True, chown="9"), "src/sub/y", lowers=[low])
    assert (e["p/src"].mode, e["p/src"].mtime, e["p/src"].uid) == (0o700, 1_000, os.getuid())
    assert (e["p/src/sub"].mode, e["p/src/sub"].mtime, e["p/src/sub"].uid) == (0o750, T0, 9)


# --- inline, time, reproducibility ---------------------------------------------------------------


def test_heredoc_files(image):
    layer = copy_inline_layer([("EOF", b"hello\n")], CopySpec(dest="/hd.txt", source_date_epoch=T0), [image])
    _, e, files = read(layer)
    assert list(e) == ["hd.txt"] and files["hd.txt"] == b"hello\n"
    assert (e["hd.txt"].mode, e["hd.txt"].uid, e["hd.txt"].mtime) == (0o644, 0, T0)
    _, e, _ = read(copy_inline_layer([("one", b"1")], CopySpec(dest="/opt", chmod="u+x"), [image]))
    assert list(e) == ["opt", "opt/one"] and e["opt/one"].mode == 0o744  # into the image's dir
    _, e, _ = read(copy_inline_layer([("one", b"1"), ("two", b"2")], CopySpec(dest="/new/"), [image]))
    assert list(e) == ["new", "new/one", "new/two"]
    with pytest.raises(CopyError, match="end with a /"):
        copy_inline_layer([("one", b"1"), ("two", b"2")], CopySpec(dest="/new"), [])


def test_source_date_epoch_clamps_mtimes(ctx, image):
    os.utime(ctx / "b.txt", (T0 - 100, T0 - 100))
    spec = CopySpec(dest="/data/", source_date_epoch=T0 - 10)
    _, e, _ = layer_of(ctx, spec, "a.txt", "b.txt", lowers=[image])
    assert e["srv/data/a.txt"].mtime == T0 - 10
    assert e["srv/data/b.txt"].mtime == T0 - 100
    assert e["srv"].mtime == 1_000  # an existing parent older than the epoch keeps its time


def test_the_same_inputs_give_the_same_bytes(ctx, image):
    os.symlink("x", ctx / "src" / "ln")
    os.link(ctx / "src" / "x", ctx / "src" / "h")
    spec = CopySpec(dest="/data/d/", chown="app", chmod="g+w", source_date_epoch=T0)
    first, _, _ = layer_of(ctx, spec, "src", "a.txt", lowers=[image])
    (ctx / "a.txt").read_text()  # an access changes nothing the layer holds
    second, _, _ = layer_of(ctx, spec, "src", "a.txt", lowers=[image])
    assert first == second
    os.utime(ctx / "a.txt", (T0 - 1, T0 - 1))
    third, _, _ = layer_of(ctx, spec, "src", "a.txt", lowers=[image])
    assert third != first  # and the test can tell


def test_the_snapshot_is_the_tar_unpacked(ctx, image, tmp_path):
    from buildpy.cas.unpack import unpack_layer
    from tests.buildcases import tree

    if os.geteuid() != 0:
        pytest.skip("the snapshot is written with owners: root only")
    os.link(ctx / "src" / "x", ctx / "src" / "h")
    os.symlink("x", ctx / "src" / "ln")
    write(ctx, {"a.tar": make_tar(SAMPLE + [(ti("hl", tarfile.LNKTYPE, linkname="inside/file.txt"), None)])})
    sources = select(ctx, "src", "a.tar", "a.txt")
    layer = copy_layer(sources, ctx, CopySpec(dest="/data/", add=True, chown="app:staff"), [image])
    written, unpacked = tmp_path / "written", tmp_path / "unpacked"
    written.mkdir()
    unpacked.mkdir()
    try:
        unpack_layer(layer.tar(), unpacked, whiteouts="overlay")
        layer.write_snapshot(written)
    finally:
        layer.close()
    assert tree(written) == tree(unpacked)
    assert os.stat(written / "srv/data/h").st_ino == os.stat(written / "srv/data/x").st_ino
