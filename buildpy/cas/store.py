"""The store on disk: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) that
buildpy writes atomically and that several processes share.

Layout of ROOT:
  oci-layout, index.json   an OCI image layout; each ref is an index entry annotated with
                           `org.opencontainers.image.ref.name` = the full reference
  blobs/sha256/HEX         content, named by its sha256
  tmp/                     writes in progress (same file system, so a rename publishes them)
  locks/                   flock files: `refs` guards index.json's read-modify-write, `gc` is
                           held shared by every writer and exclusively by prune

Like containerd's content store, a blob is written to a temp file, fsynced, checked against
its expected digest and renamed into place, so a blob path only ever names complete content and
a killed writer leaves only a temp file that prune removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from buildpy.cas.digest import ALGORITHM, DigestError, Hasher, hex_of, of_bytes
from buildpy.cas.media import OCI_INDEX, OCI_LAYOUT_VERSION, REF_NAME, Descriptor

_CHUNK = 1 << 20


class StoreError(Exception):
    """The store cannot do what was asked: a missing blob or ref, a damaged file, a full disk."""

    user_facing = True


def default_root() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "buildpy"


def canonical_json(obj: Any) -> bytes:
    """The bytes we write for a JSON object: sorted keys, no spaces; the same object, the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new file, never a part."""
    tmp_dir = tmp_dir or path.parent
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class BlobWriter:
    """A blob being written: feed it with `write`, then `commit` checks and publishes it."""

    def __init__(self, store: Store, expected: str | None, expected_size: int | None) -> None:
        self._store = store
        self._expected = expected
        self._expected_size = expected_size
        self.hasher = Hasher()
        fd, self._tmp = tempfile.mkstemp(dir=store.tmp_dir, prefix="ingest-")
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self.committed: str | None = None

    def write(self, data: bytes | memoryview) -> int:
        self.hasher.update(data)
        if self._expected_size is not None and self.hasher.size > self._expected_size:
            raise DigestError(
                f"blob {self._expected or ''} is larger than its announced {self._expected_size} bytes"
            )
        return self._file.write(data)

    def commit(self) -> str:
        digest = self.hasher.digest
        if self._expected is not None and digest != self._expected:
            raise DigestError(f"content does not match its digest: expected {self._expected}, got {digest}")
        if self._expected_size is not None and self.hasher.size != self._expected_size:
            raise DigestError(
                f"blob {digest} has {self.hasher.size} bytes, {self._expected_size} were announced"
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._store.blob_path(digest)
        os.chmod(self._tmp, 0o444)
        os.replace(self._tmp, final)
        fsync_dir(final.parent)
        self.committed = digest
        return digest

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


class Store:
    """One store directory. Cheap to make; creates its layout on first use."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = (Path(root) if root else default_root()).absolute()  # the sandbox changes directory
        self.blobs_dir = self.root / "blobs" / ALGORITHM
        self.tmp_dir = self.root / "tmp"
        self.locks_dir = self.root / "locks"
        self.index_path = self.root / "index.json"
        self._ensure_layout()

    def _ensure_layout(self) -> None:
        try:
            for d in (self.blobs_dir, self.tmp_dir, self.locks_dir):
                d.mkdir(parents=True, exist_ok=True)
            layout = self.root / "oci-layout"
            if layout.exists() and self.index_path.exists():
                return
            # the lease keeps prune from clearing our temp file in tmp/ before it is renamed
            with self.lease():
                if not layout.exists():
                    write_atomic(layout, canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}), self.tmp_dir)
                with self.lock("refs"):
                    if not self.index_path.exists():
                        self._write_index([])
        except OSError as e:
            raise StoreError(f"cannot use store {self.root}: {e.strerror or e}") from None

    # blobs

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / hex_of(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is not in the store") from None

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is not in the store") from None

    def read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as f:
            return f.read()

    def read_json(self, digest: str) -> Any:
        data = self.read_blob(digest)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(f"blob {digest} is not valid JSON: {e}") from None

    @contextlib.contextmanager
    def ingest(self, expected: str | None = None, size: int | None = None) -> Iterator[BlobWriter]:
        """Write a blob: `with store.ingest() as w: w.write(…)`; committed when the block ends
        without an error (checked against `expected`/`size` when given), discarded otherwise."""
        # A lease of its own (callers that go on to tag hold theirs too): prune clears tmp/,
        # and must not take a temp file that is still being written.
        with self.lease():
            writer = BlobWriter(self, expected, size)
            try:
                yield writer
                if writer.committed is None:
                    writer.commit()
            except BaseException:
                writer.abort()
                raise

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        digest = of_bytes(data)
        if expected is not None and digest != expected:
            raise DigestError(f"content does not match its digest: expected {expected}, got {digest}")
        if self.has_blob(digest):
            return digest
        with self.ingest(digest, len(data)) as w:
            w.write(data)
        return digest

    def put_json(self, obj: Any) -> tuple[str, int]:
        data = canonical_json(obj)
        return self.put_bytes(data), len(data)

    def put_stream(self, stream: IO[bytes], expected: str | None = None, size: int | None = None) -> str:
        """Copy a stream into the store, verifying it as it passes (for anything read from outside)."""
        if expected is not None and self.has_blob(expected):
            return expected
        with self.ingest(expected, size) as w:
            while chunk := stream.read(_CHUNK):
                w.write(chunk)
        return w.committed or w.hasher.digest

    def put_file(self, path: str | os.PathLike[str], expected: str | None = None) -> str:
        with open(path, "rb") as f:
            return self.put_stream(f, expected)

    def iter_blobs(self) -> Iterator[str]:
        for entry in os.scandir(self.blobs_dir):
            if entry.is_file():
                yield f"{ALGORITHM}:{entry.name}"

    def delete_blob(self, digest: str) -> int:
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
            return size
        except FileNotFoundError:
            return 0

    # locks

    @contextlib.contextmanager
    def lock(self, name: str, shared: bool = False) -> Iterator[None]:
        """An flock on locks/NAME held for the block (released by the kernel if we die)."""
        fd = os.open(self.locks_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def lease(self) -> contextlib.AbstractContextManager[None]:
        """Held by anything that writes blobs and then refers to them: prune waits for it."""
        return self.lock("gc", shared=True)

    # refs

    def _read_index(self) -> list[Descriptor]:
        try:
            obj = json.loads(self.index_path.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise StoreError(f"{self.index_path} is damaged: {e}") from None
        manifests = obj.get("manifests") if isinstance(obj, dict) else None
        if not isinstance(manifests, list):
            raise StoreError(f"{self.index_path} is damaged: no manifests list")
        return [Descriptor.from_json(m, f"{self.index_path}") for m in manifests]

    def _write_index(self, entries: list[Descriptor]) -> None:
        obj = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [d.to_json() for d in entries],
        }
        write_atomic(self.index_path, json.dumps(obj, indent=2).encode() + b"\n", self.tmp_dir)

    def entries(self) -> list[Descriptor]:
        """Every descriptor in index.json, named or not (what gc keeps and fsck checks)."""
        return self._read_index()

    def refs(self) -> dict[str, Descriptor]:
        """Every reference name in the store and the manifest (or index) it names."""
        out: dict[str, Descriptor] = {}
        for d in self._read_index():
            name = d.annotations.get(REF_NAME)
            if name:
                out[name] = d
        return out

    def get_ref(self, name: str) -> Descriptor | None:
        return self.refs().get(name)

    def set_ref(self, name: str, target: Descriptor) -> None:
        """Point `name` at `target` (whose blob must be in the store), replacing what it named."""
        # lease, then refs (always in this order): prune can neither take the target between
        # the check and the write nor clear index.json's temp file in tmp/
        with self.lease(), self.lock("refs"):
            if not self.has_blob(target.digest):
                raise StoreError(f"cannot tag {name}: blob {target.digest} is not in the store")
            entries = [d for d in self._read_index() if d.annotations.get(REF_NAME) != name]
            annotations = dict(target.annotations)
            annotations[REF_NAME] = name
            entries.append(Descriptor(target.media_type, target.digest, target.size, annotations, target.platform))
            entries.sort(key=lambda d: d.annotations.get(REF_NAME, ""))
            self._write_index(entries)

    def delete_ref(self, name: str) -> Descriptor | None:
        with self.lease(), self.lock("refs"):
            entries = self._read_index()
            kept = [d for d in entries if d.annotations.get(REF_NAME) != name]
            if len(kept) == len(entries):
                return None
            self._write_index(kept)
            return next(d for d in entries if d.annotations.get(REF_NAME) == name)

    # housekeeping

    def clear_tmp(self, older_than: float = 0.0) -> int:
        """Remove abandoned writes (from killed processes); returns bytes freed. Callers hold
        the gc lock exclusively, so no live writer's temp file is older than the lock."""
        import time

        freed = 0
        now = time.time()
        for entry in os.scandir(self.tmp_dir):
            try:
                st = entry.stat(follow_symlinks=False)
                if now - st.st_mtime < older_than:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
                freed += st.st_size
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        return freed
