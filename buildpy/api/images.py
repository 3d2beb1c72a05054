"""The image endpoints: list, inspect, history, tag, remove — the same library calls as
`buildpy images/inspect/history/tag/rmi`, answered as the Docker Engine API answers them."""

from __future__ import annotations

import fnmatch
from typing import Any

from buildpy.api import events
from buildpy.api.errors import ApiError, as_api_error, no_such_image
from buildpy.api.routing import Query, dangling, route
from buildpy.cas.store import Store


def _familiar(name: str) -> str:
    from buildpy.cas.reference import InvalidReference, parse

    try:
        return parse(name).familiar
    except InvalidReference:
        return name


def _seconds(created: object) -> int:
    from buildpy.containers.display import parse_time

    t = parse_time(created)
    return int(t) if t is not None else 0


def _labels(config: dict[str, Any]) -> dict[str, str]:
    labels = (config.get("config") or {}).get("Labels")
    return dict(labels) if isinstance(labels, dict) else {}


def _matches(name: str, patterns: list[str]) -> bool:
    """docker's `reference` filter: the pattern against NAME:TAG, or against the repository when
    the pattern has no tag."""
    if not patterns:
        return True
    familiar = _familiar(name)
    repo = familiar.rpartition(":")[0] if ":" in familiar.rpartition("/")[2] else familiar
    for p in patterns:
        has_tag = ":" in p.rpartition("/")[2]
        if fnmatch.fnmatchcase(familiar if has_tag else repo, p):
            return True
    return False


def list_images(store: Store, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    """GET /images/json: one entry per image (by ID), its tags in RepoTags, newest first."""
    from buildpy.cas.reference import tagged_images

    patterns = filters.get("reference", [])
    if dangling(filters):
        return []  # buildpy lists tagged images only
    by_id: dict[str, dict[str, Any]] = {}
    for t in tagged_images(store):
        if not _matches(t.name, patterns):
            continue
        entry = by_id.get(t.image.id)
        if entry is None:
            entry = by_id[t.image.id] = {
                "Id": t.image.id,
                "ParentId": "",
                "RepoTags": [],
                "RepoDigests": [],
                "Created": _seconds(t.image.config.get("created")),
                "Size": t.image.size,
                "VirtualSize": t.image.size,
                "SharedSize": -1,
                "Labels": _labels(t.image.config),
                "Containers": -1,
            }
        entry["RepoTags"].append(_familiar(t.name))
    return sorted(by_id.values(), key=lambda e: -e["Created"])


def _resolve(store: Store, name: str):  # noqa: ANN202 - (ref name, cas.image.Image)
    from buildpy.cas.reference import resolve

    try:
        return resolve(store, name)
    except Exception as e:  # noqa: BLE001 - every failure becomes Docker's answer
        raise as_api_error(e, name) from None


def inspect(store: Store, name: str) -> dict[str, Any]:
    """GET /images/{name}/json."""
    from buildpy.cas.reference import refs_to

    with store.lease():
        _, image = _resolve(store, name)
        tags = [_familiar(n) for n in refs_to(store, image)]
    config = image.config
    return {
        "Id": image.id,
        "RepoTags": tags,
        "RepoDigests": [],
        "Parent": "",
        "Comment": str(config.get("comment") or ""),
        "Created": config.get("created") or "",
        "Container": "",
        "ContainerConfig": {},
        "DockerVersion": "",
        "Author": str(config.get("author") or ""),
        "Config": config.get("config") or {},
        "Architecture": config.get("architecture") or "",
        **({"Variant": config["variant"]} if config.get("variant") else {}),
        "Os": config.get("os") or "",
        "Size": image.size,
        "VirtualSize": image.size,
        "GraphDriver": {"Name": "buildpy", "Data": {}},
        "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }


def history(store: Store, name: str) -> list[dict[str, Any]]:
    """GET /images/{name}/history: newest first, `<missing>` for all but the image itself."""
    from buildpy.cas.reference import refs_to
    from buildpy.containers.history import image_history

    with store.lease():
        _, image = _resolve(store, name)
        tags = [_familiar(n) for n in refs_to(store, image)]
    out = []
    for i, row in enumerate(image_history(image)):
        out.append({
            "Id": row.id or "<missing>",
            "Created": _seconds(row.created),
            "CreatedBy": row.created_by,
            "Tags": tags if i == 0 else None,
            "Size": row.size,
            "Comment": row.comment,
        })
    return out


def tag(store: Store, name: str, repo: str, tag: str) -> None:
    """POST /images/{name}/tag?repo=R&tag=T."""
    from buildpy.cas.reference import InvalidReference, lookup, parse

    if not repo:
        raise ApiError(400, "repository name must have at least one component")
    try:
        dst = parse(f"{repo}:{tag or 'latest'}", allow_digest=False)
    except InvalidReference as e:
        raise ApiError(400, str(e)) from None
    with store.lease():  # the image's blobs must outlive a concurrent rmi + prune until dst names them
        try:
            _, desc = lookup(store, name)
        except Exception as e:  # noqa: BLE001
            raise as_api_error(e, name) from None
        store.set_ref(dst.name, desc)


def remove(store: Store, name: str, force: bool) -> list[dict[str, str]]:
    """DELETE /images/{name}: untag (the blobs stay until `buildpy prune`)."""
    from buildpy.cas.reference import refs_named
    from buildpy.cas.store import StoreError

    try:
        names = refs_named(store, name)
    except StoreError as e:
        if "has no tags to remove" in str(e):
            raise ApiError(409, f"conflict: unable to delete {name}: {e}") from None
        raise as_api_error(e, name) from None
    except Exception as e:  # noqa: BLE001
        raise as_api_error(e, name) from None
    if len(names) > 1 and not force:
        raise ApiError(409, f"conflict: unable to delete {name} (must be forced) - image is referenced "
                            f"in multiple repositories")
    out = []
    for n in names:
        if store.delete_ref(n) is not None:
            out.append({"Untagged": _familiar(n)})
    if not out:
        raise no_such_image(name)
    return out


# endpoints


@route("GET", r"/images/json")
def _list(h, q: Query) -> None:  # noqa: ANN001 - h: the server's exchange
    h.json(200, list_images(h.store, q.filters(("reference", "dangling", "label", "before", "since"))))


@route("GET", r"/images/(.+)/json")
def _inspect(h, q: Query, name: str) -> None:  # noqa: ANN001
    h.json(200, inspect(h.store, name))


@route("GET", r"/images/(.+)/history")
def _history(h, q: Query, name: str) -> None:  # noqa: ANN001
    h.json(200, history(h.store, name))


@route("POST", r"/images/(.+)/tag")
def _tag(h, q: Query, name: str) -> None:  # noqa: ANN001
    tag(h.store, name, q.one("repo"), q.one("tag"))
    events.image_named(h.store, "tag", f"{q.one('repo')}:{q.one('tag') or 'latest'}")
    h.send(201, b"", "text/plain; charset=utf-8")


@route("DELETE", r"/images/(.+)")
def _remove(h, q: Query, name: str) -> None:  # noqa: ANN001
    found = events.resolved(h.store, name)  # before: an untagged image's ID names nothing after
    deleted = remove(h.store, name, q.flag("force"))
    for _ in deleted if found else ():
        events.image("untag", found[0], found[0], found[1])  # docker names the image by its ID
    h.json(200, deleted)
