"""The build context of a POST /build: a tar (plain, gzip, bzip2 or xz) unpacked into a
directory as every tar context is (`planner/contexttar.py`: each entry checked before it is
written).

The directory is kept, named by the digest of the bytes sent, for the next build of the same
tar: `docker build` of an unchanged directory sends the same bytes (the CLI truncates times to
seconds), so the rebuild sees the same paths, inodes and times, and the no-change fast path, the
stat cache and the checks memo apply as they do to `buildpy build` of a directory. The newest
`KEEP` are kept; a context over `KEEP_MAX` bytes is unpacked for its build alone. A build holds
its directory's lock file shared; eviction takes it exclusively or leaves the directory be."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from buildpy.api.errors import ApiError
from buildpy.cas.store import Store

DIR = "api-contexts"
KEEP = 8
KEEP_MAX = 256 << 20


@contextlib.contextmanager
def received(store: Store, body: Iterable[bytes]) -> Iterator[Path]:
    """The context directory for the tar in `body`, for the block's length. The caller holds
    a store lease (prune clears tmp/)."""
    import blake3

    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    kept = store.root / DIR
    with contextlib.ExitStack() as stack:
        spool = stack.enter_context(tempfile.TemporaryFile(dir=store.tmp_dir, prefix="api-context-"))
        h = blake3.blake3()
        for chunk in body:
            spool.write(chunk)
            h.update(chunk)
        size = spool.tell()
        spool.seek(0)
        digest = h.hexdigest()[:32]
        # from here to the build's end: prune waits (it clears tmp/, where the tar is unpacked)
        stack.enter_context(store.lease())
        keep = size <= KEEP_MAX
        lock = _use(kept, digest) if keep else None
        if lock is None:
            fresh = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="api-build-"))
            fresh.chmod(0o755)  # as a directory the user made: RUN --mount=type=bind reads it
            try:
                unpack(spool, size, fresh)
            except BaseException:
                remove(fresh)
                raise
        spool.close()
        if not keep:
            stack.callback(remove, fresh)
            yield fresh
            return
        if lock is None:
            lock = _adopt(kept, digest, fresh)
            stack.callback(os.close, lock)
            _evict(store, kept)  # now, while its own lock keeps the new one
        else:
            stack.callback(os.close, lock)
        yield kept / digest


def unpack(spool: IO[bytes], size: int, directory: Path) -> None:
    """The tar in `spool` unpacked into `directory` as any tar context is; 400 for an archive
    that is not one or holds an unsafe entry."""
    from buildpy.planner.contexttar import ContextTarError, UnsafeEntry
    from buildpy.planner.contexttar import unpack as unpack_tar

    directory.mkdir(parents=True, exist_ok=True)
    if not size:
        return
    try:
        unpack_tar(spool, directory)
    except UnsafeEntry as e:
        raise ApiError(400, f"the build context is refused: {e}") from None
    except ContextTarError as e:
        raise ApiError(400, f"the build context is {e}") from None


# --- the kept directories -------------------------------------------------------------------


def _lock(kept: Path, digest: str) -> int:
    """The digest's lock file, held shared; the file counts as used now (for eviction)."""
    kept.mkdir(parents=True, exist_ok=True)
    path = kept / f"{digest}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else evicted while we waited: a new lock file
            os.utime(fd)
            return fd
        os.close(fd)


def _use(kept: Path, digest: str) -> int | None:
    """The lock of the kept directory for `digest`, or None when there is none."""
    if not (kept / digest).is_dir():
        return None
    fd = _lock(kept, digest)
    if (kept / digest).is_dir():
        return fd
    os.close(fd)
    return None


def _adopt(kept: Path, digest: str, fresh: Path) -> int:
    """`fresh` kept as the directory for `digest` (or dropped for one a concurrent build
    kept first); its lock."""
    fd = _lock(kept, digest)
    try:
        os.rename(fresh, kept / digest)
    except OSError:  # kept meanwhile by another build of the same tar
        remove(fresh)
    return fd


def _evict(store: Store, kept: Path) -> None:
    """All but the `KEEP` most recently used directories, unless a build holds one."""
    try:
        locks = sorted(kept.glob("*.lock"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for path in locks[KEEP:]:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            directory = kept / path.name.removesuffix(".lock")
            trash = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="api-evict-"))
            with contextlib.suppress(FileNotFoundError):
                os.rename(directory, trash / "context")
            os.unlink(path)
            remove(trash)
        finally:
            os.close(fd)


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    if directory.exists():  # a read-only directory inside: make it writable and try again
        for root, dirs, _ in os.walk(directory):
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(root, d), 0o700)
        shutil.rmtree(directory, ignore_errors=True)
