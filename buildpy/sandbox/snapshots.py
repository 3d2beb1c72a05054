"""Layer snapshots: each base layer unpacked once into `STORE_ROOT/snapshots/<diffID hex>/` in
overlay form, shared by every build as an overlay lowerdir; the read-only view of a stack of
them (overlayfs's merge rules, in Python); and the copy of a stack into a plain directory for
when overlayfs cannot be mounted.

Publishing. A snapshot is unpacked into a temp dir under `STORE_ROOT/tmp/` (same file system),
then renamed into place with RENAME_NOREPLACE: a snapshot path only ever names a complete
unpack, a crash leaves only a temp dir (which the store's prune clears), and of two processes
racing on one layer one wins and the other discards its copy (an exclusive flock per layer
makes the second usually wait and find it done rather than unpack twice). The uncompressed
stream is hashed on the way: content is published only under its own diffID.

Leases. Whoever uses a snapshot holds a shared flock on `locks/snapshots/<hex>` (see `use`);
`remove` (for gc) takes it exclusively without waiting, so a snapshot in use is never removed.

Overlay limits. The kernel stacks at most 500 lowerdirs (OVL_MAX_STACK; the sandbox adds one
for its mount stubs, so `MAX_LOWERS` is 499), and mount(2) takes its option string in one page
(4096 bytes), which absolute snapshot paths (~100 bytes each) fill at ~40 layers. The mounting
code passes paths relative to their common parent; `short_lowers` makes a dir of short symlinks
(overlay follows them at mount time) so that a deep stack costs ~4 bytes per layer. Deeper than
`MAX_LOWERS`, the caller falls back to the copy (`materialize`).

Overlay form. A whiteout is a char device 0:0, or a zero-size regular file with an
`overlay.whiteout` xattr; an opaque directory has `overlay.opaque` = "y" — under `trusted.` or
`user.` (the sandbox mounts with `userxattr`, so the snapshots it stacks need `user.`: one that
an unpacker marked `trusted.` only is given the `user.` mark too).

Durability. Snapshots are not fsynced (like containerd's): a snapshot is a cache of its blob, and
one that a power loss damaged is `remove`d and unpacked again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import io
import logging
import os
import re
import shutil
import stat
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from buildpy.cas.compress import decompress_reader
from buildpy.cas.digest import Hasher, hex_of
from buildpy.cas.media import Descriptor, layer_compression
from buildpy.cas.store import Store, StoreError

log = logging.getLogger("buildpy.sandbox")

MAX_LOWERS = 499  # the kernel's OVL_MAX_STACK (500), less the sandbox's stub layer
MOUNT_DATA_MAX = 4095  # one page, less the terminating NUL

WHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")

# (tar stream, target dir): extracts one layer in overlay form. The default is cas.unpack's.
Unpacker = Callable[[BinaryIO, Path], None]

_CHUNK = 1 << 20


class SnapshotError(Exception):
    """A layer cannot be made into a snapshot (its content is not the diffID it was given, …)."""

    user_facing = True


# --- the store's snapshots -------------------------------------------------------------------


def snapshots_dir(store: Store) -> Path:
    return store.root / "snapshots"


def snapshot_path(store: Store, diff_id: str) -> Path:
    return snapshots_dir(store) / hex_of(diff_id)


def _lock_path(store: Store, diff_id: str, suffix: str) -> Path:
    d = store.locks_dir / "snapshots"
    d.mkdir(exist_ok=True)
    return d / f"{hex_of(diff_id)}{suffix}"


@contextlib.contextmanager
def _flock(path: Path, op: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, op)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def lease(store: Store, diff_ids: Sequence[str]) -> Iterator[None]:
    """Hold the snapshots of `diff_ids` in use (shared flocks) for the block: `remove` skips them."""
    with contextlib.ExitStack() as stack:
        for diff_id in dict.fromkeys(diff_ids):
            stack.enter_context(_flock(_lock_path(store, diff_id, ""), fcntl.LOCK_SH))
        yield


@contextlib.contextmanager
def use(
    store: Store, layers: Sequence[Descriptor], diff_ids: Sequence[str], *, unpacker: Unpacker | None = None
) -> Iterator[tuple[Path, ...]]:
    """`prepare` under a lease: the lowerdirs (topmost first) stay valid for the block."""
    with lease(store, diff_ids):
        yield prepare(store, list(layers), list(diff_ids), unpacker=unpacker)


def prepare(
    store: Store, layers: list[Descriptor], diff_ids: list[str], *, unpacker: Unpacker | None = None
) -> tuple[Path, ...]:
    """Unpack every layer that is not a snapshot yet; the snapshot dirs topmost first (overlay's
    lowerdir order) for `layers` base first (a manifest's order). Hold `lease` (or use `use`)
    while a gc may run."""
    if len(layers) != len(diff_ids):
        raise SnapshotError(f"{len(layers)} layers but {len(diff_ids)} diffIDs")
    paths = [ensure(store, layer, diff_id, unpacker=unpacker) for layer, diff_id in zip(layers, diff_ids)]
    return tuple(reversed(paths))


def ensure(store: Store, layer: Descriptor, diff_id: str, *, unpacker: Unpacker | None = None) -> Path:
    """The snapshot of one layer, unpacked now if it is not there yet."""
    final = snapshot_path(store, diff_id)
    if final.is_dir():
        return final
    final.parent.mkdir(exist_ok=True)
    # One unpacker per layer at a time. Should two still race (the lock file lost, a store
    # shared over a file system without flock), the rename below keeps the first.
    with _flock(_lock_path(store, diff_id, ".unpack"), fcntl.LOCK_EX):
        if final.is_dir():
            return final
        with store.lease():  # prune clears tmp/ only while nobody holds a lease
            tmp = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix=f"snapshot-{hex_of(diff_id)[:12]}-"))
            try:
                os.chmod(tmp, 0o755)  # the layer's root entry, if it has one, sets it again
                _unpack_checked(store, layer, diff_id, tmp, unpacker)
                if rename_noreplace(tmp, final):
                    log.debug("snapshot %s unpacked from %s", diff_id, layer.digest)
                else:
                    log.debug("snapshot %s was unpacked concurrently; discarding ours", diff_id)
                    remove_tree(tmp)
            except BaseException:
                remove_tree(tmp)
                raise
    return final


def new_dir(store: Store) -> Path:
    """A temp dir (in the store's tmp, so `publish` is a rename) for a snapshot written by
    someone who has the layer's files at hand."""
    tmp = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="snapshot-new-"))
    os.chmod(tmp, 0o755)
    return tmp


