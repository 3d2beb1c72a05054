"""buildpy.sandbox.cgroups: parsing limits, and real cgroups (v1, hybrid or v2) enforcing them on
real processes: a 256 MiB allocation under --memory=64m is OOM-killed, fork stops at --pids-limit,
--cpus lands in the CFS files, remove() kills what is left. Tests needing a cgroup skip (with the
reason `available` gives) where this machine cannot enforce the limit, e.g. not root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.sandbox import cgroups
from buildpy.sandbox.cgroups import Cgroup, CgroupError, Limits, available, parse_cpus, parse_memory

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[1]

# Blocks until told to go (so it is in the cgroup before it allocates), then touches 256 MiB.
ALLOCATE = """
import sys
sys.stdin.read(1)
x = bytearray(256 << 20)
x[::4096] = b"\\1" * len(range(0, len(x), 4096))
print("survived", len(x) >> 20, flush=True)
"""

# Forks 100 children that wait on a pipe; reports how many forks worked and how many failed.
FORK = """
import errno, json, os, sys
sys.stdin.read(1)
r, w = os.pipe()
kids, failed = [], []
for _ in range(100):
    try:
        pid = os.fork()
    except OSError as e:  # BlockingIOError: EAGAIN from pids.max
        failed.append(e.errno)
        continue
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    kids.append(pid)
os.close(w)
for pid in kids:
    os.waitpid(pid, 0)
