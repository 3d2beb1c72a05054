"""Disk usage, as `docker system df` reports it: the bytes of a directory tree, of a container's
change (its upper dir), of a volume and how many containers use it, and of the images' layers
(each layer blob counted once however many images share it)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from buildpy.cas.image import Image
from buildpy.cas.store import Store
from buildpy.containers import state, volumes
from buildpy.containers.state import Container


def tree_size(path: Path) -> int:
    """The bytes of the files below `path` (a hardlinked file once, symlinks as their own size,
    never followed); 0 when it is missing. What vanishes during the walk is skipped."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def change_size(store: Store, container: Container) -> int:
    """The bytes the container wrote over its image (docker's SizeRw)."""
    return tree_size(state.directory(store, container) / "upper")


@dataclass(frozen=True)
class VolumeUsage:
    size: int
    ref_count: int  # the containers (any status) that mount it


def volume_usage(store: Store, name: str) -> VolumeUsage:
    return VolumeUsage(tree_size(volumes.path(store, name)), len(volumes.users(store, name)))


@dataclass(frozen=True)
class LayerUsage:
    total: int  # every distinct layer blob, once
    shared: dict[str, int]  # per image id: the bytes of its layers that another image has too


def layer_usage(images: Iterable[Image]) -> LayerUsage:
    by_id = {image.id: image for image in images}
    owners: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    for image in by_id.values():
        for layer in image.layers:
            owners.setdefault(layer.digest, set()).add(image.id)
            sizes[layer.digest] = layer.size
    shared = {image_id: sum(d.size for d in dict((x.digest, x) for x in image.layers).values()
                            if len(owners[d.digest]) > 1)
              for image_id, image in by_id.items()}
    return LayerUsage(sum(sizes.values()), shared)
