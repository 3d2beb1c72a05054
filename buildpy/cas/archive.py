"""Images in and out of the store as files: the entry point. `load` detects an OCI image layout
(a directory, or a tar of one) or a `docker save` archive; `export_oci` and `export_docker` write
them. The formats live in `ocilayout.py` and `dockerarchive.py`; this module owns what they
share: reading an archive's files by name, copying blobs in verified, setting refs, and writing
exports deterministically and atomically.

Everything read from an archive is hostile until checked. Names are looked up, never joined onto
a path: a tar is never extracted (links inside it are followed inside it only), a directory
source refuses `..`, symlinks and anything but regular files. Every blob is copied into the store
through `put_stream`/`ingest` with the digest and size it must have, and every layer's
uncompressed content is hashed on the way and checked against the config's diffID before the
diffID index records it. Refs are set only once every blob of every image is in and every
image reads back, so a refused archive leaves at most unreferenced blobs, which `prune` removes.

A compressed tar (`docker save | gzip`) is decompressed once into an unlinked temp file in the
store's tmp/ (as containers/image does), because reading a tar's members by name seeks, and a
gzip stream cannot seek backwards without starting over.

Exports are deterministic (sorted entries, mtime 0, uid/gid 0, no user names), so the same image
gives the same bytes, and atomic (written beside the destination, then renamed).
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import io
import json
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

import zstandard
from isal import isal_zlib

from buildpy.cas.compress import decompress_reader, detect
from buildpy.cas.digest import DigestError, Hasher, hex_of
from buildpy.cas.image import Image
from buildpy.cas.layers import Layer, blobs_for_diff_id, diff_id_of, record_diff_id
from buildpy.cas.media import Descriptor, oci_layer_type
from buildpy.cas.store import Store, StoreError

JSON_MAX = 16 << 20  # no manifest, index or config comes near this
CHUNK = 1 << 20
_LINKS_MAX = 16
# what a broken source raises while we read it (a truncated tar, a corrupt compressed stream)
_READ_ERRORS = (
    tarfile.TarError, EOFError, OSError, zlib.error, isal_zlib.error, lzma.LZMAError, zstandard.ZstdError
)


class ArchiveError(StoreError):
    """An archive that is not a loadable image: malformed, incomplete, or trying to escape."""


# sources: an archive's files by name, from a directory or a tar


class Source(Protocol):
    where: str

    def exists(self, name: str) -> bool: ...
    def open(self, name: str) -> tuple[BinaryIO, int]: ...


def check_name(name: str, where: str, what: str = "file name") -> str:
    """A relative name inside the archive, `./` dropped; refuses absolute names and `..`."""
    if not isinstance(name, str) or not name:
        raise ArchiveError(f"{where}: bad {what} {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]  # `./a`, `a//b`, `dir/` as tar writes them
    if name.startswith("/") or ".." in parts or not parts:
        raise ArchiveError(f"{where}: refusing {what} {name!r}: it points outside the archive")
    return "/".join(parts)


class _Guarded(io.RawIOBase):
    """A source file whose read errors (a truncated tar, an I/O error) become one clear line."""

    def __init__(self, f: BinaryIO, where: str) -> None:
        self._f = f
        self._where = where

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._f.read(size)
        except _READ_ERRORS as e:
            raise ArchiveError(f"{self._where}: cannot read: {_reason(e)}") from None

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


class _Prefixed(io.RawIOBase):
    """Bytes already read (to sniff a compression), then the rest of the stream."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self._head = head
        self._f = f

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                out, self._head = self._head + self._f.read(), b""
                return out
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._f.read(size)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0].rstrip(":") if str(e) else ""
    return text or type(e).__name__


