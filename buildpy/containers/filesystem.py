"""A container's filesystem as `docker diff`, `docker export` and `docker cp` see it: its change
over its image (`changes`), its merged root as a tar (`export`), one path's stat and tar
(`path_stat`, `archive`) and a tar extracted into it (`extract`).

The merged root. A running container's is its main process's root (`/proc/STEP/root`, volumes
and all); a stopped one's is its overlay (the image's snapshots as lowers, its own `upper/`)
mounted afresh in a private mount namespace, so that reads see overlayfs' own merge rules and
writes its copy-up. Either way the work is done by a worker process (`_worker`) that first
`chroot`s into that root: every path, every symlink met on the way, absolute or `..`, resolves
inside the container and never on the host. The worker loads all it needs before the chroot and
never looks a user or group up afterwards (NSS would load the container's libraries as root).
It needs root (chroot, mount); without root these operations are refused.

Hostile archives. `extract` checks the whole tar before writing anything: names that climb out
with `..`, names reserved for whiteouts, entries written through a symlink the archive itself
made, and (with `no_overwrite_dir_non_dir`, as the docker CLI asks) a directory replacing a
non-directory or the reverse are refused; the tar is then unpacked by `cas.unpack`, which
resolves every directory inside the extraction point on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from buildpy.cas.store import Store
from buildpy.containers import state
from buildpy.containers.state import Container, ContainerError

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_CHUNK = 1 << 16
# worker exit statuses: what went wrong, as the API answers it
_EXIT_NOT_FOUND = 3
_EXIT_BAD_REQUEST = 2
# mounts of a running container that are no part of its filesystem (never tarred into)
_PSEUDO_FS = frozenset({"proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "devtmpfs", "securityfs",
                        "debugfs", "tracefs", "bpf", "pstore", "fusectl", "configfs", "hugetlbfs"})


class PathNotFound(ContainerError):
    """The path is not in the container (the API answers 404)."""


class BadArchive(ContainerError):
    """The archive or the extraction point is refused (the API answers 400)."""


@dataclass(frozen=True)
class PathStat:
    """What Docker's X-Docker-Container-Path-Stat header carries (mode: Go's os.FileMode)."""

    name: str
    size: int
    mode: int
    mtime: str
    link_target: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "mode": self.mode, "mtime": self.mtime,
                "linkTarget": self.link_target}


# --- the change set (docker diff) ------------------------------------------------------------

MODIFIED, ADDED, DELETED = 0, 1, 2


def changes(store: Store, container: Container) -> list[tuple[str, int]]:
    """(path, kind) of each path the container changed, in the order Docker's walk gives them:
    by path, component by component."""
    from buildpy.sandbox import diff, snapshots
    from buildpy.sandbox.step import SYSTEM_TARGETS

    upper = state.directory(store, container) / "upper"
    if not upper.is_dir():
        return []
    layers, diff_ids = _layers(container)
    with store.lease(), snapshots.use(store, layers, diff_ids) as lowers:
        found = diff.upper_changes(upper, lowers, exclude=set(container.mounts) | SYSTEM_TARGETS)
        out = []
        for c in found:
            if c.source is None:
                kind = DELETED
            else:
                kind = MODIFIED if snapshots.lookup(lowers, c.path) is not None else ADDED
            out.append(("/" + c.path, kind))
    return sorted(out, key=lambda pk: [os.fsencode(p) for p in pk[0].split("/")])


def _layers(container: Container) -> tuple[list, list[str]]:
    from buildpy.cas.media import Descriptor

    return ([Descriptor.from_json(d) for d in container.extra.get("layers", [])],
            list(container.extra.get("diff_ids", [])))


# --- the merged root, through a worker -------------------------------------------------------


@contextlib.contextmanager
def _root_spec(store: Store, container: Container, step_pid: int) -> Iterator[dict[str, Any]]:
    """How the worker reaches the container's merged root, valid for the block."""
    if os.geteuid() != 0:
        raise ContainerError("reading or writing a container's files needs `buildpy serve` to run as root")
    if step_pid:
        yield {"proc_root": f"/proc/{step_pid}/root", "mounts": _mounts_of(step_pid)}
        return
    if container.status == "running":
        raise state.Conflict(f"container {container.name} is running outside this server")
    from buildpy.sandbox import snapshots

    cdir = state.directory(store, container)
    layers, diff_ids = _layers(container)
    # one worker at a time mounts a stopped container's upper dir: overlayfs wants it alone
    with store.lease(), store.lock(f"container-fs-{container.id}"), \
            snapshots.use(store, layers, diff_ids) as lowers:
        tmp = Path(tempfile.mkdtemp(dir=cdir, prefix="fs-"))
        try:
            lowers = tuple(lowers)
            if not lowers:  # FROM scratch: overlayfs wants a lowerdir
                (tmp / "empty").mkdir()
                lowers = (tmp / "empty",)
            upper = cdir / "upper"
            if not upper.is_dir():  # never started: an upper dir as the sandbox makes it
                upper.mkdir()
                top = os.lstat(lowers[0])
                os.chmod(upper, stat.S_IMODE(top.st_mode))
                os.chown(upper, top.st_uid, top.st_gid)
            if snapshots.lowerdir_size(lowers) > 3000:
                lowers = snapshots.short_lowers(lowers, tmp / "l")
            (tmp / "work").mkdir()
            (tmp / "mnt").mkdir()
            yield {"overlay": {"lowers": [str(p) for p in lowers], "upper": str(upper), "work": str(tmp / "work"),
                               "target": str(tmp / "mnt")}, "mounts": []}
        finally:
            snapshots.remove_tree(tmp)


