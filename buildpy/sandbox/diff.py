"""A step's filesystem change as an OCI layer: the change set, read from an overlay upper dir
(`upper_changes`) or from a tree diff of a copied root against its lower stack (`tree_changes`,
the fallback without overlayfs), and written as an uncompressed tar stream (`iter_tar`,
`tar_stream`) for `cas.layers.add_layer`.

Both readers give the same change set for the same change. A path is in it when it is new or
differs from the stack below (type, mode, owner, mtime, size, rdev, link target, xattrs, and
the data when whole-second times cannot tell), or is another name of an inode that is; every
ancestor of such a path is in it too; a deletion is a whiteout; a directory deleted and made
again is opaque (overlayfs marks it so; the tree diff sees another inode). An overlay copy-up
that changed nothing (a file opened for writing and left alone) is no change.

The tar is reproducible: PAX format; entries sorted by path bytes, each directory before its
children and, inside a directory, the opaque marker, then whiteouts, then the rest; numeric ids
only (mapped back to the container's when the files carry a user namespace's host ids); mtimes
in whole seconds, clamped to SOURCE_DATE_EPOCH when given; no atime or ctime; overlay's own
xattrs and security.selinux (a host label) left out.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from buildpy.sandbox import snapshots
from buildpy.sandbox.snapshots import OVERLAY_XATTR_PREFIXES, StackEntry, is_opaque, is_whiteout

WHITEOUT_PREFIX = ".wh."
OPAQUE_NAME = ".wh..wh..opq"
OVERFLOW_ID = 65534  # what the kernel shows for an id the user namespace does not map

# (container id, host id, count) ranges, as the lines of /proc/PID/uid_map
IdMap = Sequence[tuple[int, int, int]]

_CHUNK = 1 << 20
_SKIP_XATTRS = ("security.selinux",)


class DiffError(Exception):
    """The change cannot be written as a layer (a name reserved for whiteouts, …)."""

    user_facing = True


@dataclass(frozen=True)
class Change:
    """One path of a change set. `source` holds the new entry (in the upper dir or the copied
    root); None means the path was deleted (a whiteout). `opaque`: a directory that hides
    everything the stack had below it."""

    path: str  # relative, "/"-separated: "etc/passwd"
    source: Path | None
    opaque: bool = False


# --- reading the change ----------------------------------------------------------------------


def upper_changes(upper: Path, lowers: Sequence[Path] = (), *, exclude: Collection[str] = ()) -> list[Change]:
    """The change set of an overlay upper dir over `lowers` (topmost first). `exclude`: container
    paths the sandbox made only to mount over (see `_drop_mount_stubs`)."""
    changed: dict[str, Change] = {}
    inodes: dict[tuple[int, int], list[str]] = {}

    def visit(rel: str, dirpath: Path, below: bool) -> None:
        # below: the stack may hold this directory's children (no opaque or new dir above them)
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            crel = f"{rel}/{e.name}" if rel else e.name
            src = Path(e.path)
            st = e.stat(follow_symlinks=False)
            if is_whiteout(src, st):
                if below and snapshots.lookup(lowers, crel) is not None:
                    changed[crel] = Change(crel, None)
                continue
            _check_name(e.name, crel)
            lower = snapshots.lookup(lowers, crel) if below else None
            if stat.S_ISDIR(st.st_mode):
                opaque = is_opaque(src) and lower is not None
                if opaque or lower is None or not same_entry(src, st, lower.path, lower.st):
                    changed[crel] = Change(crel, src, opaque)
                visit(crel, src, lower is not None and lower.is_dir and not opaque)
                continue
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(crel)
            if lower is None or not same_entry(src, st, lower.path, lower.st):
                changed[crel] = Change(crel, src)

    visit("", upper, True)
    return _finish(changed, inodes, upper, lowers, exclude)


def tree_changes(
    rootfs: Path,
    lowers: Sequence[Path],
    *,
    dir_ids: Mapping[str, tuple[int, int]] | None = None,
    exclude: Collection[str] = (),
) -> list[Change]:
    """The change set of `rootfs` (a `snapshots.materialize` copy of `lowers`, then changed)
    over `lowers`. `dir_ids`, what materialize returned, shows directories replaced whole."""
    changed: dict[str, Change] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    dir_ids = dir_ids or {}

    def add_all(rel: str, dirpath: Path) -> None:
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            crel = f"{rel}/{e.name}" if rel else e.name
            _check_name(e.name, crel)
            st = e.stat(follow_symlinks=False)
            changed[crel] = Change(crel, Path(e.path))
            if stat.S_ISDIR(st.st_mode):
                add_all(crel, Path(e.path))
            elif st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(crel)

    def visit(rel: str, dirpath: Path, before: StackEntry) -> None:
        old = snapshots.list_dir(before)
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            crel = f"{rel}/{e.name}" if rel else e.name
            src = Path(e.path)
            st = e.stat(follow_symlinks=False)
            _check_name(e.name, crel)
            lower = old.pop(e.name, None)
            if stat.S_ISDIR(st.st_mode):
                if lower is None:
                    changed[crel] = Change(crel, src)
                    add_all(crel, src)
                elif not lower.is_dir or (crel in dir_ids and dir_ids[crel] != snapshots.dir_identity(src, st)):
                    # made anew where the stack had something: overlayfs would make it opaque
                    changed[crel] = Change(crel, src, True)
                    add_all(crel, src)
                else:
                    if not same_entry(src, st, lower.path, lower.st):
                        changed[crel] = Change(crel, src)
                    visit(crel, src, lower)
                continue
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(crel)
            if lower is None or not same_entry(src, st, lower.path, lower.st):
                changed[crel] = Change(crel, src)
        for name in old:  # what is left was deleted
            crel = f"{rel}/{name}" if rel else name
            changed[crel] = Change(crel, None)

    root = snapshots.root_entry(lowers)
    if root is None:
        add_all("", rootfs)
    else:
        visit("", rootfs, root)
    return _finish(changed, inodes, rootfs, lowers, exclude)


def _check_name(name: str, rel: str) -> None:
    if name.startswith(WHITEOUT_PREFIX):
        raise DiffError(f"the step made /{rel}: names starting with {WHITEOUT_PREFIX} are reserved for whiteouts")


def _finish(
    changed: dict[str, Change],
    inodes: dict[tuple[int, int], list[str]],
    root: Path,
    lowers: Sequence[Path],
    exclude: Collection[str],
) -> list[Change]:
    # hardlinks stay hardlinks: when one name of an inode is in the change, all its names are
    for names in inodes.values():
        if len(names) > 1 and any(n in changed for n in names):
            for n in names:
                changed.setdefault(n, Change(n, root / n))
    _drop_mount_stubs(changed, lowers, exclude)
    for rel in list(changed):
        parent = rel.rpartition("/")[0]
        while parent and parent not in changed:
            changed[parent] = Change(parent, root / parent)
            parent = parent.rpartition("/")[0]
    return sorted(changed.values(), key=lambda c: _sort_key(c.path, c.source is None))


def _drop_mount_stubs(changed: dict[str, Change], lowers: Sequence[Path], exclude: Collection[str]) -> None:
    """What the sandbox made only to mount over is no change of the step's: an empty file or
    dir at an excluded path, and then each parent left with nothing else in the change whose
    mode, owner and xattrs are the stack's (only its times moved) or that the stack lacks
    (the sandbox made it for the mount point, as BuildKit's stub cleaner assumes)."""
    for target in sorted({_norm(p) for p in exclude}, key=lambda p: -p.count("/")):
        c = changed.get(target)
        if not target or c is None or c.source is None or c.opaque or not _is_empty(c.source):
            continue
        del changed[target]
        parent = target.rpartition("/")[0]
        while parent:
            pc = changed.get(parent)
            if pc is None or pc.source is None or pc.opaque:
                break
            if any(k.startswith(parent + "/") for k in changed):
                break
            lower = snapshots.lookup(lowers, parent)
            if lower is not None and not _same_but_times(pc.source, lower):
                break  # the step changed the parent itself
            del changed[parent]
            parent = parent.rpartition("/")[0]


def _norm(path: str) -> str:
    return "/".join(c for c in os.path.normpath("/" + path.lstrip("/")).split("/") if c)


def _is_empty(path: Path) -> bool:
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        return st.st_size == 0
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(path) as it:
            return next(it, None) is None
    return False


def _same_but_times(path: Path, lower: StackEntry) -> bool:
    st = os.lstat(path)
    return (
        (st.st_mode, st.st_uid, st.st_gid) == (lower.st.st_mode, lower.st.st_uid, lower.st.st_gid)
        and xattrs(path) == xattrs(lower.path)
    )


def _sort_key(path: str, whiteout: bool) -> tuple[tuple[int, bytes], ...]:
    key = [(2, os.fsencode(p)) for p in path.split("/")]
    if whiteout:  # a whiteout sorts before its siblings, as the spec asks
        key[-1] = (1, key[-1][1])
    return tuple(key)


def same_entry(a: Path, ast: os.stat_result, b: Path, bst: os.stat_result) -> bool:
    """Whether two entries are the same as a layer would carry them."""
    if (ast.st_mode, ast.st_uid, ast.st_gid, ast.st_mtime_ns) != (bst.st_mode, bst.st_uid, bst.st_gid, bst.st_mtime_ns):
        return False
    kind = stat.S_IFMT(ast.st_mode)
    if kind == stat.S_IFREG and ast.st_size != bst.st_size:
        return False
    if kind in (stat.S_IFCHR, stat.S_IFBLK) and ast.st_rdev != bst.st_rdev:
        return False
    if kind == stat.S_IFLNK and os.readlink(a) != os.readlink(b):
        return False
    if xattrs(a) != xattrs(b):
        return False
    if kind == stat.S_IFREG and ast.st_mtime_ns % 1_000_000_000 == 0 and (ast.st_dev, ast.st_ino) != (
        bst.st_dev,
        bst.st_ino,
    ):
        # whole-second times (a coarse file system, or a tool that set them) cannot tell an edit
        return _same_content(a, b)
    return True


def _same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(_CHUNK), fb.read(_CHUNK)
            if x != y:
                return False
            if not x:
                return True


def xattrs(path: Path | str) -> dict[str, bytes]:
    """The xattrs a layer carries for `path` (not overlay's own, not a host SELinux label)."""
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in names:
        if name.startswith(OVERLAY_XATTR_PREFIXES) or name in _SKIP_XATTRS:
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


# --- writing the tar -------------------------------------------------------------------------


def map_id(host_id: int, idmap: IdMap | None) -> int:
    """The container's id for a host id under `idmap` (None: the identity)."""
    if idmap is None:
        return host_id
    for inside, outside, count in idmap:
        if outside <= host_id < outside + count:
            return inside + host_id - outside
    return OVERFLOW_ID


def _capability(value: bytes, uid_map: IdMap | None) -> bytes:
    """security.capability as an image carries it: a v3 value (written in a user namespace,
    naming the host id of that namespace's root) becomes the v2 value the container's root
    would have written."""
    if len(value) == 24:
        magic, rootid = struct.unpack_from("<I", value, 0)[0], struct.unpack_from("<I", value, 20)[0]
        if magic & 0xFF000000 == 0x03000000 and map_id(rootid, uid_map) == 0:
            return struct.pack("<I", 0x02000000 | (magic & 0x1)) + value[4:20]
    return value


def iter_tar(
    changes: Iterable[Change],
    *,
    uid_map: IdMap | None = None,
    gid_map: IdMap | None = None,
    source_date_epoch: int | None = None,
) -> Iterator[bytes]:
    """The layer tar of a change set (sorted, as the readers return it), in chunks."""
    first_name: dict[tuple[int, int], str] = {}
    dir_mtime: dict[str, int] = {}
    epoch = 0 if source_date_epoch is None else source_date_epoch

    def marker(name: str, parent: str) -> bytes:
        # whiteouts carry nothing of their own: mode 0, root's, their directory's time
        ti = tarfile.TarInfo(name)
        ti.mode = 0
        ti.mtime = dir_mtime.get(parent, epoch)
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    for c in changes:
        parent, _, base = c.path.rpartition("/")
        if c.source is None:
            yield marker(f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else f"{WHITEOUT_PREFIX}{base}", parent)
            continue
        st = os.lstat(c.source)
        mode = st.st_mode
        ti = tarfile.TarInfo(c.path)
        ti.mode = stat.S_IMODE(mode)
        ti.uid = map_id(st.st_uid, uid_map)
        ti.gid = map_id(st.st_gid, gid_map)
        ti.mtime = st.st_mtime_ns // 1_000_000_000
        if source_date_epoch is not None:
            ti.mtime = min(ti.mtime, source_date_epoch)
        pax = {}
        for name, value in sorted(xattrs(c.source).items()):
            if name == "security.capability":
                value = _capability(value, uid_map)
            pax[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
        ti.pax_headers = pax
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(mode) and key in first_name:
            ti.type = tarfile.LNKTYPE
            ti.linkname = first_name[key]
        elif stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
            dir_mtime[c.path] = ti.mtime
        elif stat.S_ISREG(mode):
            ti.size = st.st_size
        elif stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(c.source)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        else:
            continue  # a socket: a tar cannot hold one (nor does Docker's)
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            first_name.setdefault(key, c.path)
        yield ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if ti.type == tarfile.REGTYPE:
            yield from file_data(c.source, st.st_size)
        if c.opaque:
            yield marker(f"{c.path}/{OPAQUE_NAME}", c.path)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def file_data(path: Path | str, size: int) -> Iterator[bytes]:
    """A regular file's `size` bytes in chunks, then the tar padding after them."""
    left = size
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0) as f:
        while left:
            chunk = f.read(min(left, _CHUNK))
            if not chunk:
                raise DiffError(f"{path} shrank while it was being written to the layer")
            left -= len(chunk)
            yield chunk
    if size % tarfile.BLOCKSIZE:
        yield b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)


class _ChunkStream(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (what add_layer reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def tar_stream(
    changes: Iterable[Change],
    *,
    uid_map: IdMap | None = None,
    gid_map: IdMap | None = None,
    source_date_epoch: int | None = None,
) -> BinaryIO:
    """`iter_tar` as a readable binary stream, for `add_layer`."""
    chunks = iter_tar(changes, uid_map=uid_map, gid_map=gid_map, source_date_epoch=source_date_epoch)
    return io.BufferedReader(_ChunkStream(chunks), _CHUNK)  # type: ignore[return-value]