class DirSource:
    """An unpacked layout or archive: names resolved component by component, no symlinks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def _path(self, name: str) -> Path:
        path = self.root
        for part in check_name(name, self.where).split("/"):
            path = path / part
            if path.is_symlink():
                raise ArchiveError(f"{self.where}: {name} goes through a symlink")
        return path

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def open(self, name: str) -> tuple[BinaryIO, int]:
        path = self._path(name)
        try:
            # O_NOFOLLOW: a symlink swapped in since the check; O_NONBLOCK: a FIFO must not hang us
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ArchiveError(f"{self.where}: {name} is missing") from None
        except OSError as e:
            what = "is a symlink" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror})"
            raise ArchiveError(f"{self.where}: {name} {what}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ArchiveError(f"{self.where}: {name} is not a regular file")
        os.set_blocking(fd, True)
        return _Guarded(os.fdopen(fd, "rb"), f"{self.where}: {name}"), st.st_size  # type: ignore[return-value]


class TarSource:
    """A tar read by member name, never extracted; links are followed inside the tar only
    (docker and podman archives link `<id>/layer.tar` to a blob in the same tar)."""

    def __init__(self, fileobj: BinaryIO, where: str) -> None:
        self.where = where
        try:
            self._tar = tarfile.open(fileobj=fileobj, mode="r:")
            members = self._tar.getmembers()
        except _READ_ERRORS as e:
            raise ArchiveError(f"{where}: not a readable tar ({_reason(e)})") from None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._links: dict[str, str] = {}  # member → the member it links to
        for m in members:
            if m.name.strip("./") == "" and ".." not in m.name:
                continue  # the archive's own root, `.` or `./`
            name = check_name(m.name, where, "entry")
            self._members[name] = m
            if m.issym() or m.islnk():
                # a hard link names a member from the root, a symlink is relative to its directory;
                # whether or not we would follow it, a link out of the archive marks a hostile one
                base = "" if m.islnk() else posixpath.dirname(name)
                target = posixpath.normpath(posixpath.join(base, m.linkname))
                if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                    raise ArchiveError(f"{where}: {m.name} links outside the archive (to {m.linkname})")
                self._links[name] = target

    def close(self) -> None:
        self._tar.close()

    def _member(self, name: str) -> tarfile.TarInfo | None:
        name = check_name(name, self.where)
        for _ in range(_LINKS_MAX):
            m = self._members.get(name)
            if m is None or not (m.issym() or m.islnk()):
                return m if m is not None and m.isfile() else None
            name = self._links[name]
        raise ArchiveError(f"{self.where}: {name}: too many levels of links")

    def exists(self, name: str) -> bool:
        return self._member(name) is not None

    def open(self, name: str) -> tuple[BinaryIO, int]:
        m = self._member(name)
        f = self._tar.extractfile(m) if m is not None else None
        if f is None or m is None:
            raise ArchiveError(f"{self.where}: {name} is missing")
        return _Guarded(f, f"{self.where}: {name}"), m.size  # type: ignore[return-value]


_BZIP2, _XZ = b"BZh", b"\xfd7zXZ\x00"


@contextlib.contextmanager
def open_source(store: Store, path: Path) -> Iterator[Source]:
    """The files of `path`: a directory, a tar, or a gzip/zstd/bzip2/xz compressed tar; a
    pipe (`/dev/stdin`) is spooled first, since reading members by name seeks."""
    if path.is_dir():
        yield DirSource(path)
        return
    with contextlib.ExitStack() as stack:
        try:
            f: BinaryIO = stack.enter_context(open(path, "rb"))
            regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
            head = f.read(8)
        except OSError as e:
            raise ArchiveError(f"cannot load {path}: {e.strerror or e}") from None
        compression = "bzip2" if head.startswith(_BZIP2) else "xz" if head.startswith(_XZ) else detect(head)
        if regular:
            f.seek(0)
        else:
            f = _Prefixed(head, f)  # type: ignore[assignment]
        if compression or not regular:
            f = stack.enter_context(_spooled(store, f, compression, str(path)))
        src = TarSource(f, str(path))
        stack.callback(src.close)
        yield src


@contextlib.contextmanager
def _spooled(store: Store, f: BinaryIO, compression: str, where: str) -> Iterator[BinaryIO]:
    # unlinked at once: nothing is left behind whatever happens to this process
    with tempfile.TemporaryFile(dir=store.tmp_dir, prefix="load-") as tmp:
        try:
            if compression == "bzip2":
                reader: IO[bytes] = bz2.BZ2File(f)
            elif compression == "xz":
                reader = lzma.LZMAFile(f)
            else:
                reader = decompress_reader(f, compression)
            shutil.copyfileobj(reader, tmp, CHUNK)
        except _READ_ERRORS as e:
            raise ArchiveError(f"{where}: not a readable {compression or 'tar'} stream ({_reason(e)})") from None
        tmp.seek(0)
        yield tmp  # type: ignore[misc]


def read_json(src: Source, name: str) -> Any:
    f, size = src.open(name)
    with f:
        if size > JSON_MAX:
            raise ArchiveError(f"{src.where}: {name} is too large ({size} bytes)")
        data = f.read(JSON_MAX + 1)
    try:
        return json.loads(data)
    except ValueError as e:
        raise ArchiveError(f"{src.where}: {name} is not valid JSON: {e}") from None


# copying in, verified


def blob_name(digest: str) -> str:
    return f"blobs/sha256/{hex_of(digest)}"


def copy_blob(store: Store, src: Source, d: Descriptor, name: str | None = None) -> None:
    """Copy the blob `d` names (from `blobs/sha256/HEX`, or `name`), checking size and digest."""
    name = name or blob_name(d.digest)
    if store.has_blob(d.digest):
        _check_size(store, d.digest, d.size, f"{src.where}: {name}")
        return
    f, size = src.open(name)
    with f:
        if size != d.size:
            raise ArchiveError(f"{src.where}: {name} has {size} bytes, its descriptor says {d.size}")
        try:
            store.put_stream(f, d.digest, d.size)
        except DigestError as e:
            raise ArchiveError(f"{src.where}: {name}: {e}") from None


class _Tee(io.RawIOBase):
    """Reads from a source and writes what passes into a blob being ingested."""

    def __init__(self, f: BinaryIO, sink: Any) -> None:
        self._f = f
        self._sink = sink

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if data:
            try:
                self._sink.write(data)
            except OSError as e:  # the store's disk, not the archive: say so, not "invalid gzip"
                raise StoreError(f"cannot write to the store: {e.strerror or e}") from None
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def copy_layer(store: Store, src: Source, name: str, diff_id: str, compression: str | None,
               expected: str | None = None, size: int | None = None) -> Descriptor:
    """Copy a layer blob in, hashing its uncompressed content on the way; it must be `diff_id`.

    `compression` is what a descriptor declares (None: sniff it, as docker load does);
    `expected`/`size` are the digest and size the blob must have, when something announced them."""
    where = f"{src.where}: {name}"
    if expected is not None and store.has_blob(expected):
        if size is not None:
            _check_size(store, expected, size, where)
        return _known_layer(store, expected, diff_id, compression, where)
    f, actual_size = src.open(name)
    with f:
        if size is not None and actual_size != size:
            raise ArchiveError(f"{where} has {actual_size} bytes, its descriptor says {size}")
        if compression is None:
            head = f.read(8)
            compression = detect(head)
            f = _Prefixed(head, f)  # type: ignore[assignment]
        diff = Hasher()
        try:
            with store.ingest(expected, actual_size) as w:
                tee = _Tee(f, w)
                try:
                    reader = decompress_reader(tee, compression)  # type: ignore[arg-type]
                    while chunk := reader.read(CHUNK):
                        diff.update(chunk)
                except _READ_ERRORS as e:
                    raise ArchiveError(f"{where}: not a valid {compression} stream ({_reason(e)})") from None
                while tee.read(CHUNK):  # whatever follows the compressed stream is the blob's too
                    pass
                digest = w.commit()
        except DigestError as e:
            raise ArchiveError(f"{where}: {e}") from None
    _check_diff_id(diff.digest, diff_id, where)
    layer = Descriptor(oci_layer_type(compression), digest, actual_size)
    record_diff_id(store, Layer(layer, diff_id))
    return layer


def _known_layer(store: Store, digest: str, diff_id: str, compression: str | None, where: str) -> Descriptor:
    """A layer blob the store already has: its diffID is checked unless the index knows it."""
    if compression is None:
        with store.open_blob(digest) as f:
            compression = detect(f.read(8))
    layer = Descriptor(oci_layer_type(compression), digest, store.blob_size(digest))
    if not any(d.digest == digest for d in blobs_for_diff_id(store, diff_id)):
        try:
            got = diff_id_of(store, layer)
        except _READ_ERRORS as e:
            raise ArchiveError(f"{where}: not a valid {compression or 'tar'} stream ({_reason(e)})") from None
        _check_diff_id(got, diff_id, where)
    record_diff_id(store, Layer(layer, diff_id))
    return layer


def _check_size(store: Store, digest: str, size: int, where: str) -> None:
    # the content is ours already, but the descriptor we would keep must tell its true size
    if store.blob_size(digest) != size:
        raise ArchiveError(f"{where}: its descriptor says {size} bytes, but {digest} has {store.blob_size(digest)}")


def _check_diff_id(got: str, diff_id: str, where: str) -> None:
    if got != diff_id:
        raise ArchiveError(f"{where}: the layer's content is {got}, but the config's diff_id says {diff_id}")


# load


@dataclass(frozen=True)
class Found:
    """An image an archive holds, its blobs all in the store: the names to tag it with."""

    names: list[str]
    descriptor: Descriptor
    image: Image


def load(store: Store, path: str | os.PathLike[str]) -> list[tuple[str | None, Image]]:
    """Import the images of an OCI layout (dir or tar) or a docker-archive tar; returns
    (ref name, image) per name it was tagged with, or (None, image) for an untagged one."""
    from buildpy.cas import dockerarchive, ocilayout

    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"cannot load {path}: no such file or directory")
    # the lease from the first blob to the last ref: prune must not sweep what we are about to tag
    with store.lease(), open_source(store, path) as src:
        # docker 25 writes both; manifest.json is what docker load reads, and it also lists
        # untagged images, which docker's index.json leaves out
        if src.exists("manifest.json"):
            found = dockerarchive.load(store, src)
        elif src.exists("index.json") and src.exists("oci-layout"):
            found = ocilayout.load(store, src)
        else:
            raise ArchiveError(
                f"{path}: neither a docker archive (manifest.json) nor an OCI image layout (oci-layout, index.json)"
            )
        out: list[tuple[str | None, Image]] = []
        for f in found:
            for name in f.names:
                store.set_ref(name, f.descriptor)
                out.append((name, f.image))
            if not f.names:
                out.append((None, f.image))
    return out


# export


def ref_names(store: Store, texts: list[str]) -> list[str]:
    """The ref each name the user gave stands for (`busybox` → docker.io/library/busybox:latest,
    an ID a tag names): an export writes tags, so an image found by digest alone is refused."""
    from buildpy.cas.reference import lookup

    names = []
    for text in texts:
        name, _ = lookup(store, text)
        if name is None:
            raise StoreError(f"cannot export {text}: it has no tag (`buildpy tag` it first)")
        names.append(name)
    return names


def export_oci(store: Store, refs: list[str], path: str | os.PathLike[str]) -> None:
    """Write the named images (full ref names) as an OCI image layout: a directory, or a tar
    when `path` ends with `.tar`."""
    from buildpy.cas import ocilayout

    with store.lease():  # the blobs stay while we copy them, whatever rmi + prune do meanwhile
        ocilayout.export(store, refs, Path(path))


def export_docker(store: Store, refs: list[str], path: str | os.PathLike[str]) -> None:
    """Write the named images (full ref names) as a `docker save` tar for docker/podman load."""
    from buildpy.cas import dockerarchive

    with store.lease():
        dockerarchive.export(store, refs, Path(path))


def tar_info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = size
        info.mode = 0o644
    return info


class Writer:
    """Files of an export, into a directory or a deterministic tar. Callers add files in a
    fixed order (sorted blobs, then the documents), so equal images give equal bytes."""

    def __init__(self, out: Path, as_tar: bool) -> None:
        self.out = out
        self.tar = tarfile.open(fileobj=open(out, "wb"), mode="w", format=tarfile.PAX_FORMAT) if as_tar else None
        self.dirs: set[str] = set()

    def _dir(self, name: str) -> None:
        if not name or name in self.dirs:
            return
        self._dir(posixpath.dirname(name))
        self.dirs.add(name)
        if self.tar is not None:
            self.tar.addfile(tar_info(name + "/", directory=True))
        else:
            (self.out / name).mkdir()

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_stream(name, io.BytesIO(data), len(data))

    def add_stream(self, name: str, stream: IO[bytes], size: int) -> None:
        self._dir(posixpath.dirname(name))
        if self.tar is not None:
            self.tar.addfile(tar_info(name, size), stream)
        else:
            with open(self.out / name, "wb") as f:
                shutil.copyfileobj(stream, f, CHUNK)

    def add_blob(self, store: Store, digest: str, name: str | None = None) -> None:
        name = name or blob_name(digest)
        if self.tar is None:
            self._dir(posixpath.dirname(name))
            shutil.copyfile(store.blob_path(digest), self.out / name)
            return
        with store.open_blob(digest) as f:
            self.add_stream(name, f, os.fstat(f.fileno()).st_size)

    def close(self) -> None:
        if self.tar is not None:
            fileobj = self.tar.fileobj
            self.tar.close()
            fileobj.flush()  # type: ignore[union-attr]
            os.fsync(fileobj.fileno())  # type: ignore[union-attr]
            fileobj.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def atomic_output(path: Path, as_tar: bool) -> Iterator[Writer]:
    """Write beside `path`, then rename into place: a killed export leaves the old file or none
    (and a temp file named `.NAME.tmp-*` beside it)."""
    path = path.absolute()
    if not path.parent.is_dir():
        raise StoreError(f"cannot write {path}: {path.parent} is not a directory")
    if as_tar and path.is_dir():
        raise StoreError(f"cannot write {path}: it is a directory")
    if not as_tar and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StoreError(f"cannot export to {path}: it exists and is not an empty directory")
    if as_tar:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
        os.close(fd)
    else:
        tmp_name = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    # mkstemp/mkdtemp make private files; the export is the user's, as `docker save -o` makes it
    os.chmod(tmp, (0o777 if not as_tar else 0o666) & ~umask)
    try:
        writer = Writer(tmp, as_tar)
        try:
            yield writer
        finally:
            writer.close()
        if not as_tar and path.is_dir():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def stored(store: Store, refs: list[str]) -> list[tuple[str, Descriptor]]:
    """The descriptor each ref names (annotations dropped: they are the store's, not the image's)."""
    if not refs:
        raise StoreError("nothing to export: name at least one image")
    out = []
    for name in refs:
        d = store.get_ref(name)
        if d is None:
            raise StoreError(f"no image {name} in the store")
        out.append((name, Descriptor(d.media_type, d.digest, d.size, platform=d.platform)))
    return out
