"""The volume endpoints: create, list, inspect, remove, prune — `buildpy.containers.volumes`
(the volumes `buildpy volume` and `run -v` use) answered as the Docker Engine API answers."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from buildpy.api import events
from buildpy.api.errors import ApiError
from buildpy.api.routing import Query, dangling, labels_match, route
from buildpy.cas.store import Store
from buildpy.containers import volumes
from buildpy.containers.state import ContainerError


def describe(v: volumes.Volume) -> dict[str, Any]:
    created = datetime.fromtimestamp(int(v.created), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"Name": v.name, "Driver": "local", "Mountpoint": str(v.mountpoint), "CreatedAt": created,
            "Labels": v.labels, "Scope": "local", "Options": v.options or None}


def _get(store: Store, name: str) -> volumes.Volume:
    try:
        return volumes.get(store, name)
    except volumes.NoSuchVolume:
        raise ApiError(404, f"get {name}: no such volume") from None


def _matches(store: Store, v: volumes.Volume, filters: dict[str, list[str]]) -> bool:
    if "name" in filters and not any(f in v.name for f in filters["name"]):
        return False
    if "driver" in filters and "local" not in filters["driver"]:
        return False
    if not labels_match(v.labels, filters.get("label", [])):
        return False
    want = dangling(filters)
    return want is None or want == (not volumes.users(store, v.name))


def _all(store: Store) -> list[volumes.Volume]:
    out = []
    for name in volumes.names(store):
        try:
            out.append(volumes.get(store, name))
        except volumes.NoSuchVolume:
            continue  # removed meanwhile
    return out


@route("POST", r"/volumes/create")
def _create(h, q: Query) -> None:  # noqa: ANN001 - h: the server's exchange
    body = h.json_body() or {}
    driver = body.get("Driver") or "local"
    if driver != "local":
        raise ApiError(501, f"buildpy does not implement the volume driver {driver!r} (local)")
    labels, opts = body.get("Labels") or {}, body.get("DriverOpts") or {}
    if not isinstance(labels, dict) or not isinstance(opts, dict):
        raise ApiError(400, "Labels and DriverOpts must be JSON objects")
    if opts:
        raise ApiError(400, "volume driver options are not supported")
    try:
        v = volumes.create(h.store, str(body.get("Name") or ""), {str(k): str(x) for k, x in labels.items()})
    except ContainerError as e:
        raise ApiError(400, str(e)) from None
    events.volume("create", v.name)
    h.json(201, describe(v))


@route("GET", r"/volumes")
def _list(h, q: Query) -> None:  # noqa: ANN001
    filters = q.filters(("name", "label", "dangling", "driver"))
    h.json(200, {"Volumes": [describe(v) for v in _all(h.store) if _matches(h.store, v, filters)],
                 "Warnings": []})


@route("POST", r"/volumes/prune")
def _prune(h, q: Query) -> None:  # noqa: ANN001
    filters = q.filters(("name", "label", "dangling", "driver"))
    filters.pop("dangling", None)
    deleted = []
    for v in _all(h.store):
        if volumes.users(h.store, v.name) or not _matches(h.store, v, filters):
            continue
        try:
            volumes.remove(h.store, v.name)
        except ContainerError:
            continue  # taken meanwhile
        events.volume("destroy", v.name)
        deleted.append(v.name)
    h.json(200, {"VolumesDeleted": deleted, "SpaceReclaimed": 0})


@route("GET", r"/volumes/([^/]+)")
def _inspect(h, q: Query, name: str) -> None:  # noqa: ANN001
    h.json(200, describe(_get(h.store, name)))


@route("DELETE", r"/volumes/([^/]+)")
def _remove(h, q: Query, name: str) -> None:  # noqa: ANN001
    try:
        volumes.remove(h.store, name, force=False)
    except volumes.NoSuchVolume:
        raise ApiError(404, f"get {name}: no such volume") from None
    except volumes.VolumeInUse as e:
        raise ApiError(409, f"remove {name}: volume is in use - {e}") from None
    events.volume("destroy", name)
    h.send(204, b"", "text/plain; charset=utf-8")
