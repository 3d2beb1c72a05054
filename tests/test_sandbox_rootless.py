"""The sandbox run by a normal user: root inside maps to the user; with a /etc/subuid and
/etc/subgid range (newuidmap/newgidmap) 65,536 ids are mapped so `chown 1000:1000` works and the
upper dir holds the range's host ids; without one only root exists inside.

The test (as root) creates two users, copies the package where they can read it, and runs a small
driver as each with runuser. Skipped when not root or without useradd/runuser/newuidmap.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.sandbox.idmap import subid_range
from tests.imagekit import busybox_tar
from tests.sandboxkit import marker, processes_with, sandbox_or_skip

DRIVER = r'''
import json, sys, tarfile, tempfile
from collections.abc import Iterator
from pathlib import Path
from buildpy.sandbox.run import run
from buildpy.sandbox.spec import Overlay, Process, SandboxSpec

args = json.loads(sys.argv[1])
base = Path(tempfile.mkdtemp(prefix="rootless-"))
lower = base / "lower"
lower.mkdir()
with tarfile.open(args["tar"]) as t:
    t.extractall(lower)
for name in ("upper", "work", "root"):
    (base / name).mkdir()
spec = SandboxSpec(rootfs=base / "root", process=Process(args=("/bin/sh", "-c", args["script"]), user=args["user"]),
                   overlay=Overlay((lower,), base / "upper", base / "work"), network=args["network"])
out, err = [], []
result = {}
try:
    result["code"] = run(spec, stdout=out.append, stderr=err.append)
except Exception as e:
    result["error"] = str(e)
    result["user_facing"] = getattr(e, "user_facing", False)
result["out"] = b"".join(out).decode()
result["err"] = b"".join(err).decode()
upper = {}
for p in sorted((base / "upper").rglob("*")):
    st = p.lstat()
    upper[str(p.relative_to(base / "upper"))] = [st.st_uid, st.st_gid]
result["upper"] = upper
print(json.dumps(result))
'''


class Rootless:
    def __init__(self, base: Path, python: str, users: dict[str, str]) -> None:
        self.base = base
        self.python = python
        self.users = users  # role -> user name

    def run(self, role: str, script: str, user: str = "", network: str = "none") -> dict:
        arg = json.dumps({"tar": str(self.base / "busybox.tar"), "script": script, "user": user,
                          "network": network})
        done = subprocess.run(["runuser", "-u", self.users[role], "--", self.python, str(self.base / "driver.py"), arg],
                              capture_output=True, text=True, cwd=self.base,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(self.base / "py"),
                                   "TMPDIR": "/tmp"})
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def _interpreter(user: str) -> str | None:
    """An interpreter of our Python version the user can run (ours may sit in root's home)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}", "/usr/bin/python3"):
        if not os.path.exists(candidate):
            continue
        done = subprocess.run(["runuser", "-u", user, "--", candidate, "-c",
                               "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, cwd="/")
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    return None


def _free_range() -> int:
    end = 100000
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            for line in Path(path).read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    end = max(end, int(parts[1]) + int(parts[2]))
        except OSError:
            pass
    return (end + 65535) // 65536 * 65536


def _add_user(name: str, with_range: bool) -> None:
    extra = [] if with_range else ["-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0"]
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", *extra, name], check=True,
                   capture_output=True)
    uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True).stdout)
    has = subid_range("/etc/subuid", name, uid) and subid_range("/etc/subgid", name, uid)
    if with_range and not has:
        start = _free_range()
        span = f"{start}-{start + 65535}"
        subprocess.run(["usermod", "--add-subuids", span, "--add-subgids", span, name], check=True,
                       capture_output=True)
    if not with_range and has:
        pytest.skip("useradd gave the user a subordinate id range regardless")


@pytest.fixture(scope="module")
def rootless() -> Iterator[Rootless]:
    sandbox_or_skip()
    if os.geteuid() != 0:
        pytest.skip("creating the test users needs root")
    for tool in ("useradd", "userdel", "usermod", "runuser", "newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: passwd, util-linux, uidmap)")
    tag = f"{os.getpid() % 100000}"
    users = {"ranged": f"bpyr{tag}", "plain": f"bpyp{tag}"}
    base = Path(tempfile.mkdtemp(prefix="buildpy-rootless-"))
    made: list[str] = []
    try:
        os.chmod(base, 0o755)
        package = Path(__file__).resolve().parents[1] / "buildpy"
        shutil.copytree(package, base / "py" / "buildpy", ignore=shutil.ignore_patterns("__pycache__"))
        spec = importlib.util.find_spec("pyseccomp")
        assert spec and spec.origin
        shutil.copy(spec.origin, base / "py")
        (base / "busybox.tar").write_bytes(busybox_tar())
        (base / "driver.py").write_text(DRIVER)
        for path in base.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        for role, name in users.items():
            _add_user(name, role == "ranged")
            made.append(name)
        python = _interpreter(users["ranged"])
        if python is None:
            pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} the test users can run")
        yield Rootless(base, python, users)
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def uid_of(name: str) -> int:
    return int(subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True).stdout)


