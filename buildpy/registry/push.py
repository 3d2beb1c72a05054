"""Pushing: each blob of an image is HEADed first and sent only when the registry lacks it (a
cross-repository mount when the registry holds it in another repository we know of), several
at once; then the manifest, byte for byte as stored, with its media type. An index goes up
after the manifests it lists.
"""

from __future__ import annotations

from collections.abc import Iterable

from buildpy.cas.media import INDEXES, Descriptor
from buildpy.cas.reference import Reference, parse
from buildpy.cas.store import Store, StoreError
from buildpy.registry import origins, parallel
from buildpy.registry.client import Client, Progress, _no_progress
from buildpy.registry.parallel import JOBS
from buildpy.registry.clients import Clients
from buildpy.registry.settings import RegistryError


def push_blobs(store: Store, client: Client, repo: str, descs: Iterable[Descriptor],
               progress: Progress = _no_progress, jobs: int = JOBS) -> None:
    """Make the registry hold every blob of `descs` in `repo`, sending only what it lacks."""
    todo = list({d.digest: d for d in descs}.values())
    if not todo:
        return
    parallel.each(lambda d: _push_blob(store, client, repo, d, progress), todo, jobs, "push")
    origins.remember(store, [d.digest for d in todo], client.domain, repo)


def _push_blob(store: Store, client: Client, repo: str, d: Descriptor, progress: Progress) -> None:
    if client.has_blob(repo, d.digest, for_push=True):
        progress(d.digest, "exists", d.size, d.size)
        return
    for where in origins.lookup(store, d.digest):
        domain, _, source_repo = where.partition("/")
        if domain == client.domain and source_repo != repo and client.mount_blob(repo, d.digest, source_repo):
            progress(d.digest, f"mounted from {source_repo}", d.size, d.size)
            return
    if not store.has_blob(d.digest):
        raise StoreError(f"blob {d.digest} is not in the store; cannot push it")
    progress(d.digest, "start", 0, d.size)
    client.upload_blob(repo, d, lambda: store.open_blob(d.digest), progress)


def push_manifest(store: Store, client: Client, repo: str, desc: Descriptor, reference: str,
                  progress: Progress = _no_progress) -> str:
    """Push what `desc` names (a manifest with its blobs, or an index with its manifests) and
    tag it `reference` (a tag, or its digest)."""
    obj = store.read_json(desc.digest)
    if desc.media_type in INDEXES:
        for entry in obj.get("manifests", []):
            child = Descriptor.from_json(entry, "index entry")
            if not store.has_blob(child.digest):
                raise StoreError(f"index {desc.digest}: manifest {child.digest} is not in the store")
            push_manifest(store, client, repo, child, child.digest, progress)
    else:
        blobs = [Descriptor.from_json(obj["config"], "manifest config")]
        blobs += [Descriptor.from_json(d, "manifest layer") for d in obj.get("layers", [])]
        push_blobs(store, client, repo, blobs, progress)
    return client.put_manifest(repo, reference, desc.media_type, store.read_blob(desc.digest))


def push(store: Store, source: str, dest: str | None, clients: Clients,
         progress: Progress = _no_progress) -> tuple[Reference, str]:
    """`buildpy push NAME[:TAG] [DEST]`: returns the destination and the pushed digest."""
    from buildpy.cas.reference import lookup

    name, desc = lookup(store, source)
    try:
        target = parse(dest or name or source)
    except ValueError as e:
        raise RegistryError(f"invalid destination {dest or source!r}: {e}") from None
    if target.tag is None and target.digest is None:
        target = target.with_tag("latest")
    if target.digest is not None and target.digest != desc.digest:
        raise RegistryError(f"{target}: the digest is not that of {source} ({desc.digest})")
    client = clients.get(target.domain)
    with store.lease():
        digest = push_manifest(store, client, target.path, desc, target.tag or desc.digest, progress)
    origins.remember(store, [desc.digest], target.domain, target.path)
    return target, digest