def _mounts_of(pid: int) -> list[tuple[str, str]]:
    """(mount point inside the container, fs type) of each mount below its root."""
    out = []
    try:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                point = _unescape(fields[4])
                if point != "/":
                    out.append((point, fields[sep + 1]))
    except (OSError, ValueError):
        pass
    return out


def _unescape(text: str) -> str:
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


class _Worker:
    """A running worker: its stdout to read, its status and one-line error once it ends."""

    def __init__(self, spec: dict[str, Any], job: dict[str, Any], stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
             "from buildpy.containers.filesystem import _worker_main; _worker_main()",
             _PACKAGE_ROOT, json.dumps({"root": spec, "job": job})],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd="/")
        self._err = b""
        # stderr read aside: a worker writing much to it must not block on a full pipe
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self._err = self.proc.stderr.read()

    def finish(self, what: str, container: Container) -> None:
        """Wait for the worker; its failure as the error it stands for."""
        code = self.proc.wait()
        self._err_reader.join()
        if code == 0:
            return
        message = self._err.decode(errors="replace").strip().splitlines()
        text = message[-1] if message else f"the file worker ended with status {code}"
        if code == _EXIT_NOT_FOUND:
            raise PathNotFound(f"Could not find the file {what} in container {container.name}")
        if code == _EXIT_BAD_REQUEST:
            raise BadArchive(text)
        raise ContainerError(text)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._err_reader.join()


def path_stat(store: Store, container: Container, step_pid: int, path: str) -> PathStat:
    """The stat of `path` in the container (PathNotFound if missing)."""
    with _root_spec(store, container, step_pid) as spec:
        w = _Worker(spec, {"op": "stat", "path": path})
        try:
            assert w.proc.stdout is not None
            out = w.proc.stdout.read()
        except BaseException:
            w.kill()
            raise
        w.finish(path, container)
    return _stat_of(json.loads(out))


def _stat_of(obj: dict[str, Any]) -> PathStat:
    return PathStat(obj["name"], obj["size"], obj["mode"], obj["mtime"], obj["linkTarget"])


