"""Named volumes: directories under `ROOT/volumes/<name>/_data` that outlive containers, made on
first use by `run -v NAME:/path` (or `volume create`), listed and removed by `buildpy volume
ls|rm` and the Engine API. What a container writes there is never part of its change (a mount,
not its upper dir). Beside `_data`, `volume.json` (written atomically) keeps what the API was
told: labels, driver options, the creation time, whether it is anonymous (a 64-hex name made
for a path the image declares a VOLUME or the API's Config.Volumes names; `rm -v`, `run --rm` and
AutoRemove remove those); a volume without one (made by `run -v`) reads as unlabelled, created
when its directory was.

Copy-up (`fill`): an empty volume mounted where the image has a directory is first given what
the image has there, as docker does — read from the image's layer snapshots with overlay's rules,
never through a symlink."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from buildpy.cas.store import Store, canonical_json, write_atomic
from buildpy.containers.state import ContainerError, all_containers

if TYPE_CHECKING:
    from buildpy.sandbox.snapshots import StackEntry

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


def is_empty(data: Path) -> bool:
    with os.scandir(data) as it:
        return next(it, None) is None


def fill(data: Path, lowers: Sequence[Path], target: str) -> bool:
    """docker's copy-up: what the image (its snapshot dirs `lowers`, topmost first) has in the
    directory `target` copied into the volume dir `data` if it is still empty (files, dirs,
    symlinks, modes, owners, times, xattrs; hardlinks kept), and the directory's own mode and
    owner given to `data`. False when nothing was copied (the volume has content, or the image
    has no directory there)."""
    import fcntl

    from buildpy.sandbox import snapshots

    entry = snapshots.lookup(lowers, target.strip("/"))
    if entry is None or not entry.is_dir:
        return False
    # two containers created at once on one new volume: one fills it, the other then finds content
    fd = os.open(data.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not is_empty(data):
            return False
        _copy_tree(entry, data)
    finally:
        os.close(fd)  # closing releases the lock
    return True


def _copy_tree(entry: StackEntry, data: Path) -> None:
    from buildpy.sandbox import snapshots

    links: dict[tuple[int, int], Path] = {}
    dirs: list[tuple[Path, os.stat_result]] = [(data, entry.st)]

    def copy_dir(src: snapshots.StackEntry, dst: Path) -> None:
        for name, child in sorted(snapshots.list_dir(src).items()):
            # lstat-based, from inside the layer dirs: a symlink is copied as a symlink; the same
            # copy as `snapshots.materialize` makes (hardlinks, xattrs, capabilities kept)
            snapshots._copy_entry(child.path, child.st, dst / name, links)  # noqa: SLF001
            if child.is_dir:
                dirs.append((dst / name, child.st))
                copy_dir(child, dst / name)

    copy_dir(entry, data)
    # directory owners, modes and times last, deepest first: a dir without the write bit would
    # have kept a non-root copier out, and filling a dir changed its time
    for dst, st in sorted(dirs, key=lambda d: -len(d[0].parts)):
        try:
            os.chown(dst, st.st_uid, st.st_gid)
        except PermissionError:
            if os.geteuid() == 0:
                raise  # without root the files stay ours, which the user namespace maps to root
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def anonymous_of(store: Store, mounted: Iterable[str]) -> list[str]:
    """The anonymous volumes among a container's mounts ("volume:NAME" | "bind:PATH")."""
    out = []
    for what in mounted:
        kind, _, name = what.partition(":")
        if kind == "volume":
            with contextlib.suppress(ContainerError):
                if get(store, name).anonymous:
                    out.append(name)
    return out


def remove_anonymous(store: Store, mounted: Iterable[str]) -> list[str]:
    """Remove the anonymous volumes among a removed container's mounts (docker's `rm -v`, `run
    --rm`, AutoRemove), but not one another container still uses. Returns the names removed."""
    removed = []
    for name in anonymous_of(store, mounted):
        with contextlib.suppress(ContainerError):  # in use elsewhere, or removed meanwhile
            remove(store, name)
            removed.append(name)
    return removed
