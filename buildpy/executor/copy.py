"""COPY and ADD as a layer tar written straight from the sources, with no sandbox: BuildKit's
copy rules (tonistiigi/fsutil's copy, moby/go-archive's untar for ADD) applied to a `Selection`,
the destination image's tree looked up through its snapshots (`lowers`) where the rules depend
on it. The same entries also write the layer's snapshot (`CopyLayer.write_snapshot`).

- Destination: relative to WORKDIR; a trailing `/` makes it a directory, and several sources
  (or a wildcard matching several) need one; a path that is a directory in the image (its
  symlinks followed inside the image) is one too. A file copied into a directory replaces a
  symlink of that name; a file copied to a path that is a symlink writes through it.
- A directory source copies its contents. The destination directory keeps its metadata when it
  exists, else is made as a missing parent is; it takes the source directory's mtime.
  Directories below it take the source's metadata even when the image has them.
- Missing parents are made 0755 (with an octal `--chmod`, that mode's permission bits, as
  fsutil's MkdirAll), owned by the `--chown` user (root otherwise); existing ones are written
  with the image's metadata.
- Owners: from the context 0:0 (the docker client resets them), from a stage or image kept;
  `--chown` (names from the image's /etc/passwd and /etc/group) overrides. `--chmod` (octal,
  or BSD setmode's symbolic clauses) applies to every copied entry but symlinks.
- Symlinks are copied as symlinks; files that were hardlinks within one source stay hardlinks.
- ADD extracts a local tar (plain, gzip, bzip2, xz, zstd: by content, not name) into the
  destination with the archive's own owners and modes (`--chown` applies, `--chmod` does not);
  names are cleaned and kept inside the destination (symlinks on the way resolved inside it),
  a name or hardlink that climbs out, a device file or a whiteout name is refused.
- mtimes kept (whole seconds), clamped to SOURCE_DATE_EPOCH; what BuildKit stamps with the
  current time (made directories, here-documents) gets the epoch, or 0, so the same inputs give
  the same layer.
"""

from __future__ import annotations

import bz2
import io
import lzma
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
from buildpy.planner.context import Entry, Selection, resolve_scoped
from buildpy.sandbox import snapshots
from buildpy.sandbox.diff import _ChunkStream, file_data

_CHUNK = 1 << 20
_WILD = re.compile(r"[*?\[]")
_WHITEOUT_PREFIX = ".wh."


class CopyError(Exception):
    """A COPY/ADD that cannot be done as asked: one line."""

    user_facing = True


@dataclass(frozen=True)
class CopySpec:
    dest: str  # as written after expansion (may be relative, may end with "/")
    workdir: str = "/"  # the stage's WORKDIR (absolute), for a relative dest
    chown: str = ""  # "" | "user" | "user:group" | "uid:gid"
    chmod: str = ""  # "" | octal | symbolic
    link: bool = False  # --link: the destination image is not looked at
    parents: bool = False  # COPY --parents
    add: bool = False  # ADD: local archives are extracted
    unpack: bool | None = None  # ADD --unpack overrides the default
    from_context: bool = True  # context files are 0:0 unless --chown; a stage's keep their ids
    source_date_epoch: int | None = None  # mtimes clamped to it


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
    # dirs: "made" (a missing parent), "kept" (the image's, as it is), "copied" (from a source;
    # the image has none there), "over" (from a source, over the image's)
    origin: str = "copied"
    inode: tuple[object, ...] | None = None  # files sharing one are hardlinks in the layer


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
        if not self.lowers:
            return None
        entry = self.lookup(self.resolve(rel))
        if entry is None or not stat.S_ISREG(entry.st.st_mode):
            return None
        return entry.path.read_text(errors="replace")


def _owner(spec: CopySpec, image: _Image) -> tuple[int, int] | None:
    """--chown as ids: a number alone is uid and gid (BuildKit's ByID); a name brings its
    passwd gid unless a group is given."""
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
    if not group and user.isdigit():
        return who.uid, who.uid
    return who.uid, who.gid


