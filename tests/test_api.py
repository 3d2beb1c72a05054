"""`buildpy serve`: the Docker Engine API over a Unix socket, spoken to with raw HTTP and with
the real docker CLI (its daemon is never started: DOCKER_HOST points at our socket)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from buildpy.cas.store import Store
from tests.apiserver import (
    BUILDPY, Server, UnixConnection, call, context_tar, docker, json_lines, needs_docker, refs, serving, short_dir,
    start,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("api")) as srv:
        yield srv


# raw HTTP


def test_ping(server: Server) -> None:
    for path in ("/_ping", "/v1.41/_ping", "/v1.24/_ping", "/v1.45/_ping"):
        a = call(server.sock, "GET", path)
        assert a.status == 200, path
        assert a.body == b"OK"
        assert a.headers["API-Version"] == "1.41"
        assert a.headers["Docker-Experimental"] == "false"
        assert a.headers["Ostype"] == "linux"
        assert a.headers["Builder-Version"] == "1"
    a = call(server.sock, "HEAD", "/_ping")
    assert a.status == 200 and a.body == b""
    assert a.headers["API-Version"] == "1.41"


def test_version_prefix_out_of_range(server: Server) -> None:
    a = call(server.sock, "GET", "/v1.46/version")
    assert a.status == 400
    assert "too new" in a.json()["message"]
    a = call(server.sock, "GET", "/v1.12/version")
    assert a.status == 400
    assert "too old" in a.json()["message"]


def test_version(server: Server) -> None:
    from buildpy import __version__

    for path in ("/version", "/v1.41/version"):
        a = call(server.sock, "GET", path)
        assert a.status == 200
        assert a.headers["Content-Type"] == "application/json"
        v = a.json()
        assert v["ApiVersion"] == "1.41"
        assert v["MinAPIVersion"] == "1.24"
        assert v["Version"] == f"buildpy-{__version__}"
        assert v["Os"] == "linux"
        assert v["GoVersion"] == "n/a"
        assert v["GitCommit"] == ""


def test_info(server: Server) -> None:
    info = call(server.sock, "GET", "/v1.41/info").json()
    assert info["Driver"] == "buildpy"
    assert info["DockerRootDir"] == str(server.root)
    assert info["OSType"] == "linux"
    assert info["NCPU"] >= 1
    assert info["Images"] >= 1
    assert info["ServerVersion"].startswith("buildpy-")
    for key in ("ID", "Containers", "OperatingSystem", "Architecture", "MemTotal", "Name"):
        assert key in info


def test_unknown_endpoint_is_501(server: Server) -> None:
    for method, path in (("GET", "/v1.41/swarm"), ("GET", "/containers/x/stats"),
                         ("GET", "/v1.41/nothing/here"), ("PUT", "/images/busybox/json")):
        a = call(server.sock, method, path, body=b"{}" if method != "GET" else None)
        assert a.status == 501, (method, path)
        path_only = path.removeprefix("/v1.41")
        assert a.json() == {"message": f"buildpy does not implement {method} {path_only}"}


def test_images_list(server: Server) -> None:
    images = call(server.sock, "GET", "/v1.41/images/json").json()
    busybox = [i for i in images if "busybox:latest" in i["RepoTags"]]
    assert len(busybox) == 1
    entry = busybox[0]
    assert entry["Id"].startswith("sha256:") and len(entry["Id"]) == 71
    assert entry["RepoDigests"] == []
    assert entry["ParentId"] == ""
    assert entry["SharedSize"] == -1 and entry["Containers"] == -1
    assert isinstance(entry["Created"], int) and entry["Created"] > 0
    assert entry["Size"] > 0
    assert entry["Labels"] == {}
    # docker's reference filter (`docker images busybox`)
    f = quote(json.dumps({"reference": {"busybox": True}}))
    only = call(server.sock, "GET", f"/v1.41/images/json?filters={f}").json()
    assert [i["RepoTags"] for i in only] == [["busybox:latest"]]
    f = quote(json.dumps({"reference": {"nothing-like-it": True}}))
    assert call(server.sock, "GET", f"/v1.41/images/json?filters={f}").json() == []


def test_image_inspect_and_history(server: Server) -> None:
    for name in ("busybox", "busybox:latest", "docker.io/library/busybox:latest"):
        a = call(server.sock, "GET", f"/v1.41/images/{name}/json")
        assert a.status == 200, name
        i = a.json()
        assert i["RepoTags"] == ["busybox:latest"]
        assert i["Config"] == {"Cmd": ["sh"]}
        assert i["Os"] == "linux"
        assert i["RootFS"]["Type"] == "layers"
        assert len(i["RootFS"]["Layers"]) == 1 and i["RootFS"]["Layers"][0].startswith("sha256:")
        assert i["Created"].endswith("Z")
    short = i["Id"].partition(":")[2][:12]
    assert call(server.sock, "GET", f"/images/{short}/json").json()["Id"] == i["Id"]
    h = call(server.sock, "GET", "/v1.41/images/busybox/history").json()
    assert h[0]["Id"] == i["Id"]
    assert h[0]["Tags"] == ["busybox:latest"]
    assert all(set(e) >= {"Id", "Created", "CreatedBy", "Size", "Comment"} for e in h)


def test_missing_image_is_404(server: Server) -> None:
    for method, path, want in (
        ("GET", "/v1.41/images/nope:1/json", "nope:1"),
        ("GET", "/images/some/where/deep:2/history", "some/where/deep:2"),
        ("DELETE", "/v1.41/images/nope", "nope"),
        ("POST", "/v1.41/images/nope/tag?repo=x&tag=y", "nope"),
    ):
        a = call(server.sock, method, path)
        assert a.status == 404, path
        assert a.headers["Content-Type"] == "application/json"
        assert a.json() == {"message": f"No such image: {want}"}
    assert "docker.io/library/x:y" not in refs(server.root)


def test_keep_alive_across_errors(server: Server) -> None:
    conn = UnixConnection(server.sock)
    try:
        assert call(conn, "GET", "/_ping").status == 200
        # a body the server does not want is still read, so the next request parses
        assert call(conn, "POST", "/v1.41/swarm/init", body=b'{"Name": "n"}' * 100).status == 501
        assert call(conn, "POST", "/v1.41/images/create", body=b"x" * 5000, chunked=True).status == 501
        assert call(conn, "GET", "/v1.41/images/nope/json").status == 404
        assert call(conn, "GET", "/v1.41/version").json()["ApiVersion"] == "1.41"
    finally:
        conn.close()


def test_tag_and_remove(server: Server) -> None:
    before = refs(server.root)
    a = call(server.sock, "POST", "/v1.41/images/busybox:latest/tag?repo=example.com/team/tool&tag=7")
    assert a.status == 201
    a = call(server.sock, "POST", "/v1.41/images/busybox/tag?repo=mine")  # no tag: latest
    assert a.status == 201
    now = refs(server.root)
    assert now["example.com/team/tool:7"] == now["docker.io/library/busybox:latest"]
    assert "docker.io/library/mine:latest" in now
    tags = call(server.sock, "GET", "/images/busybox/json").json()["RepoTags"]
    assert set(tags) == {"busybox:latest", "example.com/team/tool:7", "mine:latest"}
    # by ID the image has three names: docker wants force
    image_id = call(server.sock, "GET", "/images/busybox/json").json()["Id"]
    a = call(server.sock, "DELETE", f"/v1.41/images/{image_id}")
    assert a.status == 409
    assert "must be forced" in a.json()["message"]
    a = call(server.sock, "DELETE", "/v1.41/images/example.com/team/tool:7")
    assert a.status == 200
    assert a.json() == [{"Untagged": "example.com/team/tool:7"}]
    a = call(server.sock, "DELETE", "/v1.41/images/mine")
    assert a.json() == [{"Untagged": "mine:latest"}]
    assert refs(server.root) == before


def test_bad_tag_changes_nothing(server: Server) -> None:
    before = refs(server.root)
    for query in ("repo=UPPER&tag=1", "repo=ok&tag=-bad", "repo=", "repo=a&tag=" + "x" * 200):
        a = call(server.sock, "POST", f"/v1.41/images/busybox/tag?{query}")
        assert a.status == 400, query
        assert a.json()["message"]
    assert refs(server.root) == before


def _leftovers(root: Path) -> list[str]:
    tmp = root / "tmp"
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("api-")) if tmp.exists() else []


@pytest.mark.parametrize("gzip,chunked", [(False, False), (True, True)])
def test_build_metadata_only(server: Server, gzip: bool, chunked: bool) -> None:
    """A Dockerfile with no RUN builds without a sandbox: no root needed."""
    tag = f"meta:{int(gzip)}"
    body = context_tar({"Dockerfile": "FROM busybox\nLABEL made.by=api\nENV A=1\n"}, gzip=gzip)
    a = call(server.sock, "POST", f"/v1.41/build?t={tag}&t=meta:extra&rm=1", body=body,
             headers={"Content-Type": "application/x-tar"}, chunked=chunked)
    assert a.status == 200
    assert a.headers["Content-Type"] == "application/json"
    lines = json_lines(a.body)
    assert not [m for m in lines if "error" in m], lines
    aux = [m["aux"]["ID"] for m in lines if "aux" in m]
    assert len(aux) == 1 and aux[0].startswith("sha256:")
    streams = [m["stream"] for m in lines if "stream" in m]
    assert all(s.endswith("\n") for s in streams)
    assert f"Successfully built {aux[0][7:19]}\n" in streams
    assert f"Successfully tagged {tag}\n" in streams
    assert "Successfully tagged meta:extra\n" in streams
    i = call(server.sock, "GET", f"/images/{tag}/json").json()
    assert i["Id"] == aux[0]
    assert i["Config"]["Labels"] == {"made.by": "api"}
    assert "A=1" in i["Config"]["Env"]
    assert _leftovers(server.root) == []
    for t in (tag, "meta:extra"):
        assert call(server.sock, "DELETE", f"/images/{t}").status == 200


def test_build_options(server: Server) -> None:
    files = {"sub/Other.dockerfile": "FROM busybox AS one\nARG X\nLABEL x=$X\nFROM one AS two\nLABEL two=yes\n"}
    query = ("dockerfile=sub/Other.dockerfile&t=opts:1&target=one&q=1"
             f"&buildargs={quote(json.dumps({'X': 'from-api', 'UNSET': None}))}"
             f"&labels={quote(json.dumps({'extra': 'l'}))}")
    a = call(server.sock, "POST", f"/build?{query}", body=context_tar(files))
    lines = json_lines(a.body)
    assert not [m for m in lines if "error" in m], lines
    image_id = [m["aux"]["ID"] for m in lines if "aux" in m][0]
    # quiet: the image ID is the only stream line (the CLI prints it)
    assert [m["stream"] for m in lines if "stream" in m] == [image_id + "\n"]
    labels = call(server.sock, "GET", "/images/opts:1/json").json()["Config"]["Labels"]
    assert labels == {"x": "from-api", "extra": "l"}  # target one: no two=yes
    assert call(server.sock, "DELETE", "/images/opts:1").status == 200


def test_build_errors(server: Server) -> None:
    before = refs(server.root)
    ctx = context_tar({"Dockerfile": "FROM busybox\nLABEL a=b\n"})
    # refused before anything is built
    for query, status, text in (
        ("t=Bad:Tag", 400, "invalid tag"),
        ("buildargs=not-json", 400, "buildargs"),
        ("labels=[1]", 400, "labels"),
        ("dockerfile=missing", 400, "Cannot locate specified Dockerfile: missing"),
        ("dockerfile=../../etc/passwd", 400, "outside the build context"),
        ("networkmode=container:x", 501, "network mode 'container:x'"),
        ("networkmode=mynet", 404, "network mynet not found"),
    ):
        a = call(server.sock, "POST", f"/v1.41/build?{query}&t=never:1", body=ctx)
        assert a.status == status, (query, a.body)
        assert text in a.json()["message"], (query, a.body)
    a = call(server.sock, "POST", "/v1.41/build?t=never:1", body=b"this is not a tar archive" * 40)
    assert a.status == 400
    assert "not a valid tar" in a.json()["message"]
    # a failing build: the stream ends with Docker's error line
    for dockerfile, text in (("FROM busybox\nFROBNICATE x\n", "FROBNICATE"),
                             ("FROM nonexistent.invalid/none:1\n", "nonexistent.invalid")):
        a = call(server.sock, "POST", "/v1.41/build?t=never:1", body=context_tar({"Dockerfile": dockerfile}))
        assert a.status == 200
        last = json_lines(a.body)[-1]
        assert set(last) == {"errorDetail", "error"}, a.body
        assert last["error"] == last["errorDetail"]["message"]
        assert text in last["error"]
        assert "Traceback" not in a.body.decode()
    assert refs(server.root) == before
    assert _leftovers(server.root) == []


def test_socket_is_0600(server: Server) -> None:
    st = os.lstat(server.sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


# the server's life


def test_sigterm_stops_and_removes_socket(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root)
    sockdir = short_dir()
    try:
        sock = str(sockdir / "s.sock")
        srv = start(root, sock, tmp_path / "log")
        conn = UnixConnection(sock)  # an idle keep-alive connection does not hold the server up
        assert call(conn, "GET", "/_ping").status == 200
        assert srv.stop() == 0
        conn.close()
        assert not os.path.exists(sock)
        # SIGINT too
        srv = start(root, sock, tmp_path / "log2")
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(timeout=20) == 0
        assert not os.path.exists(sock)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_stale_socket_replaced_live_one_kept(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root)
    sockdir = short_dir()
    try:
        sock = str(sockdir / "s.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(sock)
        stale.close()  # the file stays; nobody answers on it
        srv = start(root, sock, tmp_path / "log")
        try:
            assert call(sock, "GET", "/_ping").status == 200
            # a second server on a live socket refuses and leaves it alone
            second = subprocess.run([*BUILDPY, "--root", str(root), "serve", "--host", f"unix://{sock}"],
                                    capture_output=True, text=True, timeout=60)
            assert second.returncode == 1
            assert "in use" in second.stderr
            assert "Traceback" not in second.stderr
            assert call(sock, "GET", "/_ping").status == 200
        finally:
            assert srv.stop() == 0
        # a file that is not a socket is never removed
        Path(sock).write_text("mine")
        refused = subprocess.run([*BUILDPY, "--root", str(root), "serve", "--host", f"unix://{sock}"],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "not a socket" in refused.stderr
        assert Path(sock).read_text() == "mine"
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_host_must_be_unix(tmp_path: Path) -> None:
    r = subprocess.run([*BUILDPY, "--root", str(tmp_path / "s"), "serve", "--host", "tcp://127.0.0.1:2375"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "unix://" in r.stderr and "Traceback" not in r.stderr


# the real docker CLI




@needs_docker
def test_docker_cli_version_images_info(server: Server, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "version")
    assert r.returncode == 0, r.stderr
    assert "buildpy-" in r.stdout and "1.41" in r.stdout
    r = docker(server, tmp_path, "images")
    assert r.returncode == 0, r.stderr
    assert any(line.split()[:2] == ["busybox", "latest"] for line in r.stdout.splitlines())
    r = docker(server, tmp_path, "info")
    assert r.returncode == 0, r.stderr
    assert "Storage Driver: buildpy" in r.stdout
    assert f"Docker Root Dir: {server.root}" in r.stdout
    r = docker(server, tmp_path, "image", "inspect", "--format", "{{json .Config.Cmd}}", "busybox")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '["sh"]'
    r = docker(server, tmp_path, "history", "busybox")
    assert r.returncode == 0, r.stderr
    r = docker(server, tmp_path, "image", "inspect", "nope:9")
    assert r.returncode != 0
    assert "No such image: nope:9" in r.stderr
    r = docker(server, tmp_path, "swarm", "ca")
    assert r.returncode != 0
    assert "buildpy does not implement GET /swarm" in r.stderr


@needs_docker
def test_docker_cli_networks_are_the_builtin_three(server: Server, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "network", "ls", "--format", "{{.Name}} {{.Driver}}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["bridge bridge", "host host", "none null"]
    r = docker(server, tmp_path, "network", "inspect", "host")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["Driver"] == "host", r.stderr
    r = docker(server, tmp_path, "inspect", "no-such-thing")
    assert r.returncode != 0 and "No such object: no-such-thing" in r.stderr, r.stderr
    r = docker(server, tmp_path, "network", "create", "mynet")
    assert r.returncode != 0 and "buildpy does not implement POST /networks/create" in r.stderr, r.stderr


@needs_docker
def test_docker_cli_tag_rmi(server: Server, tmp_path: Path) -> None:
    before = refs(server.root)
    r = docker(server, tmp_path, "tag", "busybox", "registry.example:5000/a/b:c")
    assert r.returncode == 0, r.stderr
    assert "registry.example:5000/a/b:c" in refs(server.root)
    r = docker(server, tmp_path, "images", "registry.example:5000/a/b")
    assert "registry.example:5000/a/b" in r.stdout
    r = docker(server, tmp_path, "rmi", "registry.example:5000/a/b:c")
    assert r.returncode == 0, r.stderr
    assert "Untagged: registry.example:5000/a/b:c" in r.stdout
    r = docker(server, tmp_path, "rmi", "registry.example:5000/a/b:c")
    assert r.returncode != 0 and "No such image" in r.stderr
    assert refs(server.root) == before


@needs_docker
def test_docker_cli_build_metadata(server: Server, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nLABEL via=docker-cli\n")
    r = docker(server, tmp_path, "build", "-t", "cli-meta:1", "--label", "k=v", "--iidfile",
               str(tmp_path / "iid"), str(ctx))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Successfully tagged cli-meta:1" in r.stdout
    image_id = (tmp_path / "iid").read_text().strip()
    assert image_id.startswith("sha256:")
    r = docker(server, tmp_path, "image", "inspect", "--format", "{{json .Config.Labels}}", "cli-meta:1")
    assert json.loads(r.stdout) == {"via": "docker-cli", "k": "v"}
    r = docker(server, tmp_path, "build", "-q", str(ctx))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("sha256:")
    (ctx / "Dockerfile").write_text("FROM busybox\nNOPE x\n")
    r = docker(server, tmp_path, "build", "-t", "cli-meta:2", str(ctx))
    assert r.returncode == 1
    assert "NOPE" in r.stderr
    assert "docker.io/library/cli-meta:2" not in refs(server.root)
    assert docker(server, tmp_path, "rmi", "cli-meta:1").returncode == 0


@needs_docker
def test_docker_cli_build_run(server: Server, tmp_path: Path) -> None:
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo hi > /hi\n")
    r = docker(server, tmp_path, "build", "-t", "app:1", str(ctx))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Successfully built " in r.stdout
    assert "Successfully tagged app:1" in r.stdout
    r = docker(server, tmp_path, "images")
    assert any(line.split()[:2] == ["app", "1"] for line in r.stdout.splitlines()), r.stdout
    listed = subprocess.run([*BUILDPY, "--root", str(server.root), "images"], capture_output=True, text=True,
                            timeout=60)
    assert any(line.split()[:2] == ["app", "1"] for line in listed.stdout.splitlines()), listed.stdout
    r = docker(server, tmp_path, "tag", "app:1", "app:2")
    assert r.returncode == 0, r.stderr
    r = docker(server, tmp_path, "rmi", "app:1", "app:2")
    assert r.returncode == 0, r.stderr
    assert "Untagged: app:1" in r.stdout and "Untagged: app:2" in r.stdout
    assert not any(n.startswith("docker.io/library/app:") for n in refs(server.root))


@needs_docker
def test_docker_cli_the_example_builds_and_runs(server: Server, tmp_path: Path) -> None:
    """The issue's walk-through with the README's example: build, run, the exit status kept."""
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    example = Path(__file__).resolve().parent.parent / "testdata" / "dockerfiles" / "multistage"
    r = docker(server, tmp_path, "build", "-t", "example:api", "--build-arg", "VERSION=2.5", str(example))
    assert r.returncode == 0, r.stdout + r.stderr
    r = docker(server, tmp_path, "run", "--rm", "example:api")
    assert (r.returncode, r.stdout) == (0, "hello, world\n"), r.stderr
    r = docker(server, tmp_path, "run", "--rm", "example:api", "api")
    assert (r.returncode, r.stdout) == (0, "hello, api\n"), r.stderr
    r = docker(server, tmp_path, "run", "--rm", "--entrypoint", "sh", "example:api", "-c", "echo hi; id -u; exit 4")
    assert (r.returncode, r.stdout) == (4, "hi\n1000\n"), r.stderr
    labels = json.loads(docker(server, tmp_path, "image", "inspect", "example:api").stdout)[0]["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == "2.5"
    assert docker(server, tmp_path, "rmi", "example:api").returncode == 0