def publish(store: Store, diff_id: str, tmp: Path) -> bool:
    """Make `tmp` (from `new_dir`, holding exactly the layer `diff_id`) its snapshot, unless
    one exists already; `tmp` is gone afterwards either way."""
    final = snapshot_path(store, diff_id)
    final.parent.mkdir(exist_ok=True)
    if final.exists() or not rename_noreplace(tmp, final):
        remove_tree(tmp)
        return False
    return True


def _unpack_checked(store: Store, layer: Descriptor, diff_id: str, target: Path, unpacker: Unpacker | None) -> None:
    """Unpack the blob while hashing its uncompressed bytes: a snapshot is named by its diffID,
    so content that is not that diffID must never be published under it."""
    if unpacker is None:
        from buildpy.cas import unpack  # lazily: the store's safe extraction

        def unpacker(tar: BinaryIO, dest: Path) -> None:
            unpack.unpack_layer(tar, dest, whiteouts="overlay", where=f"layer {layer.digest}")

    with store.open_blob(layer.digest) as blob:
        reader = _HashingReader(decompress_reader(blob, layer_compression(layer.media_type)))
        unpacker(io.BufferedReader(reader, _CHUNK), target)  # type: ignore[arg-type]
        while reader.read(_CHUNK):  # the tar's end padding, which an extractor may leave unread
            pass
    if reader.hasher.digest != diff_id:
        raise SnapshotError(f"layer {layer.digest} has diffID {reader.hasher.digest}, not {diff_id} as its config says")
    _mark_opaque_for_userxattr(target)