print(json.dumps({"started": len(kids), "failed": failed}), flush=True)
"""


def _name() -> str:
    return "test-" + uuid.uuid4().hex[:12]


def _cgroup_or_skip(limits: Limits) -> Cgroup:
    reason = available(limits)
    if reason is not None:
        pytest.skip(reason)  # e.g. not root, a read-only /sys/fs/cgroup, no delegation
    return Cgroup.create(_name(), limits)


def _run_in(group: Cgroup, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Start `script`, put it in `group` while it waits on stdin, then let it go."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        group.add(proc.pid)
        out, err = proc.communicate("x", timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _file(group: Cgroup, name: str) -> Path:
    for path in group.paths:
        if (path / name).exists():
            return path / name
    raise AssertionError(f"no {name} in {group.paths}")


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("64m", 64 * MiB), ("64M", 64 * MiB), ("1g", 1 << 30), ("1G", 1 << 30), ("512k", 512 << 10),
    ("1048576", 1048576), ("1.5g", 3 << 29), ("64mb", 64 * MiB), ("64MiB", 64 * MiB),
    ("100b", 100), (" 2m ", 2 * MiB), ("0.5m", 512 << 10), ("1t", 1 << 40),
])
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "m", "64x", "-1m", "1,5g", "64 mm", "0", "0m", "1e6", "abc",
                                  "64m64", "nan", "1.2.3g"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(CgroupError) as info:
        parse_memory(text)
    assert info.value.user_facing
    assert repr(text) in str(info.value)


def test_parse_cpus() -> None:
    assert parse_cpus("0.5") == 0.5
    assert parse_cpus("2") == 2.0
    for bad in ("", "half", "0", "-1", "nan", "inf"):
        with pytest.raises(CgroupError, match="--cpus"):
            parse_cpus(bad)


def test_limits_checks_and_describe() -> None:
    assert Limits(memory=64 * MiB, cpus=0.5, pids=32).describe() == "memory=64MiB cpus=0.5 pids=32"
    assert Limits(memory=parse_memory("1.5g")).describe() == "memory=1536MiB"
    assert Limits(memory=parse_memory("1g"), cpus=2).describe() == "memory=1GiB cpus=2"
    assert Limits(memory=6 * MiB + 1).describe() == "memory=6291457B"
    assert Limits().describe() == ""
    assert not Limits() and Limits(pids=1)
    with pytest.raises(CgroupError, match="--memory: minimum memory limit allowed is 6MB"):
        Limits(memory=5 * MiB)
    with pytest.raises(CgroupError, match="--cpus"):
        Limits(cpus=0.001)
    with pytest.raises(CgroupError, match="--pids-limit"):
        Limits(pids=0)
    assert Limits(memory=64 * MiB, cpus=1, pids=2).controllers() == ["memory", "cpu", "pids"]


def test_available_names_the_flag_for_too_many_cpus() -> None:
    count = len(os.sched_getaffinity(0))
    reason = available(Limits(cpus=count + 1))
    assert reason is not None and reason.startswith("--cpus")
    with pytest.raises(CgroupError, match="--cpus") as info:
        Cgroup.create(_name(), Limits(cpus=count + 1))
    assert info.value.user_facing


# --- real cgroups -----------------------------------------------------------------------------


def test_memory_limit_oom_kills() -> None:
    with _cgroup_or_skip(Limits(memory=64 * MiB)) as group:
        assert not group.oom_killed()
        done = _run_in(group, ALLOCATE)
        assert done.returncode == -9, (done.returncode, done.stdout, done.stderr)
        assert "survived" not in done.stdout
        assert group.oom_killed()
        assert group.describe() == "memory=64MiB"


def test_memory_limit_large_enough_survives() -> None:
    with _cgroup_or_skip(Limits(memory=512 * MiB)) as group:
        done = _run_in(group, ALLOCATE)
        assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
        assert done.stdout.strip() == "survived 256"
        assert not group.oom_killed()


def test_memory_files() -> None:
    with _cgroup_or_skip(Limits(memory=64 * MiB)) as group:
        paths = [p for p in group.paths if (p / "memory.max").exists()
                 or (p / "memory.limit_in_bytes").exists()]
        assert len(paths) == 1
        path = paths[0]
        if (path / "memory.max").exists():
            assert (path / "memory.max").read_text().strip() == str(64 * MiB)
            if (path / "memory.swap.max").exists():
                assert (path / "memory.swap.max").read_text().strip() == "0"
        else:
            assert (path / "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)
            if (path / "memory.memsw.limit_in_bytes").exists():
                assert (path / "memory.memsw.limit_in_bytes").read_text().strip() == str(64 * MiB)


def test_pids_limit_stops_fork() -> None:
    with _cgroup_or_skip(Limits(pids=32)) as group:
        assert _file(group, "pids.max").read_text().strip() == "32"
        done = _run_in(group, FORK)
        assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
        report = json.loads(done.stdout)
        # 32 tasks at most, the forking process itself being one of them
        assert 1 <= report["started"] <= 31, report
        assert report["started"] >= 25, report  # nothing else runs in the cgroup
        assert len(report["failed"]) == 100 - report["started"]
        assert set(report["failed"]) == {11}  # EAGAIN
        assert group.describe() == "pids=32"


def test_cpus_files() -> None:
    with _cgroup_or_skip(Limits(cpus=0.5)) as group:
        assert group.describe() == "cpus=0.5"
        paths = [p for p in group.paths if (p / "cpu.max").exists() or (p / "cpu.cfs_quota_us").exists()]
        assert len(paths) == 1
        path = paths[0]
        if (path / "cpu.max").exists():
            assert (path / "cpu.max").read_text().split() == ["50000", "100000"]
        else:
            assert (path / "cpu.cfs_quota_us").read_text().strip() == "50000"
            assert (path / "cpu.cfs_period_us").read_text().strip() == "100000"


def test_all_limits_describe_and_remove() -> None:
    group = _cgroup_or_skip(Limits(memory=64 * MiB, cpus=0.5, pids=32))
    assert group.describe() == "memory=64MiB cpus=0.5 pids=32"
    assert group.paths and all(p.is_dir() and p.name.startswith("buildpy-test-") for p in group.paths)
    group.remove()
    assert not any(p.exists() for p in group.paths)
    group.remove()  # again: nothing left to do


def test_remove_kills_leftovers() -> None:
    group = _cgroup_or_skip(Limits(pids=16))
    procs = []
    try:
        for _ in range(3):
            proc = subprocess.Popen(["sleep", "600"])
            procs.append(proc)
            group.add(proc.pid)
        # one that forks its own child in the cgroup: remove() must get it too
        proc = subprocess.Popen(["sh", "-c", "sleep 600 & wait"])
        procs.append(proc)
        group.add(proc.pid)
        assert set(group.pids()) >= {p.pid for p in procs}
        group.remove()
        assert [p.wait(timeout=10) for p in procs] == [-9] * len(procs)
        assert not any(p.exists() for p in group.paths)
        assert group.pids() == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        group.remove()


def test_remove_tolerates_removed_directories() -> None:
    group = _cgroup_or_skip(Limits(pids=8))
    for path in group.paths:
        path.rmdir()
    group.remove()
    assert not any(p.exists() for p in group.paths)


def test_create_refuses_an_existing_name() -> None:
    limits = Limits(pids=8)
    with _cgroup_or_skip(limits) as group:
        with pytest.raises(CgroupError, match="already exists"):
            Cgroup.create(group.name, limits)
        assert all(p.is_dir() for p in group.paths)  # the failed create left ours alone


def test_rootless_without_delegation_is_an_error() -> None:
    """As a normal user (nobody) in root's cgroups: a clear error naming the flag, never a cgroup
    without the limit."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            out: dict[str, object] = {}
            for key, limits in (("memory", Limits(memory=64 * MiB)), ("pids", Limits(pids=8))):
                out[key] = available(limits)
                try:
                    Cgroup.create(_name(), limits).remove()
                    out[key + "_create"] = "created"
                except CgroupError as e:
                    out[key + "_create"] = [str(e), e.user_facing]
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    if out.get("memory") is None and out.get("pids") is None:
        pytest.skip("nobody has a writable, delegated cgroup here")
    for key, flag in (("memory", "--memory"), ("pids", "--pids-limit")):
        assert out[key] and out[key].startswith(flag), out
        message, user_facing = out[key + "_create"]
        assert message == out[key] and user_facing, out


