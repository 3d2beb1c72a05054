"""Real registries for tests: Debian's `docker-registry` (distribution 2.8) started on loopback.

This module owns everything about running that registry in a test: its config file, its
htpasswd file (basic auth), its self-signed CA and server certificate (TLS), its storage
directory (so a test can see which blobs a push stored and how many bytes), waiting until it
answers, and stopping it. Also here: a byte-counting TCP proxy to put between a client and a
registry, a `skopeo copy` helper to push images with a second, independent client, and
`write_oci_layout` to lay out an image (as made by `tests.badregistry.image_data`) for skopeo.

Nothing here reaches the network beyond 127.0.0.1 / localhost.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

REGISTRY_BIN = Path("/usr/bin/docker-registry")
USERNAME = "alice"
PASSWORD = "s3cret-pw"
START_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    """A running `docker-registry`; `stop()` ends it (the fixtures do that for you)."""

    host: str  # "127.0.0.1:PORT"
    url: str  # "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT"
    storage: Path  # the filesystem driver's rootdirectory
    username: str | None
    password: str | None
    ca_cert: Path | None  # the CA that signed the server certificate (TLS only), alone in its dir
    proc: subprocess.Popen[bytes]
    log: Path
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def blobs_dir(self) -> Path:
        return self.storage / "docker" / "registry" / "v2" / "blobs"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def storage_bytes(self) -> int:
        """Bytes of all files in the registry's blob storage."""
        if not self.blobs_dir.exists():
            return 0
        return sum(p.stat().st_size for p in self.blobs_dir.rglob("*") if p.is_file())

    def blob_digests(self) -> set[str]:
        """"sha256:HEX" of every blob stored (blobs/sha256/XX/HEX/data)."""
        root = self.blobs_dir / "sha256"
        if not root.exists():
            return set()
        return {f"sha256:{p.parent.name}" for p in root.glob("*/*/data") if p.is_file()}

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    @property
    def cert_dir(self) -> Path | None:
        """A directory holding only the CA certificate (for skopeo's --dest-cert-dir)."""
        return None if self.ca_cert is None else self.ca_cert.parent

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting this registry's CA (None for plain http)."""
        if self.ca_cert is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def get(self, path: str, *, auth: bool = False, headers: dict[str, str] | None = None,
            timeout: float = 5.0) -> tuple[int, bytes]:
        """GET url+path (status, body), with basic auth when `auth`; HTTP errors are returned.
        (Ask for an OCI manifest with an Accept header: distribution 2.8 answers 404 without.)"""
        req = urllib.request.Request(self.url + path, headers=headers or {})
        if auth and self.username is not None:
            req.add_header("Authorization", basic_auth(self.username, self.password or ""))
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


def basic_auth(username: str, password: str) -> str:
    import base64
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _htpasswd(path: Path) -> None:
    try:
        import bcrypt
    except ImportError:
        pytest.skip("the Python package bcrypt is needed for the htpasswd registry (pip install bcrypt)")
    # Cost 6 keeps the registry's check of every request cheap; Go accepts the $2b$ prefix.
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=6)).decode()
    path.write_text(f"{USERNAME}:{hashed}\n")


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")


def make_tls_files(dir: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate it signed for IP:127.0.0.1 and DNS:localhost,
    made with the openssl command line: (CA certificate, server certificate, server key). The CA
    certificate is alone in its directory (dir/ca/ca.crt)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (Debian package openssl)")
    dir.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "7",
          "-subj", "/CN=buildpy test CA",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], dir)
    _run(["openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr",
          "-subj", "/CN=127.0.0.1"], dir)
    (dir / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
          "-CAcreateserial", "-out", "server.crt", "-days", "7", "-extfile", "server.ext"], dir)
    # The CA alone in a directory of its own, so that its parent can be given as a certificate
    # directory (skopeo's --dest-cert-dir reads *.crt as CAs but takes X.key as a client key).
    (dir / "ca").mkdir(exist_ok=True)
    shutil.copyfile(dir / "ca.crt", dir / "ca" / "ca.crt")
    return dir / "ca" / "ca.crt", dir / "server.crt", dir / "server.key"


