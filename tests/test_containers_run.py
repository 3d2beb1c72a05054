"""`buildpy run`, `ps`, `rm`, `commit` and volumes, through the CLI, in the real sandbox (user,
mount, pid, net namespaces; overlayfs), on a busybox image made from Debian's busybox-static."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from buildpy.cas.reference import resolve
from buildpy.cas.store import Store
from tests.imagekit import busybox_image, busybox_or_skip
from tests.netkit import HTTPD, free_port, http_get
from tests.ptykit import drive

BUILDPY = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "buildpy")


@pytest.fixture
def store(tmp_path) -> Store:
    busybox_or_skip()
    s = Store(tmp_path / "store")
    busybox_image(s)
    return s


def buildpy(store: Store, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command, as a user runs it (its own process: stdio, signals, exit status)."""
    return subprocess.run([BUILDPY, "--root", str(store.root), *args], input=input, capture_output=True,
                          timeout=timeout)


def test_exit_status_env_workdir_and_user(store):
    r = buildpy(store, "run", "--rm", "busybox", "sh", "-c", "exit 7")
    assert r.returncode == 7
    r = buildpy(store, "run", "--rm", "-e", "GREETING=hello there", "-w", "/srv/app", "-u", "1000:1000",
                "busybox", "sh", "-c", 'echo "$GREETING"; pwd; id -u; id -g')
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split("\n")[:4] == ["hello there", "/srv/app", "1000", "1000"]
    r = buildpy(store, "run", "--rm", "busybox", "no-such-command")
    assert r.returncode != 0 and b'"no-such-command": executable file not found' in r.stderr
    assert b"Traceback" not in r.stderr


def test_image_cmd_entrypoint_and_env_from_the_config(tmp_path):
    busybox_or_skip()
    s = Store(tmp_path / "store")
    from tests.imagekit import busybox_tar, image_from_tars

    image_from_tars(s, [busybox_tar()], "docker.io/library/app:1",
                    config={"Entrypoint": ["/bin/echo", "entry"], "Cmd": ["default"], "Env": ["PATH=/bin", "X=1"],
                            "WorkingDir": "/tmp"})
    assert buildpy(s, "run", "--rm", "app:1").stdout == b"entry default\n"
    assert buildpy(s, "run", "--rm", "app:1", "given").stdout == b"entry given\n"
    r = buildpy(s, "run", "--rm", "--entrypoint", "sh", "app:1", "-c", "echo $X; pwd")
    assert r.stdout == b"1\n/tmp\n", r.stderr


