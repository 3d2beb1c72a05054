"""Pulling: a reference → its manifest (an index followed to one platform) → the config and the
layers the store lacks, several at once, each verified as it streams in. Blobs first, then the
manifest, then the ref: a pull stopped at any moment leaves no ref to missing content.

`resolve` stops after the manifest and config, so a build can plan with an image whose layers
stay in the registry until a step needs them (`BlobSource`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from buildpy.cas.image import Image, check_manifest, select_manifest
from buildpy.cas.media import CONFIGS, INDEXES, Descriptor
from buildpy.cas.reference import Reference, parse
from buildpy.cas.store import Store, StoreError
from buildpy.registry import origins, parallel
from buildpy.registry.client import Client, Progress, _no_progress
from buildpy.registry.clients import Clients
from buildpy.registry.settings import RegistryError

JOBS = parallel.JOBS  # blobs at once
CONFIG_MAX = 16 << 20


@dataclass(frozen=True)
class Resolved:
    """What a reference names in its registry: the platform manifest (stored), its image, and
    where its blobs are."""

    reference: Reference
    image: Image
    client: Client
    repo: str
    digest: str = ""  # what the reference named: the index's digest, or the manifest's

    @property
    def name(self) -> str:
        """The ref a pull tags: the reference as given, `:latest` when it names no tag."""
        ref = self.reference
        return ref.name if ref.digest else (ref.with_tag(ref.tag).name if ref.tag else ref.with_tag("latest").name)


@dataclass(frozen=True)
class Pulled:
    """What a pull did: the ref it set, the image, and whether the ref named another image (or
    nothing) before — docker's "Downloaded newer image" against "Image is up to date"."""

    name: str
    image: Image
    digest: str
    updated: bool


def resolve(store: Store, text: str, clients: Clients, platform: str | None = None) -> Resolved:
    """Fetch the manifest and config `text` names (for `platform` from an index) into the store."""
    ref = parse(text)
    client = clients.get(ref.domain)
    repo = ref.path
    desc, data = client.get_manifest(repo, ref.digest or ref.tag or "latest")
    named = desc.digest
    depth = 0
    while desc.media_type in INDEXES:
        depth += 1
        if depth > 4:
            raise RegistryError(f"{text}: indexes nest too deeply")
        try:
            chosen = select_manifest(json.loads(data), platform)
        except (StoreError, ValueError) as e:
            raise RegistryError(f"{text}: {e}") from None
        desc, data = client.get_manifest(repo, chosen.digest)
    where = f"{text}: manifest {desc.digest}"
    try:
        manifest = check_manifest(json.loads(data), where)
        config_desc = Descriptor.from_json(manifest["config"], f"{where}: config")
        layers = [Descriptor.from_json(d, f"{where}: layer") for d in manifest["layers"]]
    except (StoreError, ValueError) as e:
        raise RegistryError(str(e)) from None
    if config_desc.media_type not in CONFIGS:
        raise RegistryError(f"{where}: config media type {config_desc.media_type} is not an image's")
    if config_desc.size > CONFIG_MAX:
        raise RegistryError(f"{where}: config of {config_desc.size} bytes is too large")
    client.fetch_blob(repo, config_desc, store)
    try:
        config = store.read_json(config_desc.digest)
        diff_ids = config["rootfs"]["diff_ids"]
        if not isinstance(config, dict) or not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise ValueError("rootfs.diff_ids does not match the layers")
    except (StoreError, ValueError, KeyError, TypeError) as e:
        raise RegistryError(f"{text}: config {config_desc.digest}: {e}") from None
    store.put_bytes(data, desc.digest)
    origins.remember(store, [config_desc.digest, desc.digest], ref.domain, repo)
    return Resolved(ref, Image(desc, manifest, config_desc, config), client, repo, named)


def fetch(store: Store, client: Client, repo: str, descs: Iterable[Descriptor], progress: Progress = _no_progress,
          jobs: int = JOBS) -> None:
    """Download the blobs the store lacks, `jobs` at once; the first failure is raised."""
    missing = [d for d in dict.fromkeys(descs) if not store.has_blob(d.digest)]
    for d in descs:
        if store.has_blob(d.digest):
            progress(d.digest, "exists", d.size, d.size)
    parallel.each(lambda d: client.fetch_blob(repo, d, store, progress), missing, jobs, "pull")
    origins.remember(store, [d.digest for d in missing], client.domain, repo)


def pull(store: Store, text: str, clients: Clients, platform: str | None = None,
         progress: Progress = _no_progress) -> tuple[str, Image]:
    """`buildpy pull`: the image with all its layers, then the ref; returns (ref name, image)."""
    pulled = pull_image(store, text, clients, platform, progress)
    return pulled.name, pulled.image


def pull_image(store: Store, text: str, clients: Clients, platform: str | None = None,
               progress: Progress = _no_progress,
               on_resolved: Callable[[Resolved], None] | None = None) -> Pulled:
    """As `pull`, telling more; `on_resolved` is called once the manifest and config are in,
    before any layer is fetched (the Engine API starts its progress stream there, so a missing
    image is still an HTTP error)."""
    with store.lease():
        resolved = resolve(store, text, clients, platform)
        if on_resolved is not None:
            on_resolved(resolved)
        fetch(store, resolved.client, resolved.repo, resolved.image.layers, progress)
        name = resolved.name
        before = store.get_ref(name)
        store.set_ref(name, resolved.image.manifest_descriptor)
    updated = before is None or before.digest != resolved.image.manifest_descriptor.digest
    return Pulled(name, resolved.image, resolved.digest or resolved.image.digest, updated)