def _q(value: object) -> str:
    """A YAML scalar (JSON strings are YAML double-quoted scalars)."""
    return json.dumps(str(value))


def _config(port: int, storage: Path, htpasswd: Path | None, tls: tuple[Path, Path] | None) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  formatter: text",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {_q(storage)}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: {_q(f'127.0.0.1:{port}')}",
        "  secret: buildpy-test-secret",
    ]
    if tls is not None:
        lines += ["  tls:", f"    certificate: {_q(tls[0])}", f"    key: {_q(tls[1])}"]
    lines += ["health:", "  storagedriver:", "    enabled: false"]
    if htpasswd is not None:
        lines += ["auth:", "  htpasswd:", "    realm: basic-realm", f"    path: {_q(htpasswd)}"]
    return "\n".join(lines) + "\n"


def _wait_ready(reg: Registry, expect: int) -> str | None:
    """None once GET /v2/ answers `expect`; else why not (process gone, or timed out)."""
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if reg.proc.poll() is not None:
            return f"docker-registry exited with {reg.proc.returncode}"
        try:
            status, _ = reg.get("/v2/", timeout=2)
            if status == expect:
                return None
            last = f"GET /v2/ answered {status}"
        except (OSError, urllib.error.URLError) as e:
            last = f"GET /v2/: {e}"
        time.sleep(0.05)
    return f"not ready after {START_TIMEOUT:.0f} s ({last})"


def start_registry(tmp: Path, *, auth: bool = False, tls: bool = False) -> Registry:
    """Start `docker-registry serve` on a free 127.0.0.1 port with its storage in tmp/storage and
    wait until it answers GET /v2/ (200, or 401 with `auth`). `auth` adds htpasswd basic auth for
    USERNAME/PASSWORD; `tls` serves https with a certificate signed by `Registry.ca_cert`."""
    if not REGISTRY_BIN.is_file():
        pytest.skip("docker-registry not installed (Debian package docker-registry)")
    tmp.mkdir(parents=True, exist_ok=True)
    storage = tmp / "storage"
    storage.mkdir(exist_ok=True)
    htpasswd: Path | None = None
    if auth:
        htpasswd = tmp / "htpasswd"
        _htpasswd(htpasswd)
    ca_cert: Path | None = None
    tls_pair: tuple[Path, Path] | None = None
    if tls:
        ca_cert, crt, key = make_tls_files(tmp / "tls")
        tls_pair = (crt, key)
    return serve(tmp, storage, lambda port: _config(port, storage, htpasswd, tls_pair), 401 if auth else 200,
                 scheme="https" if tls else "http", username=USERNAME if auth else None,
                 password=PASSWORD if auth else None, ca_cert=ca_cert)


