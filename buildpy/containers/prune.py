"""What `buildpy prune` and the Engine API's image prune remove: every blob no tag and no kept
container reaches (the store's gc, with tmp/ and, when asked, the cache mounts), then the layer
snapshots whose blobs went; with `all_unused` (docker image prune -a) every tag naming an image
no container uses goes first. Containers are the reason it lives here: their images are kept."""

from __future__ import annotations

from dataclasses import dataclass

from buildpy.cas.store import Store


@dataclass(frozen=True)
class Pruned:
    untagged: tuple[str, ...]  # ref names
    images_removed: tuple[str, ...]  # image IDs whose manifest went
    blobs_removed: int
    snapshots_removed: int
    bytes_freed: int


def prune(store: Store, *, cache_mounts: bool = False, all_unused: bool = False) -> Pruned:
    from buildpy.cas.gc import prune as gc_prune
    from buildpy.cas.gc import untag_unused
    from buildpy.containers.state import image_roots
    from buildpy.sandbox import snapshots

    untagged = tuple(untag_unused(store, image_roots(store))) if all_unused else ()
    report = gc_prune(store, cache_mounts=cache_mounts, keep=image_roots(store))
    snapshots_removed, snapshots_freed = snapshots.prune(store)
    return Pruned(untagged, tuple(report.images_removed), report.blobs_removed, snapshots_removed,
                  report.total_freed + snapshots_freed)
