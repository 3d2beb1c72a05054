"""diff: an upper dir (made by hand, or through a real overlay mount) or a changed copy of the
stack becomes an OCI layer tar, read back entry by entry: whiteouts, opaque dirs, hardlinks,
modes, ids (mapped back), symlinks, FIFOs, devices, xattrs, order, determinism; the copy
fallback gives the same entries as the overlay for the same change."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from buildpy.cas.layers import add_layer
from buildpy.cas.store import Store
from buildpy.sandbox import diff, snapshots
from buildpy.sandbox.diff import Change, DiffError
from tests.imagekit import files_tar
from tests.test_sandbox_snapshots import CAP_NET_BIND, overlay_or_skip, root_or_skip, tar_unpacker

T = 1_700_000_000


def read_tar(data: bytes) -> list[tuple]:
    """(name, type, mode, uid, gid, linkname, data, xattrs) per entry, in order."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert t.pax_headers == {}  # no global header
        for m in t.getmembers():
            content = t.extractfile(m).read() if m.isreg() else None  # type: ignore[union-attr]
            xattrs = {k[13:]: v.encode("utf-8", "surrogateescape") for k, v in m.pax_headers.items()
                      if k.startswith("SCHILY.xattr.")}
            out.append((m.name, m.type, m.mode, m.uid, m.gid, m.linkname, content, xattrs))
    return out


def layer_bytes(changes: list[Change], **kw) -> bytes:
    return b"".join(diff.iter_tar(changes, **kw))


def lower_of(tmp: Path) -> Path:
    """The base layer in overlay form: a few files and dirs."""
    low = tmp / "lower"
    tar_unpacker(io.BytesIO(files_tar({
        "etc/passwd": "root:x:0:0::/root:/bin/sh\n", "etc/gone": "bye", "etc/keep": "keep",
        "data/a": "a", "data/sub/b": "b", "bin/tool": "tool", "srv/old": "old",
    })), low)
    return low


def make_changes(root: Path) -> None:
    """The step's change, made through the merged view (an overlay mount or the copy)."""
    os.unlink(root / "etc/gone")  # delete a base file
    subprocess.run(["rm", "-rf", str(root / "data")], check=True)  # replace a directory
    (root / "data").mkdir()
    (root / "data/new").write_text("new")
    (root / "hl").mkdir()
    (root / "hl/one").write_text("linked")
    os.link(root / "hl/one", root / "hl/two")  # a hardlink
    (root / "bin/suid").write_text("s")
    os.chmod(root / "bin/suid", 0o4755)  # setuid
    os.mkfifo(root / "fifo", 0o640)
    (root / "empty").mkdir()  # an empty dir
    os.symlink("../etc/passwd", root / "bin/link")
    (root / "srv/app").write_text("app")
    os.chown(root / "srv/app", 1000, 1000)  # chown
    os.chown(root / "srv", 1000, 1000)
    os.setxattr(root / "bin/tool", "security.capability", CAP_NET_BIND)  # an xattr on a base file
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(root / "null", 0o666)
    os.chmod(root / "empty", 0o1777)  # sticky


EXPECTED = [
    # name, type, mode, uid, gid, linkname, data, xattrs
    ("bin", tarfile.DIRTYPE, 0o755, 0, 0, "", None, {}),
    ("bin/link", tarfile.SYMTYPE, 0o777, 0, 0, "../etc/passwd", None, {}),
    ("bin/suid", tarfile.REGTYPE, 0o4755, 0, 0, "", b"s", {}),
    ("bin/tool", tarfile.REGTYPE, 0o644, 0, 0, "", b"tool", {"security.capability": CAP_NET_BIND}),
    ("data", tarfile.DIRTYPE, 0o755, 0, 0, "", None, {}),
    ("data/.wh..wh..opq", tarfile.REGTYPE, 0, 0, 0, "", b"", {}),
    ("data/new", tarfile.REGTYPE, 0o644, 0, 0, "", b"new", {}),
    ("empty", tarfile.DIRTYPE, 0o1777, 0, 0, "", None, {}),
    ("etc", tarfile.DIRTYPE, 0o755, 0, 0, "", None, {}),
    ("etc/.wh.gone", tarfile.REGTYPE, 0, 0, 0, "", b"", {}),
    ("fifo", tarfile.FIFOTYPE, 0o640, 0, 0, "", None, {}),
    ("hl", tarfile.DIRTYPE, 0o755, 0, 0, "", None, {}),
    ("hl/one", tarfile.REGTYPE, 0o644, 0, 0, "", b"linked", {}),
    ("hl/two", tarfile.LNKTYPE, 0o644, 0, 0, "hl/one", None, {}),
    ("null", tarfile.CHRTYPE, 0o666, 0, 0, "", None, {}),
    ("srv", tarfile.DIRTYPE, 0o755, 1000, 1000, "", None, {}),
    ("srv/app", tarfile.REGTYPE, 0o644, 1000, 1000, "", b"app", {}),
]


