"""A misbehaving registry: a tiny OCI distribution server (pull side only) that serves one image
given as data, with a selectable fault, so tests can check what our client does against a
hostile or broken registry. It runs on 127.0.0.1 in a daemon thread; `image_data` makes a valid
OCI image (blobs and manifest) to serve from raw layer tars.

Faults (`BadRegistry.fault`, may be reassigned while running):
  none              behave
  wrong-digest      blob GETs answer other bytes of the same length (each byte xor 1)
  truncated         blob GETs announce the full Content-Length, send half and close
  truncated-once    the first GET of each blob is truncated so, later ones are whole
  500-then-ok       the first request to each distinct path answers 500, then normal
  429-then-ok       the same with 429 and Retry-After: 1
  always-500        every /v2/<name>/... request answers 500 (/v2/ itself answers 200)
  401-no-token      every request answers 401 with a Bearer challenge whose realm nobody serves
  401-no-challenge  every request answers 401 without WWW-Authenticate
  redirect-blobs    blob GETs answer 307 to a second server at localhost:PORT2/blobdata/<digest>
                    (a different host name), which records its requests in .redirect_requests
  bigger-manifest   manifest GETs send the manifest plus 5 MiB of spaces (Content-Length to match)
  bigger-blob       blob GETs send the blob plus 1 KiB of zeros (Content-Length to match)
  slow              blob GETs send the headers, then wait 30 s before the body
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

FAULTS = frozenset({
    "none", "wrong-digest", "truncated", "truncated-once", "500-then-ok", "429-then-ok", "always-500",
    "401-no-token", "401-no-challenge", "redirect-blobs", "bigger-manifest", "bigger-blob", "slow",
})
SLOW_SECONDS = 30.0
BIGGER_MANIFEST_PAD = 5 * 1024 * 1024
BIGGER_BLOB_PAD = 1024
TOKEN_REALM = "http://127.0.0.1:1/token"

_ROUTE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")

MANIFEST_UNKNOWN = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
BLOB_UNKNOWN = {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry"}]}
INTERNAL = {"errors": [{"code": "UNKNOWN", "message": "internal trouble"}]}
TOO_MANY = {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}
UNAUTHORIZED = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_data(layers: list[bytes]) -> tuple[dict[str, bytes], dict[str, tuple[str, bytes]], str]:
    """A valid OCI image from uncompressed layer tars: (blobs by digest — gzip layers and config —,
    {"latest": (manifest media type, manifest bytes)}, manifest digest)."""
    blobs: dict[str, bytes] = {}
    diff_ids: list[str] = []
    layer_descs: list[dict[str, Any]] = []
    for tar in layers:
        gz = gzip.compress(tar, mtime=0)
        digest = sha256_digest(gz)
        blobs[digest] = gz
        diff_ids.append(sha256_digest(tar))
        layer_descs.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len(gz)})
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()
    config_digest = sha256_digest(config)
    blobs[config_digest] = config
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": layer_descs,
    }).encode()
    return blobs, {"latest": (OCI_MANIFEST, manifest)}, sha256_digest(manifest)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) for "bytes=N-" or "bytes=N-M"; None when absent or unusable."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m:
        return None
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    end = min(end, size)
    if start >= size or start >= end:
        return None
    return start, end


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "badregistry/1"
    owner: BadRegistry  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.owner._handle(self, head=False)

    def do_HEAD(self) -> None:
        self.owner._handle(self, head=True)

    def do_POST(self) -> None:  # pushes are not served
        self.owner._record(self)
        self.owner._send_json(self, 405, {"errors": [{"code": "UNSUPPORTED", "message": "read-only"}]})

    do_PUT = do_PATCH = do_DELETE = do_POST


class _RedirectHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "badregistry-blobs/1"
    owner: BadRegistry

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.owner._handle_redirect_target(self, head=False)

    def do_HEAD(self) -> None:
        self.owner._handle_redirect_target(self, head=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client that hangs up mid-body (as ours does on a wrong digest) is what the
        faults provoke, and socketserver's traceback on stderr would reach the test's capture."""