# --- modes -------------------------------------------------------------------------------------

_ISUID, _ISGID, _ISTXT = 0o4000, 0o2000, 0o1000
_STANDARD = _ISUID | _ISGID | 0o777  # BSD's STANDARD_BITS: no sticky bit
_UBITS, _GBITS, _OBITS, _SET, _CLEAR = 1, 2, 4, 8, 16


def _setmode(text: str) -> tuple[tuple[str, int, int], ...]:
    """BSD setmode(3) with a zero umask (what BuildKit's dchapes-mode does): the symbolic mode
    as commands (op, copy flags, bits). ValueError on bad syntax."""
    cmds: list[tuple[str, int, int]] = []
    mask = 0o177777

    def add(op: str, who: int, arg: int | str) -> None:
        if op == "=":
            cmds.append(("-", 0, who or _STANDARD))
            op = "+"
        if op in "+-X":
            assert isinstance(arg, int)
            cmds.append((op, 0, (who if who else mask) & arg))
            return
        flags = {"+": _SET, "-": _CLEAR, "=": _SET | _CLEAR}[str(arg)]
        if who:
            flags |= (_UBITS if who & 0o400 else 0) | (_GBITS if who & 0o040 else 0) | (_OBITS if who & 0o004 else 0)
            cmds.append((op, flags, 0o177777))
        else:
            cmds.append((op, flags | _UBITS | _GBITS | _OBITS, mask))

    s, i = text, 0
    while True:
        who = 0
        while True:
            if i >= len(s):
                raise ValueError(text)
            ch = s[i]
            if ch == "a":
                who |= _STANDARD
            elif ch == "u":
                who |= _ISUID | 0o700
            elif ch == "g":
                who |= _ISGID | 0o070
            elif ch == "o":
                who |= 0o007
            else:
                break
            i += 1
        equal_done = False
        while True:  # one operator and its permissions ("u+r-w" has two)
            if i >= len(s) or s[i] not in "+-=":
                raise ValueError(text)
            op = s[i]
            i += 1
            if op == "=":
                equal_done = False
            who &= ~_ISTXT
            perm = perm_x = 0
            while True:
                ch = s[i] if i < len(s) else ""
                if ch == "r":
                    perm |= 0o444
                elif ch == "w":
                    perm |= 0o222
                elif ch == "x":
                    perm |= 0o111
                elif ch == "X":
                    if op == "-":
                        perm |= 0o111
                    else:
                        perm_x = 0o111
                elif ch == "s":
                    if who == 0 or who & ~0o007:  # "o" alone has no set-id bits
                        perm |= _ISUID | _ISGID
                elif ch == "t":
                    if who == 0 or who & ~0o007:
                        who |= _ISTXT
                        perm |= _ISTXT
                elif ch and ch in "ugo":
                    if perm:
                        add(op, who, perm)
                        perm = 0
                    if op == "=":
                        equal_done = True
                    if perm_x:
                        add("X", who, perm_x)
                        perm_x = 0
                    add(ch, who, op)
                else:
                    if perm or (op == "=" and not equal_done):
                        if op == "=":
                            equal_done = True
                        add(op, who, perm)
                    if perm_x:
                        add("X", who, perm_x)
                    break
                i += 1
            if i >= len(s) or s[i] == ",":
                break
        if i >= len(s):
            return tuple(cmds)
        i += 1  # the comma


