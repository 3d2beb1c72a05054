"""COPY and ADD as a layer tar written straight from the sources, with no sandbox: BuildKit's
copy rules (tonistiigi/fsutil's copy) applied to a `Selection`, the destination image's tree
looked up through its snapshots (`lowers`) where the rules depend on it.

- Destination: relative to WORKDIR; a trailing `/` (or several sources) makes it a directory;
  a path that is a directory in the image (symlinks on the way followed inside the image) is
  one too. A directory source copies its contents. Missing parents are made 0755, owned by
  the `--chown` user (root otherwise); existing ones are written with the image's own metadata.
- Owners: from the context 0:0 (the docker client resets them), from a stage or image kept;
  `--chown` (names from the image's /etc/passwd and /etc/group) overrides. `--chmod` (octal
  or symbolic) applies to every copied entry but symlinks.
- Symlinks are copied as symlinks; files that were hardlinks stay hardlinks in the layer.
- ADD extracts a local tar (plain, gzip, bzip2, xz, zstd: by content, not name) into the
  destination; every name is confined to it (as containerd's RootPath), device files and
  links that lead out are refused.
- mtimes kept (whole seconds), clamped to SOURCE_DATE_EPOCH; made directories get the epoch
  (or 0), so the same inputs give the same layer.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from buildpy.grammar.flags import parse_chmod
from buildpy.planner.context import Entry, Selection
from buildpy.sandbox import snapshots
from buildpy.sandbox.diff import _ChunkStream, file_data

_CHUNK = 1 << 20


class CopyError(Exception):
    """A COPY/ADD that cannot be done as asked: one line."""

    user_facing = True


@dataclass(frozen=True)
class CopySpec:
    dest: str
    workdir: str = "/"
    chown: str = ""
    chmod: str = ""
    link: bool = False
    parents: bool = False
    add: bool = False
    unpack: bool | None = None
    from_context: bool = True
    source_date_epoch: int | None = None


@dataclass
class _Out:
    """One entry of the layer."""

    kind: str  # file | dir | symlink | fifo | char | block | hardlink
    mode: int
    uid: int
    gid: int
    mtime: int
    linkname: str = ""
    rdev: int = 0
    data: str | bytes | None = None  # a file's path, or its bytes
    size: int = 0


# --- the destination ---------------------------------------------------------------------------


def destination(spec: CopySpec) -> tuple[str, bool]:
    """The absolute destination and whether it was written as a directory (trailing `/`, `.`)."""
    dest = spec.dest
    as_dir = dest.endswith("/") or dest in ("", ".") or dest.endswith("/.")
    if not dest.startswith("/"):
        dest = posixpath.join(spec.workdir or "/", dest)
    dest = posixpath.normpath(dest)
    if dest.startswith("//"):
        dest = "/" + dest.lstrip("/")
    return dest, as_dir


class _Image:
    """The destination image's tree, read through its snapshots (empty for --link/scratch)."""

    def __init__(self, lowers: Sequence[Path]) -> None:
        self.lowers = tuple(lowers)

    def lookup(self, rel: str) -> snapshots.StackEntry | None:
        if not self.lowers:
            return None
        return snapshots.lookup(self.lowers, rel)

    def resolve(self, path: str) -> str:
        """`path` with the image's symlinks on the way (and at its end) followed, as if the
        image's root were `/`; the part that does not exist is kept as written."""
        from buildpy.planner.context import resolve_scoped

        def kind(rel: str) -> tuple[str, str]:
            entry = self.lookup(rel)
            if entry is None:
                return "", ""
            if stat.S_ISLNK(entry.st.st_mode):
                return "link", os.readlink(entry.path)
            return ("dir" if entry.is_dir else "other"), ""

        try:
            return resolve_scoped(path, kind) or ""
        except RecursionError:
            raise CopyError(f"too many levels of symbolic links in the destination /{path}") from None

    def text(self, rel: str) -> str | None:
        entry = self.lookup(rel)
        if entry is None or not stat.S_ISREG(entry.st.st_mode):
            return None
        return entry.path.read_text(errors="replace")


