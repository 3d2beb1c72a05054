"""Isolation: each test tries to do harm from inside a step, and checks the harm was not done. Where
the check could pass for a wrong reason (a typo in the attempt), a positive control makes the same
attempt where it must succeed (a mount that exposes the path, network host, RUN
--security=insecure) so the test can fail."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from buildpy.sandbox.run import run
from buildpy.sandbox.spec import Mount
from tests.imagekit import busybox_tar
from tests.sandboxkit import Layout, extract, host_sleep, marker, processes_with, run_sh, sandbox_or_skip


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    sandbox_or_skip()
    return Layout(tmp_path_factory.mktemp("isolation"))


@pytest.fixture
def host_process():
    mark = marker()
    proc = host_sleep(mark)
    yield proc, mark
    proc.kill()
    proc.wait()


def attempts(*commands: str) -> str:
    """A script running each command and printing `ok` or `failed` for it, one line each."""
    return "; ".join(f"if {c} >/dev/null 2>&1; then echo ok; else echo failed; fi" for c in commands)


# processes


def test_cannot_see_host_processes(layout, host_process):
    proc, mark = host_process
    assert processes_with(mark) == [proc.pid]  # the host sees it
    code, out, _ = run_sh(layout.sh("cat /proc/[0-9]*/cmdline | busybox tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'; "
                                    "ps -o pid,args"))
    assert code == 0
    assert mark not in out
    assert str(proc.pid) not in out.split()
    # init, the shell, and the commands of the pipeline: a handful of pids, all small
    assert int(out.splitlines()[1]) < 10


def test_cannot_signal_host_processes(layout, host_process):
    proc, _ = host_process
    code, out, _ = run_sh(layout.sh(attempts(f"kill -9 {proc.pid}", f"kill -0 {proc.pid}") + "; kill -9 -1; true"))
    assert out.split() == ["failed", "failed"]
    assert proc.poll() is None  # still alive


def test_cannot_ptrace_or_read_the_init(layout):
    code, out, _ = run_sh(layout.sh(attempts("cat /proc/1/environ", "ls /proc/1/root/", "cat /proc/1/cmdline",
                                             "readlink /proc/1/exe")))
    assert out.split() == ["failed", "failed", "ok", "failed"]


# files


def test_cannot_read_or_write_host_paths(layout, tmp_path):
    secret_dir = tmp_path / "hostside"
    secret_dir.mkdir()
    sentinel = secret_dir / "sentinel"
    sentinel.write_text("host-secret-8d1f\n")
    path = str(sentinel)
    depth = "../" * (len(sentinel.parts) + 3)
    script = "; ".join([
        f"cat {path}", f"cat /proc/1/root{path}", f"cat /proc/self/root{path}",
        f"cd / && cat {depth}{path.lstrip('/')}", f"cat /proc/self/cwd/{depth}{path.lstrip('/')}",
        f"mkdir -p {secret_dir} && echo tampered > {path}", f"echo new > {secret_dir}/planted",
        f"ln -s {path} /tmp/link && cat /tmp/link",
    ])
    spec = layout.sh(script + "; true")
    code, out, _ = run_sh(spec)
    assert code == 0
    assert "host-secret" not in out
    assert sentinel.read_text() == "host-secret-8d1f\n"
    assert sorted(os.listdir(secret_dir)) == ["sentinel"]
    # what the step wrote landed in its own layer
    assert (spec.overlay.upper / path.lstrip("/")).read_text() == "tampered\n"

    # positive control: through a mount, the same read works
    code, out, _ = run_sh(layout.sh(f"cat /exposed/sentinel", mounts=(Mount("/exposed", source=secret_dir),)))
    assert out == "host-secret-8d1f\n"


@pytest.mark.parametrize("overlay", [True, False])
def test_hostile_image_symlinks_cannot_aim_mounts_at_the_host(tmp_path, overlay):
    """An image whose /etc/hosts and /etc/resolv.conf are symlinks to host paths (absolute, and
    with more '..' than the rootfs is deep): the sandbox's files are mounted inside the root, the
    host's files stay as they are, and nothing is created on the host."""
    sandbox_or_skip()
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    target = host_dir / "target"
    target.write_text("host file\n")
    lower = extract(busybox_tar(), tmp_path / "lower")
    os.symlink(str(target), lower / "etc/hosts")
    os.symlink("../" * 12 + str(host_dir / "created").lstrip("/"), lower / "etc/resolv.conf")
    lay = Layout(tmp_path, lower)
    code, out, _ = run_sh(lay.sh("cat /etc/hosts; cat /etc/resolv.conf", overlay=overlay, hostname="evil"))
    assert code == 0
    assert "localhost evil" in out and "host file" not in out
    assert target.read_text() == "host file\n"
    assert sorted(os.listdir(host_dir)) == ["target"]


