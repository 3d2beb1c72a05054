"""POST /build: the classic builder endpoint (`DOCKER_BUILDKIT=0 docker build`). The body is
the context as a tar (plain or compressed); it is unpacked into a temporary directory under the
store's tmp/ and built as `buildpy build` builds a directory; progress goes back as Docker's
JSON lines."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from buildpy.api.errors import ApiError
from buildpy.api.routing import Query, route
from buildpy.cas.store import Store

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


class Params:
    """The query of POST /build, checked before anything is read or built."""

    def __init__(self, q: Query) -> None:
        from buildpy.executor.session import OptionError, tag_names

        if q.one("remote"):
            raise ApiError(400, "buildpy serve builds only a context sent as a tar (no remote contexts yet)")
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
        network = q.one("networkmode") or "default"
        if network == "bridge":
            network = "default"
        if network not in ("default", "none", "host"):
            raise ApiError(400, f"network mode {network!r} is not supported (default, none, host)")
        self.network = network


def unpack_context(store: Store, body: Iterable[bytes]) -> Path:
    """The context tar (plain, gzip, bzip2 or xz) unpacked into a new directory under tmp/;
    the caller removes it."""
    import tarfile

    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="api-build-"))
    try:
        with tempfile.TemporaryFile(dir=store.tmp_dir, prefix="api-context-") as spool:
            for chunk in body:
                spool.write(chunk)
            size = spool.tell()
            spool.seek(0)
            context = directory / "context"
            context.mkdir()
            if size:
                try:
                    with tarfile.open(fileobj=spool, mode="r:*") as tar:
                        tar.extractall(context, filter="data")
                except (tarfile.TarError, EOFError, OSError, ValueError) as e:
                    raise ApiError(400, f"the build context is not a valid tar archive: {e}") from None
        return directory
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise ApiError(400, f"the Dockerfile {relative} is outside the build context")
    return path


def dockerfile_path(context: Path, params: Params) -> Path:
    """The Dockerfile the request names, inside the unpacked context."""
    dockerfile = _inside(context, params.dockerfile)
    if not dockerfile.is_file():
        raise ApiError(400, f"Cannot locate specified Dockerfile: {params.dockerfile}")
    return dockerfile


def run(store: Store, params: Params, context: Path, dockerfile: Path, send: Send) -> None:
    """Build `context` and send the progress, the image ID and the tags (or the error) as JSON
    lines; never raises for a failed build (the answer has started)."""
    from buildpy.cas.reference import parse
    from buildpy.executor.options import BuildOptions
    from buildpy.executor.session import Remote, build
    from buildpy.planner.request import BuildRequest

    out = JsonLines(send)
    try:
        request = BuildRequest(context=context, dockerfile=dockerfile, build_args=params.build_args,
                               target=params.target, platform=params.platform, labels=params.labels,
                               network=params.network, pull=params.pull)
        options = BuildOptions(no_cache=params.no_cache, network=params.network)
        result = build(store, request, options, tags=params.tags, progress="quiet" if params.quiet else "plain",
                       stream=out, remote=Remote(_clients()))
        out.close()
        image_id = result.image.id
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


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    if directory.exists():  # a read-only directory inside: make it writable and try again
        for root, dirs, _ in os.walk(directory):
            for d in dirs:
                try:
                    os.chmod(os.path.join(root, d), 0o700)
                except OSError:
                    pass
        shutil.rmtree(directory, ignore_errors=True)


# the endpoint


@route("POST", r"/build")
def _build(h, q: Query) -> None:  # noqa: ANN001 - h: the server's exchange
    params = Params(q)
    store = h.store
    directory = unpack_context(store, h.body())
    gone = False
    try:
        context = directory / "context"
        dockerfile = dockerfile_path(context, params)
        h.start_stream("application/json")
        lock = threading.Lock()

        def send(obj: dict[str, Any]) -> None:
            nonlocal gone
            with lock:
                if gone:
                    return
                try:
                    h.chunk((json.dumps(obj, ensure_ascii=False) + "\n").encode())
                except OSError:
                    gone = True  # the client left; the build still finishes (and tags)

        run(store, params, context, dockerfile, send)
    finally:
        remove(directory)  # before the answer ends: the client sees the store as it is left
    if not gone:
        h.end_stream()
    else:
        h.close_connection = True
