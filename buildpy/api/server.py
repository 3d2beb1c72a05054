"""`buildpy serve`: the Docker Engine API over a Unix socket (HTTP/1.1 with keep-alive, as the
docker CLI speaks it). Each request runs in a thread of its own; the endpoints call the same
library functions as the CLI commands (`images.py`, `build.py`, `system.py`)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import socketserver
import stat
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from buildpy.api import routing, system
from buildpy.api.errors import ApiError
from buildpy.cas.store import Store
from buildpy.executor.cancel import Running

# Bounds on what a client makes the server hold or read. The request line and each header line
# are bounded by http.server (64 KiB, 100 headers: 431 past them).
JSON_MAX = 16 << 20  # a JSON request body
DRAIN_MAX = 1 << 20  # an unwanted body read to keep the connection; past it the connection closes


class ServeError(Exception):
    """The server cannot start: a bad --host, a socket path in use."""

    user_facing = True


def socket_path(host: str) -> str:
    if not host.startswith("unix://"):
        raise ServeError(f"--host {host}: only unix:///PATH is supported")
    path = host[len("unix://"):]
    if not path.startswith("/"):
        raise ServeError(f"--host {host}: the socket path must be absolute (unix:///PATH)")
    return path


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody answers on; refuse anything else at `path`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServeError(f"{path} exists and is not a socket; remove it or choose another --host")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except OSError as e:
        raise ServeError(f"cannot tell whether {path} is in use: {e.strerror or e}") from None
    finally:
        probe.close()
    raise ServeError(f"{path} is in use: another server answers on it")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, store: Store) -> None:
        super().__init__(path, _Handler, bind_and_activate=False)
        self.store = store
        self.running = Running()  # the builds in progress: a stop cancels them
        old = os.umask(0o177)  # the socket is born 0600: nobody else can connect in between
        try:
            self.server_bind()
        except OSError as e:
            self.server_close()
            raise ServeError(f"cannot listen on {path}: {e.strerror or e}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.inode = os.lstat(path).st_ino
        self.server_activate()


def serve(store: Store, host: str) -> int:
    """Serve until SIGTERM or SIGINT; the socket is removed on the way out. Returns 0."""
    path = socket_path(host)
    _clear_stale(path)
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    _load_endpoints()
    server = _Server(path, store)

    def stop(signum: int, frame: object) -> None:
        server.running.cancel_all("the build was cancelled: the server is stopping")
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for serve_forever

    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"buildpy: serving the Docker Engine API on unix://{path} (store {store.root})",
              file=sys.stderr, flush=True)
        server.serve_forever(poll_interval=0.2)
        # cancelled builds kill their steps and clean up before the process ends under them
        server.running.wait(timeout=60)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        server.server_close()
        for hook in _STOP_HOOKS:  # e.g. kill the containers this server runs, record them exited
            hook()
        try:
            if os.lstat(path).st_ino == server.inode:
                os.unlink(path)
        except FileNotFoundError:
            pass
    return 0


# the modules whose @route endpoints are served
_AREAS = ("system", "images", "build", "transfer", "containers", "containerfs", "exec", "volumes", "networks", "events")


_STOP_HOOKS: list[Callable[[], None]] = []  # run once the server stops; areas append to it


def _load_endpoints() -> None:
    import importlib

    for area in _AREAS:
        importlib.import_module(f"buildpy.api.{area}")


_VERSION_RE = re.compile(r"/v(\d+)\.(\d+)(/.*)")


def _check_path(path: str) -> None:
    """No endpoint takes a `.` or `..` segment (no name may be one), encoded or not, or a NUL:
    refused before any routing, so no name ever reaches a file system path with one."""
    decoded = unquote(path)
    if "\0" in decoded or any(part in (".", "..") for part in decoded.split("/")):
        raise ApiError(400, f"invalid request path {path[:200]!r}: '.' and '..' segments are not allowed")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def version_string(self) -> str:
        return f"Docker/{system.version_string()} (linux)"

    @property
    def store(self) -> Store:
        return self.server.store

    def address_string(self) -> str:
        return "unix"  # a Unix socket's peer has no address

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write(f"buildpy serve: {format % args}\n")

    # dispatch

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def _dispatch(self, method: str) -> None:
        self._body_done = False
        self._started = False
        try:
            url = urlsplit(self.path)
            path = url.path
            _check_path(path)
            m = _VERSION_RE.fullmatch(path)
            if m:
                wanted = (int(m.group(1)), int(m.group(2)))
                if wanted > system.NEWEST:
                    raise ApiError(400, f"client version {m.group(1)}.{m.group(2)} is too new. Maximum "
                                        f"supported API version is {system.API_VERSION}")
                if wanted < system.OLDEST:
                    raise ApiError(400, f"client version {m.group(1)}.{m.group(2)} is too old. Minimum "
                                        f"supported API version is {system.MIN_API_VERSION}, please upgrade "
                                        "your client to a newer version")
                path = m.group(3)
            found = routing.find(method, path)
            if found is None:
                raise ApiError(501, f"buildpy does not implement {method} {unquote(path)}")
            endpoint, params = found
            endpoint(self, routing.Query(url.query), *params)
        except ApiError as e:
            self._error(e.status, e.message)
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            traceback.print_exc()
            self._error(500, f"internal error: {type(e).__name__}: {e}")

    # the request body

    def body(self) -> Iterator[bytes]:
        """The request body, Content-Length or chunked; read once."""
        if self._body_done:
            return
        self._body_done = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                    if size < 0:
                        raise ValueError(size)
                except ValueError:
                    self.close_connection = True
                    raise ApiError(400, "malformed chunked request body") from None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield from self._exactly(size)
                self.rfile.readline(65537)
        else:
            length = self._length()
            yield from self._exactly(length)

    def _length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            self._body_done = True  # unreadable: nothing more is read from this connection
            raise ApiError(400, "malformed Content-Length") from None
        return length

    def json_body(self, kind: type = dict, limit: int = JSON_MAX) -> Any:
        """The request body as JSON of `kind` (dict or list); None when the body is empty.
        ApiError 400 for bad JSON or another type, 413 past `limit` bytes (the connection then
        closes: the rest is never read)."""
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if not chunked and self._length() > limit:
            self._refuse_body()
            raise ApiError(413, f"the request body is larger than {limit} bytes")
        data = bytearray()
        for chunk in self.body():
            data += chunk
            if len(data) > limit:
                self._refuse_body()
                raise ApiError(413, f"the request body is larger than {limit} bytes")
        if not data.strip():
            return None
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(value, kind):
            want = "an object" if kind is dict else "an array" if kind is list else kind.__name__
            raise ApiError(400, f"the request body must be JSON {want}, not {type(value).__name__}")
        return value

    def _refuse_body(self) -> None:
        """What is left of the body is not read: the connection ends after the answer."""
        self._body_done = True
        self.close_connection = True

    def _exactly(self, n: int) -> Iterator[bytes]:
        while n > 0:
            data = self.rfile.read(min(n, 1 << 20))
            if not data:
                self.close_connection = True
                raise ApiError(400, "the request body ended early")
            n -= len(data)
            yield data

    def _drain(self) -> None:
        """Read the unread body so the next request on the connection parses; a body past
        DRAIN_MAX bytes is not worth reading: the connection closes after the answer instead."""
        if self._body_done:
            return
        try:
            if "chunked" not in self.headers.get("Transfer-Encoding", "").lower() and self._length() > DRAIN_MAX:
                self._refuse_body()
                return
            read = 0
            for chunk in self.body():
                read += len(chunk)
                if read > DRAIN_MAX:
                    self._refuse_body()
                    return
        except ApiError:
            self.close_connection = True

    # answers

    def _headers(self, status: int, content_type: str, extra: dict[str, str] | None = None) -> None:
        self._drain()  # keep-alive: the next request starts after this one's body
        self._started = True
        self.send_response(status)
        self.send_header("Api-Version", system.API_VERSION)
        self.send_header("Docker-Experimental", "false")
        self.send_header("Ostype", "linux")
        if self.close_connection:
            self.send_header("Connection", "close")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", content_type)

    def send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self._headers(status, content_type, extra)
        self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else 0))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def json(self, status: int, obj: Any) -> None:
        self.send(status, (json.dumps(obj, ensure_ascii=False) + "\n").encode(), "application/json")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, 431 for a header line past 64 KiB or
        more than 100 headers, 414 for a request line past 64 KiB, answered as 431 as Docker
        does) as Docker's JSON error; the connection then closes, its rest unread."""
        if code == 414:
            code, message = 431, "the request line is too long"
        self.request_version = "HTTP/1.1"  # a garbled request line reads as HTTP/0.9: no status line
        self.close_connection = True
        self._body_done = True
        self._started = True
        text = message or self.responses.get(code, ("error",))[0]
        if explain:
            text = f"{text}: {explain}"
        body = (json.dumps({"message": text}) + "\n").encode()
        try:
            self.send_response(code)
            self.send_header("Connection", "close")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            pass

    def _error(self, status: int, message: str) -> None:
        if self._started:  # too late for a status: end the connection so the client sees it
            self.close_connection = True
            return
        try:
            self.json(status, {"message": message})
        except OSError:
            self.close_connection = True

    def start_stream(self, content_type: str, extra: dict[str, str] | None = None) -> None:
        self._headers(200, content_type, extra)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def stream(self, content_type: str, chunks: Iterable[bytes], extra: dict[str, str] | None = None) -> None:
        """A 200 whose body is `chunks`, sent as they come; a client that leaves ends it."""
        self.start_stream(content_type, extra)
        try:
            for data in chunks:
                self.chunk(data)
        except OSError:
            self.close_connection = True
            return
        self.end_stream()

    def chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def hijack(self, content_type: str) -> tuple[Any, socket.socket]:
        """Take the connection over (POST /containers/{id}/attach): `101 UPGRADED` when the client
        asked for `Upgrade: tcp`, else a 200 whose body runs until the connection closes. Returns
        (reader, socket): the raw stream both ways; the connection closes after the endpoint."""
        upgrade = "upgrade" in self.headers.get("Connection", "").lower()
        self._drain()
        self._started = True
        self.close_connection = True
        if upgrade:
            self.send_response_only(101, "UPGRADED")
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "tcp")
        else:
            self.send_response_only(200)
        self.send_header("Api-Version", system.API_VERSION)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        self.wfile.flush()
        return self.rfile, self.connection
