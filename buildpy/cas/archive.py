"""Images in and out of the store as files: OCI image layouts (a directory, or a tar of one) and
`docker save` archives (what `docker load` and `podman load` read).

Everything read from an archive is hostile until checked: names are looked up, never joined
onto a path (a directory source refuses symlinks and `..`); every blob is copied into the store
through `put_stream` with the digest and size its descriptor announces; JSON documents are
size-capped; refs are set only once every blob of every image is in, so a refused archive leaves
at most unreferenced blobs, which `prune` removes.

Exports are deterministic (sorted entries, mtime 0, uid/gid 0), so the same image gives the same
bytes, and atomic (written beside the destination, then renamed).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from buildpy.cas.compress import decompress_reader, detect
from buildpy.cas.digest import DigestError, Hasher, hex_of, is_digest
from buildpy.cas.image import Image, check_manifest, children, load_image
from buildpy.cas.layers import Layer, record_diff_id
from buildpy.cas.media import (
    CONFIGS,
    INDEXES,
    LAYERS,
    MANIFESTS,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
    REF_NAME,
    Descriptor,
    layer_compression,
)
from buildpy.cas.reference import InvalidReference, parse
from buildpy.cas.store import Store, StoreError, canonical_json

CONTAINERD_NAME = "io.containerd.image.name"
_JSON_MAX = 16 << 20  # no manifest, index or config comes near this
_CHUNK = 1 << 20


class ArchiveError(StoreError):
    """An archive that is not a loadable image: malformed, incomplete, or trying to escape."""


# sources: an archive's files by name, from a directory or a tar


class Source(Protocol):
    where: str

    def exists(self, name: str) -> bool: ...
    def open(self, name: str) -> tuple[BinaryIO, int]: ...


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return posixpath.normpath("/" + name).lstrip("/")


class DirSource:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ArchiveError(f"{self.where}: refusing path {name!r}")
        path = self.root
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise ArchiveError(f"{self.where}: {name} goes through a symlink")
        return path

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def open(self, name: str) -> tuple[BinaryIO, int]:
        path = self._path(name)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ArchiveError(f"{self.where}: {name} is missing") from None
        return f, os.fstat(f.fileno()).st_size


class TarSource:
    """A tar read by member name; links inside the tar are followed inside the tar only."""

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        try:
            self._tar = tarfile.open(path, "r:*")
            members = self._tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            reason = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
            raise ArchiveError(f"{self.where}: not a readable tar ({reason})") from None
        self._members: dict[str, tarfile.TarInfo] = {}
        for m in members:
            if m.name.startswith("/") or ".." in m.name.split("/"):
                raise ArchiveError(f"{self.where}: entry {m.name!r} points outside the archive")
            self._members[_clean(m.name)] = m

    def close(self) -> None:
        self._tar.close()

    def _member(self, name: str) -> tarfile.TarInfo | None:
        seen = 0
        m = self._members.get(name)
        while m is not None and (m.issym() or m.islnk()):
            seen += 1
            if seen > 16:
                raise ArchiveError(f"{self.where}: {name}: too many links")
            target = m.linkname if m.islnk() else posixpath.join(posixpath.dirname(_clean(m.name)), m.linkname)
            if target.startswith("/") or ".." in posixpath.normpath(target).split("/"):
                raise ArchiveError(f"{self.where}: {m.name} links outside the archive")
            m = self._members.get(_clean(target))
        return m if m is not None and m.isfile() else None

    def exists(self, name: str) -> bool:
        return self._member(name) is not None

    def open(self, name: str) -> tuple[BinaryIO, int]:
        m = self._member(name)
        f = self._tar.extractfile(m) if m is not None else None
        if f is None:
            raise ArchiveError(f"{self.where}: {name} is missing")
        return f, m.size  # type: ignore[union-attr, return-value]


@contextlib.contextmanager
def _source(path: Path) -> Iterator[Source]:
    if path.is_dir():
        yield DirSource(path)
        return
    src = TarSource(path)
    try:
        yield src
    finally:
        src.close()


def _read_json(src: Source, name: str) -> Any:
    f, size = src.open(name)
    with f:
        if size > _JSON_MAX:
            raise ArchiveError(f"{src.where}: {name} is too large ({size} bytes)")
        data = f.read(_JSON_MAX + 1)
    try:
        return json.loads(data)
    except ValueError as e:
        raise ArchiveError(f"{src.where}: {name} is not valid JSON: {e}") from None


# load


def load(store: Store, path: str | os.PathLike[str]) -> list[tuple[str | None, Image]]:
    """Import the images of an OCI layout or docker-archive; returns (ref name or None, image)
    for each. The caller holds `store.lease()` so prune cannot sweep blobs before they are tagged."""
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"cannot load {path}: no such file or directory")
    with _source(path) as src:
        if src.exists("index.json") and src.exists("oci-layout"):
            return _load_oci(store, src)
        if src.exists("manifest.json"):
            return _load_docker(store, src)
    raise ArchiveError(f"{path}: neither an OCI image layout (oci-layout, index.json) nor a docker archive (manifest.json)")


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{hex_of(digest)}"


def _copy_blob(store: Store, src: Source, d: Descriptor) -> None:
    if store.has_blob(d.digest):
        return
    f, size = src.open(_blob_name(d.digest))
    with f:
        if size != d.size:
            raise ArchiveError(f"{src.where}: blob {d.digest} has {size} bytes, its descriptor says {d.size}")
        try:
            store.put_stream(f, d.digest, d.size)
        except DigestError as e:
            raise ArchiveError(f"{src.where}: {e}") from None


def _copy_tree(store: Store, src: Source, d: Descriptor, depth: int = 0) -> None:
    """Copy a manifest or index and everything under it, checking shapes as we go."""
    if depth > 4:
        raise ArchiveError(f"{src.where}: indexes nest too deeply at {d.digest}")
    if d.media_type not in MANIFESTS | INDEXES:
        raise ArchiveError(f"{src.where}: {d.digest} has unsupported media type {d.media_type}")
    if d.size > _JSON_MAX:
        raise ArchiveError(f"{src.where}: manifest {d.digest} is too large")
    _copy_blob(store, src, d)
    obj = store.read_json(d.digest)
    if d.media_type in MANIFESTS:
        try:
            check_manifest(obj, f"{src.where}: manifest {d.digest}")
        except DigestError as e:
            raise ArchiveError(str(e)) from None
    try:
        kids = children(store, d)
    except DigestError as e:
        raise ArchiveError(f"{src.where}: {d.digest}: {e}") from None
    if d.media_type in INDEXES:
        for child in kids:
            # attestations and other artifacts an index may list are not ours to judge
            if child.media_type in MANIFESTS | INDEXES:
                _copy_tree(store, src, child, depth + 1)
        return
    for child in kids:  # the config, then the layers (check_manifest vetted their media types)
        _copy_blob(store, src, child)
    _record_diff_ids(store, d)


def _record_diff_ids(store: Store, manifest: Descriptor) -> None:
    image = load_image(store, manifest)
    diff_ids = image.diff_ids
    if len(diff_ids) != len(image.layers):
        raise ArchiveError(
            f"image {manifest.digest}: config lists {len(diff_ids)} diff_ids for {len(image.layers)} layers"
        )
    for layer, diff_id in zip(image.layers, diff_ids):
        if not isinstance(diff_id, str) or not is_digest(diff_id):
            raise ArchiveError(f"image {manifest.digest}: invalid diff_id {diff_id!r}")
        record_diff_id(store, Layer(layer, diff_id))


def _ref_name(annotations: dict[str, str], where: str) -> str | None:
    """The full name an index entry gives its image: containerd's annotation, else an OCI
    ref.name that is a whole reference (one that is only a tag names no repository)."""
    text = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
    if not text or (text == annotations.get(REF_NAME) and "/" not in text and ":" not in text):
        return None
    try:
        return parse(text).name
    except InvalidReference as e:
        raise ArchiveError(f"{where}: bad image name {text!r}: {e}") from None


def _image_for(store: Store, d: Descriptor) -> Image:
    try:
        return load_image(store, d)
    except StoreError:
        if d.media_type not in INDEXES:
            raise
        first = Descriptor.from_json(store.read_json(d.digest)["manifests"][0])
        return load_image(store, first)


def _load_oci(store: Store, src: Source) -> list[tuple[str | None, Image]]:
    layout = _read_json(src, "oci-layout")
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != OCI_LAYOUT_VERSION:
        raise ArchiveError(f"{src.where}: oci-layout: unsupported imageLayoutVersion")
    index = _read_json(src, "index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ArchiveError(f"{src.where}: index.json lists no images")
    descs = []
    for i, entry in enumerate(entries):
        try:
            descs.append(Descriptor.from_json(entry, f"{src.where}: index.json entry {i}"))
        except DigestError as e:
            raise ArchiveError(str(e)) from None
    for d in descs:
        _copy_tree(store, src, d)
    out: list[tuple[str | None, Image]] = []
    names = [_ref_name(d.annotations, src.where) for d in descs]
    for name, d in zip(names, descs):
        target = Descriptor(d.media_type, d.digest, d.size, platform=d.platform)
        if name:
            store.set_ref(name, target)
        out.append((name, _image_for(store, target)))
    return out


def _load_docker(store: Store, src: Source) -> list[tuple[str | None, Image]]:
    manifest = _read_json(src, "manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ArchiveError(f"{src.where}: manifest.json lists no images")
    pending: list[tuple[list[str], Descriptor]] = []
    for i, entry in enumerate(manifest):
        where = f"{src.where}: manifest.json entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or not isinstance(
            entry.get("Layers"), list
        ):
            raise ArchiveError(f"{where}: needs Config and Layers")
        config_digest, config_size = _copy_named(store, src, entry["Config"], where)
        config = store.read_json(config_digest)
        diff_ids = config.get("rootfs", {}).get("diff_ids", []) if isinstance(config, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(entry["Layers"]):
            raise ArchiveError(f"{where}: the config's rootfs.diff_ids do not match Layers")
        layers = []
        for name, diff_id in zip(entry["Layers"], diff_ids):
            if not isinstance(name, str) or not isinstance(diff_id, str) or not is_digest(diff_id):
                raise ArchiveError(f"{where}: bad layer {name!r}")
            digest, size, media_type = _copy_layer(store, src, name, where)
            if media_type == OCI_LAYER and digest != diff_id:
                raise ArchiveError(f"{where}: layer {name} does not match its diff_id {diff_id}")
            layer = Descriptor(media_type, digest, size)
            record_diff_id(store, Layer(layer, diff_id))
            layers.append(layer.to_json())
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": Descriptor(OCI_CONFIG, config_digest, config_size).to_json(),
            "layers": layers,
        }
        data = canonical_json(doc)
        desc = Descriptor(OCI_MANIFEST, store.put_bytes(data), len(data))
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ArchiveError(f"{where}: RepoTags must be a list of names")
        try:
            names = [parse(t).name for t in tags]
        except InvalidReference as e:
            raise ArchiveError(f"{where}: {e}") from None
        pending.append((names, desc))
    out: list[tuple[str | None, Image]] = []
    for names, desc in pending:
        image = load_image(store, desc)
        for name in names:
            store.set_ref(name, desc)
            out.append((name, image))
        if not names:
            out.append((None, image))
    return out


def _named_digest(name: str) -> str | None:
    """The digest a docker archive's file name promises: blobs/sha256/HEX or HEX.json (old form)."""
    base = posixpath.basename(name)
    hexpart = base[:-5] if base.endswith(".json") else base
    if name.startswith("blobs/sha256/") or base.endswith(".json"):
        candidate = f"sha256:{hexpart}"
        if is_digest(candidate):
            return candidate
    return None


