"""What the Engine API tests share: a `buildpy serve` started on a short socket path, raw HTTP
over that socket, the docker CLI pointed at it, and small tar/JSON helpers."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from tests.imagekit import busybox_image

_SCRIPT = Path(sys.executable).with_name("buildpy")
BUILDPY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "buildpy"]
# Debian's docker.io CLI first (what the issue names), else whatever docker is on PATH
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")


@dataclass
class Server:
    proc: subprocess.Popen
    sock: str
    root: Path
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def short_dir() -> Path:
    # a Unix socket path has at most 107 bytes: pytest's tmp_path may be longer
    return Path(tempfile.mkdtemp(prefix="bp-api-", dir="/tmp"))


def start(root: Path, sock: str, log: Path) -> Server:
    proc = subprocess.Popen([*BUILDPY, "--root", str(root), "serve", "--host", f"unix://{sock}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"buildpy serve exited {proc.returncode}: {log.read_text()}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(sock)
            return Server(proc, sock, root, log)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"buildpy serve did not listen on {sock}: {log.read_text()}")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):  # noqa: ANN201
        return json.loads(self.body)


def call(conn_or_sock: UnixConnection | str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, chunked: bool = False) -> Answer:
    conn = UnixConnection(conn_or_sock) if isinstance(conn_or_sock, str) else conn_or_sock
    if chunked:
        conn.request(method, path, body=iter([body or b""]), headers=headers or {}, encode_chunked=True)
    else:
        conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    answer = Answer(r.status, r.headers, data)
    if isinstance(conn_or_sock, str):
        conn.close()
    return answer


def refs(root: Path) -> dict:
    return {name: d.digest for name, d in Store(root).refs().items()}


def context_tar(files: dict[str, str], gzip: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def json_lines(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def docker(server: Server, tmp: Path, *args: str, buildkit: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{server.sock}", DOCKER_CONFIG=str(tmp / "docker-config"),
               DOCKER_CLI_HINTS="false")
    if not buildkit:
        env["DOCKER_BUILDKIT"] = "0"
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, env=env, timeout=300)


needs_docker = pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")


@contextlib.contextmanager
def serving(base: Path, busybox: bool = True) -> Iterator[Server]:
    """`buildpy serve` on a new store under `base` (holding the busybox test image, or nothing)."""
    root = base / "store"
    store = Store(root)
    if busybox:
        busybox_image(store)
    sockdir = short_dir()
    srv = start(root, str(sockdir / "s.sock"), base / "serve.log")
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def raw_request(server: Server, head: str) -> tuple[socket.socket, bytes]:
    """A socket that sent `head` (request line and headers, no body) and has read the answer's
    head; what follows is the raw stream (an attach, hijacked or not)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(server.sock)
    s.sendall(head.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        byte = s.recv(1)
        if not byte:
            break
        answer += byte
    return s, answer
