"""A container's files and processes over the Engine API, with the real docker CLI: diff,
commit, export, cp both ways (stopped and running), hostile archives, top and rename."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from buildpy.containers import state
from tests.apiserver import Server, call, docker, needs_docker, serving
from tests.imagekit import busybox_or_skip

pytestmark = [needs_docker, pytest.mark.skipif(os.geteuid() != 0, reason="a container's files are read as root")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    busybox_or_skip()
    with serving(tmp_path_factory.mktemp("api-containerfs")) as srv:
        yield srv


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def changed(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A stopped container that added /new and /d, and deleted /etc/group."""
    tmp = tmp_path_factory.mktemp("changed")
    _ok(docker(server, tmp, "run", "--name", "changed", "busybox", "sh", "-c",
               "echo hi > /new; rm /etc/group; mkdir /d"))
    return "changed"


def _running(server: Server, tmp: Path, name: str) -> None:
    _ok(docker(server, tmp, "run", "-d", "--name", name, "busybox", "sh", "-c",
               "echo live > /live; echo ready; exec sleep 300"))
    deadline = time.monotonic() + 30
    while "ready" not in docker(server, tmp, "logs", name).stdout:
        assert time.monotonic() < deadline, f"{name} never got ready"
        time.sleep(0.05)


def test_diff_shows_added_deleted_and_changed(server: Server, changed: str, tmp_path: Path) -> None:
    lines = _ok(docker(server, tmp_path, "diff", changed)).splitlines()
    assert "A /new" in lines
    assert "A /d" in lines
    assert "D /etc/group" in lines
    assert "C /etc" in lines
    assert not any(line.endswith(("/proc", "/sys", "/dev", "/etc/hosts", "/etc/hostname")) for line in lines), lines
    paths = [line[2:] for line in lines]
    assert paths == sorted(paths, key=lambda p: p.split("/"))  # docker's walk order


def test_commit_makes_an_image_with_the_change(server: Server, changed: str, tmp_path: Path) -> None:
    image_id = _ok(docker(server, tmp_path, "commit", "-c", "ENV FROM_COMMIT=yes", changed, "img:1")).strip()
    assert image_id.startswith("sha256:")
    assert _ok(docker(server, tmp_path, "run", "--rm", "img:1", "cat", "/new")) == "hi\n"
    r = docker(server, tmp_path, "run", "--rm", "img:1", "sh", "-c", "test -e /etc/group || echo gone; echo $FROM_COMMIT")
    assert _ok(r) == "gone\nyes\n"
    r = docker(server, tmp_path, "commit", "-c", "RUN true", changed, "img:2")
    assert r.returncode != 0
    assert "not a valid change command" in r.stderr


def test_export_is_the_whole_filesystem(server: Server, changed: str, tmp_path: Path) -> None:
    out = tmp_path / "c.tar"
    _ok(docker(server, tmp_path, "export", "-o", str(out), changed))
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("new").read() == b"hi\n"
    assert {"new", "d", "bin/sh", "etc/passwd"} <= names
    assert "etc/group" not in names


def test_cp_out_of_a_stopped_container(server: Server, changed: str, tmp_path: Path) -> None:
    _ok(docker(server, tmp_path, "cp", f"{changed}:/new", str(tmp_path / "x")))
    assert (tmp_path / "x").read_text() == "hi\n"
    _ok(docker(server, tmp_path, "cp", f"{changed}:/etc", str(tmp_path / "etc")))
    assert (tmp_path / "etc" / "passwd").is_file()
    assert not (tmp_path / "etc" / "group").exists()
    r = docker(server, tmp_path, "cp", f"{changed}:/no/such", str(tmp_path / "y"))
    assert r.returncode != 0
    assert "No such container:path: changed:/no/such" in r.stderr  # the CLI's words for a 404 stat
    a = call(server.sock, "GET", f"/v1.41/containers/{changed}/archive?path=/no/such")
    assert a.status == 404
    assert a.json()["message"] == f"Could not find the file /no/such in container {changed}"
    a = call(server.sock, "HEAD", f"/v1.41/containers/{changed}/archive?path=/no/such")
    assert a.status == 404
    a = call(server.sock, "HEAD", f"/v1.41/containers/{changed}/archive?path=/new")
    assert a.status == 200
    st = json.loads(__import__("base64").b64decode(a.headers["X-Docker-Container-Path-Stat"]))
    assert (st["name"], st["size"]) == ("new", 3)


def test_cp_into_a_stopped_container_and_back(server: Server, tmp_path: Path) -> None:
    _ok(docker(server, tmp_path, "create", "--name", "into", "busybox", "cat", "/tmp/file", "/etc/passwd"))
    (tmp_path / "file").write_text("from the host\n")
    _ok(docker(server, tmp_path, "cp", str(tmp_path / "file"), "into:/tmp/"))
    (tmp_path / "passwd").write_text("replaced\n")
    _ok(docker(server, tmp_path, "cp", str(tmp_path / "passwd"), "into:/etc/passwd"))  # a lower file, copied up
    assert _ok(docker(server, tmp_path, "start", "-a", "into")) == "from the host\nreplaced\n"
    lines = _ok(docker(server, tmp_path, "diff", "into")).splitlines()
    assert "A /tmp/file" in lines and "C /etc/passwd" in lines


def _tar(*entries: tarfile.TarInfo, data: bytes = b"pwned\n") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for ti in entries:
            if ti.isreg():
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
            else:
                tar.addfile(ti)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.mode = 0o644
    return ti


