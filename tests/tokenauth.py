"""A real registry behind the bearer-token auth flow: Debian's `docker-registry` (distribution
2.8) configured with `auth: token:`, and the token server it sends clients to, run in the test.

This module owns everything about that pair: the token issuer's RSA key and self-signed
certificate (made with the openssl command line), the JWTs it signs (RS256, the certificate in
the `x5c` header, distribution's `access` claim), the token server (a ThreadingHTTPServer on
127.0.0.1 that checks basic auth for one user, records every request it gets, and grants
anonymous callers nothing but pull on `public/…` repositories), the registry's token config,
and the `token_registry` fixture that starts both and stops them after the test.

The registry itself is started the way `tests.registries` starts it (its config, port and
readiness helpers are reused from there); that module is not changed.

Nothing here reaches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.registries import (
    PASSWORD,
    REGISTRY_BIN,
    USERNAME,
    Registry,
    _config,
    _q,
    serve,
)

SERVICE = "test-registry"
ISSUER = "test-issuer"
TOKEN_TTL = 300
PUBLIC_PREFIX = "public/"  # anonymous callers may pull these repositories, nothing else


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(args: list[str], cwd: Path, input: bytes | None = None) -> bytes:
    r = subprocess.run(["openssl", *args], cwd=cwd, input=input, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({r.returncode}): "
                           f"{r.stderr.decode(errors='replace').strip()}")
    return r.stdout


def libtrust_key_id(spki_der: bytes) -> str:
    """docker/libtrust's key ID: sha256 of the DER SubjectPublicKeyInfo, first 30 bytes, base32
    without padding, 12 groups of 4 joined with ':'."""
    text = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i:i + 4] for i in range(0, 48, 4))


@dataclass
class Issuer:
    """The token issuer's RSA key (key.pem) and self-signed certificate (cert.pem, the registry's
    rootcertbundle); `sign` makes an RS256 JWT with the certificate in `x5c`."""

    dir: Path
    key: Path
    cert: Path
    cert_der: bytes
    key_id: str
    with_kid: bool = False  # distribution 2.8 trusts the x5c chain alone; set to also send "kid"

    @classmethod
    def create(cls, dir: Path) -> Issuer:
        if shutil.which("openssl") is None:
            pytest.skip("openssl not installed (Debian package openssl)")
        dir.mkdir(parents=True, exist_ok=True)
        _openssl(["genrsa", "-out", "key.pem", "2048"], dir)
        _openssl(["req", "-x509", "-new", "-key", "key.pem", "-out", "cert.pem",
                  "-subj", "/CN=token-issuer", "-days", "2"], dir)
        cert_der = _openssl(["x509", "-in", "cert.pem", "-outform", "DER"], dir)
        spki_der = _openssl(["rsa", "-in", "key.pem", "-pubout", "-outform", "DER"], dir)
        return cls(dir, dir / "key.pem", dir / "cert.pem", cert_der, libtrust_key_id(spki_der))

    def sign(self, claims: dict) -> str:
        header: dict = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        if self.with_kid:
            header["kid"] = self.key_id
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        signature = _openssl(["dgst", "-sha256", "-sign", str(self.key)], self.dir, input=signing_input.encode())
        return f"{signing_input}.{_b64url(signature)}"


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server got: what a client sent, and whom it was taken for."""

    method: str
    path: str  # with the query
    headers: dict[str, str]  # as sent (names as the client spelled them)
    scopes: tuple[str, ...]  # every scope asked for (repeated or space-separated)
    service: str
    user: str | None  # the authenticated user; None for anonymous; "" for rejected credentials
    status: int

    def header(self, name: str) -> str:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return ""


def parse_scopes(values: list[str]) -> list[tuple[str, str, list[str]]]:
    """`repository:NAME:pull,push` (each value may hold several, space-separated) →
    [(type, name, actions)]; malformed scopes are dropped, as distribution's token servers do."""
    out = []
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name and actions:
                out.append((kind, name, [a for a in actions.split(",") if a]))
    return out



class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client hanging up is no test failure; socketserver's traceback would reach capsys."""

