"""Containers on disk: `ROOT/containers/<id>/` holds `container.json` (what it runs, on which
image, its status and exit code, its limits and mounts) and its overlay's `upper/` (the
container's change, kept after its process ends unless `--rm`, read by `commit`). Containers of `buildpy serve` also keep their
output there (`log.jsonl`, supervisor.py's). Names are
unique in a store; a container is named by its name, its ID or an unambiguous ID prefix.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from buildpy.cas.store import Store, StoreError, canonical_json, write_atomic

DIR = "containers"
_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "happy", "keen", "lucid", "merry", "nimble",
               "proud", "quiet", "swift", "tender", "vivid", "wise")
_NOUNS = ("archimedes", "bohr", "curie", "darwin", "euler", "faraday", "gauss", "hopper", "kepler",
          "lovelace", "noether", "pascal", "ritchie", "turing", "volta", "wright")


class ContainerError(Exception):
    user_facing = True


class NoSuchContainer(ContainerError):
    """No container has that name, ID or ID prefix (the API answers 404)."""


class Conflict(ContainerError):
    """What is asked clashes with a container's state or name (the API answers 409)."""


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str  # as the user named it
    image_digest: str  # the manifest it runs
    command: tuple[str, ...]
    created: float
    status: str = "created"  # created | running | exited
    exit_code: int | None = None
    pid: int | None = None  # of the `buildpy run` supervising it
    limits: str = ""
    mounts: tuple[str, ...] = ()  # container paths of volumes and bind mounts (never in a commit)
    network: str = "private"
    ports: tuple[str, ...] = ()
    finished: float | None = None
    started: float | None = None
    error: str = ""  # why the sandbox could not run it, when it could not
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id[:12]


def root(store: Store) -> Path:
    return store.root / DIR


def directory(store: Store, container: Container) -> Path:
    return root(store) / container.id


def save(store: Store, container: Container) -> None:
    """Write the record. Its name is the one on disk: names change only by `rename` (a running
    container's supervisor saves the record it started with when the container ends)."""
    d = directory(store, container)
    d.mkdir(parents=True, exist_ok=True)
    on_disk = _load(d)
    if on_disk is not None and on_disk.name != container.name:
        container = replace(container, name=on_disk.name)
    write_atomic(d / "container.json", canonical_json(asdict(container)))


def rename(store: Store, container: Container, name: str) -> Container:
    """Give the container a new name (Conflict if another container has it)."""
    name = name.removeprefix("/")
    with store.lock("containers"):
        if not _valid_name(name):
            raise ContainerError(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        current = _load(directory(store, container))
        if current is None:
            raise NoSuchContainer(f"no container {container.name}")
        if name == current.name:
            raise ContainerError("Renaming a container with the same name as its current name")
        if any(c.name == name for c in all_containers(store)):
            raise Conflict(f"Conflict. The container name \"/{name}\" is already in use. You have to remove "
                           "(or rename) that container to be able to reuse that name.")
        renamed = replace(current, name=name)
        write_atomic(directory(store, container) / "container.json", canonical_json(asdict(renamed)))
    return renamed


def _load(path: Path) -> Container | None:
    try:
        obj = json.loads((path / "container.json").read_text())
        obj["command"] = tuple(obj["command"])
        obj["mounts"] = tuple(obj.get("mounts", ()))
        obj["ports"] = tuple(obj.get("ports", ()))
        return Container(**obj)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def all_containers(store: Store) -> list[Container]:
    """Every container, newest first; a `running` one whose supervisor is gone reads as exited."""
    out = []
    try:
        entries = list(os.scandir(root(store)))
    except FileNotFoundError:
        return []
    for entry in entries:
        c = _load(Path(entry.path))
        if c is None:
            continue
        if c.status == "running" and c.pid is not None and not _alive(c.pid):
            c = replace(c, status="exited", exit_code=c.exit_code if c.exit_code is not None else 137)
        out.append(c)
    return sorted(out, key=lambda c: c.created, reverse=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def find(store: Store, text: str) -> Container:
    text = text.removeprefix("/")  # the Engine API's names are "/NAME"
    found = [c for c in all_containers(store) if text in (c.name, c.id)]
    if not found and len(text) >= 3:
        found = [c for c in all_containers(store) if c.id.startswith(text)]
    if not found:
        raise NoSuchContainer(f"no container {text}")
    if len(found) > 1:
        raise ContainerError(f"container ID prefix {text!r} is ambiguous: it matches {len(found)} containers")
    return found[0]


def create(store: Store, name: str, **fields: Any) -> Container:
    """A new container record; its name must be free (names are given out under a lock)."""
    with store.lock("containers"):
        taken = {c.name for c in all_containers(store)}
        if name:
            if not _valid_name(name):
                raise ContainerError(f"invalid container name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
            if name in taken:
                raise Conflict(f"the container name {name!r} is already in use; `buildpy rm {name}` first")
        else:
            name = _random_name(taken)
        container = Container(id=secrets.token_hex(32), name=name, **fields)
        save(store, container)
    return container


def _valid_name(name: str) -> bool:
    import re

    return re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name) is not None and len(name) <= 128


def _random_name(taken: set[str]) -> str:
    for _ in range(100):
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
        if name not in taken:
            return name
    return f"c_{secrets.token_hex(4)}"


def remove(store: Store, container: Container, force: bool = False) -> None:
    if container.status == "running" and not force:
        raise ContainerError(f"container {container.name} is running; stop it first or use -f")
    from buildpy.sandbox.step import remove_workdir

    d = directory(store, container)
    if not d.exists():
        raise StoreError(f"container {container.name} has no directory")
    remove_workdir(d)


def image_roots(store: Store) -> list:
    """The manifests kept containers run on (prune keeps them: `commit` needs their layers)."""
    from buildpy.cas.media import Descriptor

    out = []
    for c in all_containers(store):
        try:
            obj = store.read_json(c.image_digest)
        except (StoreError, ValueError):
            continue
        media_type = obj.get("mediaType") or "application/vnd.oci.image.manifest.v1+json"
        out.append(Descriptor(media_type, c.image_digest, store.blob_size(c.image_digest)))
    return out