def _owner(spec: CopySpec, image: _Image) -> tuple[int, int] | None:
    if not spec.chown:
        return None
    user, _, group = spec.chown.partition(":")
    if user.isdigit() and (not group or group.isdigit()):
        return int(user), int(group) if group else int(user)
    from buildpy.sandbox import users

    try:
        who = users.resolve(user if not group else f"{user}:{group}", image.text("etc/passwd"),
                            image.text("etc/group"))
    except users.UserError as e:
        raise CopyError(f"--chown={spec.chown}: {e}") from None
    if not group and not user.isdigit():
        return who.uid, who.gid
    if not group:
        return who.uid, who.uid
    return who.uid, who.gid


# --- modes -------------------------------------------------------------------------------------

_SYMBOLIC = re.compile(r"([ugoa]*)([-+=])([rwxXst]*|[ugo])")


def apply_chmod(mode: int, chmod: int | str, is_dir: bool) -> int:
    """The mode an entry gets from `--chmod` (octal, or BSD setmode's symbolic clauses)."""
    if isinstance(chmod, int):
        return chmod
    for clause in chmod.split(","):
        who, rest = re.match(r"[ugoa]*", clause).group(0), clause  # type: ignore[union-attr]
        rest = clause[len(who):]
        mask = 0
        for ch in who or "a":
            mask |= {"u": 0o4700, "g": 0o2070, "o": 0o1007, "a": 0o7777}[ch]
        for op, perms in re.findall(r"([-+=])([rwxXstugo]*)", rest):
            bits = 0
            if perms in ("u", "g", "o"):
                src = {"u": (mode >> 6) & 7, "g": (mode >> 3) & 7, "o": mode & 7}[perms]
                bits = src << 6 | src << 3 | src
            else:
                for p in perms:
                    if p == "r":
                        bits |= 0o444
                    elif p == "w":
                        bits |= 0o222
                    elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
                        bits |= 0o111
                    elif p == "s":
                        bits |= 0o6000
                    elif p == "t":
                        bits |= 0o1000
            bits &= mask
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~mask) | bits
    return mode & 0o7777


# --- building the entry list -------------------------------------------------------------------


