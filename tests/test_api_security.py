"""`buildpy serve` against malformed and hostile requests: each gets a 4xx JSON `{"message"}`
answer, the store is left as it was (refs and blobs), nothing outside it is touched, and the
server keeps serving. Raw bytes over the socket where http.client would refuse to send them."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from tests.apiserver import Server, UnixConnection, call, context_tar, json_lines, refs, serving, short_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("api-sec")) as srv:
        yield srv


def _blobs(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs" / "sha256").iterdir()}


def _state(server: Server) -> tuple[dict, set[str]]:
    return refs(server.root), _blobs(server.root)


def _serving(server: Server) -> None:
    assert server.proc.poll() is None, server.log.read_text()
    assert call(server.sock, "GET", "/_ping").body == b"OK"


def _raw(server: Server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are, then half-close; (status, headers, body) of the answer (the
    server closes the connection after a refusal, or after this one request)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(server.sock)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all
        s.shutdown(socket.SHUT_WR)
        buf = _read_all(s)
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return status, headers, body


def _read_all(s: socket.socket) -> bytes:
    """To the end: a server that closes with our bytes unread resets the connection after its
    answer (a Unix socket delivers what was sent first)."""
    answer = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return answer
        if not chunk:
            return answer
        answer += chunk


def _message(body: bytes) -> str:
    obj = json.loads(body)
    assert set(obj) == {"message"}, obj
    assert obj["message"] and "Traceback" not in obj["message"]
    return obj["message"]


# JSON where JSON is wanted


def test_bad_json_query_parameters(server: Server) -> None:
    before = _state(server)
    ctx = context_tar({"Dockerfile": "FROM busybox\nLABEL a=b\n"})
    for method, path, body in (
        ("POST", "/v1.41/build?buildargs=notjson&t=never:1", ctx),
        ("POST", "/v1.41/build?buildargs=%7B%22a%22&t=never:1", ctx),  # {"a
        ("POST", "/v1.41/build?buildargs=%5B1%2C2%5D&t=never:1", ctx),  # [1,2]: not an object
        ("POST", "/v1.41/build?labels=%7Bbroken&t=never:1", ctx),
        ("GET", "/v1.41/images/json?filters=%7Bbroken", None),
    ):
        a = call(server.sock, method, path, body=body)
        assert 400 <= a.status < 500, (path, a.status, a.body)
        assert a.headers["Content-Type"] == "application/json"
        _message(a.body)
    assert _state(server) == before
    _serving(server)


def test_bad_json_body_on_a_real_endpoint(server: Server) -> None:
    before = _state(server)
    for body in (b'{"Image": "busybox", ', b"\xff\xfe not json", b'"just a string"', b"[1, 2]"):
        a = call(server.sock, "POST", "/v1.41/containers/create?name=never",
                 body=body, headers={"Content-Type": "application/json"})
        assert a.status == 400, (body, a.status, a.body)
        _message(a.body)
    assert _state(server) == before
    assert "never" not in call(server.sock, "GET", "/v1.41/containers/json?all=1").body.decode()
    _serving(server)


# paths


@pytest.mark.parametrize("path", [
    "/images/../../etc/passwd/json",
    "/v1.41/images/../../../etc/passwd/json",
    "/v1.41/../_ping",
    "/v1.41/images/%2e%2e/%2e%2e/etc/passwd/json",
    "/v1.41/images/%2E%2E%2f%2E%2E%2fetc%2fpasswd/json",
    "/v1.41/images/./busybox/json",
    "/v1.41/images/busybox%00/json",
    "/v1.41/volumes/..",
    "/v1.41/containers/../../../../etc/shadow/json",
])
def test_dot_segments_refused(server: Server, path: str) -> None:
    before = _state(server)
    status, headers, body = _raw(server, f"GET {path} HTTP/1.1\r\nHost: docker\r\n\r\n".encode())
    assert status in (400, 404), (path, status, body)
    assert headers["content-type"] == "application/json"
    message = _message(body)
    assert "root:" not in message
    assert _state(server) == before
    _serving(server)


def test_the_build_dockerfile_stays_in_the_context(server: Server, tmp_path: Path) -> None:
    before = _state(server)
    files = {"Dockerfile": "FROM busybox\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, target in (("Dockerfile", "/etc/passwd"), ("up.Dockerfile", "../../../../etc/passwd"),
                             (".dockerignore", "/etc/shadow")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        data = b"FROM busybox\n"
        info = tarfile.TarInfo("ok.Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    linked = buf.getvalue()
    for body, query in (
        (context_tar(files), "dockerfile=../../etc/passwd"),
        (context_tar(files), "dockerfile=/etc/passwd"),
        (context_tar(files), "dockerfile=%2e%2e/%2e%2e/etc/passwd"),
        (linked, "dockerfile=Dockerfile"),
        (linked, "dockerfile=up.Dockerfile"),
        (linked, "dockerfile=ok.Dockerfile"),  # its .dockerignore is a link out
    ):
        a = call(server.sock, "POST", f"/v1.41/build?{query}&t=never:1", body=body)
        assert a.status == 400, (query, a.body)
        assert "outside the build context" in _message(a.body), a.body
    assert _state(server) == before
    _serving(server)


# limits


def test_huge_request_line(server: Server) -> None:
    status, headers, body = _raw(server, b"GET /_ping?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: d\r\n\r\n")
    assert status in (400, 414, 431), status
    assert headers.get("connection") == "close"
    _message(body)
    _serving(server)


def test_huge_header(server: Server) -> None:
    status, headers, body = _raw(server, b"GET /_ping HTTP/1.1\r\nHost: d\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n")
    assert status in (400, 431), status
    _message(body)
    _serving(server)


def test_too_many_headers(server: Server) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    status, _, body = _raw(server, b"GET /_ping HTTP/1.1\r\nHost: d\r\n" + many + b"\r\n")
    assert status in (400, 431), status
    _message(body)
    _serving(server)


@pytest.mark.parametrize("request_line", [b"GARBAGE\r\n", b"GET /_ping HTTP/9.9\r\n", b"FOO /_ping HTTP/1.1\r\n"])
def test_malformed_request_lines(server: Server, request_line: bytes) -> None:
    status, _, body = _raw(server, request_line + b"Host: d\r\n\r\n")
    assert 400 <= status < 600 and status != 500, status
    _message(body)
    _serving(server)


@pytest.mark.parametrize("length", ["-5", "abc", "1e9"])
def test_malformed_content_length(server: Server, length: str) -> None:
    status, _, body = _raw(server, f"POST /v1.41/build HTTP/1.1\r\nHost: d\r\nContent-Length: {length}\r\n\r\n"
                           .encode())
    assert status == 400, (length, body)
    _message(body)
    _serving(server)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_huge_claimed_body_is_not_read_where_unwanted(server: Server) -> None:
    """A body no endpoint wants, claimed huge: answered without reading it, the connection closed."""
    rss = _rss_kib(server.proc.pid)
    for method, path, status in (("GET", "/_ping", 200), ("POST", "/v1.41/images/nope/tag?repo=x", 404)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(server.sock)
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: d\r\nContent-Length: {1 << 40}\r\n\r\n".encode()
                      + b"x" * 65536)
            answer = _read_all(s)
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
        assert b"\r\nConnection: close\r\n" in answer
    assert _rss_kib(server.proc.pid) - rss < 32 * 1024
    _serving(server)


def test_huge_build_body_is_spooled_not_held(server: Server) -> None:
    """A context claimed at 1 TiB, 48 MiB sent, then the client stops sending: memory stays
    flat (the context is spooled to a file), the answer says the body ended early, and
    nothing is left in tmp/."""
    before = _state(server)
    rss = _rss_kib(server.proc.pid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(server.sock)
        s.sendall(f"POST /v1.41/build?t=never:1 HTTP/1.1\r\nHost: d\r\nContent-Length: {1 << 40}\r\n\r\n".encode())
        block = b"\0" * (1 << 20)
        for _ in range(48):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"ended early" in answer
    assert _rss_kib(server.proc.pid) - rss < 32 * 1024
    assert [p.name for p in (server.root / "tmp").iterdir() if p.name.startswith("api-")] == []
    assert _state(server) == before
    _serving(server)


# the shared JSON body reader, on a server in this process with an endpoint of the test's own


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from buildpy.api import routing
    from buildpy.api.server import _load_endpoints, _Server

    @routing.route("POST", r"/_test/json/(object|array)")
    def _echo(h, q, kind):  # noqa: ANN001, ANN202
        h.json(200, {"got": h.json_body(dict if kind == "object" else list, limit=1 << 16)})

    store = Store(tmp_path_factory.mktemp("json-store"))
    _load_endpoints()
    sockdir = short_dir()
    path = str(sockdir / "j.sock")
    srv = _Server(path, store)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        srv.shutdown()
        srv.server_close()
        os.unlink(path)
        os.rmdir(sockdir)


def test_json_body_helper(json_server: str) -> None:
    conn = UnixConnection(json_server)
    try:
        ok = call(conn, "POST", "/_test/json/object", body=b'{"a": [1, 2]}',
                  headers={"Content-Type": "application/json"})
        assert ok.status == 200 and ok.json() == {"got": {"a": [1, 2]}}
        assert call(conn, "POST", "/_test/json/object", body=b"").json() == {"got": None}
        assert call(conn, "POST", "/_test/json/array", body=b"[3]", chunked=True).json() == {"got": [3]}
        for path, body, want in (
            ("/_test/json/object", b'{"a": ', "not valid JSON"),
            ("/_test/json/object", b"\xff\xfe", "not valid JSON"),
            ("/_test/json/object", b"[1]", "must be JSON an object"),
            ("/_test/json/array", b'{"a": 1}', "must be JSON an array"),
        ):
            a = call(conn, "POST", path, body=body, headers={"Content-Type": "application/json"})
            assert a.status == 400, (body, a.body)
            assert want in _message(a.body)
        # the connection survived every 400 (each body was read whole)
        assert call(conn, "GET", "/_ping").status == 200
    finally:
        conn.close()
    # too large, by Content-Length (nothing read) or chunked (read up to the limit): 413, closed
    big = b'{"a": "' + b"x" * (1 << 17) + b'"}'
    for head, body in ((b"Content-Length: %d\r\n" % len(big), big),
                       (b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(json_server)
            try:
                s.sendall(b"POST /_test/json/object HTTP/1.1\r\nHost: d\r\n" + head + b"\r\n" + body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered and closed before the rest was read: the point
            answer = _read_all(s)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
        assert b"\r\nConnection: close\r\n" in answer
        assert "larger than" in _message(answer.partition(b"\r\n\r\n")[2])
    assert call(json_server, "GET", "/_ping").status == 200


# the build context


def _tar(*entries: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dockerfile = b"FROM busybox\nCOPY . /ctx/\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        for entry in entries:
            if isinstance(entry, tuple):
                info, data = entry
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(entry)
    return buf.getvalue()


def _file(name: str, data: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info


def _hostile_contexts(outside: Path) -> list[tuple[str, bytes]]:
    out = str(outside)
    rel_up = "../" * 12 + out.lstrip("/")
    return [
        ("dot-dot", _tar(_file("../escaped"))),
        ("deep dot-dot", _tar(_file(f"a/b/{rel_up}/x"))),
        ("absolute", _tar(_file(f"{out}/abs"))),
        ("symlink out, then through it", _tar(_link("out", out), _file("out/through"))),
        ("relative symlink out, then through it", _tar(_link("up", rel_up), _file("up/through"))),
        ("symlink, then a file over it", _tar(_link("f", f"{out}/over"), _file("f"))),
        ("symlink chain", _tar(_link("a", "."), _link("a/b", out), _file("a/b/x"))),
        ("hard link out", _tar(_link("h", f"{out}/target", hard=True))),
        ("hard link up", _tar(_link("h", rel_up + "/target", hard=True))),
        ("hard link to a symlink's target", _tar(_link("s", out), _link("h", "s/target", hard=True))),
        ("char device", _tar(_special("null", tarfile.CHRTYPE))),
        ("block device", _tar(_special("disk", tarfile.BLKTYPE))),
        ("fifo", _tar(_special("pipe", tarfile.FIFOTYPE))),
    ]


def test_hostile_context_tars_refused(server: Server, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("keep me\n")
    before = _state(server)
    kept_before = sorted(os.listdir(server.root / "api-contexts")) if (server.root / "api-contexts").exists() else []
    for what, body in _hostile_contexts(outside):
        for gz in (False, True):
            if gz:
                import gzip

                body = gzip.compress(body)
            a = call(server.sock, "POST", "/v1.41/build?t=never:1", body=body,
                     headers={"Content-Type": "application/x-tar"})
            assert a.status == 400, (what, a.status, a.body)
            assert "refused" in _message(a.body), (what, a.body)
        assert sorted(p.name for p in outside.iterdir()) == ["target"], what
        assert (outside / "target").read_text() == "keep me\n"
    assert not Path("/escaped").exists()
    assert _state(server) == before
    kept = sorted(os.listdir(server.root / "api-contexts")) if (server.root / "api-contexts").exists() else []
    assert kept == kept_before
    assert [p.name for p in (server.root / "tmp").iterdir() if p.name.startswith("api-")] == []
    _serving(server)


def test_links_inside_the_context_still_build(server: Server) -> None:
    """What a real context holds: symlinks anywhere (absolute, or up and out: they are only
    copied), hard links between its files."""
    body = _tar(_file("dir/real", b"data\n"), _link("abs", "/etc/passwd"), _link("up", "../../somewhere"),
                _link("dir/same", "dir/real", hard=True), _link("rel", "dir/real"))
    a = call(server.sock, "POST", "/v1.41/build?t=links:1", body=body)
    assert a.status == 200
    lines = json_lines(a.body)
    assert not [m for m in lines if "error" in m], lines
    assert call(server.sock, "DELETE", "/v1.41/images/links:1").status == 200


# another user


def test_other_users_cannot_connect(server: Server) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a child process drops to uid/gid 65534 to try the socket")
    probe = (
        "import os, socket, sys\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "try:\n"
        f"    s.connect({server.sock!r})\n"
        "except PermissionError:\n"
        "    print('refused'); sys.exit(0)\n"
        "print('connected'); sys.exit(1)\n"
    )
    # the socket's directory open to all: only the socket's own 0600 stands in the way
    sockdir = Path(server.sock).parent
    mode = sockdir.stat().st_mode & 0o7777
    sockdir.chmod(0o755)
    try:
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    finally:
        sockdir.chmod(mode)
    assert r.stdout.strip() == "refused", r.stdout + r.stderr
    _serving(server)
