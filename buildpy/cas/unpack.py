"""Safe layer unpacking: an uncompressed tar stream applied to a directory as the OCI layer spec
says (whiteouts included), never writing outside that directory. What it does was learned from
umoci's oci/layer/tar_extract.go and Docker's pkg/archive; the code is our own.

Paths. An entry's name is cleaned; a leading "/" is dropped (absolute names are rooted at the
target, as Docker and containerd do), and a name whose ".." climbs above the root is refused
with an error, as Docker refuses it (containerd and umoci clamp it into the root instead). Each
directory on the way is resolved inside the target as a chroot would: a symlink met on the way,
from a lower layer or from this one, is followed, but its "/" and ".." stop at the target's root
(umoci's securejoin). The last component is never followed: whatever is there is removed first
(rmtree never follows a symlink) unless a directory meets a directory, which is kept and takes
the entry's attributes. Symlinks are created as they are; only resolution gives their targets a
meaning, and it stays inside the root. A hardlink's target is resolved the same way and must be
an entry that already exists in the target (extracted earlier, or from a lower layer).

Entries. Devices are made only when privileged (root in the initial user namespace); otherwise
they are skipped and counted with a warning. FIFOs are made either way. Owners are applied when
privileged (tried, failures counted, as root of a user namespace), then modes with
setuid/setgid/sticky (after chown, which clears them), then xattrs from PAX `SCHILY.xattr.*` and
`LIBARCHIVE.xattr.*` (after chown, which clears security.capability), then times; directories
get their mode and times after everything in them. `security.selinux` is host policy and
`trusted.overlay.*`/`user.overlay.*` would let a layer forge overlayfs whiteouts or redirects,
so those are skipped with a warning; refused xattrs are warnings when unprivileged.

Whiteouts. `whiteouts="apply"` deletes `NAME` for `.wh.NAME`, and everything in the directory for
`.wh..wh..opq`, but only what was there before this layer (entries of this layer are kept
whatever the order, as the spec says). `whiteouts="overlay"` is for snapshot directories that are
stacked as overlayfs lowerdirs: `.wh.NAME` becomes a 0:0 character device (overlayfs' whiteout),
`.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on the directory, with `user.overlay.opaque=y`
beside it for overlays mounted with `userxattr` (which read only that one). Unprivileged, an
overlay is always mounted with `userxattr` and trusted.* cannot be written, so only
`user.overlay.opaque=y` is; the whiteout is still the 0:0 device, which Linux >= 5.8 lets anyone
make, and where that is refused it is an empty file with `user.overlay.whiteout` in a directory
marked `user.overlay.opaque=x` (overlayfs' "xwhiteout", Linux >= 6.7). A whiteout of a name this
layer itself made hides only what is below it: the directory becomes opaque, a file needs
nothing. `.wh..wh.*` names other than the opaque marker are AUFS bookkeeping, skipped as Docker
does.

The stream. It is read once, front to back: tarfile's random-access reader runs over a
forward-only wrapper that reads whole blocks (tarfile's stream mode re-slices a small buffer on
every read). A damaged header, a
header claiming a negative size, a PAX or GNU long-name header over 1 MiB (Go's limit), sparse
files, unknown entry types and a stream that ends inside a header or inside a file's data are
errors that name the entry and the layer. Every error leaves the target half-applied (as umoci's
does): callers unpack into a fresh directory and discard it on failure.

Not defended: another process changing the target while it is unpacked.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO, Literal

from buildpy.cas.compress import decompress_reader
from buildpy.cas.digest import Hasher
from buildpy.cas.media import Descriptor, layer_compression
from buildpy.cas.store import Store

Whiteouts = Literal["apply", "overlay"]

_MAX_SPECIAL = 1 << 20  # PAX and GNU long-name headers: their content is read into memory
_MAX_SYMLINKS = 40  # as the kernel's limit on a path walk
_MAX_WARNINGS = 50
_CHUNK = 1 << 20
_SPECIAL_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                  tarfile.GNUTYPE_LONGLINK)
_KNOWN_TYPES = frozenset((*tarfile.REGULAR_TYPES, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                          tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE))
_SKIPPED_XATTRS = ("security.selinux",)
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")


class LayerError(Exception):
    """A layer that cannot be applied safely or is damaged: one line naming the layer and entry."""

    user_facing = True


@dataclass
class UnpackStats:
    entries: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    fifos: int = 0
    devices: int = 0
    whiteouts: int = 0
    bytes: int = 0  # of regular files' content
    skipped_devices: int = 0
    warning_count: int = 0
    warnings: list[str] = field(default_factory=list)  # the first few, for the user

    def warn(self, message: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(message)


def is_privileged() -> bool:
    """Root in the initial user namespace: may make devices, give files away, set trusted.*."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True  # no user namespaces in this kernel


