"""The network endpoints, read-only: buildpy has no user-defined networks, only a container's own
modes (`run --network`), shown as Docker's three built-in networks — `bridge` (our `private`: a
namespace of its own with a user-mode uplink), `host` and `none`. Creating, connecting or
removing a network answers 501; any other name is not found (so `docker inspect NAME` of a
missing name ends as Docker's "No such object")."""

from __future__ import annotations

import hashlib
from typing import Any

from buildpy.api.errors import ApiError
from buildpy.api.routing import Query, route

_BUILTIN = {  # Docker's name → (driver, what buildpy gives a container on it)
    "bridge": ("bridge", "private"),
    "host": ("host", "host"),
    "none": ("null", "none"),
}


def _id(name: str) -> str:
    return hashlib.sha256(f"buildpy-network-{name}".encode()).hexdigest()


def describe(name: str) -> dict[str, Any]:
    driver, mode = _BUILTIN[name]
    return {
        "Name": name,
        "Id": _id(name),
        "Created": "0001-01-01T00:00:00Z",
        "Scope": "local",
        "Driver": driver,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": []},
        "Internal": False,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {},
        "Options": {"buildpy.network-mode": mode},
        "Labels": {},
    }


def mode_of(network: str) -> str:
    """The container network mode (run's private, host or none) a request's NetworkMode or
    networkmode names: the built-in networks by name (`default` is bridge); sharing another
    container's or a namespace's network is Docker's and not ours (501); other names are
    networks that do not exist here (404)."""
    if network in ("", "default"):
        network = "bridge"
    if network.startswith(("container:", "ns:")):
        raise ApiError(501, f"buildpy does not implement the network mode {network!r} (bridge, host, none)")
    return _BUILTIN[find(network)][1]


def find(text: str) -> str:
    for name in _BUILTIN:
        if text == name or (len(text) >= 3 and _id(name).startswith(text)):
            return name
    raise ApiError(404, f"network {text} not found")


@route("GET", r"/networks")
def _list(h, q: Query) -> None:  # noqa: ANN001 - h: the server's exchange
    filters = q.filters(("name", "id", "driver", "type", "scope", "label"))
    out = []
    for name in _BUILTIN:
        n = describe(name)
        if "name" in filters and not any(f in name for f in filters["name"]):
            continue
        if "id" in filters and not any(n["Id"].startswith(f) for f in filters["id"]):
            continue
        if "driver" in filters and n["Driver"] not in filters["driver"]:
            continue
        if "type" in filters and "builtin" not in filters["type"]:
            continue
        if "label" in filters:
            continue  # the built-in networks have no labels
        out.append(n)
    h.json(200, out)


@route("GET", r"/networks/([^/]+)")
def _inspect(h, q: Query, name: str) -> None:  # noqa: ANN001
    h.json(200, describe(find(name)))


@route("POST", r"/networks/create")
def _create(h, q: Query) -> None:  # noqa: ANN001
    raise ApiError(501, "buildpy does not implement POST /networks/create: containers get the network "
                        "modes bridge (a user-mode uplink of their own), host or none")
