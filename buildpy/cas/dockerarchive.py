"""`docker save` archives in and out of the store: `manifest.json` (Config, RepoTags, Layers per
image), the configs and the layer tars, and a `repositories` file for old clients.

Reading takes every form in use: docker < 25 (`HEX.json` configs, `<id>/layer.tar` layers, a
layer shared between images as a symlink to the first copy), docker 25 (`blobs/sha256/HEX`),
and podman's (`HEX.tar`, `<id>/layer.tar` symlinks). Layers are usually uncompressed, sometimes
gzip (or zstd): the compression is sniffed, as docker load does. Each image becomes an OCI
manifest over the layer blobs exactly as given (media type by compression) and the config
stored byte for byte, so the image ID (the config's digest) stays what docker called it.

Writing follows docker 25: config and layers as `blobs/sha256/HEX`, `manifest.json` with
familiar RepoTags (`busybox:latest`), and `repositories` (familiar name → tag → top layer).
docker load reads uncompressed and gzip layers only, so zstd layers go in decompressed (their
digest is then their diffID).
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from pathlib import Path
from typing import Any

from buildpy.cas.archive import (
    CHUNK,
    JSON_MAX,
    ArchiveError,
    Found,
    Source,
    Writer,
    atomic_output,
    blob_name,
    check_name,
    copy_layer,
    read_json,
    stored,
)
from buildpy.cas.compress import decompress_reader
from buildpy.cas.digest import DigestError, Hasher, is_digest
from buildpy.cas.image import Image, load_image
from buildpy.cas.media import OCI_CONFIG, OCI_MANIFEST, Descriptor, layer_compression
from buildpy.cas.ocilayout import diff_ids_of
from buildpy.cas.reference import InvalidReference, parse
from buildpy.cas.store import Store, StoreError, canonical_json


def load(store: Store, src: Source) -> list[Found]:
    """Copy every image manifest.json lists into the store (refs are the caller's to set)."""
    manifest = read_json(src, "manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ArchiveError(f"{src.where}: manifest.json lists no images")
    layers_seen: dict[tuple[str, str], Descriptor] = {}  # images share layer files
    found = []
    for i, entry in enumerate(manifest):
        where = f"{src.where}: manifest.json entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or not isinstance(
            entry.get("Layers"), list
        ):
            raise ArchiveError(f"{where}: needs Config (a file name) and Layers (a list of file names)")
        config = _copy_config(store, src, check_name(entry["Config"], where), where)
        diff_ids = diff_ids_of(store.read_json(config.digest), len(entry["Layers"]), f"{where}: {entry['Config']}")
        layers = []
        for name, diff_id in zip(entry["Layers"], diff_ids):
            name = check_name(name, where)
            layer = layers_seen.get((name, diff_id))
            if layer is None:
                layer = copy_layer(store, src, name, diff_id, None, expected=_named_digest(name))
                layers_seen[(name, diff_id)] = layer
            layers.append(layer.to_json())
        names = _names(entry.get("RepoTags"), where)
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(), "layers": layers}
        data = canonical_json(doc)
        desc = Descriptor(OCI_MANIFEST, store.put_bytes(data), len(data))
        found.append(Found(names, desc, load_image(store, desc)))
    return found


def _named_digest(name: str) -> str | None:
    """The digest a file name promises: `blobs/sha256/HEX` (content-addressed by definition).
    Other names (`<id>/layer.tar`, podman's `HEX.tar`) promise nothing we rely on."""
    if name.startswith("blobs/sha256/") and is_digest("sha256:" + name[len("blobs/sha256/"):]):
        return "sha256:" + name[len("blobs/sha256/"):]
    return None


def _copy_config(store: Store, src: Source, name: str, where: str) -> Descriptor:
    """The config, stored verbatim; its name (`HEX.json`, `blobs/sha256/HEX`) is its digest,
    the image ID, and must match."""
    base = posixpath.basename(name)
    hexpart = base[: -len(".json")] if base.endswith(".json") else base
    expected = f"sha256:{hexpart}" if is_digest(f"sha256:{hexpart}") else None
    f, size = src.open(name)
    with f:
        if size > JSON_MAX:
            raise ArchiveError(f"{where}: config {name} is too large ({size} bytes)")
        try:
            digest = store.put_stream(f, expected, size)
        except DigestError as e:
            raise ArchiveError(f"{where}: config {name}: {e}") from None
    if not isinstance(store.read_json(digest), dict):
        raise ArchiveError(f"{where}: config {name} is not a JSON object")
    return Descriptor(OCI_CONFIG, digest, store.blob_size(digest))


def _names(tags: Any, where: str) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ArchiveError(f"{where}: RepoTags must be a list of names")
    try:
        return list(dict.fromkeys(parse(t).name for t in tags))
    except InvalidReference as e:
        raise ArchiveError(f"{where}: RepoTags: {e}") from None


# export


def export(store: Store, refs: list[str], path: Path) -> None:
    """Write the named images as a `docker save` tar (one manifest.json entry per image)."""
    entries: dict[str, dict[str, Any]] = {}
    images: dict[str, Image] = {}
    repositories: dict[str, dict[str, str]] = {}
    for name, d in stored(store, refs):
        image = load_image(store, d)
        if len(image.diff_ids) != len(image.layers):
            raise StoreError(f"image {name}: its config lists {len(image.diff_ids)} diff_ids for "
                             f"{len(image.layers)} layers")
        entry = entries.setdefault(image.digest, {"Config": blob_name(image.id), "RepoTags": [], "Layers": []})
        images[image.digest] = image
        ref = parse(name)
        if ref.tag and ref.familiar_repository + ":" + ref.tag not in entry["RepoTags"]:
            entry["RepoTags"].append(ref.familiar_repository + ":" + ref.tag)
    # what goes in: blob name → (stored blob, whether to decompress it from zstd)
    files: dict[str, tuple[Descriptor, str | None]] = {}
    for digest, image in images.items():
        entry = entries[digest]
        files[entry["Config"]] = (image.config_descriptor, None)
        for layer, diff_id in zip(image.layers, image.diff_ids):
            if layer_compression(layer.media_type) == "zstd":
                name = blob_name(diff_id)
                files[name] = (layer, diff_id)
            else:
                name = blob_name(layer.digest)
                files[name] = (layer, None)
            entry["Layers"].append(name)
        for tag in entry["RepoTags"]:
            repo, _, t = tag.rpartition(":")
            if entry["Layers"]:
                repositories.setdefault(repo, {})[t] = posixpath.basename(entry["Layers"][-1])
    with atomic_output(path, True) as w:
        for name in sorted(files):
            blob, diff_id = files[name]
            if diff_id is None:
                w.add_blob(store, blob.digest, name)
            else:
                _add_decompressed(w, store, blob, diff_id, name)
        w.add_bytes("manifest.json", json.dumps(list(entries.values())).encode() + b"\n")
        if repositories:
            w.add_bytes("repositories", canonical_json(repositories) + b"\n")


def _add_decompressed(w: Writer, store: Store, layer: Descriptor, diff_id: str, name: str) -> None:
    # through a temp file: a tar header needs the size before the data
    with tempfile.TemporaryFile(dir=store.tmp_dir) as tmp, store.open_blob(layer.digest) as f:
        h = Hasher()
        reader = decompress_reader(f, "zstd")
        while chunk := reader.read(CHUNK):
            h.update(chunk)
            tmp.write(chunk)
        if h.digest != diff_id:
            raise StoreError(f"layer {layer.digest} does not decompress to its diff_id {diff_id}")
        tmp.seek(0)
        w.add_stream(name, tmp, h.size)