def _mark_opaque_for_userxattr(root: Path) -> None:
    """The sandbox mounts overlays with `userxattr` (also as root), which reads only
    user.overlay.opaque: a dir an unpacker marked with the trusted. xattr gets the user. one."""
    if os.geteuid() != 0:
        return  # trusted.* is invisible and unwritable without CAP_SYS_ADMIN anyway
    for dirpath, _, _ in os.walk(root):
        if _getxattr(dirpath, "trusted.overlay.opaque") == b"y" and _getxattr(dirpath, "user.overlay.opaque") is None:
            os.setxattr(dirpath, "user.overlay.opaque", b"y", follow_symlinks=False)


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through it."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.hasher = Hasher()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(b))
        n = len(data)
        b[:n] = data
        self.hasher.update(data)
        return n


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def rename_noreplace(src: Path, dst: Path) -> bool:
    """Rename unless `dst` exists (then False). Plain rename(2) would replace an empty dir."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        fn = None
    if fn is not None:
        fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        return False
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    return True


def list_snapshots(store: Store) -> list[str]:
    """The diffIDs that have a snapshot."""
    try:
        with os.scandir(snapshots_dir(store)) as it:
            return sorted(f"sha256:{e.name}" for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def remove(store: Store, diff_id: str) -> bool:
    """Delete a snapshot unless it is in use; True when it is gone. For gc."""
    final = snapshot_path(store, diff_id)
    if not final.exists():
        return True
    try:
        with _flock(_lock_path(store, diff_id, ""), fcntl.LOCK_EX | fcntl.LOCK_NB):
            # renamed away first: nobody ever sees a half-deleted snapshot
            doomed = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="snapshot-rm-"))
            os.rename(final, doomed / "s")
            remove_tree(doomed)
            return True
    except BlockingIOError:
        return False


def prune(store: Store) -> tuple[int, int]:
    """Remove the snapshots whose layer no longer has a blob in the store (after the store's own
    prune), unless in use; returns (snapshots removed, bytes freed)."""
    from buildpy.cas.layers import blobs_for_diff_id

    removed = freed = 0
    for diff_id in list_snapshots(store):
        if blobs_for_diff_id(store, diff_id):
            continue
        size = _tree_bytes(snapshot_path(store, diff_id))
        if remove(store, diff_id):
            removed += 1
            freed += size
    return removed, freed


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def remove_tree(path: Path) -> None:
    """rm -rf that also gets past modes without the write bit (root ignores them, the owner of
    a rootless tree does not). Refuses to descend into anything still mounted below `path`."""
    if not os.path.lexists(path):
        return
    prefix = str(path).rstrip("/")
    mounted = [m for m in _mountpoints() if m == prefix or m.startswith(prefix + "/")]
    if mounted:
        raise StoreError(f"not removing {path}: {mounted[0]} is still mounted")

    def onerror(func: Callable[..., object], p: str, exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
        with contextlib.suppress(FileNotFoundError):
            func(p)

    shutil.rmtree(path, onerror=onerror)


def _mountpoints() -> list[str]:
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(b" ")
        if len(parts) > 4:  # field 5 is the mount point, with octal escapes (\040 for a space)
            out.append(os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), parts[4])))
    return out


def short_lowers(lowers: Sequence[Path], link_dir: Path) -> tuple[Path, ...]:
    """Symlinks `link_dir/0`, `link_dir/1`, … to `lowers`, for stacks whose paths would not fit
    overlay's one-page option string (overlay resolves lowerdirs, symlinks too, at mount time)."""
    link_dir.mkdir(parents=True, exist_ok=True)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    for i, p in enumerate(lowers):
        name, n = "", i
        while True:
            n, r = divmod(n, len(digits))
            name = digits[r] + name
            if n == 0:
                break
        os.symlink(p, link_dir / name)
        out.append(link_dir / name)
    return tuple(out)


def lowerdir_size(lowers: Sequence[Path]) -> int:
    """Bytes the lowerdir option takes with these paths as they are."""
    return sum(len(os.fsencode(p)) + 1 for p in lowers)


