"""A build context sent as a tar (`buildpy build -` on stdin, an http tarball, the Engine API's
POST /build), unpacked with every entry checked against those before it: no path outside the
context (no absolute names, no `..`), nothing written through or over a symlink the tar made,
hard links only to a file before them, no device nodes or FIFOs. Symlinks themselves may point
anywhere (Docker's contexts hold such links; COPY copies them as links). Modes and times as the
tar has them; owners are not applied (COPY sets its own)."""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path
from typing import IO


class ContextTarError(Exception):
    """The context is not a tar archive, or holds an entry no context may hold."""

    user_facing = True


class UnsafeEntry(ContextTarError):
    """An entry of the context tar that would write outside the context, or something no
    context holds."""


def unpack(tar_file: IO[bytes], directory: Path) -> None:
    """Unpack the tar (plain or compressed) in `tar_file` into `directory` (made first)."""
    directory.mkdir(parents=True, exist_ok=True)
    check = _EntryCheck(directory)
    try:
        with tarfile.open(fileobj=tar_file, mode="r:*") as tar:
            tar.extractall(directory, filter=check)
    except UnsafeEntry:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ContextTarError(f"not a valid tar archive: {e}") from None


class _EntryCheck:
    """tarfile's extraction filter: each entry checked against those before it."""

    _KINDS = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
              tarfile.LNKTYPE, tarfile.GNUTYPE_SPARSE}

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.symlinks: set[str] = set()
        self.files: set[str] = set()

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        name = self._relative(member.name, member.name)
        if name is None:  # the context's own directory ("./")
            return None
        if member.type not in self._KINDS:
            kind = "a device node" if member.ischr() or member.isblk() else "a special file"
            raise UnsafeEntry(f"{member.name} is {kind}")
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            if "/".join(parts[:i]) in self.symlinks:
                what = "replaces" if i == len(parts) else "goes through"
                raise UnsafeEntry(f"{member.name} {what} the symlink {'/'.join(parts[:i])}")
        # as a second line: where the entry would land, symlinks on disk resolved
        landing = os.path.realpath(os.path.join(self.root, name))
        if os.path.commonpath([landing, self.root]) != self.root:
            raise UnsafeEntry(f"{member.name} would be written outside the context")
        if member.islnk():
            target = self._relative(member.linkname, member.name)
            if target is None or target not in self.files:
                raise UnsafeEntry(f"{member.name} is a hard link to {member.linkname}, not to a file before it")
            member = member.replace(linkname=target, deep=False)
        if member.issym():
            self.symlinks.add(name)
        elif member.isreg() or member.islnk():
            self.files.add(name)
        return member.replace(name=name, uid=None, gid=None, uname=None, gname=None, deep=False)

    @staticmethod
    def _relative(path: str, entry: str) -> str | None:
        if path.startswith("/"):
            raise UnsafeEntry(f"{entry} has an absolute path: {path}")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UnsafeEntry(f"{entry} leaves the context: {path}")
        return posixpath.join(*parts) if parts else None