def test_ranged_user_is_root_inside_and_chown_works(rootless):
    name = rootless.users["ranged"]
    uid = uid_of(name)
    start, _count = subid_range("/etc/subuid", name, uid)
    gstart, _count = subid_range("/etc/subgid", name, uid)
    r = rootless.run("ranged", "id -u; id -g; cat /proc/self/uid_map; touch /tmp/f /tmp/mine; "
                               "chown 1000:1000 /tmp/f && echo chowned; stat -c '%u:%g' /tmp/f")
    assert r.get("code") == 0, r
    lines = r["out"].splitlines()
    assert lines[:2] == ["0", "0"]
    assert [line.split() for line in lines[2:4]] == [["0", str(uid), "1"], ["1", str(start), "65535"]]
    assert lines[4:] == ["chowned", "1000:1000"]
    # the upper dir holds host ids: container 1000 is the range's 1000th id, root is the user
    assert r["upper"]["tmp/f"] == [start + 999, gstart + 999]
    assert r["upper"]["tmp/mine"] == [uid, uid_of_group(name)]


def uid_of_group(name: str) -> int:
    return int(subprocess.run(["id", "-g", name], capture_output=True, text=True, check=True).stdout)


def test_ranged_user_runs_steps_as_image_users(rootless):
    r = rootless.run("ranged", "grep -E '^(Uid|Gid|Groups)' /proc/self/status", user="app")
    assert r.get("code") == 0, r
    fields = {k: v.split() for k, v in (line.split(":", 1) for line in r["out"].splitlines())}
    assert fields == {"Uid": ["1000"] * 4, "Gid": ["1000"] * 4, "Groups": ["50"]}


def test_rootless_privileges_are_docker_defaults(rootless):
    r = rootless.run("ranged", "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; "
                               "mount -t tmpfs t /tmp && echo mounted; busybox unshare -U true && echo unshared; "
                               "ls /proc | grep -c '^[0-9]'")
    assert r.get("code") == 0, r
    lines = r["out"].split()
    assert lines[:8] == ["CapEff:", "00000000a80425fb", "CapBnd:", "00000000a80425fb", "NoNewPrivs:", "1",
                         "Seccomp:", "2"]
    assert "mounted" not in lines and "unshared" not in lines
    assert int(lines[-1]) < 10


def test_rootless_leaves_no_process(rootless):
    mark = marker()
    r = rootless.run("ranged", f"sleep {mark} & echo started")
    assert r.get("code") == 0 and r["out"] == "started\n", r
    assert processes_with(mark) == []


def test_plain_user_maps_only_root(rootless):
    name = rootless.users["plain"]
    uid = uid_of(name)
    r = rootless.run("plain", "id -u; cat /proc/self/uid_map; touch /tmp/f; chown 1000:1000 /tmp/f && echo chowned")
    assert r.get("code") == 1, r  # the chown fails: uid 1000 does not exist here
    lines = r["out"].splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(uid), "1"]
    assert "chowned" not in r["out"]
    assert r["upper"]["tmp/f"][0] == uid


def test_plain_user_cannot_run_as_other_users(rootless):
    r = rootless.run("plain", "true", user="app")
    assert r.get("user_facing") is True, r
    assert "no mapping" in r["error"] and "\n" not in r["error"]


@pytest.mark.parametrize("role", ["ranged", "plain"])
def test_rootless_host_network_gets_a_read_only_sys(rootless, role):
    """Not owning the network namespace, the sandbox cannot mount sysfs: it binds the host's,
    read-only all the way down."""
    r = rootless.run(role, "ls /sys/class/net | grep -c .; touch /sys/fs/x && echo wrote; "
                           "grep ' /sys ' /proc/self/mounts | cut -d' ' -f4", network="host")
    assert r.get("code") == 0, r
    lines = r["out"].split()
    assert int(lines[0]) >= 1 and "wrote" not in lines
    assert lines[-1].split(",")[0] == "ro"