def test_hostile_archives_are_refused_and_change_nothing_outside(server: Server, tmp_path: Path) -> None:
    _ok(docker(server, tmp_path, "create", "--name", "target", "busybox", "true"))
    canary_dir = tmp_path / "host"
    canary_dir.mkdir()
    canary = canary_dir / "canary"
    canary.write_text("untouched\n")
    cdir = state.directory(Store(server.root), state.find(Store(server.root), "target"))
    climbing = "../" * 30 + str(canary).lstrip("/")
    tars = [
        _tar(_entry(climbing)),
        _tar(_entry("esc", tarfile.SYMTYPE, str(canary_dir)), _entry("esc/canary")),
        _tar(_entry("rel", tarfile.SYMTYPE, "../" * 30 + str(canary_dir).lstrip("/")), _entry("rel/canary")),
        _tar(_entry("hl", tarfile.LNKTYPE, climbing)),
    ]
    for body in tars:
        a = call(server.sock, "PUT", "/v1.41/containers/target/archive?path=/tmp", body,
                 {"Content-Type": "application/x-tar"})
        assert a.status == 400, (a.status, a.body)
        assert canary.read_text() == "untouched\n"
        assert sorted(os.listdir(canary_dir)) == ["canary"]
    # an absolute symlink already in the container is resolved inside it, never on the host
    _ok(docker(server, tmp_path, "run", "--name", "linked", "busybox", "ln", "-s", str(canary_dir), "/tmp/out"))
    a = call(server.sock, "PUT", "/v1.41/containers/linked/archive?path=/tmp/out", _tar(_entry("canary")),
             {"Content-Type": "application/x-tar"})
    assert a.status == 404, a.body  # the link resolves inside the container, where nothing is there
    assert canary.read_text() == "untouched\n"
    a = call(server.sock, "GET", "/v1.41/containers/linked/archive?path=/tmp/out/canary")
    assert a.status == 404
    assert b"untouched" not in a.body  # the host's file is never read either
    assert (cdir / "upper").is_dir()


def test_cp_with_a_running_container_and_top(server: Server, tmp_path: Path) -> None:
    _running(server, tmp_path, "live")
    try:
        _ok(docker(server, tmp_path, "cp", "live:/live", str(tmp_path / "live")))
        assert (tmp_path / "live").read_text() == "live\n"
        (tmp_path / "in").write_text("sent\n")
        _ok(docker(server, tmp_path, "cp", str(tmp_path / "in"), "live:/in"))
        assert _ok(docker(server, tmp_path, "exec", "live", "cat", "/in")) == "sent\n"
        top = _ok(docker(server, tmp_path, "top", "live")).splitlines()
        assert top[0].split()[:3] == ["UID", "PID", "PPID"]
        assert any(line.endswith("sleep 300") for line in top[1:]), top
        a = call(server.sock, "GET", "/v1.41/containers/live/top")
        pids = [int(row[1]) for row in a.json()["Processes"]]
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids)  # host pids
        lines = _ok(docker(server, tmp_path, "diff", "live")).splitlines()
        assert "A /live" in lines and "A /in" in lines
        _ok(docker(server, tmp_path, "export", "-o", str(tmp_path / "live.tar"), "live"))
        with tarfile.open(tmp_path / "live.tar") as tar:
            names = set(tar.getnames())
        assert {"live", "in", "bin/sh", "proc"} <= names
        assert not any(n.startswith(("proc/", "sys/")) for n in names)  # mounts are not the container's files
        image_id = _ok(docker(server, tmp_path, "commit", "live", "live:1")).strip()
        assert image_id.startswith("sha256:")
        assert _ok(docker(server, tmp_path, "run", "--rm", "live:1", "cat", "/in")) == "sent\n"
    finally:
        docker(server, tmp_path, "rm", "-f", "live")


def test_top_of_a_stopped_container_is_a_conflict(server: Server, changed: str) -> None:
    a = call(server.sock, "GET", f"/v1.41/containers/{changed}/top")
    assert a.status == 409
    a = call(server.sock, "GET", "/v1.41/containers/nonesuch/top")
    assert a.status == 404
    assert a.json()["message"] == "No such container: nonesuch"


def test_rename(server: Server, tmp_path: Path) -> None:
    _ok(docker(server, tmp_path, "create", "--name", "before", "busybox", "true"))
    _ok(docker(server, tmp_path, "create", "--name", "other", "busybox", "true"))
    r = docker(server, tmp_path, "rename", "before", "other")
    assert r.returncode != 0 and "already in use" in r.stderr
    a = call(server.sock, "POST", "/v1.41/containers/before/rename?name=bad%20name")
    assert a.status == 400
    _ok(docker(server, tmp_path, "rename", "before", "after"))
    names = _ok(docker(server, tmp_path, "ps", "-a", "--format", "{{.Names}}")).split()
    assert "after" in names and "before" not in names
    _ok(docker(server, tmp_path, "start", "-a", "after"))  # a run keeps the new name
    names = _ok(docker(server, tmp_path, "ps", "-a", "--format", "{{.Names}}")).split()
    assert "after" in names and "before" not in names


def test_rename_of_a_running_container_survives_its_end(server: Server, tmp_path: Path) -> None:
    _running(server, tmp_path, "runner")
    _ok(docker(server, tmp_path, "rename", "runner", "renamed"))
    _ok(docker(server, tmp_path, "kill", "renamed"))
    _ok(docker(server, tmp_path, "wait", "renamed"))
    names = _ok(docker(server, tmp_path, "ps", "-a", "--format", "{{.Names}}")).split()
    assert "renamed" in names and "runner" not in names
    docker(server, tmp_path, "rm", "-f", "renamed")