def apply_chmod(mode: int, chmod: int | str, is_dir: bool) -> int:
    """The mode an entry gets from `--chmod`: an octal mode replaces it; a symbolic one is
    applied to it as chmod(1) does (`X` looks at the entry's mode before the change)."""
    if isinstance(chmod, int):
        return chmod & 0o7777
    old = new = mode & 0o7777
    for op, flags, bits in _setmode(chmod):
        if op in "ugo":
            value = {"u": (new >> 6) & 7, "g": (new >> 3) & 7, "o": new & 7}[op]
            if flags & _CLEAR:
                clear = 0o7 if flags & _SET else value
                for flag, shift in ((_UBITS, 6), (_GBITS, 3), (_OBITS, 0)):
                    if flags & flag:
                        new &= ~((clear << shift) & bits)
            if flags & _SET:
                for flag, shift in ((_UBITS, 6), (_GBITS, 3), (_OBITS, 0)):
                    if flags & flag:
                        new |= (value << shift) & bits
        elif op == "+":
            new |= bits
        elif op == "-":
            new &= ~bits
        elif old & 0o111 or is_dir:  # "X"
            new |= bits
    return new & 0o7777


# --- the entries -------------------------------------------------------------------------------


def _sort_key(path: str) -> tuple[bytes, ...]:
    # component by component, as a directory walk (and BuildKit's differ) orders a layer
    return tuple(os.fsencode(p) for p in path.split("/"))