# --- reading a stack as overlayfs does -------------------------------------------------------


def is_whiteout(path: Path | str, st: os.stat_result) -> bool:
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == 0
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return any(_getxattr(path, name) is not None for name in WHITEOUT_XATTRS)
    return False


def is_opaque(path: Path | str) -> bool:
    return any(_getxattr(path, name) == b"y" for name in OPAQUE_XATTRS)


def _getxattr(path: Path | str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:  # ENODATA, ENOTSUP, and EPERM for trusted.* without CAP_SYS_ADMIN
        return None


@dataclass(frozen=True)
class StackEntry:
    """One path of a stack: `st` is its topmost copy's; `paths` its copy in each layer that
    contributes (one for a non-directory; for a directory every layer merged into it)."""

    paths: tuple[Path, ...]
    st: os.stat_result

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


def root_entry(lowers: Sequence[Path]) -> StackEntry | None:
    """The stack's root directory: the layer roots merged, down to an opaque one (a layer with
    `.wh..wh..opq` at its root hides everything below it)."""
    paths: list[Path] = []
    for p in lowers:
        paths.append(p)
        if is_opaque(p):
            break
    if not paths:
        return None
    return StackEntry(tuple(paths), os.lstat(paths[0]))


def list_dir(entry: StackEntry) -> dict[str, StackEntry]:
    """The visible children of a directory of the stack."""
    seen: dict[str, list[Path]] = {}
    first: dict[str, os.stat_result] = {}
    done: set[str] = set()  # whited out, or nothing below can merge into it any more
    for d in entry.paths:
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                name = e.name
                if name in done:
                    continue
                st = e.stat(follow_symlinks=False)
                white = is_whiteout(e.path, st)
                if name in seen:  # a directory above: merge this copy into it, or stop there
                    if stat.S_ISDIR(st.st_mode) and not white:
                        seen[name].append(Path(e.path))
                        if is_opaque(e.path):
                            done.add(name)
                    else:
                        done.add(name)
                    continue
                if not white:
                    seen[name] = [Path(e.path)]
                    first[name] = st
                if white or not stat.S_ISDIR(st.st_mode) or is_opaque(e.path):
                    done.add(name)
    return {name: StackEntry(tuple(paths), first[name]) for name, paths in seen.items()}


def lookup(lowers: Sequence[Path], rel: str) -> StackEntry | None:
    """The stack's entry at `rel` ("etc/passwd"; "" is the root), or None."""
    entry = root_entry(lowers)
    for comp in (c for c in rel.split("/") if c):
        if entry is None or not entry.is_dir:
            return None
        paths: list[Path] = []
        st0: os.stat_result | None = None
        for d in entry.paths:
            p = d / comp
            try:
                st = os.lstat(p)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if is_whiteout(p, st):
                break
            if st0 is not None and not stat.S_ISDIR(st.st_mode):
                break
            if st0 is None:
                st0 = st
            paths.append(p)
            if not stat.S_ISDIR(st.st_mode) or is_opaque(p):
                break
        entry = StackEntry(tuple(paths), st0) if st0 is not None else None
    return entry


def walk(lowers: Sequence[Path]) -> Iterator[tuple[str, StackEntry]]:
    """Every visible path of the stack below its root, depth first in name order (a directory
    before what it holds)."""

    def walk_dir(rel: str, entry: StackEntry) -> Iterator[tuple[str, StackEntry]]:
        for name, child in sorted(list_dir(entry).items()):
            crel = f"{rel}/{name}" if rel else name
            yield crel, child
            if child.is_dir:
                yield from walk_dir(crel, child)

    root = root_entry(lowers)
    if root is not None:
        yield from walk_dir("", root)


# --- the copy fallback -----------------------------------------------------------------------

_FICLONE = 0x40049409
_FS_IOC_GETVERSION = 0x80087601


def dir_identity(path: Path | str, st: os.stat_result | None = None) -> tuple[int, int]:
    """(inode, generation) of a directory: tells a directory deleted and made again (even on a
    reused inode number) from the same one, which overlayfs would mark opaque."""
    st = st or os.lstat(path)
    gen = 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return st.st_ino, gen
    try:
        gen = struct.unpack("=q", fcntl.ioctl(fd, _FS_IOC_GETVERSION, b"\0" * 8))[0]
    except OSError:
        pass
    finally:
        os.close(fd)
    return st.st_ino, gen


def materialize(lowers: Sequence[Path], target: Path) -> dict[str, tuple[int, int]]:
    """Copy the stack's merged view into `target` (made here; its parent must exist), for when
    overlayfs cannot be mounted: data by reflink where the file system can, else copied in the
    kernel; hardlinks within a layer stay hardlinks; modes, owners, times and xattrs (not
    overlay's) kept. Returns `dir_identity` of each directory ("" is the root), which
    `diff.tree_changes` uses to see directories replaced whole."""
    os.mkdir(target, 0o755)
    root = root_entry(lowers)
    links: dict[tuple[int, int], Path] = {}
    dirs: list[tuple[str, StackEntry]] = []
    for rel, entry in walk(lowers):
        _copy_entry(entry.path, entry.st, target / rel, links)
        if entry.is_dir:
            dirs.append((rel, entry))
    if root is not None:
        _copy_meta(root.path, root.st, target, times=False, mode=False)
        dirs.append(("", root))
    ids: dict[str, tuple[int, int]] = {"": dir_identity(target)}
    # directory modes and times last, deepest first: a mode without the write bit would have
    # kept a non-root copier out, and making their children changed their times
    for rel, entry in sorted(dirs, key=lambda d: -(d[0].count("/") + bool(d[0]))):
        dst = target / rel if rel else target
        os.chmod(dst, stat.S_IMODE(entry.st.st_mode))
        os.utime(dst, ns=(entry.st.st_atime_ns, entry.st.st_mtime_ns), follow_symlinks=False)
        ids[rel] = dir_identity(dst)
    return ids


def _copy_entry(src: Path, st: os.stat_result, dst: Path, links: dict[tuple[int, int], Path]) -> None:
    mode = st.st_mode
    if not stat.S_ISDIR(mode) and st.st_nlink > 1:
        key = (st.st_dev, st.st_ino)
        if key in links:
            os.link(links[key], dst, follow_symlinks=False)
            return
        links[key] = dst
    if stat.S_ISDIR(mode):
        os.mkdir(dst, 0o700)
        _copy_meta(src, st, dst, times=False, mode=False)  # once its children are in
        return
    if stat.S_ISREG(mode):
        copy_file_data(src, dst)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst, 0o600)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
    else:
        return
    _copy_meta(src, st, dst)