def names(entries: list[tuple]) -> list[str]:
    return [e[0] for e in entries]


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mounted(tmp: Path, lowers: list[Path], change: Callable[[Path], None]) -> Path:
    """Apply `change` through a real overlay (as the sandbox mounts it); the upper dir."""
    upper, work, merged = tmp / "upper", tmp / "work", tmp / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work},userxattr"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        change(merged)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    return upper


def test_overlay_upper_becomes_the_layer(tmp_path, umask):
    overlay_or_skip(tmp_path)
    low = lower_of(tmp_path)
    upper = mounted(tmp_path, [low], make_changes)
    changes = diff.upper_changes(upper, [low])
    assert read_tar(layer_bytes(changes)) == EXPECTED


def test_copy_fallback_gives_the_same_entries(tmp_path, umask):
    root_or_skip()
    low = lower_of(tmp_path)
    rootfs = tmp_path / "rootfs"
    ids = snapshots.materialize([low], rootfs)
    make_changes(rootfs)
    changes = diff.tree_changes(rootfs, [low], dir_ids=ids)
    assert read_tar(layer_bytes(changes)) == EXPECTED


def test_overlay_and_copy_agree_on_more_changes(tmp_path, umask):
    # Edits in place, renames, a type change, a deleted dir, a file put back unchanged.
    overlay_or_skip(tmp_path)
    low = lower_of(tmp_path)
    mid = tmp_path / "mid"
    tar_unpacker(io.BytesIO(files_tar({"etc/keep": "keep2", "opt/x/y": "y"})), mid)
    lowers = [mid, low]

    def change(root: Path) -> None:
        with open(root / "etc/passwd", "a") as f:
            f.write("app:x:1000:1000::/:/bin/sh\n")
        os.rename(root / "etc/keep", root / "etc/kept")
        subprocess.run(["rm", "-rf", str(root / "opt")], check=True)
        os.unlink(root / "srv/old")
        (root / "srv/old").mkdir()  # file → dir
        subprocess.run(["rm", "-rf", str(root / "data/sub")], check=True)
        (root / "data/sub").write_text("now a file")  # dir → file
        with open(root / "bin/tool", "r+b"):
            pass  # opened for writing, unchanged: an overlay copy-up, no change

    (tmp_path / "ov").mkdir()
    upper = mounted(tmp_path / "ov", lowers, change)
    from_overlay = read_tar(layer_bytes(diff.upper_changes(upper, lowers)))
    rootfs = tmp_path / "rootfs"
    ids = snapshots.materialize(lowers, rootfs)
    change(rootfs)
    from_copy = read_tar(layer_bytes(diff.tree_changes(rootfs, lowers, dir_ids=ids)))
    assert names(from_overlay) == [".wh.opt", "data", "data/sub", "etc", "etc/.wh.keep", "etc/kept",
                                   "etc/passwd", "srv", "srv/old", "srv/old/.wh..wh..opq"]
    assert from_overlay == from_copy
    got = {e[0]: e for e in from_copy}
    assert got["etc/kept"][6] == b"keep2"
    assert got["etc/passwd"][6].endswith(b"app:x:1000:1000::/:/bin/sh\n")
    assert got["data/sub"][6] == b"now a file"


def test_upper_made_by_hand(tmp_path):
    # What overlayfs leaves as root (trusted.*) and in a user namespace (user.*).
    root_or_skip()
    low = lower_of(tmp_path)
    upper = tmp_path / "upper"
    for d in ("etc", "data", "srv", "run"):
        (upper / d).mkdir(parents=True)
    os.mknod(upper / "etc/gone", stat.S_IFCHR, 0)
    os.setxattr(upper / "data", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "data", "trusted.overlay.origin", b"\0\1")
    (upper / "data/x").write_text("x")
    os.mknod(upper / "srv/old", stat.S_IFCHR, 0)
    os.setxattr(upper / "srv", "user.overlay.impure", b"y")
    (upper / "run/sub").mkdir()
    os.setxattr(upper / "run/sub", "user.overlay.opaque", b"y")  # opaque but nothing below: plain
    for d in ("etc", "data", "srv", "run", "run/sub"):
        os.utime(upper / d, (T, T))
    entries = read_tar(layer_bytes(diff.upper_changes(upper, [low])))
    assert names(entries) == ["data", "data/.wh..wh..opq", "data/x", "etc", "etc/.wh.gone", "run", "run/sub",
                              "srv", "srv/.wh.old"]
    assert all(e[7] == {} for e in entries)  # overlay's own xattrs never reach the layer


def test_whiteout_of_nothing_below_is_dropped(tmp_path):
    root_or_skip()
    low = lower_of(tmp_path)
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc/never-was", stat.S_IFCHR, 0)
    os.utime(upper / "etc", ns=(0, os.lstat(low / "etc").st_mtime_ns))  # a copy-up keeps the time
    assert diff.upper_changes(upper, [low]) == []


