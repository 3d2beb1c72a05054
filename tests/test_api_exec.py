"""`docker exec` against `buildpy serve`: commands started in a running container's namespaces,
cgroups and root (buildpy.sandbox.enter), driven by the real docker CLI, docker-py and raw HTTP."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver import DOCKER, Server, call, docker, needs_docker, serving
from tests.imagekit import busybox_or_skip
from tests.ptykit import drive
from tests.sandboxkit import other_ids_or_skip, sandbox_or_skip

pytestmark = needs_docker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    sandbox_or_skip()
    busybox_or_skip()
    with serving(tmp_path_factory.mktemp("api-exec")) as srv:
        yield srv


@pytest.fixture(scope="module")
def running(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A running container `c` that wrote /tmp/mark from its own command before sleeping."""
    tmp = tmp_path_factory.mktemp("exec-c")
    r = docker(server, tmp, "run", "-d", "--name", "c", "busybox", "sh", "-c",
               "echo from-run > /tmp/mark; exec sleep 300")
    assert r.returncode == 0, r.stderr
    # the mark exists once the command is past its first line: read it through exec until then
    for _ in range(2000):
        if docker(server, tmp, "exec", "c", "cat", "/tmp/mark").stdout == "from-run\n":
            break
    else:
        raise AssertionError("the container's /tmp/mark never showed through exec")
    return r.stdout.strip()


