"""Build contexts beyond a local folder: stdin (a tar, compressed or not; a bare Dockerfile;
`-f -`), git URLs (file:// and a `git daemon` on loopback, with #REF:SUBDIR), and an http
tarball URL; each built by the real `buildpy` and checked file by file."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from tests.imagekit import busybox_image, busybox_or_skip
from tests.test_build import image_files

BUILDPY = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "buildpy")
DOCKERFILE = "FROM busybox\nCOPY . /ctx/\nRUN cat /ctx/a.txt > /seen\n"


@pytest.fixture
def store(tmp_path) -> Store:
    busybox_or_skip()
    s = Store(tmp_path / "store")
    busybox_image(s)
    return s


def buildpy(store: Store, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BUILDPY, "--root", str(store.root), *args], input=input, capture_output=True, timeout=120)


def tar_of(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            data = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ran(result: subprocess.CompletedProcess) -> str:
    return result.stderr.decode().strip().splitlines()[-1]


@pytest.mark.parametrize("compress", [False, True])
def test_tar_on_stdin_is_the_context(store, compress):
    data = tar_of({"Dockerfile": DOCKERFILE, "a.txt": "from the tar\n", "sub/b.txt": "b"})
    r = buildpy(store, "build", "-t", "t:1", "-", input=gzip.compress(data) if compress else data)
    assert r.returncode == 0, r.stderr
    files = image_files(store, "t:1")
    assert files["seen"][2] == b"from the tar\n" and files["ctx/sub/b.txt"][2] == b"b"
    assert not list((store.root / "tmp").glob("context-*"))  # the unpacked copy is gone


def test_bare_dockerfile_on_stdin_has_an_empty_context(store):
    r = buildpy(store, "build", "-t", "bare:1", "-", input=b"FROM busybox\nRUN echo bare > /b\n")
    assert r.returncode == 0, r.stderr
    assert image_files(store, "bare:1")["b"][2] == b"bare\n"
    r = buildpy(store, "build", "-", input=b"FROM busybox\nCOPY a.txt /a\n")
    assert r.returncode == 1 and b"a.txt" in r.stderr and b"Traceback" not in r.stderr


def test_dockerfile_on_stdin_with_a_local_context(store, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("local\n")
    r = buildpy(store, "build", "-t", "f:1", "-f", "-", str(ctx), input=DOCKERFILE.encode())
    assert r.returncode == 0, r.stderr
    assert image_files(store, "f:1")["seen"][2] == b"local\n"
    r = buildpy(store, "build", "-f", "-", "-", input=b"FROM busybox\n")
    assert r.returncode == 1 and b"cannot both be read from standard input" in r.stderr


def test_tar_escaping_its_root_is_refused(store):
    bad = io.BytesIO()
    with tarfile.open(fileobj=bad, mode="w") as t:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    r = buildpy(store, "build", "-", input=bad.getvalue())
    assert r.returncode == 1 and b"cannot be unpacked" in r.stderr and b"Traceback" not in r.stderr
    assert not (store.root / "outside.txt").exists() and not (store.root / "tmp" / "outside.txt").exists()


def git(*args: str, cwd: Path) -> str:
    if not shutil.which("git"):
        pytest.skip("git not installed (Debian package git)")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def serve_dir(directory: Path, handler: type | None = None) -> Iterator[str]:
    """An http server for `directory` on 127.0.0.1; yields its base URL."""
    class Quiet(handler or http.server.SimpleHTTPRequestHandler):  # type: ignore[misc]
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(directory), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextlib.contextmanager
def git_daemon(served: Path) -> Iterator[int]:
    """`git daemon` exporting the repositories under `served` on 127.0.0.1; yields its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={served}",
                               "--listen=127.0.0.1", f"--port={port}", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        daemon.terminate()
        daemon.wait(10)


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "repo.git"
    (r / "app").mkdir(parents=True)
    git("init", "-q", "-b", "main", ".", cwd=r)
    (r / "app" / "Dockerfile").write_text(DOCKERFILE)
    (r / "app" / "a.txt").write_text("v1\n")
    (r / "top.txt").write_text("not in the subdir")
    git("add", ".", cwd=r)
    git("commit", "-qm", "one", cwd=r)
    git("tag", "v1", cwd=r)
    return r


