"""Which ids the sandbox's user namespace maps, and who writes the maps.

- As root: every id is itself (0..4294967294); the parent writes the maps.
- As a normal user with a range in /etc/subuid and /etc/subgid and newuidmap/newgidmap installed:
  container 0 is the user, 1..65535 the first 65,535 ids of the range (so `chown 1000:1000`
  works, as rootless BuildKit, buildah and podman do); the parent runs the setuid helpers.
- As a normal user otherwise: only container 0 = the user; the child writes its own maps and must
  deny setgroups(2) first, so supplementary groups and other ids are unavailable.

Files the step creates carry host ids; `IdMaps.to_container` turns them back into the ids the
container saw (what a layer records).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

MAX_RANGE = 65536
Mode = Literal["root", "helper", "self"]


class IdMapError(Exception):
    user_facing = True


@dataclass(frozen=True)
class IdRange:
    container: int
    host: int
    size: int


@dataclass(frozen=True)
class IdMaps:
    mode: Mode
    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]

    def map_text(self, which: Literal["uid", "gid"]) -> str:
        """The contents of /proc/PID/uid_map or gid_map."""
        ranges = self.uids if which == "uid" else self.gids
        return "".join(f"{r.container} {r.host} {r.size}\n" for r in ranges)

    def to_container(self, host_id: int, which: Literal["uid", "gid"] = "uid") -> int | None:
        """The id a host id has inside the sandbox, or None when unmapped (seen as 65534)."""
        for r in self.uids if which == "uid" else self.gids:
            if r.host <= host_id < r.host + r.size:
                return r.container + host_id - r.host
        return None

    def to_host(self, container_id: int, which: Literal["uid", "gid"] = "uid") -> int | None:
        for r in self.uids if which == "uid" else self.gids:
            if r.container <= container_id < r.container + r.size:
                return r.host + container_id - r.container
        return None


def subid_range(path: str, name: str, uid: int) -> tuple[int, int] | None:
    """The first range (start, count) /etc/subuid or /etc/subgid gives the user, by name or uid."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (name, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count > 0:
            return start, count
    return None


def for_current_user() -> IdMaps:
    """The maps a sandbox started by this process uses."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        full = (IdRange(0, 0, 4294967295),)
        return IdMaps("root", full, full)
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    subuid = subid_range("/etc/subuid", name, uid)
    subgid = subid_range("/etc/subgid", name, uid)
    if subuid and subgid and shutil.which("newuidmap") and shutil.which("newgidmap"):
        usize = min(subuid[1], MAX_RANGE - 1)
        gsize = min(subgid[1], MAX_RANGE - 1)
        return IdMaps("helper", (IdRange(0, uid, 1), IdRange(1, subuid[0], usize)),
                      (IdRange(0, gid, 1), IdRange(1, subgid[0], gsize)))
    return IdMaps("self", (IdRange(0, uid, 1),), (IdRange(0, gid, 1),))


def apply(maps: IdMaps, pid: int) -> None:
    """Write the maps of process `pid` (which has just unshared its user namespace) from outside
    it: directly as root, through newuidmap/newgidmap otherwise. Mode "self" is the child's job."""
    if maps.mode == "root":
        for which in ("uid", "gid"):
            with open(f"/proc/{pid}/{which}_map", "w") as f:
                f.write(maps.map_text(which))
        return
    for tool, ranges in (("newuidmap", maps.uids), ("newgidmap", maps.gids)):
        argv = [tool, str(pid)] + [str(v) for r in ranges for v in (r.container, r.host, r.size)]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise IdMapError(f"{tool} failed: {done.stderr.strip() or f'exit status {done.returncode}'}")