def _copy_named(store: Store, src: Source, name: str, where: str) -> tuple[str, int]:
    f, size = src.open(_clean(name))
    with f:
        if size > _JSON_MAX:
            raise ArchiveError(f"{where}: {name} is too large for a config")
        try:
            digest = store.put_stream(f, _named_digest(name), size)
        except DigestError as e:
            raise ArchiveError(f"{where}: {name}: {e}") from None
    return digest, size


def _copy_layer(store: Store, src: Source, name: str, where: str) -> tuple[str, int, str]:
    f, size = src.open(_clean(name))
    with f:
        head = f.read(8)
        media_type = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "": OCI_LAYER}[detect(head)]
        try:
            with store.ingest(_named_digest(name), size) as w:
                w.write(head)
                while chunk := f.read(_CHUNK):
                    w.write(chunk)
                digest = w.commit()
        except DigestError as e:
            raise ArchiveError(f"{where}: {name}: {e}") from None
    return digest, size, media_type


# export


def _descriptors(store: Store, refs: list[str]) -> list[tuple[str, Descriptor]]:
    out = []
    for name in refs:
        d = store.get_ref(name)
        if d is None:
            raise StoreError(f"no image {name} in the store")
        out.append((name, Descriptor(d.media_type, d.digest, d.size, platform=d.platform)))
    return out