@contextlib.contextmanager
def archive(store: Store, container: Container, step_pid: int, path: str) -> Iterator[tuple[PathStat, Iterator[bytes]]]:
    """(stat, tar chunks) of `path` in the container: the tar holds it under its own name (or
    "." for a path ending in "/."), a directory with everything in it."""
    with _tar_worker(store, container, step_pid, {"op": "archive", "path": path}, path) as (first, chunks):
        yield _stat_of(json.loads(first)), chunks


@contextlib.contextmanager
def export(store: Store, container: Container, step_pid: int) -> Iterator[Iterator[bytes]]:
    """The container's whole filesystem as tar chunks (what `docker export` writes)."""
    with _tar_worker(store, container, step_pid, {"op": "export"}, "/") as (_, chunks):
        yield chunks


@contextlib.contextmanager
def _tar_worker(store: Store, container: Container, step_pid: int, job: dict[str, Any],
                what: str) -> Iterator[tuple[bytes, Iterator[bytes]]]:
    """A worker writing a first line (a JSON stat, or an empty line) then a tar: the line is
    read before the block starts (a missing path raises then, before any answer is sent)."""
    with _root_spec(store, container, step_pid) as spec:
        w = _Worker(spec, job)
        assert w.proc.stdout is not None
        out = w.proc.stdout
        try:
            first = out.readline()
            if not first.endswith(b"\n"):
                w.finish(what, container)
                raise ContainerError("the file worker ended before it answered")
            ended = False

            def chunks() -> Iterator[bytes]:
                nonlocal ended
                while data := out.read1(_CHUNK):
                    yield data
                ended = True

            yield first, chunks()
        except BaseException:
            w.kill()
            raise
        if not ended:  # the client left before the end: the worker's rest is not wanted
            w.kill()
            return
        w.finish(what, container)


def extract(store: Store, container: Container, step_pid: int, path: str, body: Iterable[bytes], *,
            no_overwrite_dir_non_dir: bool = False, copy_uid_gid: bool = False) -> None:
    """Extract the tar `body` (maybe compressed) into the directory `path` of the container."""
    job = {"op": "extract", "path": path, "no_overwrite_dir_non_dir": no_overwrite_dir_non_dir,
           "copy_uid_gid": copy_uid_gid}
    with _root_spec(store, container, step_pid) as spec:
        w = _Worker(spec, job, stdin=True)
        assert w.proc.stdin is not None
        try:
            try:
                for data in body:
                    w.proc.stdin.write(data)
                w.proc.stdin.close()
            except BrokenPipeError:
                pass  # the worker refused before reading it all: its status says why
            if w.proc.stdout is not None:
                w.proc.stdout.read()
        except BaseException:
            w.kill()
            raise
        w.finish(path, container)


# --- the worker (a process of its own, chrooted into the container's root) --------------------

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _worker_main() -> None:
    arg = json.loads(sys.argv[2])
    try:
        _worker(arg["root"], arg["job"])
    except _Exit as e:
        print(f"{e}", file=sys.stderr)
        sys.exit(e.code)
    except Exception as e:  # noqa: BLE001 - one line for the client, never a traceback
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        name = f" {e.filename}" if isinstance(e, OSError) and e.filename else ""
        print(f"{detail}{':' + name if name else ''}", file=sys.stderr)
        sys.exit(1)


