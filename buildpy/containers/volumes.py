"""Named volumes: directories under `ROOT/volumes/<name>/_data` that outlive containers, made on
first use by `run -v NAME:/path` (or `volume create`), listed and removed by `buildpy volume
ls|rm` and the Engine API. What a container writes there is never part of its change (a mount,
not its upper dir). Beside `_data`, `volume.json` (written atomically) keeps what the API was
told: labels, driver options, the creation time; a volume without one (made by `run -v`) reads
as unlabelled, created when its directory was."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from buildpy.cas.store import Store, canonical_json, write_atomic
from buildpy.containers.state import ContainerError, all_containers

DIR = "volumes"
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_META = "volume.json"


class NoSuchVolume(ContainerError):
    """No volume has that name (the API answers 404)."""


class VolumeInUse(ContainerError):
    """A container uses the volume (the API answers 409)."""


@dataclass(frozen=True)
class Volume:
    name: str
    mountpoint: Path
    created: float
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False


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


def create(store: Store, name: str = "", labels: dict[str, str] | None = None,
           options: dict[str, str] | None = None) -> Volume:
    """The volume `name` (a random one when empty, an anonymous volume as docker's), made with
    its labels unless it exists already (then it is left as it is, as docker does)."""
    anonymous = not name
    name = name or secrets.token_hex(32)
    data = ensure(store, name)
    meta = data.parent / _META
    if not meta.exists():
        obj = {"name": name, "created": time.time(), "labels": dict(labels or {}), "options": dict(options or {}),
               "anonymous": anonymous}
        write_atomic(meta, canonical_json(obj))
    return get(store, name)


def get(store: Store, name: str) -> Volume:
    if not is_volume_name(name) or not path(store, name).is_dir():
        raise NoSuchVolume(f"no such volume: {name}")
    data = path(store, name)
    try:
        obj = json.loads((data.parent / _META).read_text())
        if not isinstance(obj, dict):
            obj = {}
    except (OSError, ValueError):
        obj = {}
    created = obj.get("created")
    if not isinstance(created, (int, float)):
        created = data.parent.stat().st_mtime
    return Volume(name, data, float(created), {str(k): str(v) for k, v in (obj.get("labels") or {}).items()},
                  {str(k): str(v) for k, v in (obj.get("options") or {}).items()}, bool(obj.get("anonymous")))


def names(store: Store) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(store.root / DIR) if e.is_dir())
    except FileNotFoundError:
        return []


def users(store: Store, name: str) -> list[str]:
    """The names of the containers (any status) that mount the volume."""
    return sorted(c.name for c in all_containers(store) if f"volume:{name}" in c.extra.get("volumes", []))


def remove(store: Store, name: str, force: bool = False) -> None:
    if name not in names(store):
        raise NoSuchVolume(f"no volume {name}")
    using = users(store, name)
    if using and not force:
        raise VolumeInUse(f"volume {name} is in use by {', '.join(using)}; remove them first or use -f")
    from buildpy.sandbox.step import remove_workdir

    remove_workdir(store.root / DIR / name)  # rootless, its files may belong to a mapped range
