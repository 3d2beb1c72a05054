"""POST /build beyond the happy path: the build checks' warnings in the stream, the context
kept for a no-change rebuild, and cancellation — a client that hangs up, a server told to stop
(SIGTERM), a cancel token in the executor — leaving no sandbox behind and the store usable."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from tests.apiserver import BUILDPY, Server, call, context_tar, json_lines, refs, serving, short_dir, start
from tests.imagekit import busybox_image

# a number no other process on the machine sleeps for: the sandbox's step, found in /proc
NAP = "7341"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("api-build")) as srv:
        yield srv


def _sleepers() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", NAP.encode()]:
            pids.append(int(entry))
    return pids


def _until(what: str, check, limit: float = 90) -> None:  # noqa: ANN001
    """Poll `check` until true; fail (naming `what`) only past a generous bound."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what} after {limit:g} s")
        time.sleep(0.1)


class _Stream:
    """A POST /build whose answer is read line by line, as the docker CLI reads it."""

    def __init__(self, sock: str, body: bytes, query: str = "t=cancel:1") -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(120)
        self.s.connect(sock)
        self.s.sendall(f"POST /v1.41/build?{query} HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        self.buf = b""

    def read_until(self, text: bytes) -> bytes:
        while text not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        return self.buf

    def rest(self) -> bytes:
        while chunk := self.s.recv(65536):
            self.buf += chunk
        return self.buf

    def close(self) -> None:
        self.s.close()


def _lines(raw: bytes) -> list[dict]:
    """The JSON lines of a chunked answer, read raw."""
    body = raw.partition(b"\r\n\r\n")[2]
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16) if size_line.strip() else 0
        if not size:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return json_lines(out)