def test_empty_change_is_empty(tmp_path):
    low = tmp_path / "low"
    (low / "a").mkdir(parents=True)
    upper = tmp_path / "upper"
    upper.mkdir()
    assert diff.upper_changes(upper, [low]) == []
    rootfs = tmp_path / "rootfs"
    ids = snapshots.materialize([low], rootfs)
    assert diff.tree_changes(rootfs, [low], dir_ids=ids) == []


def test_two_diffs_of_the_same_upper_are_the_same_bytes(tmp_path, umask):
    overlay_or_skip(tmp_path)
    low = lower_of(tmp_path)
    upper = mounted(tmp_path, [low], make_changes)
    first = layer_bytes(diff.upper_changes(upper, [low]))
    assert layer_bytes(diff.upper_changes(upper, [low])) == first
    # atime and the sub-second part of mtime are not in the layer
    mtime = os.lstat(upper / "hl/one").st_mtime_ns // 10**9 * 10**9
    os.utime(upper / "hl/one", ns=(12345, mtime + 999_999_999))
    assert layer_bytes(diff.upper_changes(upper, [low])) == first
    os.utime(upper / "hl/one", ns=(12345, mtime + 10**9))  # but a second is
    assert layer_bytes(diff.upper_changes(upper, [low])) != first


def test_mtimes_clamped_to_source_date_epoch(tmp_path):
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d/new").write_text("n")
    (upper / "d/old").write_text("o")
    os.utime(upper / "d/old", (100, 100))
    os.utime(upper / "d", (T + 50, T + 50))
    data = layer_bytes(diff.upper_changes(upper, []), source_date_epoch=T)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert {m.name: m.mtime for m in t} == {"d": T, "d/new": T, "d/old": 100}


def test_pax_for_long_and_non_utf8_names(tmp_path):
    upper = tmp_path / "upper"
    long = "x" * 150
    (upper / long).mkdir(parents=True)
    raw = os.fsdecode(b"caf\xe9")
    (upper / long / raw).write_text("latin-1 name")
    data = layer_bytes(diff.upper_changes(upper, []))
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as t:
        assert [m.name for m in t] == [long, f"{long}/{raw}"]


def test_ids_of_a_user_namespace_are_mapped_back(tmp_path):
    root_or_skip()
    upper = tmp_path / "upper"
    upper.mkdir()
    for name, (uid, gid) in {"root": (100000, 200000), "app": (101000, 201000), "stray": (5, 5)}.items():
        (upper / name).write_text(name)
        os.chown(upper / name, uid, gid)
    v3 = CAP_NET_BIND[:3] + b"\x03" + CAP_NET_BIND[4:] + (100000).to_bytes(4, "little")
    os.setxattr(upper / "root", "security.capability", v3)
    entries = read_tar(layer_bytes(diff.upper_changes(upper, []), uid_map=[(0, 100000, 65536)],
                                   gid_map=[(0, 200000, 65536)]))
    assert [(e[0], e[3], e[4]) for e in entries] == [("app", 1000, 1000), ("root", 0, 0), ("stray", 65534, 65534)]
    assert entries[1][7] == {"security.capability": CAP_NET_BIND}  # v3 of the namespace's root → v2


def test_mount_stubs_are_not_part_of_the_change(tmp_path):
    root_or_skip()
    low = lower_of(tmp_path)
    upper = tmp_path / "upper"
    # made by the sandbox: /run/secrets/token (run is new), /etc/hosts (etc exists below)
    (upper / "run/secrets").mkdir(parents=True)
    (upper / "run/secrets/token").touch()
    (upper / "etc").mkdir()
    os.chmod(upper / "etc", 0o755)
    (upper / "etc/hosts").touch()
    (upper / "cache").mkdir()
    (upper / "cache/dir").mkdir()
    (upper / "cache/kept").write_text("the step's")  # a sibling the step wrote stays
    exclude = {"/run/secrets/token", "/etc/hosts", "/cache/dir", "/etc/resolv.conf"}
    changes = diff.upper_changes(upper, [low], exclude=exclude)
    assert [c.path for c in changes] == ["cache", "cache/kept"]
    (upper / "etc/hosts").write_text("written by the step")  # not a bare stub any more: kept
    changes = diff.upper_changes(upper, [low], exclude=exclude)
    assert [c.path for c in changes] == ["cache", "cache/kept", "etc", "etc/hosts"]


def test_names_reserved_for_whiteouts_are_refused(tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / ".wh.sneaky").write_text("x")
    with pytest.raises(DiffError, match="reserved for whiteouts") as e:
        diff.upper_changes(upper, [])
    assert e.value.user_facing


def test_tar_stream_feeds_add_layer(tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "big").write_bytes(os.urandom(3 << 20) + b"tail")
    changes = diff.upper_changes(upper, [])
    data = layer_bytes(changes)
    assert len(data) % 512 == 0
    store = Store(tmp_path / "store")
    with store.lease():
        layer = add_layer(store, diff.tar_stream(changes), "gzip")
    assert layer.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert read_tar(data)[0][6] == (upper / "big").read_bytes()
