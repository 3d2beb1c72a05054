"""Snapshots: layers unpacked once into the store, published atomically (one winner under
concurrency, nothing left behind), leased against gc; the stack read with overlayfs's rules;
the copy fallback. Also the overlay-form unpacker the sandbox tests share (the store's own
`cas.unpack` is used instead once it exists)."""

from __future__ import annotations

import io
import multiprocessing
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest

from buildpy.cas.store import Store
from buildpy.cas.unpack import unpack_layer
from buildpy.sandbox import snapshots
from buildpy.sandbox.snapshots import SnapshotError
from tests.imagekit import files_tar, image_from_tars

CAP_NET_BIND = bytes.fromhex("0100000200040000000000000000000000000000")  # v2, cap_net_bind_service


def root_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mknod of overlay whiteouts, chown, trusted.* xattrs)")


def overlay_or_skip(tmp: Path) -> None:
    root_or_skip()
    dirs = [tmp / f"probe-{n}" for n in "luwm"]
    for d in dirs:
        d.mkdir()
    opts = f"lowerdir={dirs[0]},upperdir={dirs[1]},workdir={dirs[2]},userxattr"
    if subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(dirs[3])]).returncode != 0:
        pytest.skip("overlayfs cannot be mounted here")
    subprocess.run(["umount", str(dirs[3])], check=True)
    snapshots.remove_tree(dirs[2])


def tar_unpacker(tar: BinaryIO, dest: Path) -> None:
    """A layer in overlay form, as snapshots are made (the store's unpacker)."""
    dest.mkdir(parents=True, exist_ok=True)
    unpack_layer(tar, dest, whiteouts="overlay")


