"""A container's files and processes over the Engine API: commit, changes (`docker diff`),
export, archive (`docker cp` both ways), top and rename. HTTP only: the work is
`buildpy.containers.filesystem`'s, `processes`' and `run.commit`'s."""

from __future__ import annotations

import base64
import contextlib
import json

from buildpy.api import events
from buildpy.api.containers import answers
from buildpy.api.errors import ApiError
from buildpy.api.routing import Query, route
from buildpy.containers import filesystem as fs
from buildpy.containers import processes, state
from buildpy.containers import supervisor as sup
from buildpy.containers.state import Conflict, Container, ContainerError, NoSuchContainer

_STAT_HEADER = "X-Docker-Container-Path-Stat"


def _found(h, name: str) -> tuple[Container, int]:  # noqa: ANN001 - h: the server's exchange
    """The container and its main process's host pid (0 when it is not running here)."""
    s = sup.for_store(h.store)
    c = s.find(name)
    return c, s.main_pid(c)


def _stat_header(st: fs.PathStat) -> str:
    return base64.b64encode(json.dumps(st.to_json()).encode()).decode()


def _path(q: Query) -> str:
    path = q.one("path")
    if not path:
        raise ApiError(400, "path cannot be empty")
    return path


# commit


@route("POST", r"/commit")
def _commit(h, q: Query) -> None:  # noqa: ANN001
    from buildpy.cas.reference import InvalidReference
    from buildpy.containers import imageconfig
    from buildpy.containers import run as runlib
    from buildpy.planner.changes import ChangeError, apply_changes

    name = q.one("container")
    repo, tag = q.one("repo"), q.one("tag")
    if tag and not repo:
        raise ApiError(400, "tag is given without a repository")
    ref = f"{repo}:{tag}" if repo and tag else repo
    with answers(name, user_error=500):
        c, _ = _found(h, name)
        base = runlib.image_of(h.store, c)
        config = imageconfig.committed(c, base.config.get("config") or {})
        try:
            apply_changes(config, q.all("changes"))
        except ChangeError as e:
            raise ApiError(400, str(e)) from None
        try:
            image = runlib.commit(h.store, c, ref, author=q.one("author"), message=q.one("comment"),
                                  running_ok=True, config=config)
        except InvalidReference as e:
            raise ApiError(400, str(e)) from None
        except ContainerError as e:
            if str(e).startswith("invalid image name"):
                raise ApiError(400, str(e)) from None
            raise
    if ref:  # as docker: the new name's tag, then the commit
        events.image_named(h.store, "tag", ref)
    events.container("commit", c, {"comment": q.one("comment"), "imageID": image.id,
                                   "imageRef": events.familiar(ref) if ref else ""})
    h.json(201, {"Id": image.id})


# docker diff


@route("GET", r"/containers/([^/]+)/changes")
def _changes(h, q: Query, name: str) -> None:  # noqa: ANN001
    with answers(name, user_error=500):
        c, _ = _found(h, name)
        found = fs.changes(h.store, c)
    h.json(200, [{"Path": path, "Kind": kind} for path, kind in found] or None)


# docker export


@route("GET", r"/containers/([^/]+)/export")
def _export(h, q: Query, name: str) -> None:  # noqa: ANN001
    with answers(name, user_error=500), contextlib.ExitStack() as stack:
        c, step = _found(h, name)
        chunks = stack.enter_context(fs.export(h.store, c, step))
        h.stream("application/x-tar", chunks)


# docker cp


@route("GET", r"/containers/([^/]+)/archive")
def _archive_get(h, q: Query, name: str) -> None:  # noqa: ANN001 - HEAD too
    path = _path(q)
    with answers(name, user_error=500), contextlib.ExitStack() as stack:
        c, step = _found(h, name)
        if h.command == "HEAD":
            st = fs.path_stat(h.store, c, step, path)
            h.send(200, b"", "application/x-tar", {_STAT_HEADER: _stat_header(st)})
            return
        st, chunks = stack.enter_context(fs.archive(h.store, c, step, path))
        h.stream("application/x-tar", chunks, {_STAT_HEADER: _stat_header(st)})


@route("PUT", r"/containers/([^/]+)/archive")
def _archive_put(h, q: Query, name: str) -> None:  # noqa: ANN001
    path = _path(q)
    with answers(name, user_error=500):
        c, step = _found(h, name)
        fs.extract(h.store, c, step, path, h.body(), no_overwrite_dir_non_dir=q.flag("noOverwriteDirNonDir"),
                   copy_uid_gid=q.flag("copyUIDGID"))
    h.send(200, b"", "text/plain; charset=utf-8")


# docker top, docker rename


@route("GET", r"/containers/([^/]+)/top")
def _top(h, q: Query, name: str) -> None:  # noqa: ANN001
    with answers(name, user_error=500):
        c, step = _found(h, name)
        if not step:
            raise Conflict(f"Container {c.id} is not running")
        titles, rows = processes.top(step, q.one("ps_args"))
    h.json(200, {"Titles": titles, "Processes": rows})


@route("POST", r"/containers/([^/]+)/rename")
def _rename(h, q: Query, name: str) -> None:  # noqa: ANN001
    new = q.one("name")
    if not new:
        raise ApiError(400, "a container name is needed to rename to")
    with answers(name, user_error=500):
        c, _ = _found(h, name)
        try:
            renamed = state.rename(h.store, c, new)
        except Conflict:
            raise
        except NoSuchContainer:
            raise
        except ContainerError as e:
            raise ApiError(400, str(e)) from None
    events.container("rename", renamed, {"oldName": "/" + c.name})
    h.send(204, b"", "text/plain; charset=utf-8")