def test_cannot_mount_or_remount(layout):
    code, out, _ = run_sh(layout.sh(attempts(
        "mount -o remount,rw /", "mount -o remount,ro /", "mount -t proc proc /tmp", "mount -t tmpfs t /tmp",
        "mount --bind /bin /tmp", "busybox mknod /tmp/vda b 253 0", "umount /proc", "umount -l /etc/hosts",
        "busybox pivot_root /tmp /tmp")))
    assert out.split() == ["failed"] * 9
    # positive control: with every privilege the same step may mount (it owns its namespaces)
    code, out, _ = run_sh(layout.sh(attempts("mount -t tmpfs t /tmp", "umount /etc/hosts"), insecure=True))
    assert out.split() == ["ok", "ok"]


def test_cannot_unshare(layout):
    # unshare -U needs no capability: seccomp is what refuses it (as in Docker's profile)
    script = attempts("busybox unshare -U true", "busybox unshare -m true", "busybox unshare -n true",
                      "busybox nsenter -t 1 -m true")
    code, out, _ = run_sh(layout.sh(script))
    assert out.split() == ["failed"] * 4
    code, out, _ = run_sh(layout.sh(attempts("busybox unshare -U true"), insecure=True))
    assert out.split() == ["ok"]


def test_privileges_as_docker(layout):
    code, out, _ = run_sh(layout.sh("grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status"))
    fields = dict(line.split(":\t") for line in out.splitlines())
    assert fields == {"CapInh": "0000000000000000", "CapPrm": "00000000a80425fb", "CapEff": "00000000a80425fb",
                      "CapBnd": "00000000a80425fb", "CapAmb": "0000000000000000", "NoNewPrivs": "1",
                      "Seccomp": "2"}


def test_masked_and_read_only_paths(layout):
    files = [p for p in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                         "/proc/latency_stats", "/proc/timer_stats", "/proc/interrupts") if os.path.exists(p)]
    dirs = [p for p in ("/proc/acpi", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap")
            if os.path.isdir(p)]
    assert files, "no maskable file on this kernel: the test would prove nothing"
    script = "; ".join([f"wc -c < {p}" for p in files] + [f"ls {p} | wc -l" for p in dirs])
    code, out, _ = run_sh(layout.sh(script))
    assert code == 0
    assert out.split() == ["0"] * (len(files) + len(dirs))

    writes = attempts("echo x > /proc/sys/kernel/hostname", "echo h > /proc/sysrq-trigger",
                      "touch /sys/firmware/x", "echo 1 > /proc/sys/vm/drop_caches")
    code, out, _ = run_sh(layout.sh(writes))
    assert out.split() == ["failed"] * 4
    # positive control: /proc/sys/kernel/hostname is the step's own uts namespace's, writable
    # when not made read-only, and /proc/keys has content when not masked
    code, out, _ = run_sh(layout.sh(attempts("echo x > /proc/sys/kernel/hostname") + "; wc -c < /proc/keys",
                                    insecure=True))
    lines = out.split()
    assert lines[0] == "ok" and int(lines[1]) > 0


# network


@pytest.fixture
def listener():
    """A TCP server on the host's 127.0.0.1 that records what connects to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    received.append(conn.recv(100))
                except OSError:
                    received.append(b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join()
    server.close()


def test_network_none_cannot_reach_the_host(layout, listener):
    port, received = listener
    script = attempts(f"echo knock | nc -w 2 127.0.0.1 {port}", f"wget -q -T 2 -O - http://127.0.0.1:{port}/")
    code, out, _ = run_sh(layout.sh(script + "; ls /sys/class/net; cat /sys/class/net/lo/flags"))
    assert out.split() == ["failed", "failed", "lo", "0x9"]  # only loopback, and it is up
    assert received == []


def test_network_host_reaches_the_host(layout, listener):
    """The positive control of the test above."""
    port, received = listener
    code, out, _ = run_sh(layout.sh(attempts(f"echo knock | nc -w 2 127.0.0.1 {port}"), network="host"))
    assert out.split() == ["ok"]
    assert received == [b"knock\n"]


def test_layer_and_host_untouched_by_a_step_that_fails(layout, tmp_path):
    """A failing step still tears down: no process, and the spec's dirs only hold its change."""
    mark = marker()
    spec = layout.sh(f"sleep {mark} & echo x > /tmp/partial; exit 9")
    assert run(spec) == 9
    assert processes_with(mark) == []
    assert {p.name for p in spec.overlay.upper.iterdir()} == {"tmp"}