def test_git_context_with_ref_and_subdir_and_its_cache(store, repo):
    url = f"file://{repo}"
    r = buildpy(store, "build", "--progress", "plain", "-t", "g:1", f"{url}#v1:app")
    assert r.returncode == 0, r.stderr
    files = image_files(store, "g:1")
    assert files["seen"][2] == b"v1\n" and "ctx/top.txt" not in files and "ctx/.git" not in files
    # the same commit through another ref: nothing runs
    r = buildpy(store, "build", "--progress", "plain", "-t", "g:2", f"{url}#main:app")
    assert r.returncode == 0 and "(0 ran" in ran(r), r.stderr
    # a new commit on the branch reruns from the step that reads it
    (repo / "app" / "a.txt").write_text("v2\n")
    git("commit", "-qam", "two", cwd=repo)
    r = buildpy(store, "build", "--progress", "plain", "-t", "g:3", f"{url}#main:app")
    assert r.returncode == 0 and "(2 ran" in ran(r), r.stderr
    assert image_files(store, "g:3")["seen"][2] == b"v2\n"
    r = buildpy(store, "build", f"{url}#no-such-branch")
    assert r.returncode == 1 and b"no ref 'no-such-branch'" in r.stderr


def test_git_daemon_url(store, repo, tmp_path):
    git("clone", "-q", "--bare", str(repo), str(tmp_path / "served" / "project.git"), cwd=tmp_path)
    with git_daemon(tmp_path / "served") as port:
        r = buildpy(store, "build", "-t", "d:1", f"git://127.0.0.1:{port}/project.git#main:app")
        assert r.returncode == 0, r.stderr
        assert image_files(store, "d:1")["seen"][2] == b"v1\n"

def test_http_tarball_context(store, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "ctx.tar.gz").write_bytes(gzip.compress(tar_of({"Dockerfile": DOCKERFILE, "a.txt": "over http\n"})))
    with serve_dir(served) as base:
        r = buildpy(store, "build", "-t", "h:1", f"{base}/ctx.tar.gz")
        assert r.returncode == 0, r.stderr
        assert image_files(store, "h:1")["seen"][2] == b"over http\n"
        r = buildpy(store, "build", f"{base}/missing.tar")
        assert r.returncode == 1 and b"404" in r.stderr and b"Traceback" not in r.stderr

def test_named_build_contexts(store, tmp_path, repo):
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.txt").write_text("from a named dir\n")
    (other / "ignored.txt").write_text("x")
    (other / ".dockerignore").write_text("ignored.txt\n")
    ctx = tmp_path / "main"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM base\nCOPY --from=extra . /extra/\nCOPY --from=src app/a.txt /git-a.txt\n"
                                    "RUN cat /extra/o.txt /git-a.txt > /seen\n")
    common = ["--build-context", f"extra={other}", "--build-context", f"src=file://{repo}#main"]
    r = buildpy(store, "build", "-t", "n:1", "--build-context", "base=docker-image://busybox", *common, str(ctx))
    assert r.returncode == 0, r.stderr
    files = image_files(store, "n:1")
    assert files["seen"][2] == b"from a named dir\nv1\n"
    assert "extra/ignored.txt" not in files and "extra/.dockerignore" in files  # its own .dockerignore
    # the base from an OCI layout instead: same files on another image
    assert buildpy(store, "tag", "busybox", "layout-me:1").returncode == 0
    assert buildpy(store, "export", "--oci", "-o", str(tmp_path / "layout"), "layout-me:1").returncode == 0
    r = buildpy(store, "build", "-t", "n:2", "--build-context", f"base=oci-layout://{tmp_path / 'layout'}", *common,
                str(ctx))
    assert r.returncode == 0, r.stderr
    assert image_files(store, "n:2")["seen"][2] == b"from a named dir\nv1\n"
    # a changed file in the named dir reruns the COPY that reads it
    (other / "o.txt").write_text("changed\n")
    r = buildpy(store, "build", "--progress", "plain", "-t", "n:3", "--build-context", "base=docker-image://busybox",
                *common, str(ctx))
    assert r.returncode == 0 and "(3 ran" in ran(r), r.stderr
    r = buildpy(store, "build", "--build-context", "nonsense", str(ctx))
    assert r.returncode == 1 and b"expected NAME=VALUE" in r.stderr