def _worker(root: dict[str, Any], job: dict[str, Any]) -> None:
    # everything used after the chroot is loaded before it: the container's files are not ours
    import bz2  # noqa: F401 - tarfile's decompressors, imported lazily by it
    import gzip  # noqa: F401
    import lzma  # noqa: F401
    import tarfile
    import zlib  # noqa: F401

    from buildpy.cas import unpack
    from buildpy.sandbox import diff
    from buildpy.sandbox.init import seal_imports

    tarfile.TarInfo("é").tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")  # the PAX codecs
    spool = tempfile.TemporaryFile() if job["op"] == "extract" else None  # noqa: SIM115
    rewritten = tempfile.TemporaryFile() if job["op"] == "extract" else None  # noqa: SIM115
    if "overlay" in root:
        _mount_private_overlay(root["overlay"])
        top = root["overlay"]["target"]
    else:
        top = root["proc_root"]
    os.chroot(top)
    os.chdir("/")
    seal_imports()
    skip = {p for p, _ in root["mounts"]}
    pseudo = {p for p, fstype in root["mounts"] if fstype in _PSEUDO_FS}
    op = job["op"]
    out = sys.stdout.buffer
    if op == "stat":
        target, _ = _resolve(job["path"])
        out.write(json.dumps(_stat_json(target)).encode())
    elif op == "archive":
        target, arcname = _resolve(job["path"])
        out.write(json.dumps(_stat_json(target)).encode() + b"\n")
        out.flush()
        _write_tar(out, diff, target, arcname, pseudo)
    elif op == "export":
        out.write(b"\n")
        out.flush()
        _write_tar(out, diff, "/", "", skip)
    elif op == "extract":
        assert spool is not None and rewritten is not None
        _extract(job, spool, rewritten, tarfile, unpack)
    else:
        raise _Exit(1, f"unknown operation {op!r}")
    out.flush()


def _mount_private_overlay(ov: dict[str, Any]) -> None:
    import ctypes

    from buildpy.sandbox import syscalls as sc
    from buildpy.sandbox.rootfs import mount_overlay

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    sc.mount(None, "/", None, MS_REC | MS_PRIVATE)  # our mount never reaches the host's namespace
    mount_overlay(ov["target"], list(ov["lowers"]), ov["upper"], ov["work"])


def _resolve(path: str) -> tuple[str, str]:
    """(real path, name in the tar) for a path Docker's way: every component but the last
    resolved (inside the chroot, so inside the container); the last followed only when the
    path ends with "/" or "/."."""
    if not path.startswith("/"):
        path = "/" + path
    contents = path.endswith("/.") or path == "/"
    follow = contents or path.endswith("/")
    clean = os.path.normpath(path)
    if follow:
        real = os.path.realpath(clean)
    else:
        parent, base = os.path.split(clean)
        real = os.path.join(os.path.realpath(parent), base)
    try:
        st = os.lstat(real)
    except OSError:
        raise _Exit(_EXIT_NOT_FOUND, f"no such file: {path}") from None
    if follow and not stat.S_ISDIR(st.st_mode):
        raise _Exit(_EXIT_BAD_REQUEST, f"{path} is not a directory")
    return real, "." if contents else os.path.basename(clean)