class TokenServer:
    """`GET /token?service=…&scope=…` on 127.0.0.1 (a daemon thread). Basic auth for
    `username`/`password` gets every action asked for; no credentials get pull on `public/…`
    only (an empty access list otherwise); wrong credentials get 401. Every request is in
    `.requests`. `delay` (seconds) holds each token answer back, as a remote issuer would.
    `close()` stops it."""

    def __init__(self, issuer: Issuer, username: str = USERNAME, password: str = PASSWORD,
                 service: str = SERVICE) -> None:
        self.issuer = issuer
        self.username = username
        self.password = password
        self.service = service
        self.delay = 0.0
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                server._handle(self)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server._record(self, [], "", None, 405)
                server._send(self, 405, {"errors": [{"code": "UNSUPPORTED", "message": "only GET"}]})

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- serving ------------------------------------------------------------------------------

    def _user(self, h: BaseHTTPRequestHandler) -> str | None:
        """The user basic auth names (None: no credentials, "": wrong ones)."""
        value = h.headers.get("Authorization") or ""
        if not value:
            return None
        scheme, _, param = value.partition(" ")
        if scheme.lower() != "basic":
            return ""
        try:
            user, sep, password = base64.b64decode(param.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return ""
        if sep and user == self.username and password == self.password:
            return user
        return ""

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        scope_values = query.get("scope", [])
        service = (query.get("service") or [""])[0]
        if url.path != "/token":
            self._record(h, scope_values, service, None, 404)
            self._send(h, 404, {"errors": [{"code": "NOT_FOUND", "message": "no such path"}]})
            return
        user = self._user(h)
        if user == "":
            self._record(h, scope_values, service, "", 401)
            self._send(h, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]},
                       {"WWW-Authenticate": 'Basic realm="token"'})
            return
        access = []
        for kind, name, actions in parse_scopes(scope_values):
            if user is None:
                granted = ["pull"] if kind == "repository" and name.startswith(PUBLIC_PREFIX) \
                    and "pull" in actions else []
            else:
                granted = [a for a in actions if a in ("pull", "push", "delete", "*")]
            if granted:
                access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user or "", "aud": service or self.service,
                  "exp": now + TOKEN_TTL, "nbf": now - 10, "iat": now,
                  "jti": base64.b32encode(os.urandom(10)).decode(), "access": access}
        token = self.issuer.sign(claims)
        if self.delay > 0:
            time.sleep(self.delay)
        self._record(h, scope_values, service, user, 200)
        self._send(h, 200, {"token": token, "access_token": token, "expires_in": TOKEN_TTL,
                            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})

    def _record(self, h: BaseHTTPRequestHandler, scope_values: list[str], service: str,
                user: str | None, status: int) -> None:
        scopes = tuple(s for v in scope_values for s in v.split())
        req = TokenRequest(h.command, h.path, dict(h.headers.items()), scopes, service, user, status)
        with self._lock:
            self._requests.append(req)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)


def token_config(port: int, storage: Path, realm: str, rootcertbundle: Path, *,
                 service: str = SERVICE, issuer: str = ISSUER) -> str:
    """The registry config of `tests.registries` (no htpasswd, no TLS) with `auth: token:`."""
    return _config(port, storage, None, None) + "\n".join([
        "auth:",
        "  token:",
        f"    realm: {_q(realm)}",
        f"    service: {_q(service)}",
        f"    issuer: {_q(issuer)}",
        f"    rootcertbundle: {_q(rootcertbundle)}",
    ]) + "\n"


def start_token_registry(tmp: Path, realm: str, rootcertbundle: Path) -> Registry:
    """`docker-registry serve` with token auth on a free 127.0.0.1 port (storage in tmp/storage),
    once GET /v2/ answers 401; as `tests.registries.start_registry` does for htpasswd."""
    if not REGISTRY_BIN.is_file():
        pytest.skip("docker-registry not installed (Debian package docker-registry)")
    tmp.mkdir(parents=True, exist_ok=True)
    storage = tmp / "storage"
    storage.mkdir(exist_ok=True)
    return serve(tmp, storage, lambda port: token_config(port, storage, realm, rootcertbundle), 401)


@dataclass
class TokenRegistry:
    """A token-auth registry (`.registry`, at `.host`) and its token server (`.token_server`)."""

    registry: Registry
    token_server: TokenServer
    issuer: Issuer
    username: str = USERNAME
    password: str = PASSWORD
    _stopped: bool = field(default=False, repr=False)

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def url(self) -> str:
        return self.registry.url

    def token(self, *scopes: str, user: str | None = USERNAME) -> str:
        """A token straight from the issuer (not via the server), for probing the registry."""
        now = int(time.time())
        access = [{"type": k, "name": n, "actions": a} for k, n, a in parse_scopes(list(scopes))]
        return self.issuer.sign({"iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + TOKEN_TTL,
                                 "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access})

    def log_tail(self, n: int = 40) -> str:
        return self.registry.log_tail(n)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.registry.stop()
        finally:
            self.token_server.close()


def start(tmp: Path) -> TokenRegistry:
    """Issuer key and certificate, token server, then the registry trusting that certificate."""
    if not REGISTRY_BIN.is_file():
        pytest.skip("docker-registry not installed (Debian package docker-registry)")
    issuer = Issuer.create(tmp / "issuer")
    server = TokenServer(issuer)
    try:
        reg = start_token_registry(tmp / "registry", server.realm, issuer.cert)
    except BaseException:
        server.close()
        raise
    return TokenRegistry(reg, server, issuer)


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[TokenRegistry]:
    """A plain-http registry with bearer-token auth; alice / s3cret-pw at its token server."""
    tr = start(tmp_path / "token-registry")
    try:
        yield tr
    finally:
        tr.stop()