class CopyLayer:
    def __init__(self, spec: CopySpec, lowers: Sequence[Path]) -> None:
        self.spec = spec
        self.image = _Image(() if spec.link else lowers)
        self.owner = _owner(spec, _Image(lowers))
        self.chmod = parse_chmod(spec.chmod) if spec.chmod else None
        self.epoch = spec.source_date_epoch
        self.out: dict[str, _Out] = {}
        self.first_of_inode: dict[tuple[int, int], str] = {}
        self.tmp: Path | None = None

    def time(self, mtime: int) -> int:
        return mtime if self.epoch is None else min(mtime, self.epoch)

    def ids(self, entry: Entry | None) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        if entry is None or self.spec.from_context:
            return 0, 0
        return entry.uid, entry.gid

    def mode(self, entry_mode: int, kind: str) -> int:
        if self.chmod is None or kind == "symlink":
            return entry_mode
        return apply_chmod(entry_mode, self.chmod, kind == "dir")

    def ensure_dir(self, path: str, entry: Entry | None = None) -> str:
        """Make `path` (relative, resolved) a directory of the layer with its parents."""
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            last = i == len(parts)
            if rel in self.out and self.out[rel].kind == "dir":
                if last and entry is not None and self.out[rel].data == "made":
                    self.out[rel] = self.dir_from(entry)
                continue
            existing = None if self._under_new_dir(rel) else self.image.lookup(rel)
            if existing is not None and existing.is_dir:
                st = existing.st
                self.out[rel] = _Out("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                     self.time(int(st.st_mtime)), data="kept")
            elif existing is not None:
                raise CopyError(f"cannot copy to /{rel}: it is a file in the image, not a directory")
            elif last and entry is not None:
                self.out[rel] = self.dir_from(entry)
            else:
                uid, gid = self.owner if self.owner is not None else (0, 0)
                self.out[rel] = _Out("dir", 0o755, uid, gid, self.epoch or 0, data="made")
        return path

    def _under_new_dir(self, rel: str) -> bool:
        """Whether `rel`'s directory is one this layer makes: then the image has nothing there
        to look up (a lookup walks every layer from the root)."""
        parent = posixpath.dirname(rel)
        o = self.out.get(parent) if parent else None
        return o is not None and o.data in ("made", "copied")

    def dir_from(self, entry: Entry) -> _Out:
        uid, gid = self.ids(entry)
        return _Out("dir", self.mode(entry.mode, "dir"), uid, gid, self.time(entry.mtime), data="copied")

    def put(self, path: str, entry: Entry, root: str) -> None:
        parent = posixpath.dirname(path)
        if parent:
            self.ensure_dir(parent)
        existing = None if self._under_new_dir(path) else self.image.lookup(path)
        if entry.kind == "dir":
            self.ensure_dir(path, entry)
            return
        if existing is not None and existing.is_dir and entry.kind != "dir":
            raise CopyError(f"cannot copy {entry.rel or '.'} to /{path}: cannot replace a directory with a file")
        uid, gid = self.ids(entry)
        out = _Out(entry.kind, self.mode(entry.mode, entry.kind), uid, gid, self.time(entry.mtime),
                   linkname=entry.linkname, rdev=entry.rdev)
        if entry.kind == "file":
            first = self.first_of_inode.get(entry.ino)
            if first is not None and first != path and first in self.out:
                out.kind, out.linkname = "hardlink", first
            else:
                self.first_of_inode.setdefault(entry.ino, path)
                out.data = os.path.join(root, entry.rel)
                out.size = entry.size
        self.out[path] = out

    # --- ADD of a local archive --------------------------------------------------------------

    def extract(self, archive: str, into: str, entry: Entry) -> None:
        from buildpy.cas.compress import decompress_reader, detect

        self.ensure_dir(into)
        if self.tmp is None:
            self.tmp = Path(tempfile.mkdtemp(prefix="buildpy-add-"))
        name = entry.rel
        with open(archive, "rb") as raw:
            kind = detect(raw.read(8))
            raw.seek(0)
            reader: BinaryIO = decompress_reader(raw, kind) if kind else raw  # type: ignore[assignment]
            try:
                with tarfile.open(fileobj=reader, mode="r|") as t:
                    for n, member in enumerate(t):
                        self._member(t, member, into, name, n)
            except tarfile.TarError as e:
                raise CopyError(f"ADD {name}: not a readable archive: {e}") from None

    def _member(self, t: tarfile.TarFile, m: tarfile.TarInfo, into: str, archive: str, n: int) -> None:
        rel = _confined(m.name)
        if not rel:
            return
        path = f"{into}/{rel}" if into else rel
        uid, gid = self.owner if self.owner is not None else (m.uid, m.gid)
        mode = self.mode(m.mode & 0o7777, "dir" if m.isdir() else "file")
        mtime = self.time(int(m.mtime))
        parent = posixpath.dirname(path)
        if parent:
            self.ensure_dir(parent)
        if m.isdir():
            self.ensure_dir(path)
            self.out[path] = _Out("dir", mode, uid, gid, mtime, data="copied")
        elif m.isfile():
            dst = self.tmp / str(n)  # type: ignore[operator]
            f = t.extractfile(m)
            with open(dst, "wb") as out:
                shutil.copyfileobj(f, out, _CHUNK)  # type: ignore[misc]
            self.out[path] = _Out("file", mode, uid, gid, mtime, data=str(dst), size=m.size)
        elif m.issym():
            self.out[path] = _Out("symlink", 0o777, uid, gid, mtime, linkname=m.linkname)
        elif m.islnk():
            target = _confined(m.linkname)
            target_path = f"{into}/{target}" if into else target
            if not target or target_path not in self.out:
                raise CopyError(f"ADD {archive}: entry {m.name!r} links to {m.linkname!r}, outside what the "
                                "archive holds")
            self.out[path] = _Out("hardlink", mode, uid, gid, mtime, linkname=target_path)
        elif m.isfifo():
            self.out[path] = _Out("fifo", mode, uid, gid, mtime)
        else:
            raise CopyError(f"ADD {archive}: entry {m.name!r} is a device file, which ADD does not create")

    # --- the tar -----------------------------------------------------------------------------

    def paths(self) -> list[str]:
        return sorted(self.out, key=lambda p: p.encode("utf-8", "surrogateescape"))

    def chunks(self) -> Iterator[bytes]:
        """The layer tar."""
        for path in self.paths():
            o = self.out[path]
            ti = tarfile.TarInfo(path)
            ti.mode, ti.uid, ti.gid, ti.mtime = o.mode, o.uid, o.gid, o.mtime
            if o.kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif o.kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, o.linkname
            elif o.kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, o.linkname
            elif o.kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            elif o.kind in ("char", "block"):
                ti.type = tarfile.CHRTYPE if o.kind == "char" else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(o.rdev), os.minor(o.rdev)
            else:
                ti.size = o.size
            yield ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            if o.kind == "file":
                yield from _data(o)
        yield b"\0" * (2 * tarfile.BLOCKSIZE)

    def tar(self) -> BinaryIO:
        """The layer tar as a stream (made lazily, reproducible)."""
        return io.BufferedReader(_ChunkStream(self.chunks()), _CHUNK)  # type: ignore[return-value]

    def write_snapshot(self, root: Path) -> None:
        """The same entries written under `root` as files: the layer's snapshot, made without
        reading the tar back (root only: it sets owners). Done after the tar, not beside it:
        file creation here is several times slower while the compressors hold the cores."""
        writer = _SnapshotWriter(root)
        for path in self.paths():
            o = self.out[path]
            writer.entry(path, o)
            if o.kind == "file":
                if isinstance(o.data, bytes):
                    writer.data(o.data)
                else:
                    with open(o.data, "rb", buffering=0) as f:  # type: ignore[arg-type]
                        while chunk := f.read(_CHUNK):
                            writer.data(chunk)
        writer.close()

    def close(self) -> None:
        """Remove what extracting archives left in temp files."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


class _SnapshotWriter:
    """Writes a layer's entries as files under `root` while the tar is made: the snapshot in
    overlay form (a COPY makes no whiteouts). Needs root, for the owners; directories get their
    mode and time after what they hold is written."""

    def __init__(self, root: Path) -> None:
        self.root = os.fspath(root)
        self.fd: int | None = None
        self.left = 0
        self.dirs: list[tuple[str, _Out]] = []
        self.pending: tuple[str, _Out] | None = None

    def entry(self, path: str, o: _Out) -> None:
        self._finish_file()
        full = os.path.join(self.root, path)
        if o.kind == "dir":
            os.makedirs(full, 0o700, exist_ok=True)
            os.chown(full, o.uid, o.gid)
            self.dirs.append((full, o))
            return
        if o.kind == "file":
            self.fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self.pending = (full, o)
            self.left = o.size
            return
        if o.kind == "symlink":
            os.symlink(o.linkname, full)
        elif o.kind == "hardlink":
            os.link(os.path.join(self.root, o.linkname), full, follow_symlinks=False)
            return
        elif o.kind == "fifo":
            os.mkfifo(full, 0o600)
        else:
            kind = stat.S_IFCHR if o.kind == "char" else stat.S_IFBLK
            os.mknod(full, kind | 0o600, o.rdev)
        os.chown(full, o.uid, o.gid, follow_symlinks=False)
        if o.kind != "symlink":
            os.chmod(full, o.mode)
        os.utime(full, (o.mtime, o.mtime), follow_symlinks=False)

    def data(self, chunk: bytes) -> None:
        if self.fd is not None and self.left:
            data = chunk[: self.left]  # not the tar's padding after it
            self.left -= len(data)
            while data:
                data = data[os.write(self.fd, data):]

    def _finish_file(self) -> None:
        if self.fd is None or self.pending is None:
            return
        full, o = self.pending
        os.fchown(self.fd, o.uid, o.gid)
        os.fchmod(self.fd, o.mode)
        os.utime(self.fd, (o.mtime, o.mtime))
        os.close(self.fd)
        self.fd, self.pending = None, None

    def close(self) -> None:
        self._finish_file()
        for full, o in reversed(self.dirs):
            os.chmod(full, o.mode)
            os.utime(full, (o.mtime, o.mtime))


def _data(o: _Out) -> Iterator[bytes]:
    if not isinstance(o.data, bytes):
        yield from file_data(o.data, o.size)  # type: ignore[arg-type]
        return
    yield o.data
    if o.size % tarfile.BLOCKSIZE:
        yield b"\0" * (tarfile.BLOCKSIZE - o.size % tarfile.BLOCKSIZE)


def _confined(name: str) -> str:
    """An archive entry's name made relative and kept inside the destination (`..` stops at
    it), as containerd's RootPath resolves it."""
    parts: list[str] = []
    for p in name.replace("\\", "/").split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/".join(parts)