def _stat_json(real: str) -> dict[str, Any]:
    st = os.lstat(real)
    link = os.path.realpath(real) if stat.S_ISLNK(st.st_mode) else ""
    when = datetime.fromtimestamp(st.st_mtime_ns // 1_000_000_000, timezone.utc)
    mtime = when.strftime("%Y-%m-%dT%H:%M:%S") + f".{st.st_mtime_ns % 1_000_000_000:09d}Z"
    return {"name": os.path.basename(real) or "/", "size": st.st_size, "mode": go_file_mode(st.st_mode),
            "mtime": mtime, "linkTarget": link}


def go_file_mode(mode: int) -> int:
    """A stat mode as Go's os.FileMode (what the docker CLI decodes)."""
    out = stat.S_IMODE(mode) & 0o777
    kind = stat.S_IFMT(mode)
    out |= {stat.S_IFDIR: 1 << 31, stat.S_IFLNK: 1 << 27, stat.S_IFIFO: 1 << 25, stat.S_IFSOCK: 1 << 24,
            stat.S_IFBLK: 1 << 26, stat.S_IFCHR: (1 << 26) | (1 << 21)}.get(kind, 0)
    if mode & stat.S_ISUID:
        out |= 1 << 23
    if mode & stat.S_ISGID:
        out |= 1 << 22
    if mode & stat.S_ISVTX:
        out |= 1 << 20
    return out


def _write_tar(out: IO[bytes], diff: Any, real: str, arcname: str, skip: set[str]) -> None:
    """The tree at `real` as a tar named `arcname` ("" for the root itself: its children only),
    symlinks never followed; the mount points in `skip` only as themselves."""

    def entries() -> Iterator[Any]:
        stack = [(real, arcname)]
        while stack:
            path, name = stack.pop()
            if name:
                yield diff.Change(name, Path(path))
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or (path in skip and path != real):
                continue
            with os.scandir(path) as it:
                names = sorted(e.name for e in it)
            for child in reversed(names):
                stack.append((os.path.join(path, child), f"{name}/{child}" if name else child))

    for data in diff.iter_tar(entries()):
        out.write(data)


def _extract(job: dict[str, Any], spool: IO[bytes], rewritten: IO[bytes], tarfile: Any, unpack: Any) -> None:
    path = job["path"] if job["path"].startswith("/") else "/" + job["path"]
    dest = os.path.realpath(path)
    try:
        st = os.stat(dest)
    except OSError:
        raise _Exit(_EXIT_NOT_FOUND, f"no such directory: {path}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _Exit(_EXIT_BAD_REQUEST, f"extraction point is not a directory: {path}")
    shutil.copyfileobj(sys.stdin.buffer, spool, _CHUNK)
    spool.seek(0)
    made_links: set[tuple[str, ...]] = set()
    try:
        with tarfile.open(fileobj=spool, mode="r|*") as src, \
                tarfile.open(fileobj=rewritten, mode="w|", format=tarfile.PAX_FORMAT) as dst:
            for ti in src:
                parts = unpack.clean_name(ti.name)
                if parts is None:
                    raise _Exit(_EXIT_BAD_REQUEST, f"the archive's entry {ti.name!r} climbs out of {path} with '..'")
                if any(p.startswith(".wh.") for p in parts):
                    raise _Exit(_EXIT_BAD_REQUEST, f"the archive's entry {ti.name!r}: names starting with .wh. "
                                                   "are reserved for whiteouts")
                for i in range(1, len(parts)):
                    if tuple(parts[:i]) in made_links:
                        raise _Exit(_EXIT_BAD_REQUEST, f"the archive's entry {ti.name!r} is written through the "
                                                       f"symlink {'/'.join(parts[:i])!r} the archive itself made")
                if ti.issym():
                    made_links.add(tuple(parts))
                if ti.islnk() and unpack.clean_name(ti.linkname) is None:
                    raise _Exit(_EXIT_BAD_REQUEST, f"the archive's hardlink {ti.name!r} points out of {path}")
                if job["no_overwrite_dir_non_dir"] and parts:
                    _check_overwrite(os.path.join(dest, *parts), ti)
                if not job["copy_uid_gid"]:  # as Docker: the files are the container's root's
                    ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                dst.addfile(ti, src.extractfile(ti) if ti.isreg() else None)
    except tarfile.TarError as e:
        raise _Exit(_EXIT_BAD_REQUEST, f"the archive is not a valid tar: {e}") from None
    rewritten.seek(0)
    try:
        unpack.unpack_layer(rewritten, Path(dest), privileged=True, where="the archive")
    except unpack.LayerError as e:
        raise _Exit(_EXIT_BAD_REQUEST, str(e)) from None


def _check_overwrite(target: str, ti: Any) -> None:
    try:
        st = os.lstat(target)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode) and not ti.isdir():
        raise _Exit(_EXIT_BAD_REQUEST, f"cannot overwrite directory {target!r} with non-directory {ti.name!r}")
    if not stat.S_ISDIR(st.st_mode) and ti.isdir():
        raise _Exit(_EXIT_BAD_REQUEST, f"cannot overwrite non-directory {target!r} with directory {ti.name!r}")
