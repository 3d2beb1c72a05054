"""Safe layer unpacking (buildpy/cas/unpack.py): crafted hostile layers each give a clear error
or a documented safe result and leave nothing outside the target; ordinary layers come out
right (whiteouts, opaque dirs, overlay whiteouts, hardlinks, modes, symlinks, FIFOs, xattrs,
times)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from buildpy.cas import unpack as unpack_mod
from buildpy.cas.layers import add_layer
from buildpy.cas.store import Store
from buildpy.cas.unpack import LayerError, UnpackStats, unpack_blob, unpack_layer

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (mknod, chown, trusted.* xattrs); CI runs as root")

Entry = Callable[[tarfile.TarFile], None]


def reg(name: str, data: bytes = b"data", mode: int = 0o644, **kw) -> Entry:
    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode = len(data), mode
        for k, v in kw.items():
            setattr(ti, k, v)
        t.addfile(ti, io.BytesIO(data))
    return add


def special(name: str, type_: bytes, linkname: str = "", mode: int = 0o755, **kw) -> Entry:
    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname, ti.mode = type_, linkname, mode
        for k, v in kw.items():
            setattr(ti, k, v)
        t.addfile(ti)
    return add


def d(name: str, mode: int = 0o755, **kw) -> Entry:
    return special(name, tarfile.DIRTYPE, mode=mode, **kw)


def sym(name: str, target: str) -> Entry:
    return special(name, tarfile.SYMTYPE, target, mode=0o777)


def hard(name: str, target: str) -> Entry:
    return special(name, tarfile.LNKTYPE, target)


def layer(*entries: Entry, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for add in entries:
            add(t)
    return buf.getvalue()


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """tmp/target (unpacked into), tmp/sentinel (must stay empty), tmp/outside.txt (must keep
    one link and its content)."""
    (tmp_path / "target").mkdir()
    (tmp_path / "sentinel").mkdir()
    (tmp_path / "outside.txt").write_bytes(b"outside")
    return tmp_path


def assert_nothing_outside(box: Path) -> None:
    assert sorted(p.name for p in box.iterdir()) == ["outside.txt", "sentinel", "target"]
    assert list((box / "sentinel").iterdir()) == []
    st = os.lstat(box / "outside.txt")
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
    assert (box / "outside.txt").read_bytes() == b"outside"


def run(box: Path, data: bytes, **kw) -> UnpackStats:
    return unpack_layer(io.BytesIO(data), box / "target", where="layer L1", **kw)


def refused(box: Path, data: bytes, *words: str, **kw) -> str:
    with pytest.raises(LayerError) as info:
        run(box, data, **kw)
    message = str(info.value)
    assert "\n" not in message and message.startswith("layer L1: ")
    for w in words:
        assert w in message, message
    assert getattr(info.value, "user_facing", False)
    assert_nothing_outside(box)
    return message


# --- hostile layers: refused -------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "../sentinel/escape", "a/../../escape", "./../escape",
                                  "/../../../../../../../../escape", "a/b/../../../sentinel/x"])
def test_dotdot_escape_refused(box, name):
    refused(box, layer(reg(name)), repr(name), "climbs out")


def test_dotdot_escape_to_tmp_leaves_tmp_alone(box):
    name = f"buildpy-escape-{uuid.uuid4().hex}"
    refused(box, layer(reg(f"../../../../../../../../../../../tmp/{name}")), "climbs out")
    assert not (Path("/tmp") / name).exists()


@pytest.mark.parametrize("target", ["../outside.txt", "../../outside.txt", "/../outside.txt"])
def test_hardlink_out_of_root_refused(box, target):
    refused(box, layer(hard("x", target)), "'x'", "hardlink", "points out")


def test_hardlink_to_host_path_refused(box):
    # /etc/passwd means TARGET/etc/passwd, which this layer never made
    refused(box, layer(hard("passwd", "/etc/passwd")), "hardlink", "not in the layer before it")
    assert not (box / "target" / "passwd").exists()


def test_hardlink_through_symlink_out_of_root_refused(box):
    # evil -> .. resolves to the root itself (".." stops there), where outside.txt is not
    refused(box, layer(sym("evil", ".."), hard("x", "evil/outside.txt")), "not in the layer before it")
    refused(box, layer(sym("evil2", str(box)), hard("y", "evil2/outside.txt")), "not in the layer before it")


def test_hardlink_to_directory_refused(box):
    refused(box, layer(d("dir"), hard("x", "dir")), "directory")


def test_hardlink_before_its_target_refused(box):
    refused(box, layer(hard("early", "late"), reg("late")), "'early'", "not in the layer before it")


def test_symlink_loop_refused(box):
    refused(box, layer(sym("loop", "loop"), reg("loop/x")), "too many levels")
    refused(box, layer(sym("p", "q"), sym("q", "p"), reg("p/x")), "too many levels")


def test_non_directory_parent_refused(box):
    refused(box, layer(reg("file"), reg("file/x")), "not a directory")


def test_replacing_the_root_refused(box):
    refused(box, layer(sym(".", "/")), "root")
    refused(box, layer(reg("./")), "root")


@pytest.mark.parametrize("name", [".wh.", "a/.wh..", "a/.wh..."])
def test_whiteout_naming_nothing_refused(box, name):
    refused(box, layer(reg(name, b"")), "whiteout")


def test_unknown_entry_type_refused(box):
    refused(box, layer(special("odd", b"Z")), "unsupported")


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_file_refused(box, tmp_path, fmt):
    if shutil.which("tar") is None:
        pytest.skip("tar(1) is not installed")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse.bin", "wb") as f:
        f.seek(1 << 20)
        f.write(b"end")
    data = subprocess.run(["tar", "-C", str(src), f"--format={fmt}", "--sparse", "-cf", "-", "sparse.bin"],
                          check=True, capture_output=True).stdout
    shutil.rmtree(src)
    refused(box, data, "sparse")


# --- hostile layers: handled safely (documented) ------------------------------------------


def test_absolute_names_are_rooted_at_the_target(box):
    run(box, layer(reg("/abs/escape", b"x"), reg("//etc//passwd", b"p")))
    assert (box / "target/abs/escape").read_bytes() == b"x"
    assert (box / "target/etc/passwd").read_bytes() == b"p"
    assert_nothing_outside(box)


@pytest.mark.parametrize("link", ["/", "..", "../..", "../../../..", "/..", "../sentinel", "/tmp", "."])
def test_path_through_symlink_stays_inside(box, link):
    name = f"escape-{uuid.uuid4().hex}"
    run(box, layer(sym("link", link), reg(f"link/{name}", b"in")))
    found = [p for p in (box / "target").rglob(name)]
    assert len(found) == 1 and found[0].read_bytes() == b"in"
    assert not (Path("/tmp") / name).exists()
    assert os.readlink(box / "target/link") == link  # created as-is
    assert_nothing_outside(box)


def test_symlink_chain_stays_inside(box):
    run(box, layer(sym("a", "b"), sym("b", "c/../../../.."), d("a/sub"), reg("a/sub/f", b"1")))
    assert (box / "target/sub/f").read_bytes() == b"1"
    assert_nothing_outside(box)


def test_absolute_symlink_from_lower_layer_is_resolved_in_root(box):
    # a lower layer left etc -> <host path of sentinel>: it means TARGET/<that path>
    os.symlink(box / "sentinel", box / "target/etc")
    run(box, layer(reg("etc/passwd", b"pw")))
    assert (box / "target" / str(box / "sentinel").lstrip("/") / "passwd").read_bytes() == b"pw"
    assert_nothing_outside(box)


def test_file_replaces_symlink_instead_of_writing_through_it(box):
    run(box, layer(sym("f", "../outside.txt"), reg("f", b"new"), sym("g", "../sentinel"), d("g"), reg("g/x")))
    assert stat.S_ISREG(os.lstat(box / "target/f").st_mode)
    assert (box / "target/f").read_bytes() == b"new"
    assert stat.S_ISDIR(os.lstat(box / "target/g").st_mode)
    assert_nothing_outside(box)


def test_whiteout_through_symlink_stays_inside(box):
    run(box, layer(sym("up", "../"), reg("up/.wh.outside.txt", b""), reg("up/.wh.sentinel", b"")))
    assert_nothing_outside(box)


def test_devices_skipped_when_unprivileged(box):
    stats = run(box, layer(d("dev"), special("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660),
                           special("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
                           special("dev/fifo", tarfile.FIFOTYPE, mode=0o600)), privileged=False)
    assert stats.skipped_devices == 2 and stats.warning_count >= 2
    assert any("dev/sda" in w for w in stats.warnings)
    assert sorted(os.listdir(box / "target/dev")) == ["fifo"]
    assert stat.S_ISFIFO(os.lstat(box / "target/dev/fifo").st_mode)
    assert_nothing_outside(box)


# --- damaged streams ----------------------------------------------------------------------


def _header(name: str, size: int, type_: bytes = tarfile.REGTYPE) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.type = size, type_
    return ti.tobuf(format=tarfile.GNU_FORMAT)  # base-256 for sizes octal cannot hold


@pytest.mark.parametrize("size", [1 << 40, (1 << 62) + 5, 256 ** 11 - 1])
def test_huge_size_header(box, size):
    data = _header("big", size) + b"only a little data".ljust(512, b"\0")
    refused(box, data, "'big'", "ends inside")


def test_huge_pax_size(box):
    ti = tarfile.TarInfo("big")
    ti.pax_headers = {"size": str(1 << 50)}
    data = ti.tobuf(format=tarfile.PAX_FORMAT) + b"x" * 512
    refused(box, data, "ends inside")


def test_negative_size_header(box):
    ok = _header("ok", 3) + b"abc".ljust(512, b"\0")
    refused(box, ok + _header("neg", -1) + bytes(1024), "negative", "'ok'")


def test_negative_pax_size(box):
    ti = tarfile.TarInfo("neg")
    ti.pax_headers = {"size": "-1024"}
    refused(box, ti.tobuf(format=tarfile.PAX_FORMAT) + bytes(1024), "negative")


def test_pax_header_bomb_is_not_read(box):
    # a PAX header claiming 1 GiB: refused before anything is read into memory
    refused(box, _header("././@PaxHeader", 1 << 30, tarfile.XHDTYPE) + bytes(512), "PAX", "limit")


def test_gnu_longname_bomb_is_not_read(box):
    refused(box, _header("././@LongLink", 1 << 30, tarfile.GNUTYPE_LONGNAME) + bytes(512), "limit")


def test_truncated_inside_data(box):
    data = layer(reg("a", b"A" * 3000), reg("b", b"B" * 3000))
    refused(box, data[:512 * 3 + 100], "ends")


def test_truncated_inside_header(box):
    data = layer(reg("a", b"A" * 100), reg("b", b"B" * 100))
    cut = data.index(b"b\0") + 200  # inside b's header block
    refused(box, data[:cut], "inside a tar header", "'a'")


def test_damaged_second_header(box):
    data = bytearray(layer(reg("a", b"A" * 100, ), reg("b", b"B" * 100), fmt=tarfile.USTAR_FORMAT))
    data[1024 + 150] ^= 0xFF  # the checksum of b's header
    message = refused(box, bytes(data), "damaged tar header")
    assert "'a'" in message


def test_stream_error_is_a_layer_error(box):
    class Broken(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            raise OSError("disk on fire")

    with pytest.raises(LayerError, match="disk on fire"):
        unpack_layer(io.BufferedReader(Broken()), box / "target", where="layer L1")


def test_empty_streams_are_empty_layers(box):
    assert run(box, b"").entries == 0
    assert run(box, bytes(1024)).entries == 0
    assert os.listdir(box / "target") == []


# --- correct layers -----------------------------------------------------------------------


def test_regular_tree_modes_and_times(box):
    data = layer(
        d("bin", mtime=1_000_000_000),
        reg("bin/tool", b"#!/bin/sh\n", 0o4755, mtime=1_100_000_000),
        reg("bin/sg", b"x", 0o2711, mtime=1_100_000_000),
        d("tmp", 0o1777, mtime=1_200_000_000),
        reg("etc/conf", b"k=v", 0o640, mtime=1_300_000_000),
        d("ro", 0o555, mtime=1_400_000_000),
        reg("ro/inside", b"i", 0o444),
    )
    stats = run(box, data)
    t = box / "target"
    assert stat.S_IMODE(os.stat(t / "bin/tool").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(t / "bin/sg").st_mode) == 0o2711
    assert stat.S_IMODE(os.stat(t / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(t / "etc").st_mode) == 0o755  # made as a missing parent
    assert stat.S_IMODE(os.stat(t / "ro").st_mode) == 0o555
    assert (t / "ro/inside").read_bytes() == b"i"
    # dir times are set after their contents are written
    assert os.stat(t / "bin").st_mtime == 1_000_000_000
    assert os.stat(t / "ro").st_mtime == 1_400_000_000
    assert os.stat(t / "bin/tool").st_mtime == 1_100_000_000
    assert stats.files == 4 and stats.dirs == 3 and stats.bytes == 10 + 1 + 3 + 1


def test_pax_times_to_the_nanosecond(box):
    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"mtime": "1700000000.123456789", "atime": "1600000000.5"}
        t.addfile(ti, io.BytesIO(b""))

    run(box, layer(add))
    st = os.stat(box / "target/f")
    assert st.st_mtime_ns == 1_700_000_000_123_456_789
    assert st.st_atime_ns == 1_600_000_000_500_000_000


@needs_root
def test_owners_applied_when_privileged(box):
    run(box, layer(d("home", uid=1000, gid=1000), reg("home/f", b"x", 0o4750, uid=1000, gid=50),
                   sym("home/l", "f")), privileged=True)
    t = box / "target"
    assert (os.stat(t / "home").st_uid, os.stat(t / "home").st_gid) == (1000, 1000)
    st = os.stat(t / "home/f")
    assert (st.st_uid, st.st_gid) == (1000, 50)
    assert stat.S_IMODE(st.st_mode) == 0o4750  # setuid survives the chown that came first
    assert os.lstat(t / "home/l").st_uid == 0


def test_symlinks_as_is(box):
    run(box, layer(sym("abs", "/etc/passwd"), sym("rel", "../../nowhere"), sym("dot", ".")))
    t = box / "target"
    assert os.readlink(t / "abs") == "/etc/passwd"
    assert os.readlink(t / "rel") == "../../nowhere"
    assert os.readlink(t / "dot") == "."


def test_hardlinks_kept(box):
    stats = run(box, layer(reg("a", b"same"), d("sub"), hard("sub/b", "a"), hard("c", "/sub/b"),
                           sym("s", "a"), hard("s2", "s")))
    t = box / "target"
    assert os.stat(t / "a").st_ino == os.stat(t / "sub/b").st_ino == os.stat(t / "c").st_ino
    assert os.stat(t / "a").st_nlink == 3
    assert os.lstat(t / "s2").st_ino == os.lstat(t / "s").st_ino  # a link to the symlink itself
    assert stats.hardlinks == 3


def test_hardlink_to_lower_layer_file(box):
    run(box, layer(reg("usr/lib/libx.so", b"lib")))
    run(box, layer(hard("usr/lib/libx.so.1", "usr/lib/libx.so")))
    assert os.stat(box / "target/usr/lib/libx.so.1").st_nlink == 2


def test_fifo(box):
    run(box, layer(special("p", tarfile.FIFOTYPE, mode=0o620)), privileged=False)
    st = os.lstat(box / "target/p")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620


@needs_root
def test_devices_when_privileged(box):
    stats = run(box, layer(special("null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
                           special("sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660)), privileged=True)
    st = os.lstat(box / "target/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert stat.S_ISBLK(os.lstat(box / "target/sda").st_mode)
    assert stats.devices == 2 and stats.skipped_devices == 0


def _xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def test_xattrs(box):
    if not _xattrs_supported(box):
        pytest.skip("the temp dir's file system has no user xattrs")
    value = b"\x00\xffbinary\x80"

    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"SCHILY.xattr.user.test": value.decode("utf-8", "surrogateescape"),
                          "SCHILY.xattr.trusted.overlay.opaque": "y",
                          "LIBARCHIVE.xattr.user.b%20c": "aGVsbG8="}
        t.addfile(ti, io.BytesIO(b""))

    stats = run(box, layer(add), privileged=False)
    f = box / "target/f"
    assert os.getxattr(f, "user.test") == value
    assert os.getxattr(f, "user.b c") == b"hello"
    assert "trusted.overlay.opaque" not in os.listxattr(f)  # a layer cannot forge overlay metadata
    assert any("trusted.overlay.opaque" in w for w in stats.warnings)


def test_deep_lower_tree_under_opaque_whiteout(box):
    # deeper than Python's recursion limit: whiteout removal must not recurse per level
    t = box / "target"
    fd = os.open(t, os.O_RDONLY)
    try:
        os.mkdir("deep", dir_fd=fd)
        for name in ["deep"] + ["d"] * 1500:  # a path of ~3000 characters, within PATH_MAX
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
            os.mkdir("d", dir_fd=fd)
        os.mknod("fifo", stat.S_IFIFO | 0o600, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        run(box, layer(d("deep"), reg("deep/.wh..wh..opq", b""), reg("deep/kept")))
        assert os.listdir(t / "deep") == ["kept"]
        run(box, layer(reg(".wh.deep", b"")))
        assert os.listdir(t) == []
    finally:
        # a tree this deep left behind would break pytest's own (recursive) temp dir cleanup
        subprocess.run(["rm", "-rf", "--", str(t / "deep")], check=False)


def test_xattr_on_symlink_is_a_warning(box):
    if not _xattrs_supported(box):
        pytest.skip("the temp dir's file system has no user xattrs")

    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo("l")
        ti.type, ti.linkname = tarfile.SYMTYPE, "x"
        ti.pax_headers = {"SCHILY.xattr.user.a": "1"}
        t.addfile(ti)

    stats = run(box, layer(add), privileged=ROOT)
    assert os.readlink(box / "target/l") == "x"
    assert any("user.a" in w for w in stats.warnings)


@needs_root
def test_security_capability_xattr(box):
    # VFS_CAP_REVISION_2, effective, cap_net_bind_service (10) permitted
    cap = (0x02000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") + bytes(12)

    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo("bin/ping")
        ti.mode, ti.uid = 0o755, 0
        ti.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
        t.addfile(ti, io.BytesIO(b"\x7fELF"))

    run(box, layer(add), privileged=True)
    assert os.getxattr(box / "target/bin/ping", "security.capability") == cap


def test_type_changes_replace_without_following(box):
    t = box / "target"
    # d/esc points at the whole box on the host: removing d must not follow it
    run(box, layer(d("d"), reg("d/inner"), sym("d/esc", str(box)), reg("f"), sym("s", "../sentinel"), reg("x")))
    run(box, layer(reg("d", b"now a file"), d("f"), reg("f/inside"), d("s"), reg("s/in"), sym("x", "/")))
    assert (t / "d").read_bytes() == b"now a file"
    assert (t / "f/inside").exists() and stat.S_ISDIR(os.lstat(t / "s").st_mode)
    assert os.readlink(t / "x") == "/"
    assert_nothing_outside(box)


def test_directory_over_directory_keeps_contents_takes_attributes(box):
    t = box / "target"
    run(box, layer(d("etc", 0o700), reg("etc/old")))
    run(box, layer(d("etc", 0o751, mtime=5), reg("etc/new")))
    assert sorted(os.listdir(t / "etc")) == ["new", "old"]
    assert stat.S_IMODE(os.stat(t / "etc").st_mode) == 0o751
    assert os.stat(t / "etc").st_mtime == 5


def lower_tree(box: Path) -> None:
    run(box, layer(reg("file1"), d("a"), reg("a/file2"), d("b"), reg("b/x"), d("c"), reg("c/file3"),
                   d("bin"), reg("bin/my-app-binary"), reg("bin/my-app-tools"), d("bin/tools"),
                   reg("bin/tools/my-app-tool-one"), d("x"), d("x/b"), d("x/b/c"), reg("x/b/c/bar")))


def test_whiteouts_applied(box):
    lower_tree(box)
    stats = run(box, layer(reg(".wh.file1", b""), reg("a/.wh.file2", b""), reg(".wh.b", b""), reg("file4"),
                           reg("c/.wh.missing", b""), reg("nodir/.wh.x", b"")))
    t = box / "target"
    assert not (t / "file1").exists() and not (t / "a/file2").exists() and not (t / "b").exists()
    assert (t / "a").is_dir() and (t / "c/file3").exists() and (t / "file4").exists()
    assert not any(p.name.startswith(".wh.") for p in t.rglob("*"))
    assert not (t / "nodir").exists()
    assert stats.whiteouts == 5


def test_opaque_whiteout_applied(box):
    lower_tree(box)
    run(box, layer(d("bin"), reg("bin/.wh..wh..opq", b""), reg("bin/new")))
    assert os.listdir(box / "target/bin") == ["new"]


def test_opaque_whiteout_after_entries_of_the_same_layer(box):
    # the layer spec's example: the marker after a/b/c/foo still removes only lower entries
    lower_tree(box)
    run(box, layer(d("x"), d("x/b"), d("x/b/c"), reg("x/b/c/foo"), reg("x/.wh..wh..opq", b"")))
    assert os.listdir(box / "target/x/b/c") == ["foo"]


def test_whiteout_does_not_hide_the_same_layer(box):
    lower_tree(box)
    run(box, layer(reg("a/file2", b"new"), reg("a/.wh.file2", b""), d("c"), reg("c/fresh"), reg(".wh.c", b"")))
    t = box / "target"
    assert (t / "a/file2").read_bytes() == b"new"
    assert sorted(os.listdir(t / "c")) == ["fresh"]  # the lower file3 went, this layer's stayed


def test_aufs_metadata_skipped(box):
    run(box, layer(d(".wh..wh.plnk"), reg(".wh..wh.aufs", b"")))
    assert os.listdir(box / "target") == []


@needs_root
def test_overlay_whiteouts_privileged(box):
    stats = run(box, layer(reg(".wh.gone", b""), d("d"), reg("d/.wh..wh..opq", b""), reg("d/kept"),
                           reg("deep/er/.wh.x", b"")), whiteouts="overlay", privileged=True)
    t = box / "target"
    st = os.lstat(t / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(t / "d", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(t / "d", "user.overlay.opaque") == b"y"  # for overlays mounted with userxattr
    assert os.listdir(t / "d") == ["kept"]
    assert stat.S_ISCHR(os.lstat(t / "deep/er/x").st_mode)
    assert stats.whiteouts == 3


def test_overlay_whiteouts_unprivileged(box):
    if not _xattrs_supported(box):
        pytest.skip("the temp dir's file system has no user xattrs")
    run(box, layer(d("d"), reg("d/.wh..wh..opq", b""), reg(".wh.gone", b"")), whiteouts="overlay", privileged=False)
    t = box / "target"
    assert os.getxattr(t / "d", "user.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in os.listxattr(t / "d")
    st = os.lstat(t / "gone")
    if stat.S_ISCHR(st.st_mode):  # Linux >= 5.8 lets anyone make the 0:0 whiteout device
        assert st.st_rdev == os.makedev(0, 0)
    else:
        assert os.getxattr(t / "gone", "user.overlay.whiteout")


def test_overlay_xwhiteout_when_mknod_refused(box, monkeypatch):
    if not _xattrs_supported(box):
        pytest.skip("the temp dir's file system has no user xattrs")

    def refuse(*a, **kw):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(unpack_mod.os, "mknod", refuse)
    run(box, layer(d("etc"), reg("etc/.wh.passwd", b"")), whiteouts="overlay", privileged=False)
    t = box / "target"
    w = t / "etc/passwd"
    assert stat.S_ISREG(os.lstat(w).st_mode) and os.lstat(w).st_size == 0
    assert os.getxattr(w, "user.overlay.whiteout")
    assert os.getxattr(t / "etc", "user.overlay.opaque") == b"x"


@needs_root
def test_overlay_whiteout_of_this_layers_entries(box):
    run(box, layer(d("dir"), reg("dir/f"), reg(".wh.dir", b""), reg("file"), reg(".wh.file", b""),
                   reg(".wh.again", b""), d("again"), reg("again/new")), whiteouts="overlay", privileged=True)
    t = box / "target"
    assert os.getxattr(t / "dir", "trusted.overlay.opaque") == b"y"  # hides the lower dir's contents
    assert os.listdir(t / "dir") == ["f"]
    assert stat.S_ISREG(os.lstat(t / "file").st_mode)
    # a dir made where this layer put a whiteout must be opaque, or lower contents show again
    assert os.getxattr(t / "again", "trusted.overlay.opaque") == b"y"
    assert os.listdir(t / "again") == ["new"]


@needs_root
def test_overlay_opaque_dir_drops_whiteouts_inside(box):
    run(box, layer(d("d"), reg("d/.wh.x", b""), reg("d/.wh..wh..opq", b""), reg("d/.wh.y", b"")),
        whiteouts="overlay", privileged=True)
    assert os.listdir(box / "target/d") == []


# --- blobs --------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", ""])
def test_unpack_blob(tmp_path, compression):
    store = Store(tmp_path / "store")
    data = layer(d("app"), reg("app/main.py", b"print('hi')\n" * 1000), sym("app/link", "main.py"))
    with store.lease():
        lay = add_layer(store, io.BytesIO(data), compression)
    target = tmp_path / "rootfs"
    target.mkdir()
    stats = unpack_blob(store, lay.descriptor, target)
    assert (target / "app/main.py").read_bytes() == b"print('hi')\n" * 1000
    assert os.readlink(target / "app/link") == "main.py"
    assert stats.files == 1


def test_unpack_blob_damaged(tmp_path):
    store = Store(tmp_path / "store")
    with store.lease():
        lay = add_layer(store, io.BytesIO(layer(reg("f", os.urandom(5000)))), "gzip")
    blob = store.blob_path(lay.descriptor.digest)
    os.chmod(blob, 0o644)
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    blob.write_bytes(bytes(raw))
    target = tmp_path / "rootfs"
    target.mkdir()
    with pytest.raises(LayerError) as info:
        unpack_blob(store, lay.descriptor, target)
    assert lay.descriptor.digest in str(info.value)


def test_unpack_blob_names_layer_in_errors(tmp_path):
    store = Store(tmp_path / "store")
    with store.lease():
        lay = add_layer(store, io.BytesIO(layer(reg("../x"))), "zstd")
    target = tmp_path / "rootfs"
    target.mkdir()
    with pytest.raises(LayerError, match=r"^layer sha256:[0-9a-f]{64}: entry '\.\./x': "):
        unpack_blob(store, lay.descriptor, target)


@pytest.mark.parametrize("mtime", ["soon", "nan", "1e400"])
def test_bad_pax_time(box, mtime):
    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"mtime": mtime}
        t.addfile(ti, io.BytesIO(b""))

    try:
        data = layer(add)
    except (ValueError, tarfile.TarError, OverflowError):
        pytest.skip("tarfile will not write this mtime")
    refused(box, data, "'f'")