class BadRegistry:
    """Serves one image's `blobs` ("sha256:HEX" → bytes) and `manifests` (tag or digest →
    (media type, bytes); each manifest is also served by its own digest) at `.host`, for any
    repository name. Every request is recorded in `.requests` as (method, path, headers);
    requests to the redirect target (fault "redirect-blobs") in `.redirect_requests`."""

    def __init__(self, blobs: dict[str, bytes], manifests: dict[str, tuple[str, bytes]],
                 fault: str = "none") -> None:
        self.blobs = dict(blobs)
        self.manifests: dict[str, tuple[str, bytes]] = {}
        for ref, (media_type, data) in manifests.items():
            self.manifests[ref] = (media_type, data)
            self.manifests.setdefault(sha256_digest(data), (media_type, data))
        self.fault = fault
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.redirect_requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()  # (fault, key) for the *-once / *-then-ok faults
        self._stop = threading.Event()

        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self.port = int(self._server.server_address[1])
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"

        rhandler = type("RedirectHandler", (_RedirectHandler,), {"owner": self})
        self._redirect_server = _Server(("127.0.0.1", 0), rhandler)
        self.redirect_port = int(self._redirect_server.server_address[1])
        self.redirect_host = f"localhost:{self.redirect_port}"

        self._threads = [
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                             name=f"badregistry-{i}", daemon=True)
            for i, srv in enumerate((self._server, self._redirect_server))
        ]
        for t in self._threads:
            t.start()

    @property
    def fault(self) -> str:
        return self._fault

    @fault.setter
    def fault(self, value: str) -> None:
        if value not in FAULTS:
            raise ValueError(f"unknown fault {value!r}; one of {sorted(FAULTS)}")
        self._fault = value

    def close(self) -> None:
        self._stop.set()
        for srv in (self._server, self._redirect_server):
            srv.shutdown()
            srv.server_close()

    def __enter__(self) -> BadRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def paths(self, method: str | None = None) -> list[str]:
        """The paths requested so far (of one method when given)."""
        with self._lock:
            return [p for m, p, _ in self.requests if method is None or m == method]

    # --- serving -------------------------------------------------------------------------------

    def _record(self, h: BaseHTTPRequestHandler, into: list | None = None) -> None:
        entry = (h.command, h.path, {k: v for k, v in h.headers.items()})
        with self._lock:
            (self.requests if into is None else into).append(entry)

    def _first(self, fault: str, key: str) -> bool:
        """True the first time (fault, key) is asked about."""
        with self._lock:
            if (fault, key) in self._seen:
                return False
            self._seen.add((fault, key))
            return True

    @staticmethod
    def _send_json(h: BaseHTTPRequestHandler, status: int, body: Any,
                   headers: dict[str, str] | None = None, head: bool = False) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        self._record(h)
        fault = self.fault
        path = h.path.split("?", 1)[0]
        try:
            if fault == "401-no-token":
                self._send_json(h, 401, UNAUTHORIZED, {
                    "WWW-Authenticate": f'Bearer realm="{TOKEN_REALM}",service="bad"'}, head)
                return
            if fault == "401-no-challenge":
                self._send_json(h, 401, UNAUTHORIZED, None, head)
                return
            if fault == "500-then-ok" and self._first(fault, path):
                self._send_json(h, 500, INTERNAL, None, head)
                return
            if fault == "429-then-ok" and self._first(fault, path):
                self._send_json(h, 429, TOO_MANY, {"Retry-After": "1"}, head)
                return
            if path in ("/v2", "/v2/"):
                self._send_json(h, 200, {}, None, head)
                return
            m = _ROUTE.match(path)
            if m is None:
                self._send_json(h, 404, {"errors": [{"code": "NAME_UNKNOWN", "message": "not found"}]},
                                None, head)
                return
            if fault == "always-500":
                self._send_json(h, 500, INTERNAL, None, head)
                return
            if m.group("kind") == "manifests":
                self._manifest(h, m.group("ref"), head, fault)
            else:
                self._blob(h, m.group("ref"), head, fault)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _manifest(self, h: BaseHTTPRequestHandler, ref: str, head: bool, fault: str) -> None:
        found = self.manifests.get(ref)
        if found is None:
            self._send_json(h, 404, MANIFEST_UNKNOWN, None, head)
            return
        media_type, data = found
        body = data
        if fault == "bigger-manifest" and not head:
            body = data + b" " * BIGGER_MANIFEST_PAD
        h.send_response(200)
        h.send_header("Content-Type", media_type)
        h.send_header("Docker-Content-Digest", sha256_digest(data))
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Docker-Distribution-API-Version", "registry/2.0")
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _blob(self, h: BaseHTTPRequestHandler, digest: str, head: bool, fault: str) -> None:
        data = self.blobs.get(digest)
        if data is None:
            self._send_json(h, 404, BLOB_UNKNOWN, None, head)
            return
        if head:
            self._send_bytes(h, data, digest, head=True)
            return
        if fault == "redirect-blobs":
            h.send_response(307)
            h.send_header("Location", f"http://{self.redirect_host}/blobdata/{digest}")
            h.send_header("Content-Length", "0")
            h.send_header("Docker-Distribution-API-Version", "registry/2.0")
            h.end_headers()
            return
        if fault == "wrong-digest":
            data = bytes(b ^ 1 for b in data)
        elif fault == "bigger-blob":
            data = data + b"\0" * BIGGER_BLOB_PAD
        truncate = fault == "truncated" or (fault == "truncated-once" and self._first(fault, digest))
        self._send_bytes(h, data, digest, head=False, truncate=truncate, slow=fault == "slow")

    def _send_bytes(self, h: BaseHTTPRequestHandler, data: bytes, digest: str, *, head: bool,
                    truncate: bool = False, slow: bool = False) -> None:
        rng = None if head else _parse_range(h.headers.get("Range"), len(data))
        body = data if rng is None else data[rng[0]:rng[1]]
        h.send_response(200 if rng is None else 206)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Docker-Content-Digest", digest)
        h.send_header("Docker-Distribution-API-Version", "registry/2.0")
        if rng is not None:
            h.send_header("Content-Range", f"bytes {rng[0]}-{rng[1] - 1}/{len(data)}")
        if truncate:
            h.send_header("Connection", "close")
        h.end_headers()
        if head:
            return
        if slow:
            h.wfile.flush()
            if self._stop.wait(SLOW_SECONDS):
                h.close_connection = True
                return
        if truncate:
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)

    def _handle_redirect_target(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        self._record(h, self.redirect_requests)
        path = h.path.split("?", 1)[0]
        try:
            if path.startswith("/blobdata/") and path[len("/blobdata/"):] in self.blobs:
                digest = path[len("/blobdata/"):]
                self._send_bytes(h, self.blobs[digest], digest, head=head)
            else:
                self._send_json(h, 404, BLOB_UNKNOWN, None, head)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