def _fsck(root: Path) -> None:
    r = subprocess.run([*BUILDPY, "--root", str(root), "fsck"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _works(sock: str, tag: str) -> None:
    a = call(sock, "POST", f"/v1.41/build?t={tag}",
             body=context_tar({"Dockerfile": f"FROM busybox\nRUN echo {tag} > /after\n"}))
    lines = json_lines(a.body)
    assert not [m for m in lines if "error" in m], lines
    assert f"Successfully tagged {tag}\n" in [m.get("stream") for m in lines]


# the checks and the kept context (no sandbox needed)


def test_checks_warn_in_the_stream(server: Server) -> None:
    ctx = context_tar({"Dockerfile": "FROM busybox as Builder\nCMD echo hi\n"})
    lines = json_lines(call(server.sock, "POST", "/v1.41/build?t=checked:1", body=ctx).body)
    streams = [m["stream"] for m in lines if "stream" in m]
    assert "warning: Dockerfile:1: StageNameCasing: Stage name 'Builder' should be lowercase\n" in streams
    assert any(s.startswith("warning: Dockerfile:2: JSONArgsRecommended") for s in streams)
    assert streams[0].startswith("warning: "), streams  # before the build says anything
    assert "Successfully tagged checked:1\n" in streams
    # quiet: no warnings, only the ID
    lines = json_lines(call(server.sock, "POST", "/v1.41/build?q=1", body=ctx).body)
    assert [m["stream"][:7] for m in lines if "stream" in m] == ["sha256:"]
    assert call(server.sock, "DELETE", "/v1.41/images/checked:1").status == 200


def test_checks_as_errors_stop_the_build(server: Server) -> None:
    before = refs(server.root)
    ctx = context_tar({"Dockerfile": "# check=error=true\nFROM busybox as Builder\n"})
    lines = json_lines(call(server.sock, "POST", "/v1.41/build?t=strict:1", body=ctx).body)
    assert "check=error=true" in lines[-1]["error"], lines
    assert any("StageNameCasing" in m.get("stream", "") for m in lines)
    assert refs(server.root) == before


def test_same_context_rebuilds_by_the_fast_path(server: Server) -> None:
    ctx = context_tar({"Dockerfile": "FROM busybox\nLABEL fast=1\n", "a.txt": "a\n"})
    first = json_lines(call(server.sock, "POST", "/v1.41/build?t=fast:1", body=ctx).body)
    again = json_lines(call(server.sock, "POST", "/v1.41/build?t=fast:1", body=ctx).body)
    ids = [[m["aux"]["ID"] for m in lines if "aux" in m] for lines in (first, again)]
    assert ids[0] == ids[1] and len(ids[0]) == 1
    assert "nothing changed since the last build: every step reused\n" in [m.get("stream") for m in again]
    changed = context_tar({"Dockerfile": "FROM busybox\nLABEL fast=1\n", "a.txt": "b\n"})
    third = json_lines(call(server.sock, "POST", "/v1.41/build?t=fast:1", body=changed).body)
    assert not [m for m in third if "error" in m], third
    assert call(server.sock, "DELETE", "/v1.41/images/fast:1").status == 200


def test_kept_contexts_are_bounded(server: Server) -> None:
    from buildpy.api.buildcontext import DIR, KEEP

    for i in range(KEEP + 3):
        ctx = context_tar({"Dockerfile": f"FROM busybox\nLABEL n={i}\n"})
        lines = json_lines(call(server.sock, "POST", "/v1.41/build", body=ctx).body)
        assert not [m for m in lines if "error" in m], lines
    kept = [p for p in (server.root / DIR).iterdir() if p.is_dir()]
    assert len(kept) <= KEEP
    assert [p.name for p in (server.root / "tmp").iterdir() if p.name.startswith("api-")] == []


# cancellation (a sandbox runs the step)


def _cancel_body() -> bytes:
    return context_tar({"Dockerfile": f"FROM busybox\nRUN echo start && sleep {NAP}\nRUN echo never\n"})


def test_hangup_cancels_the_build(server: Server) -> None:
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    before = refs(server.root)
    stream = _Stream(server.sock, _cancel_body())
    try:
        got = stream.read_until(b"sleep " + NAP.encode())
        assert b'"stream"' in got, got
        _until("the step to start", lambda: bool(_sleepers()))
    finally:
        stream.close()  # the client goes away mid-build
    _until("the sandbox to be killed", lambda: not _sleepers())
    _until("the server to log the cancel", lambda: "the client went away" in server.log.read_text())
    _until("the build's temp dirs to go",
           lambda: not [p for p in (server.root / "tmp").iterdir() if p.name.startswith(("step-", "build-"))])
    assert refs(server.root) == before
    _works(server.sock, "after-hangup:1")
    _fsck(server.root)
    assert call(server.sock, "DELETE", "/v1.41/images/after-hangup:1").status == 200


def test_sigterm_cancels_running_builds(tmp_path: Path) -> None:
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    root = tmp_path / "store"
    busybox_image(Store(root))
    sockdir = short_dir()
    sock = str(sockdir / "s.sock")
    try:
        srv = start(root, sock, tmp_path / "serve.log")
        before = refs(root)
        stream = _Stream(sock, _cancel_body())
        try:
            stream.read_until(b"sleep " + NAP.encode())
            _until("the step to start", lambda: bool(_sleepers()))
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(timeout=120) == 0
            lines = _lines(stream.rest())
        finally:
            stream.close()
        assert "the server is stopping" in lines[-1]["error"], lines
        assert not _sleepers()
        assert not os.path.exists(sock)
        assert refs(root) == before
        _fsck(root)
        srv = start(root, sock, tmp_path / "serve2.log")  # the store serves again, and builds
        try:
            _works(sock, "after-sigterm:1")
        finally:
            assert srv.stop() == 0
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_cancel_token_stops_the_executor(tmp_path: Path) -> None:
    """In process: session.build with a token cancelled while a RUN sleeps."""
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    from buildpy.executor.cancel import BuildCancelled, Cancel
    from buildpy.executor.options import BuildOptions
    from buildpy.executor.session import build
    from buildpy.planner.request import BuildRequest

    store = Store(tmp_path / "store")
    busybox_image(store)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM busybox\nRUN sleep {NAP}\n")
    request = BuildRequest(context=ctx, dockerfile=ctx / "Dockerfile")

    class Out:
        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    with Cancel() as token:
        def cancel_when_running() -> None:
            _until("the step to start", lambda: bool(_sleepers()))
            token.cancel("stop now")

        t = threading.Thread(target=cancel_when_running)
        t.start()
        with pytest.raises(BuildCancelled, match="stop now"):
            build(store, request, BuildOptions(cancel=token), tags=["x:1"], progress="plain", stream=Out())
        t.join()
    assert not _sleepers()
    assert "docker.io/library/x:1" not in refs(store.root)
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    result = build(store, request, BuildOptions(), tags=["x:1"], progress="quiet", stream=Out())
    assert refs(store.root)["docker.io/library/x:1"] == result.image.digest
    # a token cancelled before the build starts stops it before any step
    (ctx / "Dockerfile").write_text(f"FROM busybox\nRUN sleep {NAP}\n")
    with Cancel() as token:
        token.cancel()
        with pytest.raises(BuildCancelled):
            build(store, request, BuildOptions(cancel=token), progress="quiet", stream=Out())
    assert not _sleepers()


def test_build_settings_buildpy_lacks_are_refused_not_ignored(server: Server) -> None:
    body = context_tar({"Dockerfile": "FROM busybox\n"})
    # what the docker CLI sends without those flags is fine
    ok = call(server.sock, "POST", "/v1.41/build?memory=0&shmsize=0&ulimits=null&cpushares=0&version=1&t=plain:1",
              body=body, headers={"Content-Type": "application/x-tar"})
    assert ok.status == 200 and b"Successfully tagged plain:1" in ok.body
    for query in ("memory=1073741824", "extrahosts=h%3A1.2.3.4", "squash=1", "version=2", "ulimits=%5B%7B%7D%5D"):
        a = call(server.sock, "POST", f"/v1.41/build?{query}&t=refused:1", body=body,
                 headers={"Content-Type": "application/x-tar"})
        assert a.status == 501, query
        assert a.json()["message"].startswith("buildpy does not implement POST /build with "), a.body
    assert "docker.io/library/refused:1" not in Store(server.root).refs()
    a = call(server.sock, "POST", "/v1.41/build?cachefrom=%5B%22reg%2Fapp%3Acache%22%5D&t=cf:1", body=body,
             headers={"Content-Type": "application/x-tar"})
    assert a.status == 200 and b"warning: cachefrom reg/app:cache is not used" in a.body, a.body
