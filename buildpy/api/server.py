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
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from buildpy.api import routing, system
from buildpy.api.errors import ApiError
from buildpy.cas.store import Store


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
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for serve_forever

    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"buildpy: serving the Docker Engine API on unix://{path} (store {store.root})",
              file=sys.stderr, flush=True)
        server.serve_forever(poll_interval=0.2)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        server.server_close()
        try:
            if os.lstat(path).st_ino == server.inode:
                os.unlink(path)
        except FileNotFoundError:
            pass
    return 0


_AREAS = ("system", "images", "build")  # the modules whose @route endpoints are served


def _load_endpoints() -> None:
    import importlib

    for area in _AREAS:
        importlib.import_module(f"buildpy.api.{area}")


_VERSION_RE = re.compile(r"/v(\d+)\.(\d+)(/.*)")


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
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self.close_connection = True
                raise ApiError(400, "malformed Content-Length") from None
            yield from self._exactly(length)

    def _exactly(self, n: int) -> Iterator[bytes]:
        while n > 0:
            data = self.rfile.read(min(n, 1 << 20))
            if not data:
                self.close_connection = True
                raise ApiError(400, "the request body ended early")
            n -= len(data)
            yield data

    def _drain(self) -> None:
        try:
            for _ in self.body():
                pass
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

    def _error(self, status: int, message: str) -> None:
        if self._started:  # too late for a status: end the connection so the client sees it
            self.close_connection = True
            return
        try:
            self.json(status, {"message": message})
        except OSError:
            self.close_connection = True

    def start_stream(self, content_type: str) -> None:
        self._headers(200, content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