def _closure(store: Store, roots: list[Descriptor]) -> list[str]:
    seen: dict[str, None] = {}
    todo = list(roots)
    while todo:
        d = todo.pop()
        if d.digest in seen:
            continue
        if not store.has_blob(d.digest):
            if d.media_type in MANIFESTS | INDEXES | CONFIGS | LAYERS:
                raise StoreError(f"blob {d.digest} is missing from the store (run `buildpy fsck`)")
            continue
        seen[d.digest] = None
        todo.extend(children(store, d))
    return sorted(seen)


def _tar_info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
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


class _Writer:
    """Files of an export, into a directory or a deterministic tar."""

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
            self.tar.addfile(_tar_info(name + "/", directory=True))
        else:
            (self.out / name).mkdir()

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_stream(name, io.BytesIO(data), len(data))

    def add_stream(self, name: str, stream: IO[bytes], size: int) -> None:
        self._dir(posixpath.dirname(name))
        if self.tar is not None:
            self.tar.addfile(_tar_info(name, size), stream)
        else:
            with open(self.out / name, "wb") as f:
                shutil.copyfileobj(stream, f, _CHUNK)

    def add_blob(self, store: Store, digest: str, name: str | None = None) -> None:
        name = name or _blob_name(digest)
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
def _atomic_output(path: Path, as_tar: bool) -> Iterator[_Writer]:
    """Write beside `path`, then rename into place: a killed export leaves the old file or none."""
    path = path.absolute()
    if not path.parent.is_dir():
        raise StoreError(f"cannot write {path}: {path.parent} is not a directory")
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
        writer = _Writer(tmp, as_tar)
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