def tar_of(entries: list[tuple[str, str, object]]) -> bytes:
    """A tar from (name, kind, data) with kind in file/dir/symlink/link/whiteout/opaque."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            payload = None
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, str(data), 0o777
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, str(data)
            elif kind in ("whiteout", "opaque", "file"):
                raw = data.encode() if isinstance(data, str) else (data or b"")
                ti.size, ti.mode, payload = len(raw), 0o644, io.BytesIO(raw)  # type: ignore[arg-type]
            t.addfile(ti, payload)
    return buf.getvalue()


def store_layers(store: Store, tars: list[bytes]):
    image = image_from_tars(store, tars, compression="gzip")
    return image.layers, image.diff_ids


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_prepare_unpacks_each_layer_once_topmost_first(store):
    root_or_skip()
    base = files_tar({"etc/passwd": "root\n", "etc/gone": "x", "data/a": "a", "data/sub/b": "b"})
    top = tar_of([("etc", "dir", None), ("etc/.wh.gone", "whiteout", None), ("data", "dir", None),
                  ("data/.wh..wh..opq", "opaque", None), ("data/new", "file", "new")])
    layers, diff_ids = store_layers(store, [base, top])
    lowers = snapshots.prepare(store, layers, diff_ids)
    assert lowers == (snapshots.snapshot_path(store, diff_ids[1]), snapshots.snapshot_path(store, diff_ids[0]))
    assert (lowers[1] / "etc/passwd").read_text() == "root\n"
    st = os.lstat(lowers[0] / "etc/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert snapshots.is_opaque(lowers[0] / "data")
    inode = os.lstat(lowers[1] / "etc/passwd").st_ino
    assert snapshots.prepare(store, layers, diff_ids) == lowers
    assert os.lstat(lowers[1] / "etc/passwd").st_ino == inode  # not unpacked again
    assert snapshots.list_snapshots(store) == sorted(diff_ids)
    assert not [p for p in os.listdir(store.tmp_dir) if p.startswith("snapshot-")]


def test_content_that_is_not_the_diff_id_is_never_published(store):
    root_or_skip()
    layers, diff_ids = store_layers(store, [files_tar({"a": "a"})])
    wrong = "sha256:" + "0" * 64
    with pytest.raises(SnapshotError, match="has diffID"):
        snapshots.prepare(store, layers, [wrong])
    assert snapshots.list_snapshots(store) == []
    assert not [p for p in os.listdir(store.tmp_dir) if p.startswith("snapshot-")]


def test_losing_a_race_discards_our_copy(store):
    # Another process (on a file system without flock) publishes first, mid-unpack.
    root_or_skip()
    layers, diff_ids = store_layers(store, [files_tar({"a": "theirs"})])
    final = snapshots.snapshot_path(store, diff_ids[0])

    def racing(tar: BinaryIO, dest: Path) -> None:
        final.parent.mkdir(exist_ok=True)
        final.mkdir()
        (final / "a").write_text("winner")
        tar_unpacker(tar, dest)

    assert snapshots.prepare(store, layers, diff_ids, unpacker=racing) == (final,)
    assert (final / "a").read_text() == "winner"
    assert not [p for p in os.listdir(store.tmp_dir) if p.startswith("snapshot-")]


def _prepare_in_child(root: str, layers, diff_ids, barrier) -> str:
    store = Store(root)
    barrier.wait()
    return str(snapshots.prepare(store, layers, diff_ids)[0])


def test_concurrent_prepare_from_four_processes_makes_one_snapshot(store):
    root_or_skip()
    big = {f"d/f{i}": os.urandom(2048) for i in range(200)}
    layers, diff_ids = store_layers(store, [files_tar(big)])
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(4)
    with ctx.Pool(4) as pool:
        paths = pool.starmap(_prepare_in_child, [(str(store.root), layers, diff_ids, barrier)] * 4)
    assert set(paths) == {str(snapshots.snapshot_path(store, diff_ids[0]))}
    assert snapshots.list_snapshots(store) == diff_ids
    assert sorted(os.listdir(snapshots.snapshots_dir(store))) == [diff_ids[0][7:]]
    assert not [p for p in os.listdir(store.tmp_dir) if p.startswith("snapshot-")]
    assert len(os.listdir(Path(paths[0]) / "d")) == 200


def test_a_leased_snapshot_is_not_removed(store):
    root_or_skip()
    layers, diff_ids = store_layers(store, [files_tar({"a": "a"})])
    with snapshots.use(store, layers, diff_ids) as lowers:
        assert not snapshots.remove(store, diff_ids[0])
        assert (lowers[0] / "a").is_file()
    assert snapshots.remove(store, diff_ids[0])
    assert not snapshots.snapshot_path(store, diff_ids[0]).exists()
    assert snapshots.list_snapshots(store) == []
    assert os.listdir(store.tmp_dir) == []


def make_stack(tmp: Path) -> list[Path]:
    """Three layers in overlay form, topmost first."""
    bottom, middle, top = tmp / "l0", tmp / "l1", tmp / "l2"
    tar_unpacker(io.BytesIO(files_tar({"a/x": "x0", "a/y": "y0", "b/z": "z0", "c": "c0", "d/deep/f": "f0"})), bottom)
    tar_unpacker(io.BytesIO(tar_of([("a", "dir", None), ("a/.wh.x", "whiteout", None), ("a/w", "file", "w1"),
                                    ("b", "dir", None), ("b/.wh..wh..opq", "opaque", None),
                                    ("b/new", "file", "n1"), ("c", "dir", None), ("c/in", "file", "i1")])), middle)
    tar_unpacker(io.BytesIO(tar_of([("a", "dir", None), ("a/y", "file", "y2"), (".wh.d", "whiteout", None)])), top)
    return [top, middle, bottom]


def test_stack_reads_like_overlayfs(tmp_path):
    root_or_skip()
    lowers = make_stack(tmp_path)
    assert snapshots.lookup(lowers, "a/x") is None  # whited out in the middle
    assert snapshots.lookup(lowers, "a/y").path == lowers[0] / "a/y"  # the top copy wins
    assert snapshots.lookup(lowers, "b/z") is None  # hidden by the opaque b
    assert snapshots.lookup(lowers, "d") is None and snapshots.lookup(lowers, "d/deep/f") is None
    c = snapshots.lookup(lowers, "c")
    assert c.is_dir and c.paths == (lowers[1] / "c",)  # a dir over a file: the file is gone
    assert [p for p in snapshots.lookup(lowers, "a").paths] == [lowers[0] / "a", lowers[1] / "a", lowers[2] / "a"]
    assert sorted(snapshots.list_dir(snapshots.lookup(lowers, "a"))) == ["w", "y"]
    assert [rel for rel, _ in snapshots.walk(lowers)] == ["a", "a/w", "a/y", "b", "b/new", "c", "c/in"]


def test_stack_reads_xattr_whiteouts_too(tmp_path):
    # Unpacked without root: a whiteout is an empty file with user.overlay.whiteout.
    low, top = tmp_path / "low", tmp_path / "top"
    (low / "d").mkdir(parents=True)
    (low / "d/f").write_text("f")
    (top / "d").mkdir(parents=True)
    (top / "d/f").touch()
    os.setxattr(top / "d/f", "user.overlay.whiteout", b"")
    assert snapshots.lookup([top, low], "d/f") is None
    assert snapshots.list_dir(snapshots.lookup([top, low], "d")) == {}


def test_materialize_copies_the_merged_view(tmp_path):
    root_or_skip()
    lowers = make_stack(tmp_path)
    (lowers[0] / "h1").write_text("linked")
    os.link(lowers[0] / "h1", lowers[0] / "h2")
    (lowers[0] / "suid").write_text("s")
    os.chown(lowers[0] / "suid", 1000, 1001)
    os.chmod(lowers[0] / "suid", 0o4755)
    os.setxattr(lowers[0] / "suid", "security.capability", CAP_NET_BIND)
    os.mkfifo(lowers[0] / "fifo")
    os.symlink("a/y", lowers[0] / "sym")
    os.utime(lowers[0] / "a", ns=(1, 1_600_000_000_123_456_789))
    target = tmp_path / "copy"
    ids = snapshots.materialize(lowers, target)
    got = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    assert got == ["a", "a/w", "a/y", "b", "b/new", "c", "c/in", "fifo", "h1", "h2", "suid", "sym"]
    assert (target / "a/y").read_text() == "y2"
    assert os.lstat(target / "h1").st_ino == os.lstat(target / "h2").st_ino
    st = os.lstat(target / "suid")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o4755)
    assert os.getxattr(target / "suid", "security.capability") == CAP_NET_BIND
    assert stat.S_ISFIFO(os.lstat(target / "fifo").st_mode)
    assert os.readlink(target / "sym") == "a/y"
    assert os.lstat(target / "a").st_mtime_ns == 1_600_000_000_123_456_789
    assert "user.overlay.opaque" not in os.listxattr(target / "b")
    assert set(ids) == {"", "a", "b", "c"}
    assert ids["a"] == snapshots.dir_identity(target / "a")


def test_deep_stacks_mount_through_short_links(tmp_path):
    # 120 absolute snapshot-like paths do not fit one page; the short links (relative to their
    # dir, which the mounting process chdirs into) do.
    overlay_or_skip(tmp_path)
    lowers = []
    for i in range(120):
        d = tmp_path / "snapshots" / f"{i:064x}"
        d.mkdir(parents=True)
        (d / f"f{i}").write_text(str(i))
        lowers.append(d)
    assert snapshots.lowerdir_size(lowers) > snapshots.MOUNT_DATA_MAX
    links = snapshots.short_lowers(lowers, tmp_path / "l")
    for name in ("u", "w", "m"):
        (tmp_path / name).mkdir()
    opts = f"lowerdir={':'.join(p.name for p in links)},upperdir=../u,workdir=../w,userxattr"
    assert len(opts) < snapshots.MOUNT_DATA_MAX
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(tmp_path / "m")], cwd=tmp_path / "l",
                   check=True)
    try:
        assert len(os.listdir(tmp_path / "m")) == 120
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=True)


def test_trusted_opaque_marks_get_the_user_mark_the_sandbox_reads(store):
    # The sandbox mounts with userxattr even as root: a trusted.-only opaque dir would leak.
    root_or_skip()
    layers, diff_ids = store_layers(store, [tar_of([("d", "dir", None), ("d/.wh..wh..opq", "opaque", None)])])

    def trusted_unpacker(tar: BinaryIO, dest: Path) -> None:
        tar_unpacker(tar, dest)
        os.removexattr(dest / "d", "user.overlay.opaque")
        os.setxattr(dest / "d", "trusted.overlay.opaque", b"y")

    (lower,) = snapshots.prepare(store, layers, diff_ids, unpacker=trusted_unpacker)
    assert os.getxattr(lower / "d", "user.overlay.opaque") == b"y"


def test_prune_removes_snapshots_whose_blob_is_gone(store):
    root_or_skip()
    from buildpy.cas.gc import prune

    image = image_from_tars(store, [files_tar({"kept": "k"})], "docker.io/library/kept:1")
    gone = image_from_tars(store, [files_tar({"gone": "g"})], "docker.io/library/gone:1")
    snapshots.prepare(store, image.layers, image.diff_ids)
    snapshots.prepare(store, gone.layers, gone.diff_ids)
    assert snapshots.prune(store) == (0, 0)  # both layers still have blobs
    store.delete_ref("docker.io/library/gone:1")
    prune(store)
    removed, freed = snapshots.prune(store)
    assert removed == 1 and freed == 1
    assert snapshots.list_snapshots(store) == sorted(image.diff_ids)