def serve(tmp: Path, storage: Path, config_for: Callable[[int], str], ready_status: int, *, scheme: str = "http",
          username: str | None = None, password: str | None = None, ca_cert: Path | None = None) -> Registry:
    """Run `docker-registry serve` with `config_for(port)` on a free port until GET /v2/ answers
    `ready_status` (for start_registry and the token-auth registry of tests.tokenauth)."""
    why = ""
    for attempt in range(3):  # the free port may be taken between our probe and the registry's bind
        port = free_port()
        config = tmp / "registry.yml"
        config.write_text(config_for(port))
        log = tmp / f"registry-{attempt}.log"
        log_file = log.open("wb")
        proc = subprocess.Popen([str(REGISTRY_BIN), "serve", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp)
        reg = Registry(host=f"127.0.0.1:{port}", url=f"{scheme}://127.0.0.1:{port}", storage=storage,
                       username=username, password=password, ca_cert=ca_cert, proc=proc, log=log,
                       _log_file=log_file)
        why = _wait_ready(reg, ready_status) or ""
        if not why:
            return reg
        reg.stop()
        tail = reg.log_tail()
        if "address already in use" not in tail:
            raise RuntimeError(f"docker-registry did not come up: {why}\n--- {log} ---\n{tail}")
        why = f"{why}\n--- {log} ---\n{tail}"
    raise RuntimeError(f"docker-registry did not come up: {why}")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-http registry, no auth."""
    reg = start_registry(tmp_path / "registry")
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-http registry with htpasswd basic auth (reg.username / reg.password)."""
    reg = start_registry(tmp_path / "auth-registry", auth=True)
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[Registry]:
    """An https registry whose certificate is signed by reg.ca_cert, no auth."""
    reg = start_registry(tmp_path / "tls-registry", tls=True)
    try:
        yield reg
    finally:
        reg.stop()


class CountingProxy:
    """A threaded TCP proxy on 127.0.0.1 that forwards to `target` ("HOST:PORT", or a Registry)
    and counts bytes: `.sent` client→server, `.received` server→client. Point a client at `.host`
    instead of the registry's host. Use as a context manager or call close()."""

    def __init__(self, target: str | Registry) -> None:
        host = target.host if isinstance(target, Registry) else target
        name, _, port = host.rpartition(":")
        self.target = (name, int(port))
        self.sent = 0
        self.received = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._closed = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept_loop, name="counting-proxy", daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.sent = 0
            self.received = 0
            self.connections = 0

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self.connections += 1
                self._socks.update((client, upstream))
            done = threading.Barrier(2, action=lambda c=client, u=upstream: self._drop(c, u))
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up, done), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool, done: threading.Barrier) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if up:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            done.wait(timeout=600)
        except threading.BrokenBarrierError:
            self._drop(src, dst)

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                self._socks.discard(s)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            socks = list(self._socks)
            self._socks.clear()
        try:
            self._listener.close()
        except OSError:
            pass
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def push_with_skopeo(src: str, dest_ref: str, *, tls_verify: bool = False, format: str | None = None,
                     extra: Sequence[str] = ()) -> None:
    """`skopeo copy SRC DEST` (e.g. "oci:/dir:latest" → "docker://127.0.0.1:PORT/repo:tag"),
    with --dest-tls-verify as given (false lets skopeo use plain http), `format` "oci" or "v2s2",
    and `extra` flags such as ["--dest-creds", "alice:s3cret-pw"] or ["--dest-cert-dir", DIR].
    Raises RuntimeError with skopeo's stderr when it fails."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo not installed (Debian package skopeo)")
    cmd = [skopeo, "--insecure-policy", "copy", f"--dest-tls-verify={'true' if tls_verify else 'false'}"]
    if format is not None:
        if format not in ("oci", "v2s2", "v2s1"):
            raise ValueError(f"unknown skopeo format {format!r}")
        cmd += ["--format", format]
    cmd += [*extra, src, dest_ref]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr.strip()}")


def write_oci_layout(dir: Path, blobs: dict[str, bytes], manifests: dict[str, tuple[str, bytes]]) -> Path:
    """An OCI image layout at `dir` (oci-layout, index.json, blobs/sha256/HEX) holding `blobs` and,
    for every manifest keyed by a tag (not by a digest), that manifest named by the tag, e.g. for
    skopeo's "oci:DIR:latest". Takes what `tests.badregistry.image_data` returns. Returns dir."""
    import hashlib
    (dir / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (dir / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for digest, data in blobs.items():
        algo, _, hexd = digest.partition(":")
        (dir / "blobs" / algo).mkdir(parents=True, exist_ok=True)
        (dir / "blobs" / algo / hexd).write_bytes(data)
    index = []
    for ref, (media_type, data) in manifests.items():
        hexd = hashlib.sha256(data).hexdigest()
        (dir / "blobs" / "sha256" / hexd).write_bytes(data)
        if ref.startswith("sha256:"):
            continue
        index.append({"mediaType": media_type, "digest": f"sha256:{hexd}", "size": len(data),
                      "annotations": {"org.opencontainers.image.ref.name": ref}})
    (dir / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index}))
    return dir
