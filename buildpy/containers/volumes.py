"""Named volumes: directories under `ROOT/volumes/<name>/_data` that outlive containers, made on
first use by `run -v NAME:/path`, listed and removed by `buildpy volume ls|rm`. What a container
writes there is never part of its change (a mount, not its upper dir)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from buildpy.cas.store import Store
from buildpy.containers.state import ContainerError, all_containers

DIR = "volumes"
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def is_volume_name(text: str) -> bool:
    return _NAME.fullmatch(text) is not None


def path(store: Store, name: str) -> Path:
    return store.root / DIR / name / "_data"


def ensure(store: Store, name: str) -> Path:
    if not is_volume_name(name):
        raise ContainerError(f"invalid volume name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    data = path(store, name)
    if not data.is_dir():
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o755)
    return data


def names(store: Store) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(store.root / DIR) if e.is_dir())
    except FileNotFoundError:
        return []


def remove(store: Store, name: str, force: bool = False) -> None:
    if name not in names(store):
        raise ContainerError(f"no volume {name}")
    users = [c.name for c in all_containers(store) if f"volume:{name}" in c.extra.get("volumes", [])]
    if users and not force:
        raise ContainerError(f"volume {name} is in use by {', '.join(sorted(users))}; remove them first or use -f")
    from buildpy.sandbox.step import remove_workdir

    remove_workdir(store.root / DIR / name)  # rootless, its files may belong to a mapped range