def copy_file_data(src: Path | str, dst: Path | str) -> None:
    """A new file `dst` with the data of `src`: a reflink (FICLONE) where the file system shares
    extents, else copy_file_range (in the kernel), else read and write."""
    with open(src, "rb", buffering=0) as fi, open(dst, "xb", buffering=0) as fo:
        try:
            fcntl.ioctl(fo.fileno(), _FICLONE, fi.fileno())
            return
        except OSError:
            pass
        try:
            while os.copy_file_range(fi.fileno(), fo.fileno(), 1 << 30):
                pass
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        fo.seek(0)
        fo.truncate()
        fi.seek(0)
        shutil.copyfileobj(fi, fo, _CHUNK)


def _copy_meta(src: Path, st: os.stat_result, dst: Path, *, times: bool = True, mode: bool = True) -> None:
    with contextlib.suppress(OSError):
        for name in os.listxattr(src, follow_symlinks=False):
            if not name.startswith(OVERLAY_XATTR_PREFIXES):
                with contextlib.suppress(OSError):
                    os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
    try:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    except PermissionError:
        if os.geteuid() == 0:
            raise  # without root the files stay ours, which the user namespace maps to root
    if mode and not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid and setgid
        # chown drops security.capability too: write it again
        with contextlib.suppress(OSError):
            os.setxattr(dst, "security.capability", os.getxattr(src, "security.capability"))
    if times:
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