def _tag_of(name: str) -> str:
    ref = parse(name)
    return ref.tag or "latest"


def export_oci(store: Store, refs: list[str], path: str | os.PathLike[str]) -> None:
    """Write the named images as an OCI image layout (a tar when `path` ends with .tar)."""
    path = Path(path)
    named = _descriptors(store, refs)
    manifests = []
    for name, d in named:
        annotations = {REF_NAME: _tag_of(name), CONTAINERD_NAME: name}
        manifests.append(Descriptor(d.media_type, d.digest, d.size, annotations, d.platform).to_json())
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    with _atomic_output(path, str(path).endswith(".tar")) as w:
        for digest in _closure(store, [d for _, d in named]):
            w.add_blob(store, digest)
        w.add_bytes("index.json", json.dumps(index, indent=2).encode() + b"\n")
        w.add_bytes("oci-layout", canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))


def export_docker(store: Store, refs: list[str], path: str | os.PathLike[str]) -> None:
    """Write the named images as a `docker save` archive. docker load reads uncompressed and
    gzip layers only, so zstd layers go in decompressed (their digest is then the diffID)."""
    path = Path(path)
    entries: dict[str, dict[str, Any]] = {}
    images: dict[str, Image] = {}
    for name, d in _descriptors(store, refs):
        image = load_image(store, d)
        entry = entries.get(image.digest)
        if entry is None:
            entry = {"Config": _blob_name(image.id), "RepoTags": [], "Layers": []}
            entries[image.digest] = entry
            images[image.digest] = image
        entry["RepoTags"].append(parse(name).familiar)
    with _atomic_output(path, True) as w:
        written: set[str] = set()
        for digest, image in images.items():
            if image.id not in written:
                written.add(image.id)
                w.add_blob(store, image.id)
            layers = entries[digest]["Layers"]
            for layer, diff_id in zip(image.layers, image.diff_ids):
                if layer_compression(layer.media_type) == "zstd":
                    name = _blob_name(diff_id)
                    if diff_id not in written:
                        written.add(diff_id)
                        _add_decompressed(w, store, layer, diff_id, name)
                else:
                    name = _blob_name(layer.digest)
                    if layer.digest not in written:
                        written.add(layer.digest)
                        w.add_blob(store, layer.digest)
                layers.append(name)
        w.add_bytes("manifest.json", json.dumps(list(entries.values())).encode())


def _add_decompressed(w: _Writer, store: Store, layer: Descriptor, diff_id: str, name: str) -> None:
    with tempfile.TemporaryFile(dir=store.tmp_dir) as tmp, store.open_blob(layer.digest) as f:
        h = Hasher()
        reader = decompress_reader(f, "zstd")
        while chunk := reader.read(_CHUNK):
            h.update(chunk)
            tmp.write(chunk)
        if h.digest != diff_id:
            raise StoreError(f"layer {layer.digest} does not decompress to its diff_id {diff_id}")
        tmp.seek(0)
        w.add_stream(name, tmp, h.size)
