"""The image model: manifests, configs and indexes read from and written to the store.

Reads OCI and Docker schema2 media types alike; writes OCI. An index (or Docker manifest list)
resolves to the manifest for one platform, linux/amd64 unless asked otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from buildpy.cas.media import (
    CONFIGS,
    INDEXES,
    LAYERS,
    MANIFESTS,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
)
from buildpy.cas.store import Store, StoreError, canonical_json


def host_platform() -> str:
    import platform as _platform  # here: the no-change build path never needs it

    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)
    return f"linux/{arch}"


@dataclass(frozen=True)
class Image:
    """One platform's image: its manifest and config, as stored."""

    manifest_descriptor: Descriptor
    manifest: dict[str, Any]
    config_descriptor: Descriptor
    config: dict[str, Any]

    @property
    def digest(self) -> str:
        return self.manifest_descriptor.digest

    @property
    def id(self) -> str:
        """What `docker images` calls the image ID: the config's digest."""
        return self.config_descriptor.digest

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.from_json(d, "manifest layer") for d in self.manifest.get("layers", [])]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids", []))

    @property
    def size(self) -> int:
        return sum(d.size for d in self.layers) + self.config_descriptor.size


def _platform_matches(entry: dict[str, Any] | None, want: str) -> bool:
    if not entry:
        return False
    parts = want.split("/")
    if entry.get("os") != parts[0] or entry.get("architecture") != parts[1]:
        return False
    return len(parts) < 3 or entry.get("variant") in (None, parts[2])


def select_manifest(index: dict[str, Any], want: str | None = None) -> Descriptor:
    """The manifest of `index` for platform `want` (default the host's, as docker picks)."""
    want = want or host_platform()
    entries = [Descriptor.from_json(m, "index entry") for m in index.get("manifests", [])]
    for d in entries:
        if d.media_type in MANIFESTS | INDEXES and _platform_matches(d.platform, want):
            return d
    if len(entries) == 1 and entries[0].platform is None:
        return entries[0]
    have = ", ".join(
        "/".join(filter(None, [d.platform.get("os"), d.platform.get("architecture"), d.platform.get("variant")]))
        for d in entries
        if d.platform
    )
    raise StoreError(f"no image for platform {want} in the index (it has: {have or 'none'})")


def check_manifest(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("schemaVersion") != 2:
        raise StoreError(f"{where}: not a schemaVersion 2 manifest")
    Descriptor.from_json(obj.get("config"), f"{where}: config")
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise StoreError(f"{where}: layers must be a list")
    for i, layer in enumerate(layers):
        d = Descriptor.from_json(layer, f"{where}: layer {i}")
        if d.media_type not in LAYERS:
            raise StoreError(f"{where}: layer {i} has unsupported media type {d.media_type}")
    return obj


def load_image(store: Store, descriptor: Descriptor, platform: str | None = None) -> Image:
    """The image a manifest or index descriptor names, following an index to one platform."""
    seen = 0
    while descriptor.media_type in INDEXES:
        seen += 1
        if seen > 4:
            raise StoreError(f"index {descriptor.digest} nests too deeply")
        descriptor = select_manifest(store.read_json(descriptor.digest), platform)
    if descriptor.media_type not in MANIFESTS:
        raise StoreError(f"{descriptor.digest}: unsupported media type {descriptor.media_type}")
    manifest = check_manifest(store.read_json(descriptor.digest), f"manifest {descriptor.digest}")
    config_desc = Descriptor.from_json(manifest["config"], "manifest config")
    if config_desc.media_type not in CONFIGS:
        raise StoreError(f"manifest {descriptor.digest}: config has media type {config_desc.media_type}")
    config = store.read_json(config_desc.digest)
    if not isinstance(config, dict):
        raise StoreError(f"config {config_desc.digest} is not a JSON object")
    return Image(descriptor, manifest, config_desc, config)


def children(store: Store, descriptor: Descriptor) -> list[Descriptor]:
    """The blobs a manifest or index points at directly (for gc, fsck, export, push)."""
    if descriptor.media_type in INDEXES:
        obj = store.read_json(descriptor.digest)
        return [Descriptor.from_json(m, "index entry") for m in obj.get("manifests", [])]
    if descriptor.media_type in MANIFESTS:
        obj = store.read_json(descriptor.digest)
        out = [Descriptor.from_json(obj.get("config"), "manifest config")]
        out += [Descriptor.from_json(d, "manifest layer") for d in obj.get("layers", [])]
        return out
    return []


def now_rfc3339() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_config(platform: str | None = None, created: str | None = None) -> dict[str, Any]:
    """An empty image config (as `FROM scratch` starts from)."""
    parts = (platform or host_platform()).split("/")
    config: dict[str, Any] = {
        "architecture": parts[1],
        "os": parts[0],
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }
    if len(parts) > 2:
        config["variant"] = parts[2]
    if created:
        config["created"] = created
    return config


def write_image(
    store: Store,
    config: dict[str, Any],
    layers: list[Descriptor],
    annotations: dict[str, str] | None = None,
) -> Image:
    """Store a config and an OCI manifest over `layers` (blobs already in the store)."""
    if len(config.get("rootfs", {}).get("diff_ids", [])) != len(layers):
        raise StoreError("config lists a different number of diff_ids than the manifest has layers")
    config_digest, config_size = store.put_json(config)
    config_desc = Descriptor(OCI_CONFIG, config_digest, config_size)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    data = canonical_json(manifest)
    digest = store.put_bytes(data)
    return Image(Descriptor(OCI_MANIFEST, digest, len(data)), manifest, config_desc, config)


def write_index(store: Store, manifests: list[Descriptor]) -> Descriptor:
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d.to_json() for d in manifests]}
    data = canonical_json(index)
    return Descriptor(OCI_INDEX, store.put_bytes(data), len(data))
