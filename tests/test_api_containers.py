"""Containers and volumes over the Engine API: `buildpy serve` runs them (in its own threads, in
the real sandbox), driven by the real docker CLI and by raw HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from buildpy.containers import state
from tests.apiserver import BUILDPY, DOCKER, Server, call, docker, needs_docker, raw_request, serving
from tests.imagekit import busybox_or_skip
from tests.netkit import HTTPD, free_port, http_get
from tests.ptykit import drive

pytestmark = needs_docker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    busybox_or_skip()
    with serving(tmp_path_factory.mktemp("api-containers")) as srv:
        yield srv


def _create(server: Server, body: dict, name: str = "") -> str:
    a = call(server.sock, "POST", f"/v1.41/containers/create{'?name=' + name if name else ''}",
             json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert a.status == 201, a.body
    return a.json()["Id"]


def _until_logged(server: Server, tmp: Path, name: str, text: str) -> None:
    """Wait until the container has said `text` (it is then past its set-up)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if text in docker(server, tmp, "logs", name).stdout:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} never printed {text!r}")


def _frames(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        assert body[1:4] == b"\0\0\0", body
        size = int.from_bytes(body[4:8], "big")
        out.append((body[0], body[8:8 + size]))
        body = body[8 + size:]
    return out


# the docker CLI


def test_run_prints_and_keeps_the_exit_status(server: Server, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "run", "--rm", "busybox", "echo", "hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi\n"
    r = docker(server, tmp_path, "run", "--rm", "busybox", "sh", "-c", "echo to-err >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout == ""
    assert "to-err" in r.stderr
    assert docker(server, tmp_path, "ps", "-aq").stdout == ""  # --rm removed both


def test_missing_command_is_127_with_the_reason(server: Server, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "run", "--rm", "busybox", "no-such-command")
    assert r.returncode == 127
    assert 'exec: "no-such-command": executable file not found' in r.stderr


def test_detached_logs_wait_inspect_ps_rm(server: Server, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "run", "-d", "--name", "det", "-e", "GREETING=hello", "-w", "/tmp", "--label",
               "team=a", "busybox", "sh", "-c", 'echo "$GREETING from $(pwd)"; echo oops >&2; exit 2')
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert len(cid) == 64
    assert docker(server, tmp_path, "wait", "det").stdout.strip() == "2"
    logs = docker(server, tmp_path, "logs", "det")
    assert logs.stdout == "hello from /tmp\n"
    assert logs.stderr == "oops\n"
    info = json.loads(docker(server, tmp_path, "inspect", "det").stdout)[0]
    assert info["Id"] == cid and info["Name"] == "/det"
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 2
    assert info["State"]["Running"] is False and info["State"]["FinishedAt"] > info["State"]["StartedAt"]
    assert info["Config"]["Labels"]["team"] == "a"
    assert "GREETING=hello" in info["Config"]["Env"]
    assert info["Path"] == "sh" and info["Args"][0] == "-c"
    ps = docker(server, tmp_path, "ps", "-a", "--filter", "label=team=a", "--format", "{{.Names}} {{.Status}}")
    assert ps.stdout.startswith("det Exited (2)"), ps.stdout
    assert docker(server, tmp_path, "ps", "-q").stdout == ""  # not running
    assert docker(server, tmp_path, "rm", "det").returncode == 0
    r = docker(server, tmp_path, "container", "inspect", "det")
    assert r.returncode != 0 and "No such container: det" in r.stderr


def test_stop_terms_then_kill_and_rm_force(server: Server, tmp_path: Path) -> None:
    script = 'trap "echo got-term; exit 7" TERM; echo ready; while true; do sleep 0.1; done'
    assert docker(server, tmp_path, "run", "-d", "--name", "stopme", "busybox", "sh", "-c", script).returncode == 0
    _until_logged(server, tmp_path, "stopme", "ready")
    ps = docker(server, tmp_path, "ps", "--format", "{{.Names}} {{.Status}}").stdout
    assert "stopme Up" in ps
    info = json.loads(docker(server, tmp_path, "info", "--format", "{{json .}}").stdout)
    assert info["ContainersRunning"] >= 1 and info["Containers"] >= info["ContainersRunning"]
    r = docker(server, tmp_path, "rm", "stopme")
    assert r.returncode != 0 and "cannot remove a running container" in r.stderr
    assert docker(server, tmp_path, "stop", "stopme").returncode == 0
    assert docker(server, tmp_path, "wait", "stopme").stdout.strip() == "7"
    assert "got-term" in docker(server, tmp_path, "logs", "stopme").stdout
    r = docker(server, tmp_path, "kill", "stopme")
    assert r.returncode != 0 and "is not running" in r.stderr
    docker(server, tmp_path, "rm", "stopme")

    assert docker(server, tmp_path, "run", "-d", "--name", "killme", "busybox", "sleep", "100").returncode == 0
    assert docker(server, tmp_path, "kill", "killme").returncode == 0
    assert docker(server, tmp_path, "wait", "killme").stdout.strip() == "137"
    docker(server, tmp_path, "rm", "killme")

    assert docker(server, tmp_path, "run", "-d", "--name", "forced", "busybox", "sleep", "100").returncode == 0
    assert docker(server, tmp_path, "rm", "-f", "forced").returncode == 0
    assert "forced" not in docker(server, tmp_path, "ps", "-a", "--format", "{{.Names}}").stdout


def test_stdin_is_piped_in_with_i(server: Server, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{server.sock}", DOCKER_CONFIG=str(tmp_path / "cfg"))
    r = subprocess.run([DOCKER, "run", "--rm", "-i", "busybox", "sh", "-c", "tr a-z A-Z; exit 4"],
                       input=b"piped text\n", capture_output=True, env=env, timeout=120)
    assert r.stdout == b"PIPED TEXT\n", r.stderr
    assert r.returncode == 4


def test_interactive_terminal(server: Server, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{server.sock}", DOCKER_CONFIG=str(tmp_path / "cfg"))
    out, status = drive([DOCKER, "run", "--rm", "-it", "busybox", "sh"],
                        b"echo hi-from-''tty; exit 5\n", env)  # the quotes: the echoed input is not the answer
    assert b"\nhi-from-tty\r\n" in out, out
    assert status == 5


def test_volumes(server: Server, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "volume", "create", "--label", "kind=test", "vol1")
    assert r.returncode == 0 and r.stdout.strip() == "vol1", r.stderr
    assert "vol1" in docker(server, tmp_path, "volume", "ls", "-q").stdout.split()
    info = json.loads(docker(server, tmp_path, "volume", "inspect", "vol1").stdout)[0]
    assert info["Labels"] == {"kind": "test"} and info["Driver"] == "local"
    assert info["Mountpoint"] == str(server.root / "volumes" / "vol1" / "_data")
    labelled = docker(server, tmp_path, "volume", "ls", "-q", "--filter", "label=kind=test").stdout.split()
    assert labelled == ["vol1"]
    r = docker(server, tmp_path, "run", "--name", "writer", "-v", "vol1:/data", "busybox", "sh", "-c",
               "echo kept > /data/f")
    assert r.returncode == 0, r.stderr
    r = docker(server, tmp_path, "run", "--rm", "--mount", "type=volume,source=vol1,target=/v,readonly", "busybox",
               "sh", "-c", "cat /v/f; touch /v/g")
    assert r.stdout == "kept\n" and r.returncode != 0  # read-only
    r = docker(server, tmp_path, "volume", "rm", "vol1")
    assert r.returncode != 0 and "in use" in r.stderr
    mounts = json.loads(docker(server, tmp_path, "inspect", "writer").stdout)[0]["Mounts"]
    assert mounts[0]["Type"] == "volume" and mounts[0]["Name"] == "vol1" and mounts[0]["Destination"] == "/data"
    docker(server, tmp_path, "rm", "writer")
    ls = subprocess.run([*BUILDPY, "--root", str(server.root), "volume", "ls"], capture_output=True, text=True)
    assert "vol1" in ls.stdout  # the CLI's volumes are the API's
    assert docker(server, tmp_path, "volume", "rm", "vol1").returncode == 0
    assert "vol1" not in docker(server, tmp_path, "volume", "ls", "-q").stdout.split()
    r = docker(server, tmp_path, "volume", "inspect", "vol1")
    assert r.returncode != 0 and "no such volume" in r.stderr.lower()


def test_bind_mount(server: Server, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in").write_text("from-host\n")
    r = docker(server, tmp_path, "run", "--rm", "-v", f"{host}:/h", "busybox", "sh", "-c", "cat /h/in; echo out > /h/out")
    assert r.stdout == "from-host\n", r.stderr
    assert (host / "out").read_text() == "out\n"


# raw HTTP


def test_create_errors(server: Server) -> None:
    a = call(server.sock, "POST", "/v1.41/containers/create", json.dumps({"Image": "no-such-image:1"}).encode(),
             {"Content-Type": "application/json"})
    assert a.status == 404 and a.json()["message"] == "No such image: no-such-image:1"
    a = call(server.sock, "POST", "/v1.41/containers/create", b"{not json", {"Content-Type": "application/json"})
    assert a.status == 400
    a = call(server.sock, "POST", "/v1.41/containers/create",
             json.dumps({"Image": "busybox", "HostConfig": {"NetworkMode": "overlay9"}}).encode())
    assert a.status == 404 and a.json()["message"] == "network overlay9 not found"
    a = call(server.sock, "POST", "/v1.41/containers/create",
             json.dumps({"Image": "busybox", "HostConfig": {"NetworkMode": "container:abc"}}).encode())
    assert a.status == 501 and "container:abc" in a.json()["message"]
    _create(server, {"Image": "busybox", "Cmd": ["true"]}, name="taken")
    a = call(server.sock, "POST", "/v1.41/containers/create?name=taken",
             json.dumps({"Image": "busybox", "Cmd": ["true"]}).encode())
    assert a.status == 409 and "already in use" in a.json()["message"]
    for method, path in (("POST", "/containers/nope/start"), ("GET", "/containers/nope/json"),
                         ("POST", "/containers/nope/wait"), ("DELETE", "/containers/nope"),
                         ("GET", "/containers/nope/logs?stdout=1")):
        a = call(server.sock, method, "/v1.41" + path)
        assert a.status == 404 and a.json()["message"] == "No such container: nope", path
    assert call(server.sock, "DELETE", "/v1.41/containers/taken").status == 204


def test_start_wait_logs_frames_and_not_modified(server: Server) -> None:
    cid = _create(server, {"Image": "busybox", "Cmd": ["sh", "-c", "echo out; echo err >&2; read x; echo got $x"],
                           "OpenStdin": True, "StdinOnce": True})
    a = call(server.sock, "POST", f"/v1.41/containers/{cid}/wait?condition=bogus")
    assert a.status == 400
    # attach first (stdin and output), as the docker CLI does, then start
    s, head = raw_request(server, f"POST /v1.41/containers/{cid}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n"
                                  "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n"), head
    assert b"Upgrade: tcp" in head
    assert call(server.sock, "POST", f"/v1.41/containers/{cid}/start").status == 204
    assert call(server.sock, "POST", f"/v1.41/containers/{cid}/start").status == 304  # it waits on stdin
    s.sendall(b"42\n")
    s.shutdown(socket.SHUT_WR)  # stdin ends: StdinOnce closes the container's
    stream = b""
    while chunk := s.recv(65536):
        stream += chunk
    s.close()
    frames = _frames(stream)
    assert b"".join(d for n, d in frames if n == 1) == b"out\ngot 42\n"
    assert b"".join(d for n, d in frames if n == 2) == b"err\n"
    a = call(server.sock, "POST", f"/v1.41/containers/{cid}/wait")
    assert a.status == 200 and a.json() == {"StatusCode": 0, "Error": None}
    assert call(server.sock, "POST", f"/v1.41/containers/{cid}/stop").status == 304
    assert call(server.sock, "POST", f"/v1.41/containers/{cid}/kill").status == 409
    a = call(server.sock, "GET", f"/v1.41/containers/{cid}/logs?stdout=1&stderr=1")
    assert a.status == 200
    frames = _frames(a.body)  # per stream in order (two pipes: no order between them)
    assert [d for n, d in frames if n == 1] == [b"out\n", b"got 42\n"]  # the log keeps lines
    assert [d for n, d in frames if n == 2] == [b"err\n"]
    a = call(server.sock, "GET", f"/v1.41/containers/{cid}/logs?stderr=1&timestamps=1")
    (stream_id, line), = _frames(a.body)
    stamp, _, text = line.partition(b" ")
    assert stream_id == 2 and text == b"err\n" and stamp.endswith(b"Z") and b"T" in stamp
    a = call(server.sock, "GET", f"/v1.41/containers/{cid}/logs?stdout=1&tail=1")
    assert _frames(a.body) == [(1, b"got 42\n")]
    assert call(server.sock, "GET", f"/v1.41/containers/{cid}/logs").status == 400  # no stream chosen
    assert call(server.sock, "DELETE", f"/v1.41/containers/{cid}?v=1").status == 204


def test_tty_logs_are_raw_and_follow_ends_with_the_container(server: Server) -> None:
    cid = _create(server, {"Image": "busybox", "Cmd": ["sh", "-c", "echo line1; read x; echo line2"], "Tty": True,
                           "OpenStdin": True})
    assert call(server.sock, "POST", f"/v1.41/containers/{cid}/start").status == 204
    assert call(server.sock, "POST", f"/v1.41/containers/{cid}/resize?h=40&w=100").status == 200
    info = call(server.sock, "GET", f"/v1.41/containers/{cid}/json").json()
    assert info["State"]["Running"] is True and info["State"]["Pid"] > 0 and info["Config"]["Tty"] is True
    listing = call(server.sock, "GET", "/v1.41/containers/json").json()
    assert [c["State"] for c in listing if c["Id"] == cid] == ["running"]
    # stdin through an attach without upgrade (old clients): a 200 whose body is the stream
    s, head = raw_request(server, f"POST /v1.41/containers/{cid}/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
                                  "Host: d\r\nContent-Length: 0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    s.sendall(b"go\n")
    a = call(server.sock, "GET", f"/v1.41/containers/{cid}/logs?stdout=1&follow=1")  # returns at the end
    assert a.headers["Content-Type"] == "application/vnd.docker.raw-stream"
    assert b"line1\r\n" in a.body and b"line2\r\n" in a.body and not a.body.startswith(b"\x01\0\0\0")
    s.close()
    assert call(server.sock, "POST", f"/v1.41/containers/{cid}/wait").json()["StatusCode"] == 0
    assert call(server.sock, "DELETE", f"/v1.41/containers/{cid}").status == 204


def test_list_filters_and_volume_http(server: Server) -> None:
    a = _create(server, {"Image": "busybox", "Cmd": ["true"], "Labels": {"role": "web"}}, name="flt-a")
    b = _create(server, {"Image": "busybox", "Cmd": ["true"], "Labels": {"role": "db"}}, name="flt-b")

    def names(filters: dict) -> set[str]:
        from urllib.parse import quote

        answer = call(server.sock, "GET", f"/v1.41/containers/json?all=1&filters={quote(json.dumps(filters))}")
        assert answer.status == 200, answer.body
        return {n for c in answer.json() for n in c["Names"]}

    assert names({"label": ["role=web"]}) == {"/flt-a"}
    assert names({"name": {"flt-": True}}) == {"/flt-a", "/flt-b"}
    assert names({"id": [b[:12]]}) == {"/flt-b"}
    assert {"/flt-a", "/flt-b"} <= names({"status": ["created"]})
    assert call(server.sock, "GET", "/v1.41/containers/json?filters=%7B%22bogus%22%3A%5B%5D%7D").status == 400
    for cid in (a, b):
        call(server.sock, "DELETE", f"/v1.41/containers/{cid}")

    v = call(server.sock, "POST", "/v1.41/volumes/create", json.dumps({"Name": "hv", "Labels": {"k": "v"}}).encode())
    assert v.status == 201 and v.json()["Name"] == "hv" and v.json()["Labels"] == {"k": "v"}
    assert (server.root / "volumes" / "hv" / "volume.json").is_file()
    listing = call(server.sock, "GET", "/v1.41/volumes").json()
    assert listing["Warnings"] == [] and "hv" in [x["Name"] for x in listing["Volumes"]]
    assert call(server.sock, "GET", "/v1.41/volumes/hv").json()["Scope"] == "local"
    assert call(server.sock, "GET", "/v1.41/volumes/nope").status == 404
    anon = call(server.sock, "POST", "/v1.41/volumes/create", b"{}").json()["Name"]
    assert len(anon) == 64
    pruned = call(server.sock, "POST", "/v1.41/volumes/prune").json()
    assert {"hv", anon} <= set(pruned["VolumesDeleted"])
    assert call(server.sock, "DELETE", "/v1.41/volumes/hv").status == 404
    bad = call(server.sock, "POST", "/v1.41/volumes/create", json.dumps({"Name": "bad/name"}).encode())
    assert bad.status == 400


def test_server_stop_kills_running_containers(tmp_path: Path) -> None:
    busybox_or_skip()
    with serving(tmp_path) as srv:
        r = docker(srv, tmp_path, "run", "-d", "--name", "longrun", "busybox", "sleep", "1000")
        assert r.returncode == 0, r.stderr
        assert docker(srv, tmp_path, "ps", "-q").stdout.strip() == r.stdout.strip()[:12]
        assert srv.stop() == 0
    c = state.find(Store(srv.root), "longrun")
    assert c.status == "exited" and c.exit_code == 137 and c.finished is not None
    assert not _running("sleep\x001000")


def _running(cmdline: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(cmdline.encode()):
                        found.append(int(entry))
            except OSError:
                pass
    return found


@needs_docker
def test_started_again_keeps_its_change(server: Server, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "run", "--name", "again", "busybox", "sh", "-c", "echo x >> /count; wc -l < /count")
    assert (r.returncode, r.stdout.strip()) == (0, "1"), r.stderr
    r = docker(server, tmp_path, "start", "-a", "again")
    assert (r.returncode, r.stdout.strip()) == (0, "2"), r.stderr  # its upper dir kept, as docker keeps it
    assert docker(server, tmp_path, "restart", "-t", "1", "again").returncode == 0
    assert docker(server, tmp_path, "wait", "again").stdout.strip() == "0"
    assert docker(server, tmp_path, "logs", "again").stdout.split() == ["1", "2", "3"]
    assert docker(server, tmp_path, "rm", "again").returncode == 0


@needs_docker
def test_published_port_is_served_and_shown(server: Server, tmp_path: Path) -> None:
    import shutil

    if not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns not installed (Debian package slirp4netns)")
    port = free_port()
    r = docker(server, tmp_path, "run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c", HTTPD)
    assert r.returncode == 0, r.stderr
    try:
        answer = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (answer is None or b"served-from-container" not in answer):
            time.sleep(0.2)
            answer = http_get(port)
        assert answer is not None and b"served-from-container" in answer
        r = docker(server, tmp_path, "port", "web")
        assert r.stdout.strip() == f"80/tcp -> 127.0.0.1:{port}", r.stdout + r.stderr
        ps = docker(server, tmp_path, "ps", "--filter", "name=web", "--format", "{{.Ports}}").stdout.strip()
        assert ps == f"127.0.0.1:{port}->80/tcp", ps
    finally:
        docker(server, tmp_path, "rm", "-f", "web")


@needs_docker
def test_settings_buildpy_lacks_are_refused_not_ignored(server: Server, tmp_path: Path) -> None:
    before = {c.id for c in state.all_containers(Store(server.root))}
    for flags, key in ((["--privileged"], "HostConfig.Privileged=true"), (["--restart", "always"], "HostConfig.RestartPolicy"),
                       (["--cap-add", "NET_ADMIN"], "HostConfig.CapAdd"), (["--dns", "1.1.1.1"], "HostConfig.Dns"),
                       (["--log-driver", "syslog"], "log driver 'syslog'")):
        r = docker(server, tmp_path, "run", *flags, "busybox", "true")
        assert r.returncode == 125, (flags, r.stderr)
        assert "buildpy does not implement" in r.stderr and key in r.stderr, r.stderr
    assert {c.id for c in state.all_containers(Store(server.root))} == before