def test_bind_mount_is_seen_and_written(store, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "in.txt").write_text("from the host")
    r = buildpy(store, "run", "--rm", "-v", f"{host}:/work", "busybox", "sh", "-c",
                "cat /work/in.txt; echo from the container > /work/out.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"from the host"
    assert (host / "out.txt").read_text() == "from the container\n"
    r = buildpy(store, "run", "--rm", "-v", f"{host}:/work:ro", "busybox", "sh", "-c", "echo x > /work/ro.txt")
    assert r.returncode != 0 and not (host / "ro.txt").exists()


def test_named_volume_outlives_containers_and_stays_out_of_commits(store):
    assert buildpy(store, "run", "--name", "writer", "-v", "data:/data", "busybox", "sh", "-c",
                   "echo first > /data/f; echo change > /changed").returncode == 0
    r = buildpy(store, "run", "--rm", "-v", "data:/data", "busybox", "cat", "/data/f")
    assert r.stdout == b"first\n", r.stderr
    assert b"data" in buildpy(store, "volume", "ls").stdout
    assert buildpy(store, "commit", "writer", "committed:1").returncode == 0
    files = _image_paths(store, "committed:1")
    assert "changed" in files and not any(p.startswith("data") for p in files), files
    assert buildpy(store, "rm", "writer").returncode == 0
    assert buildpy(store, "volume", "rm", "data").returncode == 0
    assert b"data" not in buildpy(store, "volume", "ls").stdout


def _image_paths(store: Store, name: str) -> set[str]:
    from tests.test_build import image_files

    return set(image_files(store, name))


def test_commit_of_added_and_deleted_files(store):
    r = buildpy(store, "run", "--name", "c", "busybox", "sh", "-c",
                "mkdir -p /app && echo v1 > /app/new.txt && rm /bin/cat /etc/passwd")
    assert r.returncode == 0, r.stderr
    r = buildpy(store, "commit", "c", "changed:1")
    assert r.returncode == 0, r.stderr
    image_id = r.stdout.decode().strip()
    _, image = resolve(store, "changed:1")
    assert image.id == image_id
    _, base = resolve(store, "busybox")
    assert len(image.layers) == len(base.layers) + 1
    assert image.config["history"][-1]["created_by"].startswith("sh -c mkdir")
    r = buildpy(store, "run", "--rm", "changed:1", "sh", "-c",
                "head -1 /app/new.txt; test -e /bin/cat || echo no-cat; test -e /etc/passwd || echo no-passwd; "
                "test -e /etc/group && echo group-kept")
    assert r.stdout == b"v1\nno-cat\nno-passwd\ngroup-kept\n", r.stderr


def test_ps_rm_and_names(store):
    assert buildpy(store, "run", "--name", "one", "busybox", "true").returncode == 0
    r = buildpy(store, "run", "--name", "one", "busybox", "true")
    assert r.returncode == 1 and b"already in use" in r.stderr
    assert buildpy(store, "run", "--rm", "busybox", "true").returncode == 0
    out = buildpy(store, "ps", "-a").stdout.decode()
    assert "one" in out and "Exited (0)" in out and len(out.strip().splitlines()) == 2, out
    assert buildpy(store, "ps").stdout.decode().strip().count("\n") == 0  # only the header
    assert buildpy(store, "rm", "one").returncode == 0
    assert "one" not in buildpy(store, "ps", "-a").stdout.decode()
    r = buildpy(store, "rm", "one")
    assert r.returncode == 1 and b"no container one" in r.stderr
    assert not any((store.root / "containers").iterdir())


def test_sigterm_ends_the_container_and_records_it(store):
    proc = subprocess.Popen([BUILDPY, "--root", str(store.root), "run", "--name", "sleeper", "busybox",
                             "sleep", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while b"Running" not in buildpy(store, "ps").stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"sleeper" in buildpy(store, "ps").stdout
    proc.terminate()
    assert proc.wait(30) == 143
    assert "Exited (143)" in buildpy(store, "ps", "-a").stdout.decode()
    assert not _processes_running("sleep\x0060")


def _processes_running(cmdline: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if cmdline.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_interactive_terminal(store):
    out, status = drive([BUILDPY, "--root", str(store.root), "run", "--rm", "-it", "busybox", "sh"],
                        b"echo h''i; exit 3\n")  # the quotes: the echo of the input line is not the answer
    assert b"\nhi\r\n" in out, out
    assert status == 3


@pytest.mark.parametrize("network", ["private", "none"])
def test_published_port_answers_only_with_a_private_network(store, network):
    import shutil

    if network == "private" and not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns not installed (Debian package slirp4netns)")
    port = free_port()
    args = ["run", "--rm", "--network", network]
    if network == "private":
        args += ["-p", f"127.0.0.1:{port}:80"]
    proc = subprocess.Popen([BUILDPY, "--root", str(store.root), *args, "busybox", "sh", "-c", HTTPD],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        answer = None
        deadline = time.monotonic() + (20 if network == "private" else 3)
        while time.monotonic() < deadline and answer is None:
            time.sleep(0.2)
            answer = http_get(port)
            if answer is not None and b"served-from-container" not in answer:
                answer = None
        if network == "private":
            assert answer is not None and b"served-from-container" in answer
        else:
            assert answer is None
    finally:
        proc.terminate()
        proc.wait(30)


def test_publish_without_a_private_network_is_an_error(store):
    r = buildpy(store, "run", "--rm", "--network", "none", "-p", "8080:80", "busybox", "true")
    assert r.returncode == 1 and b"-p needs --network private" in r.stderr


def test_isolation_holds_for_run(store):
    r = buildpy(store, "run", "--rm", "busybox", "sh", "-c",
                "ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
                "kill -9 -1; echo killed-nothing-outside; test -e /root/host-marker || echo no-host-files")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert int(lines[0]) <= 4  # init, the shell, ls, grep: not the host's processes
    assert "killed-nothing-outside" in lines and "no-host-files" in lines


def _limits_or_skip(**limits) -> None:
    from buildpy.sandbox.cgroups import Limits, available

    reason = available(Limits(**limits))
    if reason:
        pytest.skip(f"cgroup limits unavailable here: {reason}")


HOG = 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo survived'


def test_memory_limit_kills_a_hog_with_137_and_ps_shows_the_limit(store):
    _limits_or_skip(memory=64 << 20)
    r = buildpy(store, "run", "--name", "hog", "--memory", "64m", "busybox", "sh", "-c", HOG)
    assert r.returncode == 137, r.stderr
    assert b"survived" not in r.stdout
    ps = buildpy(store, "ps", "-a").stdout.decode()
    assert "memory=64MiB" in ps and "Exited (137)" in ps
    r = buildpy(store, "run", "--rm", "--memory", "1g", "busybox", "sh", "-c", HOG)
    assert r.returncode == 0 and b"survived" in r.stdout, r.stderr


FORKS = 'i=0; while [ $i -lt 100 ]; do sleep 3 & i=$((i+1)); done; echo started $i'


def test_pids_limit_stops_a_fork_loop(store):
    _limits_or_skip(pids=32)
    r = buildpy(store, "run", "--rm", "--pids-limit", "32", "busybox", "sh", "-c", FORKS)
    assert r.returncode != 0 and b"can't fork" in r.stderr and b"started" not in r.stdout
    r = buildpy(store, "run", "--rm", "busybox", "sh", "-c", FORKS)
    assert r.returncode == 0 and r.stdout == b"started 100\n", r.stderr


def test_bad_limits_are_one_line_errors(store):
    r = buildpy(store, "run", "--rm", "--memory", "lots", "busybox", "true")
    assert r.returncode == 1 and b"--memory" in r.stderr and b"Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_tree_affected_on_locally_built_images(store, tmp_path):
    """base → app → app-debug and base → other, built by `buildpy build`: a fix to base's own
    layer means rebuilding exactly the images built on it."""
    def build(name: str, dockerfile: str) -> None:
        ctx = tmp_path / name.replace(":", "-")
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(dockerfile)
        r = buildpy(store, "build", "--progress", "quiet", "-t", name, str(ctx))
        assert r.returncode == 0, r.stderr

    build("base:1", "FROM busybox\nRUN echo base > /base\n")
    build("app:1", "FROM base:1\nRUN echo app > /app\n")
    build("app-debug:1", "FROM app:1\nRUN echo debug > /debug\n")
    build("other:1", "FROM base:1\nRUN echo other > /other\n")
    build("unrelated:1", "FROM busybox\nRUN echo unrelated > /u\n")
    _, base = resolve(store, "base:1")
    r = buildpy(store, "tree", "--affected", base.diff_ids[-1], "--json")
    assert r.returncode == 0, r.stderr
    import json

    tags = sorted(t for image in json.loads(r.stdout)["images"] for t in image["tags"])
    assert tags == ["app-debug:1", "app:1", "base:1", "other:1"]
    r = buildpy(store, "tree", "--affected", "app:1")
    assert r.returncode == 0 and "app-debug:1" in r.stdout.decode() and "other" not in r.stdout.decode()
    text = buildpy(store, "tree").stdout.decode()
    assert text.startswith("scratch\n") and all(t in text for t in ("base:1", "app:1", "app-debug:1", "unrelated:1"))
    r = buildpy(store, "history", "app-debug:1")
    lines = r.stdout.decode().splitlines()
    assert lines[0].startswith("IMAGE") and "echo debug" in lines[1] and "<missing>" in lines[2]
    r = buildpy(store, "tree", "--affected", "0123456789abcdef")
    assert r.returncode == 1 and b"no layer or image" in r.stderr


def test_prune_keeps_the_image_a_kept_container_runs_on(store, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo layer > /layer\n")
    assert buildpy(store, "build", "--progress", "quiet", "-t", "short-lived:1", str(ctx)).returncode == 0
    assert buildpy(store, "run", "--name", "keeper", "short-lived:1", "sh", "-c", "echo more > /more").returncode == 0
    assert buildpy(store, "rmi", "short-lived:1").returncode == 0
    assert buildpy(store, "rmi", "busybox").returncode == 0
    r = buildpy(store, "prune")
    assert r.returncode == 0, r.stderr
    r = buildpy(store, "commit", "keeper", "kept:1")
    assert r.returncode == 0, r.stderr
    r = buildpy(store, "run", "--rm", "kept:1", "cat", "/layer", "/more")
    assert r.stdout == b"layer\nmore\n", r.stderr
    assert buildpy(store, "rm", "keeper").returncode == 0
    assert buildpy(store, "fsck").returncode == 0