def _env(server: Server, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{server.sock}", DOCKER_CONFIG=str(tmp / "cfg"))
    return env


def test_exec_prints_and_keeps_the_exit_status(server: Server, running: str, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "exec", "c", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    r = docker(server, tmp_path, "exec", "c", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout == "out\n" and r.stderr == "err\n"


def test_exec_sees_the_containers_files(server: Server, running: str, tmp_path: Path) -> None:
    assert docker(server, tmp_path, "exec", "c", "cat", "/tmp/mark").stdout == "from-run\n"
    # and what an exec writes, the container's own processes see
    assert docker(server, tmp_path, "exec", "c", "sh", "-c", "echo from-exec > /tmp/mark2").returncode == 0
    assert docker(server, tmp_path, "exec", "c", "cat", "/tmp/mark2").stdout == "from-exec\n"


def test_missing_command_fails_with_the_reason(server: Server, running: str, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "exec", "c", "nosuch")
    assert r.returncode == 127
    assert 'exec: "nosuch": executable file not found in $PATH' in r.stderr
    r = docker(server, tmp_path, "exec", "-u", "nobody-here", "c", "true")
    assert r.returncode == 126
    assert "unable to find user nobody-here" in r.stderr
    r = docker(server, tmp_path, "exec", "-w", "/no/such/dir", "c", "true")
    assert r.returncode == 126
    assert "/no/such/dir" in r.stderr


def test_user_workdir_and_env(server: Server, running: str, tmp_path: Path) -> None:
    other_ids_or_skip()
    r = docker(server, tmp_path, "exec", "-u", "1000", "-w", "/tmp", "-e", "A=1", "c", "sh", "-c",
               'id -u; pwd; echo "$A"')
    assert (r.returncode, r.stdout) == (0, "1000\n/tmp\n1\n"), r.stderr
    # without options: the container's user, directory and environment
    r = docker(server, tmp_path, "exec", "c", "sh", "-c", 'id -u; pwd; echo "$PATH"')
    assert r.stdout.splitlines()[:2] == ["0", "/"], r.stderr
    assert "/bin" in r.stdout.splitlines()[2]


def test_piped_stdin(server: Server, running: str, tmp_path: Path) -> None:
    env = _env(server, tmp_path)
    r = subprocess.run([DOCKER, "exec", "-i", "c", "sh", "-c", "tr a-z A-Z; exit 5"], input=b"input text\n",
                       capture_output=True, env=env, timeout=120)
    assert r.stdout == b"INPUT TEXT\n", r.stderr
    assert r.returncode == 5


def test_terminal(server: Server, running: str, tmp_path: Path) -> None:
    env = _env(server, tmp_path)
    out, status = drive([DOCKER, "exec", "-it", "c", "sh"], b"[ -t 0 ] && echo hi-''tty; exit 4\n", env)
    assert b"\nhi-tty\r\n" in out, out  # the quotes: the echoed input is not the answer
    assert status == 4


def test_in_the_containers_pid_namespace(server: Server, running: str, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "exec", "c", "sh", "-c",
               'for p in /proc/[0-9]*; do tr "\\0" " " < $p/cmdline; echo; done')
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert any(line.startswith("sleep 300") for line in lines), lines
    assert len(lines) < 10, lines  # the container's few processes, not the host's
    assert docker(server, tmp_path, "exec", "c", "cat", "/etc/hostname").stdout.strip() == running[:12]


def test_no_more_capabilities_than_the_container(server: Server, running: str, tmp_path: Path) -> None:
    ran = docker(server, tmp_path, "run", "--rm", "busybox", "grep", "Cap", "/proc/self/status")
    executed = docker(server, tmp_path, "exec", "c", "grep", "Cap", "/proc/self/status")
    assert ran.returncode == 0 and executed.returncode == 0, executed.stderr
    assert executed.stdout == ran.stdout
    assert "CapBnd:\t00000000a80425fb" in executed.stdout
    status = docker(server, tmp_path, "exec", "c", "grep", "-E", "NoNewPrivs|Seccomp:", "/proc/self/status").stdout
    assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status


def test_exec_joins_the_containers_cgroup(server: Server, tmp_path: Path) -> None:
    r = docker(server, tmp_path, "run", "-d", "--name", "limited", "--pids-limit", "40", "busybox", "sleep", "300")
    if r.returncode != 0:
        assert "pids-limit" in r.stderr, r.stderr  # no cgroup here to limit with: said so
        pytest.skip(f"no cgroup for --pids-limit here: {r.stderr.strip()}")
    try:
        pid = docker(server, tmp_path, "inspect", "-f", "{{.State.Pid}}", "limited").stdout.strip()
        theirs = Path(f"/proc/{pid}/cgroup").read_text()
        r = docker(server, tmp_path, "exec", "limited", "cat", "/proc/self/cgroup")
        assert r.returncode == 0, r.stderr
        assert r.stdout == theirs
    finally:
        docker(server, tmp_path, "rm", "-f", "limited")


def test_exec_into_a_stopped_container_is_refused(server: Server, tmp_path: Path) -> None:
    assert docker(server, tmp_path, "run", "-d", "--name", "stopped", "busybox", "true").returncode == 0
    assert docker(server, tmp_path, "wait", "stopped").stdout.strip() == "0"
    r = docker(server, tmp_path, "exec", "stopped", "echo", "hi")
    assert r.returncode != 0
    assert "is not running" in r.stderr
    r = docker(server, tmp_path, "exec", "no-such-container", "echo", "hi")
    assert r.returncode != 0 and "No such container" in r.stderr
    docker(server, tmp_path, "rm", "stopped")


def test_http_create_inspect_detach_and_errors(server: Server, running: str) -> None:
    def post(path: str, body: dict) -> object:
        return call(server.sock, "POST", f"/v1.41{path}", json.dumps(body).encode(),
                    {"Content-Type": "application/json"})

    a = post("/containers/c/exec", {"Cmd": ["sh", "-c", "echo detached > /tmp/d"], "AttachStdout": True})
    assert a.status == 201, a.body
    exec_id = a.json()["Id"]
    assert len(exec_id) == 64
    info = call(server.sock, "GET", f"/v1.41/exec/{exec_id}/json").json()
    assert info["Running"] is False and info["ExitCode"] is None and info["ContainerID"] == running
    assert info["ProcessConfig"]["entrypoint"] == "sh" and info["ProcessConfig"]["arguments"][0] == "-c"
    assert post(f"/exec/{exec_id}/start", {"Detach": True}).status == 200
    for _ in range(10000):  # it ends on its own
        info = call(server.sock, "GET", f"/v1.41/exec/{exec_id}/json").json()
        if not info["Running"] and info["ExitCode"] is not None:
            break
    assert info["ExitCode"] == 0
    assert post(f"/exec/{exec_id}/start", {"Detach": True}).status == 409  # once only
    assert post("/containers/c/exec", {"Cmd": []}).status == 400
    assert post("/containers/c/exec", {"Cmd": ["true"], "Privileged": True}).status == 501
    assert post("/containers/c/exec", {"Cmd": ["true"], "WorkingDir": "rel"}).status == 400
    assert call(server.sock, "GET", "/v1.41/exec/nosuch/json").status == 404
    assert post("/exec/nosuch/start", {}).status == 404


def test_docker_py_exec_run(server: Server, running: str) -> None:
    dockerpy = pytest.importorskip("docker")
    client = dockerpy.DockerClient(base_url=f"unix://{server.sock}", version="1.41", timeout=120)
    try:
        c = client.containers.get("c")
        assert c.exec_run("echo hi") == (0, b"hi\n")
        code, out = c.exec_run(["sh", "-c", "echo x; exit 6"])
        assert (code, out) == (6, b"x\n")
        code, (out, err) = c.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True)
        assert (code, out, err) == (0, b"o\n", b"e\n")
    finally:
        client.close()


def test_execs_die_with_the_container(server: Server, tmp_path: Path) -> None:
    assert docker(server, tmp_path, "run", "-d", "--name", "short", "busybox", "sleep", "300").returncode == 0
    env = _env(server, tmp_path)
    exec_proc = subprocess.Popen([DOCKER, "exec", "short", "sh", "-c", "echo started; exec sleep 1000"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert exec_proc.stdout is not None and exec_proc.stdout.readline() == b"started\n"
    assert docker(server, tmp_path, "rm", "-f", "short").returncode == 0
    assert exec_proc.wait(timeout=120) == 137