class _Malformed(Exception):
    """The tar stream itself is damaged (raised inside tarfile's parsing, reported with context)."""


class _Header(tarfile.TarInfo):
    """tarfile's header parsing, strict: tarfile takes a damaged header after the first one for
    the end of the archive and reads special headers whole into memory, whatever their size."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> _Header:
        try:
            obj = super().frombuf(buf, encoding, errors)
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):
            raise  # a zero block, or the stream ending between entries: the end of the archive
        except tarfile.TruncatedHeaderError:
            raise _Malformed("the layer ends inside a tar header") from None
        except tarfile.HeaderError as e:
            raise _Malformed(f"damaged tar header ({e})") from None
        if obj.size < 0:
            raise _Malformed(f"tar header of {obj.name!r} claims a negative size ({obj.size})")
        return obj

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        # tarfile documents _proc_member as the hook subclasses override.
        if self.type in _SPECIAL_TYPES and self.size > _MAX_SPECIAL:
            raise _Malformed(f"a PAX or GNU long-name header of {self.size} bytes (the limit is {_MAX_SPECIAL})")
        try:
            return super()._proc_member(tarfile_)
        except tarfile.HeaderError as e:
            raise _Malformed(f"damaged tar header ({e})") from None


class _StreamError(Exception):
    """Reading the layer's bytes failed (a decompressor's error, an I/O error)."""


class _ForwardReader:
    """What tarfile's reader needs of a file, over a stream read once: whole reads, tell, and
    seeks forward (skipping); a seek backwards can only come from a header that lies."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._pos = 0
        self._head = b""

    def _raw_read(self, n: int) -> bytes:
        try:
            return self._raw.read(n)
        except Exception as e:  # noqa: BLE001 - any reader's failure is this layer's damage
            raise _StreamError(str(e) or type(e).__name__) from None

    def at_eof(self) -> bool:
        """True for an empty stream (an empty layer), checked before tarfile sees it."""
        self._head = self._raw_read(tarfile.BLOCKSIZE)
        return not self._head

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = 1 << 62
        out = []
        if self._head:
            out.append(self._head[:n])
            self._head = self._head[n:]
        got = len(out[0]) if out else 0
        while got < n:  # a pipe or decompressor may return less than asked for
            b = self._raw_read(min(n - got, _CHUNK))
            if not b:
                break
            out.append(b)
            got += len(b)
        data = out[0] if len(out) == 1 else b"".join(out)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self._pos:
            raise _Malformed("a tar header's size points backwards into the stream")
        while self._pos < pos:
            if not self.read(min(pos - self._pos, _CHUNK)):
                break  # the next read finds the end and tarfile reports it
        return self._pos

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def clean_name(name: str) -> list[str] | None:
    """The components of an entry name inside the root; None if its ".." climbs out."""
    parts: list[str] = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(p)
    return parts


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _under(path: str, top: str) -> bool:
    return not top or path == top or path.startswith(top + "/")


def _rmtree(path: str) -> None:
    """rm -rf that never follows a symlink, in a loop: shutil.rmtree recurses once per level,
    and a layer can nest some 2000 levels within PATH_MAX, twice Python's recursion limit."""
    stack = [path]
    while stack:
        top = stack[-1]
        subdirs = []
        with os.scandir(top) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(e.path)
                else:
                    os.unlink(e.path)
        if subdirs:
            stack.extend(subdirs)  # back to `top` once they are gone; it is empty then
        else:
            os.rmdir(top)
            stack.pop()


def _ns(ti: tarfile.TarInfo, key: str, default: int | None) -> int | None:
    """A time from the PAX record (exact to the nanosecond) or the header, in ns."""
    text = ti.pax_headers.get(key)
    if text is not None:
        try:
            return int(Decimal(text) * 1_000_000_000)
        except (InvalidOperation, ValueError):
            raise ValueError(f"PAX {key} {text!r} is not a number") from None
    if key == "mtime":
        return int(ti.mtime * 1_000_000_000)
    return default