# --- cgroup v2 placement (the no-internal-processes rule) -------------------------------------

DRIVER = """
import json, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from buildpy.sandbox import cgroups
mount, base, controller = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
h = cgroups._Hierarchy(2, mount, frozenset({{controller}}), base)
parent = cgroups._v2_parent(h, {{controller}}, "x")
own = open("/proc/self/cgroup").read().splitlines()
print(json.dumps({{"parent": str(parent), "own": [l for l in own if l.startswith("0::")][0][3:],
                  "subtree": (base / "cgroup.subtree_control").read_text().split()}}))
"""


@pytest.fixture
def v2_root() -> Iterator[tuple[Path, str, Path]]:
    """(cgroup2 mount, a domain controller it offers, a fresh cgroup under its root) when we are in
    the root cgroup of a cgroup2 hierarchy (hybrid's unified, or a VM's v2); the controller is
    enabled in the root only for the test."""
    v2 = [h for h in cgroups._hierarchies() if h.version == 2]
    if not v2 or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup2 mount")
    h = v2[0]
    if h.own != h.mountpoint:
        pytest.skip(f"we are not in the root cgroup of {h.mountpoint} (in {h.own})")
    domain = [c for c in ("hugetlb", "pids", "memory", "io", "rdma") if c in h.controllers]
    if not domain:
        pytest.skip(f"{h.mountpoint} offers no domain controller ({sorted(h.controllers)})")
    controller = domain[0]
    control = h.mountpoint / "cgroup.subtree_control"
    was_enabled = controller in control.read_text().split()
    base = h.mountpoint / f"buildpy-{_name()}"
    base.mkdir()
    try:
        yield h.mountpoint, controller, base
    finally:
        for directory, _, _ in sorted(os.walk(base), key=lambda w: -len(w[0])):
            for pid in (Path(directory) / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
        cgroups._rmdir_tree(base, deadline=time.monotonic() + 10)
        sibling = h.mountpoint / "buildpy-x"
        if sibling.exists():
            sibling.rmdir()
        if not was_enabled:
            try:
                cgroups._write(control, f"-{controller}")
            except OSError:
                pass


def _driver(base: Path, mount: Path, controller: str) -> dict:
    script = DRIVER.format(repo=str(REPO))
    # the driver puts itself in `base` before importing anything, then decides
    wrapper = (f"import os; open({str(base / 'cgroup.procs')!r}, 'w').write(str(os.getpid()));"
               f"exec(compile({script!r}, 'driver', 'exec'))")
    done = subprocess.run([sys.executable, "-c", wrapper, str(mount), str(base), controller],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_v2_moves_itself_into_a_leaf(v2_root: tuple[Path, str, Path]) -> None:
    mount, controller, base = v2_root
    out = _driver(base, mount, controller)
    # only the driver was in `base`: it moved into a leaf and enabled the controller for `base`
    assert out["parent"] == str(base)
    assert out["own"].endswith(f"/{base.name}/{cgroups.SUPERVISOR}")
    assert controller in out["subtree"]


def test_v2_goes_beside_processes_not_its_own(v2_root: tuple[Path, str, Path]) -> None:
    mount, controller, base = v2_root
    other = subprocess.Popen(["sleep", "600"])
    try:
        (base / "cgroup.procs").write_text(str(other.pid))
        out = _driver(base, mount, controller)
        # `sleep` is not the driver's: nothing moved, the container goes under base's parent
        assert out["parent"] == str(mount)
        assert out["own"] == "/" + base.name
        assert controller not in out["subtree"]
    finally:
        other.kill()
        other.wait()