def _is_archive(path: str) -> bool:
    from buildpy.cas.compress import decompress_reader, detect

    try:
        with open(path, "rb") as f:
            kind = detect(f.read(8))
            f.seek(0)
            reader = decompress_reader(f, kind) if kind else f
            header = reader.read(512)
    except (OSError, ValueError, EOFError):
        return False
    except Exception:  # noqa: BLE001 - a damaged compressed stream is just not an archive
        return False
    if len(header) < 512:
        return False
    try:
        tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


# --- the entry points --------------------------------------------------------------------------


def copy_layer(selection: Selection, root: Path, spec: CopySpec, lowers: Sequence[Path]) -> CopyLayer:
    """What this COPY/ADD adds on top of the image whose snapshots are `lowers` (topmost first;
    empty for scratch or --link): its entries, to write as a tar and as a snapshot; `close` it."""
    layer = CopyLayer(spec, lowers)
    dest, as_dir = destination(spec)
    sources = {m.source for m in selection.matches}
    many = len(selection.matches) > 1
    if len(sources) > 1 and not as_dir:
        raise CopyError("When using COPY with more than one source file, the destination must be a directory "
                        "and end with a /")
    root_s = os.fspath(root)
    resolved_dest = layer.image.resolve(dest.lstrip("/"))
    existing = layer.image.lookup(resolved_dest) if resolved_dest else None
    into_dir = as_dir or many or resolved_dest == "" or (existing is not None and existing.is_dir)
    unpack = spec.unpack if spec.unpack is not None else spec.add
    if as_dir and resolved_dest:
        layer.ensure_dir(resolved_dest)  # made even when wildcards matched nothing (CreateDestPath)
    for m in selection.matches:
        base = m.entry.rel
        name = posixpath.basename(posixpath.normpath("/" + m.source)) if not re.search(r"[*?\[]", m.source) else \
            posixpath.basename(base)
        if spec.parents:
            kept = _parents_path(m.source, base)
            target_dir = posixpath.join(resolved_dest, kept) if kept else resolved_dest
            if m.entry.kind == "dir":
                layer.ensure_dir(target_dir, m.entry)
                _copy_children(layer, m.children, base, target_dir, root_s)
            else:
                layer.put(target_dir, m.entry, root_s)
            continue
        if m.entry.kind == "dir":
            layer.ensure_dir(resolved_dest, m.entry) if resolved_dest else None
            _copy_children(layer, m.children, base, resolved_dest, root_s)
            continue
        if unpack and m.entry.kind == "file" and _is_archive(os.path.join(root_s, base)):
            layer.extract(os.path.join(root_s, base), resolved_dest, m.entry)
            continue
        target = posixpath.join(resolved_dest, name) if into_dir else resolved_dest
        if not target:
            raise CopyError(f"cannot copy {m.source} to /")
        layer.put(layer.image.resolve(target) if into_dir else target, m.entry, root_s)
    return layer


