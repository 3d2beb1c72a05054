"""OCI image layouts (image-layout.md) in and out of the store: `oci-layout`, `index.json` and
`blobs/sha256/HEX`, as a directory or a tar (what `skopeo copy oci:`/`oci-archive:`, umoci,
`podman save --format oci-archive` and buildx `--output type=oci` write).

Reading: every index.json entry must be an image (a manifest or an index); its tree is copied
blob by blob, each checked against its descriptor. An index may also list what is not an image
for us (buildx's attestation manifests, signatures): those blobs are copied verified but not
judged, so the index still exports whole. Names come from `io.containerd.image.name` or from an
`org.opencontainers.image.ref.name` that is a whole reference; a ref.name that is only a tag
(`latest`, as skopeo writes for `oci:DIR:latest`) names no repository, so the image loads
untagged, as `docker load` leaves it.

Writing: index.json lists each named image with ref.name = its tag (what `skopeo oci:DIR:TAG`
and `umoci --image DIR:TAG` look up) and io.containerd.image.name = the full name (what
containerd and docker 25 read back).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from buildpy.cas.archive import (
    JSON_MAX,
    ArchiveError,
    Found,
    Source,
    atomic_output,
    blob_name,
    copy_blob,
    copy_layer,
    read_json,
    stored,
)
from buildpy.cas.digest import DigestError, is_digest
from buildpy.cas.image import Image, children, load_image
from buildpy.cas.media import (
    CONFIGS,
    INDEXES,
    LAYERS,
    MANIFESTS,
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    REF_NAME,
    Descriptor,
    layer_compression,
)
from buildpy.cas.reference import InvalidReference, parse
from buildpy.cas.store import Store, StoreError, canonical_json

CONTAINERD_NAME = "io.containerd.image.name"
_DEPTH_MAX = 4  # index → index → manifest is as deep as anything real goes


def load(store: Store, src: Source) -> list[Found]:
    """Copy every image index.json lists into the store (refs are the caller's to set)."""
    layout = read_json(src, "oci-layout")
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != OCI_LAYOUT_VERSION:
        raise ArchiveError(f"{src.where}: oci-layout: imageLayoutVersion is not {OCI_LAYOUT_VERSION}")
    index = read_json(src, "index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ArchiveError(f"{src.where}: index.json lists no images")
    found = []
    for i, entry in enumerate(entries):
        where = f"{src.where}: index.json entry {i}"
        d = _descriptor(entry, where)
        if d.media_type not in MANIFESTS | INDEXES:
            raise ArchiveError(f"{where}: unsupported media type {d.media_type!r} (not an image)")
        _copy_tree(store, src, d, where, artifacts_ok=False)
        name = _ref_name(d.annotations, where)
        target = Descriptor(d.media_type, d.digest, d.size, platform=d.platform)
        found.append(Found([name] if name else [], target, _image_for(store, target, where)))
    return found


def _descriptor(obj: Any, where: str) -> Descriptor:
    try:
        return Descriptor.from_json(obj, where)
    except DigestError as e:
        raise ArchiveError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


def _copy_document(store: Store, src: Source, d: Descriptor, where: str) -> dict[str, Any]:
    """Copy a manifest, index or config and read it back as a JSON object."""
    if d.size > JSON_MAX:
        raise ArchiveError(f"{where}: {d.digest} is too large ({d.size} bytes) for a {d.media_type}")
    copy_blob(store, src, d)
    obj = store.read_json(d.digest)
    if not isinstance(obj, dict):
        raise ArchiveError(f"{where}: {d.digest} is not a JSON object")
    return obj


def _copy_tree(store: Store, src: Source, d: Descriptor, where: str, artifacts_ok: bool, depth: int = 0) -> None:
    if depth > _DEPTH_MAX:
        raise ArchiveError(f"{where}: indexes nest too deeply at {d.digest}")
    if d.media_type in MANIFESTS:
        _copy_manifest(store, src, d, where, artifacts_ok)
        return
    obj = _copy_document(store, src, d, where)
    if obj.get("schemaVersion") != 2 or not isinstance(obj.get("manifests"), list):
        raise ArchiveError(f"{where}: index {d.digest} is not a schemaVersion 2 index with a manifests list")
    for i, entry in enumerate(obj["manifests"]):
        child = _descriptor(entry, f"{where}: index {d.digest} entry {i}")
        if child.media_type in MANIFESTS | INDEXES:
            _copy_tree(store, src, child, where, artifacts_ok=True, depth=depth + 1)
        elif src.exists(blob_name(child.digest)):
            copy_blob(store, src, child)  # not ours to judge, only to keep whole


def _copy_manifest(store: Store, src: Source, d: Descriptor, where: str, artifacts_ok: bool) -> None:
    obj = _copy_document(store, src, d, where)
    layers_json = obj.get("layers")
    if obj.get("schemaVersion") != 2 or not isinstance(layers_json, list):
        raise ArchiveError(f"{where}: manifest {d.digest} is not a schemaVersion 2 manifest with a layers list")
    config = _descriptor(obj.get("config"), f"{where}: manifest {d.digest} config")
    layers = [_descriptor(x, f"{where}: manifest {d.digest} layer {i}") for i, x in enumerate(layers_json)]
    odd = config.media_type if config.media_type not in CONFIGS else next(
        (x.media_type for x in layers if x.media_type not in LAYERS), None
    )
    if odd is not None:
        if not artifacts_ok:
            raise ArchiveError(f"{where}: manifest {d.digest} is not an image: unsupported media type {odd!r}")
        for blob in (config, *layers):  # an attestation or signature: kept verified, not judged
            copy_blob(store, src, blob)
        return
    cfg = _copy_document(store, src, config, where)
    diff_ids = diff_ids_of(cfg, len(layers), f"{where}: config {config.digest}")
    for layer, diff_id in zip(layers, diff_ids):
        copy_layer(store, src, blob_name(layer.digest), diff_id, layer_compression(layer.media_type),
                   expected=layer.digest, size=layer.size)


def diff_ids_of(config: dict[str, Any], layers: int, where: str) -> list[str]:
    """The config's rootfs.diff_ids, checked: digests, one per layer."""
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(x, str) and is_digest(x) for x in diff_ids):
        raise ArchiveError(f"{where}: rootfs.diff_ids must be a list of sha256 digests")
    if len(diff_ids) != layers:
        raise ArchiveError(f"{where}: lists {len(diff_ids)} diff_ids for {layers} layers")
    return diff_ids


def _ref_name(annotations: dict[str, str], where: str) -> str | None:
    """The full name an index entry gives its image: containerd's annotation, else an OCI
    ref.name that is a whole reference (one without `/` or `:` is only a tag)."""
    text = annotations.get(CONTAINERD_NAME)
    if not text:
        text = annotations.get(REF_NAME)
        if not text or ("/" not in text and ":" not in text):
            return None
    try:
        return parse(text).name
    except InvalidReference as e:
        raise ArchiveError(f"{where}: bad image name {text!r}: {e}") from None


def _image_for(store: Store, d: Descriptor, where: str) -> Image:
    """The image an entry stands for: the host's platform of an index, else its first image."""
    try:
        return load_image(store, d)
    except StoreError as e:
        if d.media_type not in INDEXES:
            raise ArchiveError(f"{where}: {e}") from None
        for child in children(store, d):
            try:
                return load_image(store, child)
            except StoreError:
                continue
        raise ArchiveError(f"{where}: index {d.digest} holds no image") from None


# export


def export(store: Store, refs: list[str], path: Path) -> None:
    """Write the named images as an OCI image layout (a tar when `path` ends with .tar)."""
    named = stored(store, refs)
    manifests = []
    for name, d in named:
        annotations = {CONTAINERD_NAME: name}
        tag = parse(name).tag
        if tag:  # a name@digest ref has no tag to look it up by
            annotations[REF_NAME] = tag
        manifests.append(Descriptor(d.media_type, d.digest, d.size, annotations, d.platform).to_json())
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    with atomic_output(path, path.name.endswith(".tar")) as w:
        for digest in closure(store, [d for _, d in named]):
            w.add_blob(store, digest)
        w.add_bytes("index.json", json.dumps(index, indent=2).encode() + b"\n")
        w.add_bytes("oci-layout", canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))


def closure(store: Store, roots: list[Descriptor]) -> list[str]:
    """Every blob the roots reach, sorted. A missing image blob is an error; a missing blob of
    a type we do not know (a foreign layer's, an artifact's) is left out, as registries do."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        d = todo.pop()
        if d.digest in seen:
            continue
        if not store.has_blob(d.digest):
            if d.media_type in MANIFESTS | INDEXES | CONFIGS | LAYERS:
                raise StoreError(f"blob {d.digest} ({d.media_type}) is missing from the store (run `buildpy fsck`)")
            continue
        seen.add(d.digest)
        try:
            todo.extend(children(store, d))
        except DigestError as e:
            raise StoreError(f"{d.digest}: {e}") from None
    return sorted(seen)
