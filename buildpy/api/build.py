"""POST /build: the classic builder endpoint (`DOCKER_BUILDKIT=0 docker build`). The body is
the context as a tar, checked and unpacked by buildcontext.py, and built as `buildpy build`
builds a directory: the build checks first (warnings as stream lines), then the build, its
progress going back as Docker's JSON lines. A client that hangs up (the connection closed, or
a write fails) cancels its build, as does a server told to stop: running steps are killed and
the store keeps what was finished.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildpy.api import buildcontext
from buildpy.api import events as event_bus  # `events` names poll results below
from buildpy.api.errors import ApiError
from buildpy.api.routing import Query, route
from buildpy.cas.store import Store

if TYPE_CHECKING:
    from buildpy.executor.cancel import Cancel

Send = Callable[[dict[str, Any]], None]


class JsonLines:
    """A text stream for `session.build(stream=…)`: each complete line goes out as
    `{"stream": "LINE\\n"}`. Safe for the build's threads; a gone client stops the sending only."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._buf += text
            *lines, self._buf = self._buf.split("\n")
            for line in lines:
                self._send({"stream": line + "\n"})
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            if self._buf:
                self._send({"stream": self._buf + "\n"})
                self._buf = ""

    def isatty(self) -> bool:
        return False


# parameters of POST /build buildpy's builds do not honour, with the values that ask for nothing
# (what the docker CLI sends when the flag is not given); any other value is refused, never ignored
_NOT_HONOURED = {
    "cgroupparent": ("",), "cpuperiod": ("", "0"), "cpuquota": ("", "0"), "cpusetcpus": ("",),
    "cpusetmems": ("",), "cpushares": ("", "0"), "memory": ("", "0"), "memswap": ("", "0"),
    "shmsize": ("", "0"), "ulimits": ("", "null", "[]"), "extrahosts": ("",),
    "squash": ("", "0", "false"), "isolation": ("", "default"), "outputs": ("", "null", "[]"),
    "version": ("", "1"),  # 2 asks for BuildKit's session API
}


def _refuse_not_honoured(q: Query) -> None:
    for name, nothing in _NOT_HONOURED.items():
        value = q.one(name).strip()
        if value.lower() not in nothing:
            raise ApiError(501, f"buildpy does not implement POST /build with {name}={value} "
                                "(its builds have no such setting)")


class Params:
    """The query of POST /build, checked before anything is read or built."""

    def __init__(self, q: Query) -> None:
        from buildpy.executor.session import OptionError, tag_names

        if q.one("remote"):
            raise ApiError(400, "buildpy serve builds only a context sent as a tar (no remote contexts yet)")
        _refuse_not_honoured(q)
        # images to take cache from: every build already reuses what the store has; said, not hidden
        self.cache_from = [str(x) for x in (q.json_value("cachefrom") or []) if x]
        self.dockerfile = q.one("dockerfile") or "Dockerfile"
        self.tags = [t for t in q.all("t") if t]
        try:
            tag_names(self.tags)
        except OptionError as e:
            raise ApiError(400, str(e)) from None
        # a null build arg is one the client could not resolve from its environment: left out
        self.build_args = {str(k): str(v) for k, v in q.json_object("buildargs").items() if v is not None}
        self.labels = {str(k): str(v) for k, v in q.json_object("labels").items() if v is not None}
        self.target = q.one("target") or None
        self.no_cache = q.flag("nocache")
        self.pull = q.flag("pull")
        self.quiet = q.flag("q")
        self.platform = q.one("platform")
        from buildpy.api.networks import mode_of

        # RUN steps on the bridge network get the build's default network (a private uplink)
        self.network = {"private": "default"}.get(mode := mode_of(q.one("networkmode")), mode)


def _inside(root: Path, relative: str, what: str) -> Path:
    path = (root / relative).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise ApiError(400, f"the {what} {relative} is outside the build context")
    return path


def dockerfile_path(context: Path, params: Params) -> Path:
    """The Dockerfile the request names, inside the unpacked context; its .dockerignore files
    (which the build reads) must resolve inside the context too."""
    dockerfile = _inside(context, params.dockerfile, "Dockerfile")
    if not dockerfile.is_file():
        raise ApiError(400, f"Cannot locate specified Dockerfile: {params.dockerfile}")
    for ignore in (context / ".dockerignore", Path(str(context / params.dockerfile) + ".dockerignore")):
        if ignore.is_symlink():
            _inside(context, str(ignore.relative_to(context)), ".dockerignore")
    return context / params.dockerfile