def test_add_of_a_git_repository(store, tmp_path, repo):
    commit = git("rev-parse", "HEAD", cwd=repo).strip()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    url = f"file://{repo}#v1"
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD {url} /src\nADD --keep-git-dir=true {url} /kept\n"
                                    f"ADD --checksum={commit} {url}:app /app\n")
    r = buildpy(store, "build", "-t", "a:1", str(ctx))
    assert r.returncode == 0, r.stderr
    files = image_files(store, "a:1")
    assert files["src/app/a.txt"][2] == b"v1\n" and files["src/top.txt"][2] == b"not in the subdir"
    assert not any(p.startswith("src/.git") for p in files)
    assert "kept/.git/HEAD" in files
    assert files["app/a.txt"][2] == b"v1\n" and "app/top.txt" not in files
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD --checksum={'0' * 40} {url} /src\n")
    r = buildpy(store, "build", str(ctx))
    assert r.returncode == 1 and b"is not the commit" in r.stderr and b"Traceback" not in r.stderr


class _GitHttp(http.server.BaseHTTPRequestHandler):
    """Smart-http git through Debian's `git http-backend` (CGI), behind a token."""

    root: Path
    token: str
    seen: list

    def log_message(self, *a):
        pass

    def _serve(self) -> None:
        import base64
        import os

        want = "basic " + base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        self.seen.append(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization", "").lower() != want.lower():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = dict(os.environ, GIT_PROJECT_ROOT=str(self.root), GIT_HTTP_EXPORT_ALL="1", PATH_INFO=path,
                   QUERY_STRING=query, REQUEST_METHOD=self.command, REMOTE_USER="x-access-token",
                   CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(len(body)),
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""))
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            k, _, v = line.decode().partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve


def test_private_git_over_http_with_a_token_secret(store, repo, tmp_path, monkeypatch):
    token = "s3cr3t-t0ken-0123456789"
    served = tmp_path / "served"
    git("clone", "-q", "--bare", str(repo), str(served / "private.git"), cwd=tmp_path)
    handler = type("H", (_GitHttp,), {"root": served, "token": token, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/private.git#main:app"
    try:
        r = buildpy(store, "build", "-t", "p:1", url)
        assert r.returncode == 1 and b"Traceback" not in r.stderr  # no token: refused
        monkeypatch.setenv("GIT_AUTH_TOKEN", token)
        r = subprocess.run([BUILDPY, "--root", str(store.root), "build", "-t", "p:1", "--secret",
                            "id=GIT_AUTH_TOKEN,env=GIT_AUTH_TOKEN", url], capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert image_files(store, "p:1")["seen"][2] == b"v1\n"
    finally:
        server.shutdown()
    assert any(h for h in handler.seen)  # the token was sent
    needle = token.encode()
    for path in store.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert needle not in data, path
            if path.name.endswith((".gz",)) or data[:2] == b"\x1f\x8b":
                assert needle not in gzip.decompress(data), path


def test_http_sources_with_an_auth_token_secret(store, tmp_path, monkeypatch):
    token = "http-t0ken-9876543210"
    served = tmp_path / "served"
    served.mkdir()
    (served / "file.txt").write_text("private file\n")

    class Guarded(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.headers.get("Authorization") != f"Bearer {token}":
                self.send_error(401)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Guarded)
    port = server.server_address[1]
    (served / "ctx.tar").write_bytes(tar_of({"Dockerfile": f"FROM busybox\nADD http://127.0.0.1:{port}/file.txt /f\n"}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = buildpy(store, "build", f"http://127.0.0.1:{port}/ctx.tar")
        assert r.returncode == 1 and b"401" in r.stderr
        monkeypatch.setenv("TOKEN", token)
        r = subprocess.run([BUILDPY, "--root", str(store.root), "build", "-t", "hp:1", "--secret",
                            "id=HTTP_AUTH_TOKEN_127.0.0.1,env=TOKEN", f"http://127.0.0.1:{port}/ctx.tar"],
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert image_files(store, "hp:1")["f"][2] == b"private file\n"
    finally:
        server.shutdown()
    for path in store.root.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_run_mount_from_a_directory_build_context(store, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "hello.sh").write_text("echo hello from the tools context\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=from=tools,target=/t sh /t/hello.sh > /out\n")
    r = buildpy(store, "build", "--progress", "plain", "-t", "m:1", "--build-context", f"tools={tools}", str(ctx))
    assert r.returncode == 0, r.stderr
    assert image_files(store, "m:1")["out"][2] == b"hello from the tools context\n"
    (tools / "hello.sh").write_text("echo changed\n")  # in the step's key: it reruns
    r = buildpy(store, "build", "--progress", "plain", "-t", "m:2", "--build-context", f"tools={tools}", str(ctx))
    assert r.returncode == 0 and "(1 ran" in ran(r), r.stderr
    assert image_files(store, "m:2")["out"][2] == b"changed\n"


def test_from_a_directory_build_context(store, tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    busybox = Path("/bin/busybox")
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "motd").write_text("from a directory\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM rootfs\nRUN cat /etc/motd > /seen\n")
    r = buildpy(store, "build", "--progress", "plain", "-t", "fd:1", "--build-context", f"rootfs={rootfs}", str(ctx))
    assert r.returncode == 0, r.stderr
    files = image_files(store, "fd:1")
    assert files["seen"][2] == b"from a directory\n" and "bin/busybox" in files
    r = buildpy(store, "build", "--progress", "plain", "-t", "fd:2", "--build-context", f"rootfs={rootfs}", str(ctx))
    assert r.returncode == 0 and "(0 ran" in ran(r), r.stderr


def test_more_remote_forms_and_their_mistakes(store, tmp_path, repo, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    (served / "lib.tar").write_bytes(tar_of({"lib.txt": "from an http build context\n"}))
    (served / "file.txt").write_text("checked\n")
    digest = "sha256:" + __import__("hashlib").sha256(b"checked\n").hexdigest()

    class Server(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path.startswith("/loop"):
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    try:
        # an http named context, ADD of a URL with its checksum
        (ctx / "Dockerfile").write_text(f"FROM busybox\nCOPY --from=lib lib.txt /lib.txt\n"
                                        f"ADD --checksum={digest} {base}/file.txt /file.txt\n")
        r = buildpy(store, "build", "-t", "r:1", "--build-context", f"lib={base}/lib.tar", str(ctx))
        assert r.returncode == 0, r.stderr
        files = image_files(store, "r:1")
        assert files["lib.txt"][2] == b"from an http build context\n" and files["file.txt"][2] == b"checked\n"
        assert files["file.txt"][1] & 0o777 == 0o600  # as BuildKit writes a downloaded file
        # a redirect loop is one line, not a hang
        r = buildpy(store, "build", f"{base}/loop")
        assert r.returncode == 1 and b"redirect" in r.stderr.lower() and b"Traceback" not in r.stderr
        # an unreachable host
        r = buildpy(store, "build", "http://127.0.0.1:1/ctx.tar")
        assert r.returncode == 1 and b"refused" in r.stderr.lower()
    finally:
        server.shutdown()
    # the .git dir of a git context, when asked for
    monkeypatch.setenv("BUILDKIT_CONTEXT_KEEP_GIT_DIR", "1")
    r = subprocess.run([BUILDPY, "--root", str(store.root), "build", "-t", "k:1", f"file://{repo}#main:app"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ctx/.git/HEAD" not in image_files(store, "k:1")  # the subdir has none of it
    (repo / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx/\n")
    git("add", ".", cwd=repo)
    git("commit", "-qm", "root dockerfile", cwd=repo)
    r = subprocess.run([BUILDPY, "--root", str(store.root), "build", "-t", "k:2", f"file://{repo}#main"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ctx/.git/HEAD" in image_files(store, "k:2")