class CopyLayer:
    """What one COPY/ADD writes: its entries by path, turned into a tar (`tar`) and a snapshot
    (`write_snapshot`); `close` removes what extracting archives left in temp files."""

    def __init__(self, spec: CopySpec, lowers: Sequence[Path]) -> None:
        self.spec = spec
        self.chmod = _parse_chmod(spec.chmod) if spec.chmod else None
        # --link copies onto nothing, but BuildKit does not link a copy that has --chmod
        self.image = _Image(() if spec.link and self.chmod is None else lowers)
        self.owner = _owner(spec, _Image(lowers))
        self.epoch = spec.source_date_epoch
        self.out: dict[str, _Out] = {}
        self.tmp: Path | None = None

    # --- metadata ------------------------------------------------------------------------

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

    def made_mode(self) -> int:
        # fsutil makes missing directories with the octal --chmod as their permission (Go's
        # os.Mkdir drops the set-id and sticky bits of a plain number); 0755 otherwise
        return self.chmod & 0o777 if isinstance(self.chmod, int) else 0o755

    # --- the tree as this layer leaves it ------------------------------------------------

    def _under_new_dir(self, rel: str) -> bool:
        """Whether `rel`'s directory is one this layer makes: then the image has nothing there
        to look up (a lookup walks every layer from the root)."""
        parent = posixpath.dirname(rel)
        o = self.out.get(parent) if parent else None
        return o is not None and o.kind == "dir" and o.origin in ("made", "copied")

    def _image_at(self, rel: str) -> snapshots.StackEntry | None:
        return None if self._under_new_dir(rel) else self.image.lookup(rel)

    def _kind_at(self, rel: str) -> tuple[str, str]:
        """What is at `rel` once this layer is applied, for `resolve_scoped`."""
        o = self.out.get(rel)
        if o is not None:
            if o.kind == "symlink":
                return "link", o.linkname
            return ("dir" if o.kind == "dir" else "other"), ""
        entry = self._image_at(rel)
        if entry is None:
            return "", ""
        if stat.S_ISLNK(entry.st.st_mode):
            return "link", os.readlink(entry.path)
        return ("dir" if entry.is_dir else "other"), ""

    def ensure_dir(self, path: str, *, owner: tuple[int, int] | None = None, mode: int | None = None) -> None:
        """Make `path` (relative, its symlinks resolved) a directory with its parents: existing
        ones kept as they are, missing ones made (MkdirAll's mode and owner unless given)."""
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            o = self.out.get(rel)
            if o is not None:
                if o.kind != "dir":
                    raise CopyError(f"cannot copy to non-directory: /{rel}")
                continue
            existing = self._image_at(rel)
            if existing is not None and existing.is_dir:
                st = existing.st
                self.out[rel] = _Out("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                     self.time(int(st.st_mtime)), origin="kept")
            elif existing is not None:
                raise CopyError(f"cannot copy to non-directory: /{rel}")
            else:
                uid, gid = owner if owner is not None else self.owner if self.owner is not None else (0, 0)
                self.out[rel] = _Out("dir", self.made_mode() if mode is None else mode, uid, gid,
                                     self.epoch or 0, origin="made")

    def top_dir(self, path: str, mtime: int) -> None:
        """The destination of a directory's contents: made if missing, metadata kept if not,
        and the source directory's mtime (fsutil restores it after the copy)."""
        self.ensure_dir(path)
        if path:
            self.out[path].mtime = self.time(mtime)

    def copy_dir(self, path: str, entry: Entry) -> None:
        """A directory below a copied one: it takes the source's owner, mode and mtime, whether
        or not the image has it (fsutil's copy overwrites a target directory's metadata)."""
        parent = posixpath.dirname(path)
        if parent:
            self.ensure_dir(parent)
        o = self.out.get(path)
        existing = self._image_at(path) if o is None else None
        if (o is not None and o.kind != "dir") or (existing is not None and not existing.is_dir):
            raise CopyError(f"cannot copy to non-directory: /{path}")
        uid, gid = self.ids(entry)
        self.out[path] = _Out("dir", self.mode(entry.mode, "dir"), uid, gid, self.time(entry.mtime),
                              origin=self._dir_origin(o, existing))

    def _dir_origin(self, o: _Out | None, existing: snapshots.StackEntry | None) -> str:
        """A directory written from a source: over the image's, or where the image has none."""
        if o is not None:
            return "over" if o.origin in ("kept", "over") else "copied"
        return "over" if existing is not None and existing.is_dir else "copied"

    def pass_dir(self, path: str, entry: Entry | None) -> None:
        """A directory --parents passes on the way to what it copies: made from the source's
        (fsutil's createParentDirs); one that exists only takes the source's mode."""
        parent = posixpath.dirname(path)
        if parent:
            self.ensure_dir(parent)
        if entry is None:
            self.ensure_dir(path)
            return
        o = self.out.get(path)
        existing = self._image_at(path) if o is None else None
        if o is None and existing is None:
            self.copy_dir(path, entry)
            return
        self.ensure_dir(path)
        self.out[path].mode = entry.mode

    def put(self, path: str, entry: Entry, root: str, inode_scope: int) -> None:
        """A non-directory at `path` (which must not be a directory)."""
        if not path:
            raise CopyError(f"cannot copy {entry.rel or '.'} to /")
        parent = posixpath.dirname(path)
        if parent:
            self.ensure_dir(parent)
        o = self.out.get(path)
        existing = self._image_at(path) if o is None else None
        if (o is not None and o.kind == "dir") or (existing is not None and existing.is_dir):
            raise CopyError(f"cannot replace to directory /{path} with file")
        uid, gid = self.ids(entry)
        out = _Out(entry.kind, self.mode(entry.mode, entry.kind), uid, gid, self.time(entry.mtime),
                   linkname=entry.linkname, rdev=entry.rdev)
        if entry.kind == "file":
            out.data = os.path.join(root, entry.rel)
            out.size = entry.size
            # fsutil keeps hardlinks within one copy (one source), by inode
            out.inode = (inode_scope, *entry.ino) if entry.ino != (0, 0) else None
        self.out[path] = out

    def _drop_below(self, path: str) -> None:
        prefix = path + "/"
        for p in [p for p in self.out if p.startswith(prefix)]:
            del self.out[p]

    # --- ADD of a local archive ------------------------------------------------------------

    def extract(self, archive: str, into: str, name: str) -> None:
        """Untar `archive` (a host path) into `into`, as go-archive's Untar does for BuildKit."""
        self.ensure_dir(into, mode=0o755)  # BuildKit's unpack makes it 0755 whatever --chmod says
        if self.tmp is None:
            self.tmp = Path(tempfile.mkdtemp(prefix="buildpy-add-"))
        # cas.unpack's strict pieces: bounded special headers, damage reported, not taken for the end
        from buildpy.cas.unpack import _ForwardReader, _Header, _Malformed, _StreamError

        with open(archive, "rb") as raw:
            reader = _ForwardReader(_decompressed(raw))
            try:
                with tarfile.open(fileobj=reader, mode="r|", tarinfo=_Header) as t:  # type: ignore[call-overload]
                    for n, member in enumerate(t):
                        self._member(t, member, into, name, n)
            except (tarfile.TarError, _Malformed, _StreamError) as e:
                raise CopyError(f"ADD {name}: not a readable archive: {e}") from None

    def _member(self, t: tarfile.TarFile, m: tarfile.TarInfo, into: str, archive: str, n: int) -> None:
        rel = _archive_name(m.name)
        if rel is None:
            raise CopyError(f"ADD {archive}: entry {m.name!r} points outside the destination")
        if not rel:
            return  # "." is the destination itself: left as it is
        if posixpath.basename(rel).startswith(_WHITEOUT_PREFIX):
            raise CopyError(f"ADD {archive}: entry {m.name!r} has a whiteout name, which a layer cannot hold")
        if m.ischr() or m.isblk():
            raise CopyError(f"ADD {archive}: entry {m.name!r} is a device file, which ADD does not create")
        path = self._in_archive_dir(rel, into, archive, m.name)
        uid, gid = self.owner if self.owner is not None else (m.uid, m.gid)
        mode = m.mode & 0o7777  # --chmod is not applied to what an archive holds
        mtime = self.time(int(m.mtime))
        o = self.out.get(path)
        if m.isdir():
            if o is not None and o.kind != "dir":
                del self.out[path]
                o = None
            existing = self._image_at(path) if o is None else None
            self.out[path] = _Out("dir", mode, uid, gid, mtime, origin=self._dir_origin(o, existing))
            return
        if o is not None and o.kind == "dir":
            self._drop_below(path)  # go-archive removes what is there, directories too
        if m.isfile():
            dst = self.tmp / str(n)  # type: ignore[operator]
            f = t.extractfile(m)
            with open(dst, "wb") as out:
                shutil.copyfileobj(f, out, _CHUNK)  # type: ignore[misc]
            self.out[path] = _Out("file", mode, uid, gid, mtime, data=str(dst), size=m.size)
        elif m.issym():
            self.out[path] = _Out("symlink", 0o777, uid, gid, mtime, linkname=m.linkname)
        elif m.islnk():
            target = _archive_name(m.linkname.lstrip("/"))
            target_path = posixpath.join(into, target) if target else ""
            first = self.out.get(target_path) if target_path else None
            if first is None or first.kind in ("dir", "hardlink"):
                raise CopyError(f"ADD {archive}: entry {m.name!r} links to {m.linkname!r}, outside what the "
                                "archive holds")
            if first.inode is None:
                first.inode = ("archive", archive, target_path)
            self.out[path] = _Out(first.kind, first.mode, first.uid, first.gid, first.mtime, first.linkname,
                                  first.rdev, first.data, first.size, inode=first.inode)
        elif m.isfifo():
            self.out[path] = _Out("fifo", mode, uid, gid, mtime)
        else:
            raise CopyError(f"ADD {archive}: entry {m.name!r} has a type ADD does not create")

    def _in_archive_dir(self, rel: str, into: str, archive: str, name: str) -> str:
        """Where entry `rel` lands: its directory resolved inside the destination (a symlink on
        the way, from the archive or the image, is followed as if the destination were `/`,
        as os.Root does for go-archive), the directories it implies made 0755 and root's."""
        parent, _, base = rel.rpartition("/")
        if parent:
            def kind(sub: str) -> tuple[str, str]:
                return self._kind_at(posixpath.join(into, sub) if into else sub)

            try:
                parent = resolve_scoped(parent, kind) or ""
            except RecursionError:
                raise CopyError(f"ADD {archive}: entry {name!r}: too many levels of symbolic links") from None
        where = posixpath.join(into, parent) if parent else into
        if where:
            self.ensure_dir(where, owner=(0, 0), mode=0o755)
        return posixpath.join(where, base) if where else base

    # --- the tar -----------------------------------------------------------------------------

    def entries(self) -> list[tuple[str, _Out]]:
        """The entries in layer order, parents first; of the files sharing an inode the first
        holds the data and the others are hardlinks to it."""
        out: list[tuple[str, _Out]] = []
        first: dict[tuple[object, ...], str] = {}
        for path in sorted(self.out, key=_sort_key):
            o = self.out[path]
            if o.inode is not None and o.kind == "file":
                if o.inode in first:
                    o = _Out("hardlink", o.mode, o.uid, o.gid, o.mtime, linkname=first[o.inode])
                else:
                    first[o.inode] = path
            out.append((path, o))
        return out

    def chunks(self) -> Iterator[bytes]:
        """The layer tar."""
        for path, o in self.entries():
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
        for path, o in self.entries():
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

    def __enter__(self) -> CopyLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def _parse_chmod(text: str) -> int | str:
    try:
        mode = parse_chmod(text)
        if isinstance(mode, str):
            _setmode(mode)
    except ValueError as e:
        raise CopyError(str(e) if str(e) != text else f"invalid chmod parameter: '{text}'") from None
    return mode


# --- archives ------------------------------------------------------------------------------------


def _archive_name(name: str) -> str | None:
    """An archive entry's name as go-archive takes it: a leading `/` dropped, cleaned; None
    when its `..` climbs above the destination; "" for the destination itself."""
    from buildpy.cas.unpack import clean_name

    parts = clean_name(name)
    return None if parts is None else "/".join(parts)


def _decompressed(f: BinaryIO) -> BinaryIO:
    """`f` uncompressed, by its first bytes (gzip, bzip2, xz, zstd), as go-archive's
    DecompressStream reads it."""
    from buildpy.cas.compress import decompress_reader, detect

    head = f.read(8)
    f.seek(0)
    if head[:3] == b"BZh":
        return bz2.BZ2File(f)  # type: ignore[return-value]
    if head[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(f)  # type: ignore[return-value]
    kind = detect(head)
    return decompress_reader(f, kind) if kind else f


def _is_archive(path: str) -> bool:
    """Whether the file at `path` is a tar (perhaps compressed): its first header reads."""
    try:
        with open(path, "rb") as f:
            header = _decompressed(f).read(tarfile.BLOCKSIZE)
    except Exception:  # noqa: BLE001 - a damaged compressed stream is just not an archive
        return False
    if len(header) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


# --- the entry points --------------------------------------------------------------------------


def copy_layer(selection: Selection, root: Path, spec: CopySpec, lowers: Sequence[Path]) -> CopyLayer:
    """What this COPY/ADD adds on top of the image whose snapshots are `lowers` (topmost first;
    empty for scratch): its entries, to write as a tar (`.tar()`, reproducible) and as a
    snapshot; `close` it. `root` is the directory the selection's rels are relative to."""
    layer = CopyLayer(spec, lowers)
    try:
        _copy(layer, selection, os.fspath(root), spec)
    except BaseException:
        layer.close()
        raise
    return layer


def _copy(layer: CopyLayer, selection: Selection, root: str, spec: CopySpec) -> None:
    dest, as_dir = destination(spec)
    sources = list(dict.fromkeys(m.source for m in selection.matches))
    if (len(selection.matches) > 1 or len(sources) > 1) and not as_dir:
        raise CopyError("When using COPY with more than one source file, the destination must be a directory "
                        "and end with a /")
    resolved = layer.image.resolve(dest.lstrip("/"))
    existing = layer.image.lookup(resolved) if resolved else None
    into_dir = as_dir or resolved == "" or (existing is not None and existing.is_dir)
    unpack = spec.unpack if spec.unpack is not None else spec.add
    for m in selection.matches:
        scope = sources.index(m.source)
        if spec.parents:
            _copy_parents(layer, m.source, m.entry, m.children, resolved, root, scope)
            continue
        if unpack and m.entry.kind == "file" and _is_archive(os.path.join(root, m.entry.rel)):
            # BuildKit's unpack runs before (and instead of) fsutil's Copy
            layer.extract(os.path.join(root, m.entry.rel), resolved, m.source)
            continue
        if as_dir and resolved:
            layer.ensure_dir(resolved)  # fsutil's Copy makes "dest/" first
        if m.entry.kind == "dir":
            layer.top_dir(resolved, m.entry.mtime)
            _copy_children(layer, m.children, m.entry.rel, resolved, root, scope)
            continue
        if _WILD.search(m.source):
            name = posixpath.basename(m.entry.rel)
        else:
            name = posixpath.basename(posixpath.normpath("/" + m.source))
        # into a directory the name is not resolved: a symlink there is replaced (fsutil
        # removes the target); a destination written as a file was resolved, links and all
        layer.put(posixpath.join(resolved, name) if into_dir else resolved, m.entry, root, scope)


def _copy_children(layer: CopyLayer, children: Sequence[Entry], base: str, target_dir: str, root: str,
                   scope: int) -> None:
    cut = len(base) + 1 if base else 0
    for child in children:
        rel = child.rel[cut:]
        path = f"{target_dir}/{rel}" if target_dir else rel
        if child.kind == "dir":
            layer.copy_dir(path, child)
        else:
            layer.put(path, child, root, scope)


def _copy_parents(layer: CopyLayer, source: str, entry: Entry, children: Sequence[Entry], dest: str,
                  root: str, scope: int) -> None:
    """COPY --parents, as BuildKit converts it: the directory before a `/./` in the source (the
    context's root without one) is copied into the destination, with only the paths the rest of
    the source names: what it matched keeps its path below that directory."""
    parent, pivot, pattern = source.partition("/./")
    if not pivot:
        parent, pattern = "", source
    base = posixpath.normpath("/" + parent).lstrip("/")
    if not _WILD.search(pattern):
        kept = posixpath.normpath("/" + pattern).lstrip("/")
    elif base and entry.rel.startswith(base + "/"):
        kept = entry.rel[len(base) + 1:]
    else:
        kept = entry.rel.split("/", base.count("/") + 1)[-1] if base else entry.rel
    # the source's own directory (before the kept part), as the symlinks on the way resolved
    top = entry.rel[: -len(kept)].rstrip("/") if kept and entry.rel.endswith(kept) else base
    layer.top_dir(dest, _mtime(root, top))
    parts = kept.split("/") if kept else []
    for i in range(1, len(parts)):
        sub = "/".join(parts[:i])
        layer.pass_dir(posixpath.join(dest, sub), _dir_entry(root, posixpath.join(top, sub)))
    target = posixpath.join(dest, kept) if kept else dest
    if entry.kind == "dir":
        if kept:
            layer.copy_dir(target, entry)
        _copy_children(layer, children, entry.rel, target, root, scope)
    else:
        layer.put(target, entry, root, scope)


def _mtime(root: str, rel: str) -> int:
    try:
        return int(os.lstat(os.path.join(root, rel)).st_mtime)
    except OSError:
        return 0


def _dir_entry(root: str, rel: str) -> Entry | None:
    try:
        st = os.lstat(os.path.join(root, rel))
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    return Entry(rel, "dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, 0, int(st.st_mtime))


def copy_inline_layer(files: Sequence[tuple[str, bytes]], spec: CopySpec, lowers: Sequence[Path]) -> CopyLayer:
    """COPY <<EOF: each here-document becomes a file named after its delimiter (0644 before
    --chmod, root's unless --chown; BuildKit stamps it with the current time, this the epoch or 0)."""
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
        if as_dir and resolved:
            layer.ensure_dir(resolved)
        entry = Entry(name, "file", 0o644, 0, 0, len(data), mtime)
        target = posixpath.join(resolved, posixpath.basename(name)) if into_dir else resolved
        layer.put(target, entry, "", -1)
        o = layer.out[target]
        o.data, o.inode = data, None
    return layer