def _xattrs(ti: tarfile.TarInfo) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in ti.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            # tarfile decodes PAX values as UTF-8 with surrogateescape: this gives back the bytes
            out[key[len("SCHILY.xattr."):]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            try:
                out[urllib.parse.unquote(key[len("LIBARCHIVE.xattr."):])] = base64.b64decode(value + "==")
            except ValueError:
                raise ValueError(f"PAX record {key} is not base64") from None
    return out


class _Unpacker:
    def __init__(self, target: Path, whiteouts: Whiteouts, privileged: bool, where: str) -> None:
        self.root = os.fspath(target)
        self.overlay = whiteouts == "overlay"
        self.privileged = privileged
        self.try_chown = privileged or os.geteuid() == 0
        self.where = where
        self.stats = UnpackStats()
        self.upper: set[str] = set()  # real paths this layer made, and their ancestors
        self.dir_meta: dict[str, tuple[int, int, int]] = {}  # rel -> mode, atime, mtime (applied last)
        self.resolved: dict[str, str] = {}  # cleaned dir path -> real dir path; cleared on removal
        self.whiteouts_made: set[str] = set()  # overlay: whiteouts this layer made
        self.opaque_dirs: set[str] = set()  # overlay: dirs this layer made opaque
        # as root both names, so the snapshot works whether the overlay is mounted with userxattr
        # or not; unprivileged only user.* can be written
        self.opaque_xattrs = ("trusted.overlay.opaque", "user.overlay.opaque") if privileged else ("user.overlay.opaque",)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(self.path(rel))
        except FileNotFoundError:
            return None

    # resolution inside the root

    def resolve_dir(self, parts: list[str], create: bool, what: str) -> str | None:
        """The real path (no symlinks, relative to the root) of the directory `parts`, following
        symlinks as a chroot into the root would. Missing directories are made when `create`,
        else None is returned."""
        key = "/".join(parts)
        hit = self.resolved.get(key)
        if hit is not None:
            return hit
        todo = list(reversed(parts))
        done: list[str] = []
        hops = 0
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if done:
                    done.pop()
                continue
            rel = "/".join(done + [comp])
            st = self.lstat(rel)
            if st is None:
                if not create:
                    return None
                os.mkdir(self.path(rel))
                os.chmod(self.path(rel), 0o755)  # as Docker makes missing parents, whatever the umask
            elif stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise LayerError(f"{what}: too many levels of symbolic links")
                link = os.readlink(self.path(rel))
                if link.startswith("/"):
                    done = []
                todo.extend(reversed(link.split("/")))
                continue
            elif not stat.S_ISDIR(st.st_mode):
                if not create:
                    return None
                if rel in self.whiteouts_made:
                    # a path under a name this layer whited out: overlayfs wants an opaque dir
                    self.remove(rel, st)
                    os.mkdir(self.path(rel), 0o755)
                    self.make_opaque(rel)
                else:
                    raise LayerError(f"{what}: /{rel} is not a directory")
            done.append(comp)
        real = "/".join(done)
        self.resolved[key] = real
        return real

    def resolve_parent(self, parts: list[str], create: bool, what: str) -> tuple[str | None, str]:
        parent = self.resolve_dir(parts[:-1], create, what)
        return (None if parent is None else _join(parent, parts[-1])), parts[-1]

    def remove(self, rel: str, st: os.stat_result) -> None:
        path = self.path(rel)
        self.resolved.clear()
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            self.dir_meta.pop(rel, None)
            self.whiteouts_made.discard(rel)
            return
        _rmtree(path)
        # forget what was below, so nothing is written later through a path that is gone
        for d in [d for d in self.dir_meta if _under(d, rel)]:
            del self.dir_meta[d]
        for s in (self.whiteouts_made, self.opaque_dirs):
            s.difference_update([p for p in s if _under(p, rel)])

    def mark_upper(self, rel: str) -> None:
        while rel and rel not in self.upper:
            self.upper.add(rel)
            rel = rel.rpartition("/")[0]

    # whiteouts

    def remove_lower(self, top: str) -> None:
        """Remove `top` as far as it came from lower layers (what this layer made stays).
        A loop, not recursion: a lower layer may nest deeper than Python's stack."""
        todo = [top]
        while todo:
            rel = todo.pop()
            st = self.lstat(rel)
            if st is None:
                continue
            if rel not in self.upper:
                self.remove(rel, st)
            elif stat.S_ISDIR(st.st_mode):
                todo.extend(_join(rel, child) for child in os.listdir(self.path(rel)))

    def whiteout(self, dir_parts: list[str], name: str, what: str) -> None:
        self.stats.whiteouts += 1
        if not self.overlay:
            parent = self.resolve_dir(dir_parts, create=False, what=what)
            if parent is not None:
                self.remove_lower(_join(parent, name))
            return
        parent = self.resolve_dir(dir_parts, create=True, what=what)
        assert parent is not None
        rel = _join(parent, name)
        st = self.lstat(rel)
        if st is not None:
            if rel in self.whiteouts_made:
                return
            if rel in self.upper:
                # made by this layer: it already hides a lower file; a dir must hide lower contents
                if stat.S_ISDIR(st.st_mode):
                    self.make_opaque(rel)
                return
            self.remove(rel, st)
        if any(_under(parent, d) for d in self.opaque_dirs):
            return  # an opaque dir hides everything below it already
        try:
            os.mknod(self.path(rel), stat.S_IFCHR, os.makedev(0, 0))
        except PermissionError:
            if self.privileged:
                raise
            # overlayfs' xwhiteout: an empty file marked so, in a dir marked as holding some
            os.close(os.open(self.path(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o000))
            os.setxattr(self.path(rel), "user.overlay.whiteout", b"y", follow_symlinks=False)
            if parent not in self.opaque_dirs:
                os.setxattr(self.path(parent), "user.overlay.opaque", b"x", follow_symlinks=False)
        self.whiteouts_made.add(rel)

    def opaque(self, dir_parts: list[str], what: str) -> None:
        self.stats.whiteouts += 1
        if not self.overlay:
            parent = self.resolve_dir(dir_parts, create=False, what=what)
            if parent is not None:
                for child in os.listdir(self.path(parent)):
                    self.remove_lower(_join(parent, child))
            return
        parent = self.resolve_dir(dir_parts, create=True, what=what)
        assert parent is not None
        self.make_opaque(parent)

    def make_opaque(self, rel: str) -> None:
        for name in self.opaque_xattrs:
            os.setxattr(self.path(rel), name, b"y", follow_symlinks=False)
        self.opaque_dirs.add(rel)
        # whiteouts inside an opaque dir serve no purpose and confuse overlayfs' readdir
        for w in [w for w in self.whiteouts_made if _under(w, rel) and w != rel]:
            st = self.lstat(w)
            if st is not None:
                os.unlink(self.path(w))
            self.whiteouts_made.discard(w)

    # entries

    def entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        self.stats.entries += 1
        what = f"{self.where}: entry {ti.name!r}"
        parts = clean_name(ti.name)
        if parts is None:
            raise LayerError(f"{what}: the path climbs out of the layer's root with '..'")
        if ti.issparse():
            raise LayerError(f"{what}: sparse files are not supported in layers")
        if ti.type not in _KNOWN_TYPES:
            raise LayerError(f"{what}: unsupported tar entry type {ti.type!r}")
        if not parts:
            if not ti.isdir():
                raise LayerError(f"{what}: a layer cannot replace its root with a non-directory")
            self.metadata("", ti, None, existed=True)
            return
        base = parts[-1]
        if base.startswith(".wh."):
            if base == ".wh..wh..opq":
                self.opaque(parts[:-1], what)
            elif base.startswith(".wh..wh."):
                pass  # AUFS bookkeeping, not a whiteout
            elif base[4:] in ("", ".", ".."):
                raise LayerError(f"{what}: a whiteout that names nothing")
            else:
                self.whiteout(parts[:-1], base[4:], what)
            return
        if ti.ischr() or ti.isblk():
            if not self.privileged:
                self.stats.skipped_devices += 1
                self.stats.warn(f"{what}: device node not created (not privileged)")
                return
        link_rel = self.link_target(ti, what) if ti.islnk() else None
        rel, _ = self.resolve_parent(parts, create=True, what=what)
        assert rel is not None
        st = self.lstat(rel)
        if ti.islnk() and link_rel == rel:
            return  # a hardlink to itself: the file is already there
        replaced_whiteout = rel in self.whiteouts_made
        if st is not None and not (stat.S_ISDIR(st.st_mode) and ti.isdir()):
            self.remove(rel, st)
            st = None
        path = self.path(rel)
        fd = None
        if ti.isdir():
            if st is None:
                os.mkdir(path, 0o700)  # its own mode once everything inside it is written
                if replaced_whiteout:  # a dir over this layer's whiteout hides the lower dir's contents
                    self.make_opaque(rel)
            self.stats.dirs += 1
        elif ti.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self.stats.files += 1
        elif ti.issym():
            os.symlink(ti.linkname, path)
            self.stats.symlinks += 1
        elif ti.islnk():
            assert link_rel is not None
            os.link(self.path(link_rel), path, follow_symlinks=False)
            self.stats.hardlinks += 1
            self.mark_upper(rel)
            return  # a hardlink shares its target's inode, metadata and all
        elif ti.isfifo():
            os.mkfifo(path, 0o600)
            self.stats.fifos += 1
        else:
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(ti.devmajor, ti.devminor))
            self.stats.devices += 1
        self.mark_upper(rel)
        if fd is None:
            self.metadata(rel, ti, None, existed=st is not None)
            return
        try:
            self.copy(tf, ti, fd, what)
            self.metadata(rel, ti, fd, existed=False)
        finally:
            os.close(fd)

    def link_target(self, ti: tarfile.TarInfo, what: str) -> str:
        parts = clean_name(ti.linkname)
        if parts is None:
            raise LayerError(f"{what}: hardlink to {ti.linkname!r} points out of the layer's root")
        if not parts:
            raise LayerError(f"{what}: hardlink to the layer's root")
        rel, _ = self.resolve_parent(parts, create=False, what=what)
        st = None if rel is None else self.lstat(rel)
        if rel is None or st is None:
            raise LayerError(f"{what}: hardlink to {ti.linkname!r}, which is not in the layer before it")
        if stat.S_ISDIR(st.st_mode):
            raise LayerError(f"{what}: hardlink to a directory ({ti.linkname!r})")
        return rel

    def copy(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, fd: int, what: str) -> None:
        src = tf.extractfile(ti)
        assert src is not None
        left = ti.size
        try:
            while left:
                chunk = src.read(min(left, _CHUNK))
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                left -= len(chunk)
        except tarfile.ReadError:
            left = left or 1
        if left:
            raise LayerError(f"{what}: the layer ends inside this file's data ({ti.size} bytes announced)")
        self.stats.bytes += ti.size

    def metadata(self, rel: str, ti: tarfile.TarInfo, fd: int | None, existed: bool) -> None:
        what = f"{self.where}: entry {ti.name!r}"
        target: int | str = fd if fd is not None else self.path(rel)
        follow = fd is not None  # paths are never followed; an fd is the file itself
        if self.try_chown:
            try:
                os.chown(target, ti.uid, ti.gid, follow_symlinks=follow)
            except (PermissionError, OverflowError) as e:
                if self.privileged:
                    raise LayerError(f"{what}: cannot set owner {ti.uid}:{ti.gid}: {e}") from None
                self.stats.warn(f"{what}: owner {ti.uid}:{ti.gid} not applied")
            except OSError as e:
                if e.errno != errno.EINVAL or self.privileged:
                    raise
                self.stats.warn(f"{what}: owner {ti.uid}:{ti.gid} is not mapped in this user namespace")
        mode = ti.mode & 0o7777
        if not ti.issym() and not ti.isdir():
            os.chmod(target, mode)  # after chown, which clears setuid/setgid
        self.set_xattrs(target, _xattrs(ti), what, follow, clear_others=existed, symlink=ti.issym())
        mtime = _ns(ti, "mtime", None)
        atime = _ns(ti, "atime", mtime)
        assert mtime is not None and atime is not None
        if ti.isdir():
            self.dir_meta[rel] = (mode, atime, mtime)  # after its contents are written
        else:
            os.utime(target, ns=(atime, mtime), follow_symlinks=follow)

    def set_xattrs(self, target: int | str, xattrs: dict[str, bytes], what: str, follow: bool,
                   clear_others: bool, symlink: bool) -> None:
        if clear_others:  # a kept directory takes the entry's attributes, xattrs included
            try:
                present = os.listxattr(target, follow_symlinks=follow)
            except OSError:
                present = []
            for name in present:
                if name not in xattrs and not name.startswith(_OVERLAY_XATTRS) and name not in _SKIPPED_XATTRS:
                    try:
                        os.removexattr(target, name, follow_symlinks=follow)
                    except OSError:
                        pass
        for name, value in xattrs.items():
            if name in _SKIPPED_XATTRS or name.startswith(_OVERLAY_XATTRS):
                self.stats.warn(f"{what}: xattr {name} not applied (it belongs to the host, not the image)")
                continue
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as e:
                # EPERM is Linux refusing user.* on symlinks, or a privilege we do not have
                refused = e.errno in (errno.EPERM, errno.EACCES) and (symlink or not self.privileged)
                if e.errno == errno.ENOTSUP or refused:
                    self.stats.warn(f"{what}: xattr {name} not applied ({e.strerror})")
                    continue
                raise LayerError(f"{what}: cannot set xattr {name}: {e.strerror}") from None

    def finish(self) -> None:
        """Directories' modes and times, deepest first, now that nothing more is written in them."""
        for rel in sorted(self.dir_meta, key=lambda r: r.count("/") + bool(r), reverse=True):
            mode, atime, mtime = self.dir_meta[rel]
            if not self.is_real_dir(rel):
                continue
            os.chmod(self.path(rel), mode)
            os.utime(self.path(rel), ns=(atime, mtime), follow_symlinks=False)

    def is_real_dir(self, rel: str) -> bool:
        """Every component of `rel` a directory, no symlink (checked again before the last
        writes, though removals already forget the dirs they take away)."""
        parts = rel.split("/") if rel else []
        for i in range(len(parts) + 1):
            st = self.lstat("/".join(parts[:i]))
            if st is None or not stat.S_ISDIR(st.st_mode):
                return False
        return True


def unpack_layer(tar: BinaryIO, target: Path, *, whiteouts: Whiteouts = "apply", privileged: bool | None = None,
                 where: str = "layer") -> UnpackStats:
    """Apply the uncompressed layer tar `tar` to the existing directory `target` (see the module
    docstring for the rules). `where` names the layer in errors. Raises LayerError."""
    if whiteouts not in ("apply", "overlay"):
        raise ValueError(f"whiteouts must be 'apply' or 'overlay', not {whiteouts!r}")
    root = Path(target)
    if not root.is_dir():
        raise LayerError(f"{where}: cannot unpack into {root}: not a directory")
    u = _Unpacker(root, whiteouts, is_privileged() if privileged is None else privileged, where)
    reader = _ForwardReader(tar)
    last = None
    try:
        if reader.at_eof():
            return u.stats
        tf = tarfile.TarFile(fileobj=reader, mode="r", tarinfo=_Header)  # type: ignore[arg-type]
        while (ti := tf.next()) is not None:
            tf.members.clear()  # tarfile keeps every header; a layer may have millions
            last = ti.name
            if ti.size < 0:  # a PAX size record may say anything
                raise _Malformed(f"entry {ti.name!r} claims a negative size ({ti.size})")
            try:
                u.entry(tf, ti)
            except LayerError:
                raise
            except (OSError, ValueError, OverflowError) as e:
                detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise LayerError(f"{where}: entry {ti.name!r}: {detail}") from None
        u.finish()
    except (_Malformed, _StreamError, tarfile.TarError) as e:
        after = f" (after entry {last!r})" if last is not None else ""
        if isinstance(e, tarfile.ReadError) and "unexpected end" in str(e):
            raise LayerError(f"{where}: the layer ends before its last entry is complete{after}") from None
        raise LayerError(f"{where}: {e}{after}") from None
    return u.stats


class _HashingReader:
    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.hasher = Hasher()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.hasher.update(data)
        return data

    def readinto(self, b: Any) -> int:
        n = self._raw.readinto(b)  # type: ignore[attr-defined]
        self.hasher.update(memoryview(b)[:n])
        return n

    def readable(self) -> bool:
        return True


def unpack_blob(store: Store, descriptor: Descriptor, target: Path, **kw: Any) -> UnpackStats:
    """Unpack the layer blob `descriptor` from `store` into `target`, decompressing by its media
    type and checking the blob against its digest as it is read (keyword arguments as for
    unpack_layer; `where` defaults to the layer's digest)."""
    where = kw.pop("where", f"layer {descriptor.digest}")
    try:
        compression = layer_compression(descriptor.media_type)
    except ValueError as e:
        raise LayerError(f"{where}: {e}") from None
    with store.open_blob(descriptor.digest) as f:
        hashed = _HashingReader(f)
        if compression:
            with decompress_reader(hashed, compression) as r:  # type: ignore[arg-type]
                stats = unpack_layer(r, target, where=where, **kw)
        else:
            stats = unpack_layer(hashed, target, where=where, **kw)  # type: ignore[arg-type]
        while hashed.read(_CHUNK):  # past the tar's end: the digest covers the whole blob
            pass
    if hashed.hasher.digest != descriptor.digest or hashed.hasher.size != descriptor.size:
        raise LayerError(f"{where}: the stored blob does not match its digest (damaged store? run buildpy fsck)")
    return stats