def _copy_children(layer: CopyLayer, children: Sequence[Entry], base: str, target_dir: str, root: str) -> None:
    cut = len(base) + 1 if base else 0
    for child in children:
        rel = child.rel[cut:]
        path = f"{target_dir}/{rel}" if target_dir else rel
        layer.put(path, child, root)


def _parents_path(source: str, matched: str) -> str:
    """COPY --parents: the part of the matched path to keep under the destination: after a
    `/./` pivot in the source, else all of it."""
    clean = source.lstrip("/")
    if "/./" in f"/{clean}":
        pivot = f"/{clean}".index("/./")
        before = posixpath.normpath("/" + f"/{clean}"[:pivot]).lstrip("/")
        depth = len([p for p in before.split("/") if p])
        return "/".join(matched.split("/")[depth:])
    return matched


def copy_inline_layer(files: Sequence[tuple[str, bytes]], spec: CopySpec, lowers: Sequence[Path]) -> CopyLayer:
    """COPY <<EOF: each here-document becomes a file (0644, root's unless --chown)."""
    layer = CopyLayer(spec, lowers)
    dest, as_dir = destination(spec)
    if len(files) > 1 and not as_dir:
        raise CopyError("When using COPY with more than one source file, the destination must be a directory "
                        "and end with a /")
    resolved = layer.image.resolve(dest.lstrip("/"))
    existing = layer.image.lookup(resolved) if resolved else None
    into_dir = as_dir or resolved == "" or (existing is not None and existing.is_dir)
    mtime = spec.source_date_epoch or 0
    for name, data in files:
        target = posixpath.join(resolved, name) if into_dir else resolved
        parent = posixpath.dirname(target)
        if parent:
            layer.ensure_dir(parent)
        uid, gid = layer.owner if layer.owner is not None else (0, 0)
        layer.out[target] = _Out("file", layer.mode(0o644, "file"), uid, gid, mtime, data=data, size=len(data))
    return layer