def run(store: Store, params: Params, context: Path, dockerfile: Path, send: Send,
        cancel: Cancel | None = None) -> None:
    """Check and build `context` and send the warnings, the progress, the image ID and the
    tags (or the error) as JSON lines; never raises for a failed build (the answer has started)."""
    from buildpy.cas.reference import parse
    from buildpy.checks import gate
    from buildpy.executor.options import BuildOptions
    from buildpy.planner.checkfacts import check_facts
    from buildpy.executor.session import Remote, build
    from buildpy.planner.request import BuildRequest

    out = JsonLines(send)
    try:
        quiet = params.quiet
        if params.cache_from and not quiet:
            out.write(f"warning: cachefrom {', '.join(params.cache_from)} is not used: buildpy reuses "
                      "the steps its store has (a shared cache: buildpy build --cache-from type=registry)\n")
        gate.before_build(store.root / "checks", context, dockerfile, params.build_args, params.platform,
                          check_facts(context, dockerfile, store),
                          warn=lambda line: None if quiet else out.write(f"warning: {line}\n"))
        request = BuildRequest(context=context, dockerfile=dockerfile, build_args=params.build_args,
                               target=params.target, platform=params.platform, labels=params.labels,
                               network=params.network, pull=params.pull)
        options = BuildOptions(no_cache=params.no_cache, network=params.network, cancel=cancel)
        result = build(store, request, options, tags=params.tags, progress="quiet" if params.quiet else "plain",
                       stream=out, remote=Remote(_clients()))
        out.close()
        image_id = result.image.id
        for t in params.tags:
            event_bus.image_named(store, "tag", t)
        send({"aux": {"ID": image_id}})
        if params.quiet:
            send({"stream": image_id + "\n"})
            return
        send({"stream": f"Successfully built {image_id.partition(':')[2][:12]}\n"})
        for t in params.tags:
            send({"stream": f"Successfully tagged {parse(t, allow_digest=False).familiar}\n"})
    except Exception as e:  # noqa: BLE001 - the stream has begun: the error is its last line
        out.close()
        if isinstance(e, ApiError) or getattr(e, "user_facing", False):
            message = str(e).strip()
        else:
            import traceback

            traceback.print_exc()
            message = f"internal error: {type(e).__name__}: {e}"
        send({"errorDetail": {"message": message}, "error": message})


def _clients():  # noqa: ANN202 - registry.clients.Clients, for FROM images the store lacks
    from buildpy.registry.clients import Clients
    from buildpy.registry.settings import Settings

    return Clients(Settings.from_env())


# the endpoint


@route("POST", r"/build")
def _build(h, q: Query) -> None:  # noqa: ANN001 - h: the server's exchange
    from buildpy.executor.cancel import Cancel

    params = Params(q)
    store = h.store
    with buildcontext.received(store, h.body()) as context, Cancel() as token:
        dockerfile = dockerfile_path(context, params)
        h.start_stream("application/json")
        out = _Answer(h, token)
        h.server.running.add(token)  # a stopping server cancels it
        try:
            with _HangUp(h.connection, token):
                run(store, params, context, dockerfile, out.send, token)
            if token.cancelled:
                h.log_message("%s", token.reason)
            if not out.gone:
                h.end_stream()
        finally:
            h.server.running.discard(token)
    if out.gone:
        h.close_connection = True


class _Answer:
    """The JSON lines of the answer; the first failed write cancels the build (the client left)."""

    def __init__(self, h, token: Cancel) -> None:  # noqa: ANN001 - the server's exchange
        self.h = h
        self.token = token
        self.gone = False
        self.lock = threading.Lock()

    def send(self, obj: dict[str, Any]) -> None:
        with self.lock:
            if self.gone:
                return
            try:
                self.h.chunk((json.dumps(obj, ensure_ascii=False) + "\n").encode())
            except OSError:
                self.gone = True
                self.token.cancel(_GONE)


_GONE = "the build was cancelled: the client went away"


class _HangUp:
    """While the build runs, watch the connection: the client sends nothing more, so a full
    close (POLLHUP) means it left, and its build is cancelled. A client that shuts down only its
    writing side still reads the answer: that is no hang-up (POLLRDHUP is not asked for)."""

    def __init__(self, conn: socket.socket, token: Cancel) -> None:
        self.fd = conn.fileno()
        self.token = token
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC)  # the build's end wakes the watcher at once
        self.thread = threading.Thread(target=self._watch, name="api-hangup", daemon=True)

    def __enter__(self) -> _HangUp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        os.write(self.wake_w, b"x")
        self.thread.join()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self.fd, 0)  # no events asked: POLLHUP and POLLERR are always reported
        poller.register(self.wake_r, select.POLLIN)
        while True:
            for fd, events in poller.poll():
                if fd == self.wake_r:
                    return
                if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    self.token.cancel(_GONE)
                    return
