"""Resource limits for one container: `--memory`, `--cpus`, `--pids-limit` as a cgroup.

Owns: parsing and checking the limits (`Limits`, `parse_memory`, `parse_cpus`), finding this
process's cgroups (/proc/self/mountinfo, /proc/self/cgroup), `available(limits)` (can every asked
limit be enforced here? else one line naming the flag), and `Cgroup`: a child cgroup per
container, its limit files, moving pids into it, OOM detection, `describe()` for `ps`, and killing
what is left in it and removing it. The sandbox's run path creates a `Cgroup` before the step
starts and `add`s the sandbox child's pid before it execs anything; nothing here forks.

Layouts (one process can see several):
- cgroup v2 ("unified", /sys/fs/cgroup is cgroup2): one directory, `<our cgroup>/buildpy-<name>`,
  with memory.max (+ memory.swap.max = 0), cpu.max and pids.max; the needed controllers are
  enabled in `cgroup.subtree_control` of our cgroup (and of its ancestors where missing).
- cgroup v1 ("legacy"), or v1 controllers beside a controller-less cgroup2 ("hybrid", systemd's
  /sys/fs/cgroup/unified): one directory per needed hierarchy, `<our cgroup there>/buildpy-<name>`
  (memory.limit_in_bytes + memory.memsw.limit_in_bytes, cpu.cfs_quota_us/cpu.cfs_period_us,
  pids.max). A controller is taken from the v1 hierarchy it is bound to, else from cgroup2.
  A writable cgroup2 mount is also used for tracking even without controllers: its cgroup.kill
  and cgroup.procs make `remove()` reliable.

A limit is never silently dropped: `Cgroup.create` raises `CgroupError` (user facing, naming the
flag) when an asked limit cannot be enforced, e.g. rootless without a delegated cgroup.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["CgroupError", "Limits", "Cgroup", "available", "parse_memory", "parse_cpus"]

CPU_PERIOD = 100_000  # µs, Docker's and the kernel's default CFS period
MIN_MEMORY = 6 * 1024 * 1024  # Docker: "Minimum memory limit allowed is 6MB"
SUPERVISOR = "buildpy-supervisor"  # v2: the leaf this process moves into (see _v2_parent)
_PREFIX = "buildpy-"
_KILL_TIMEOUT = 10.0
_FLAGS = {"memory": "--memory", "cpu": "--cpus", "pids": "--pids-limit"}
_NO_DELEGATION = "cgroup v2 without delegation: run as root or with a systemd-delegated scope"
_V1_ROOTLESS = "cgroup v1 cannot be delegated to a normal user: run as root"
# v2: enabling controllers and moving ourselves are read-modify-write steps on shared files
_lock = threading.Lock()


class CgroupError(Exception):
    """A limit cannot be parsed or enforced. `user_facing` (as SandboxError's): the message is one
    line for the CLI, naming the flag; False for unexpected failures of the cgroup files."""

    def __init__(self, message: str, user_facing: bool = True) -> None:
        super().__init__(message)
        self.user_facing = user_facing


# --- limits -----------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
# Docker's units.RAMInBytes: "64m", "64M", "64mb", "64MiB", "1.5g", "1048576", "512 k"
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp]?)(?:i?b)?$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """Docker's memory sizes in bytes: a number with an optional binary unit (b, k, m, g, t, p;
    any case; "mb"/"mib" also accepted). `CgroupError` for anything else."""
    match = _MEMORY_RE.match(text.strip())
    if not match:
        raise CgroupError(f"invalid memory size {text!r}: expected a number with an optional unit "
                          f"b, k, m, g (e.g. 512k, 64m, 1.5g)")
    number, unit = match.groups()
    value = int(float(number) * _UNITS[unit.lower()])
    if value <= 0:
        raise CgroupError(f"invalid memory size {text!r}: must be more than 0")
    return value


def parse_cpus(text: str) -> float:
    """Docker's `--cpus`: a positive decimal number of CPUs ("0.5", "2")."""
    try:
        value = float(text)
    except ValueError:
        raise CgroupError(f"invalid --cpus value {text!r}: expected a number such as 0.5 or 2") from None
    if not value > 0 or value != value or value == float("inf"):
        raise CgroupError(f"invalid --cpus value {text!r}: must be more than 0")
    return value


@dataclass(frozen=True)
class Limits:
    """What the container may use. memory: bytes (no swap on top); cpus: CPUs' worth of time per
    period (0.5 = half of one CPU); pids: processes and threads at once. None: no limit."""

    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory < MIN_MEMORY:
            raise CgroupError("--memory: minimum memory limit allowed is 6MB")
        if self.cpus is not None and not 0.01 <= self.cpus < float("inf"):
            raise CgroupError(f"--cpus: {self.cpus:g} is out of range (at least 0.01)")
        if self.pids is not None and self.pids < 1:
            raise CgroupError(f"--pids-limit: {self.pids} is out of range (at least 1; no limit: None)")

    def __bool__(self) -> bool:
        return self.memory is not None or self.cpus is not None or self.pids is not None

    def controllers(self) -> list[str]:
        """The cgroup controllers these limits need, in a fixed order."""
        wanted = [("memory", self.memory), ("cpu", self.cpus), ("pids", self.pids)]
        return [name for name, value in wanted if value is not None]

    def describe(self) -> str:
        """"memory=64MiB cpus=0.5 pids=32"; only the limits set, "" when none."""
        parts = []
        if self.memory is not None:
            parts.append(f"memory={format_bytes(self.memory)}")
        if self.cpus is not None:
            parts.append(f"cpus={self.cpus:g}")
        if self.pids is not None:
            parts.append(f"pids={self.pids}")
        return " ".join(parts)


def format_bytes(n: int) -> str:
    """The largest binary unit that divides n exactly: 64MiB, 1536MiB, 512KiB, 1000B."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


# --- this process's cgroups -------------------------------------------------------------------


@dataclass(frozen=True)
class _Hierarchy:
    """One mounted hierarchy as this process sees it. controllers: v1 the ones bound to it; v2
    the ones its root offers (the mount root's cgroup.controllers)."""

    version: int
    mountpoint: Path
    controllers: frozenset[str]
    own: Path  # our cgroup's directory in it

    @property
    def base(self) -> Path:
        """Where our containers go: our cgroup, or the cgroup we moved ourselves out of."""
        if self.version == 2 and self.own.name == SUPERVISOR and self.own != self.mountpoint:
            return self.own.parent
        return self.own


def _unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def _known_controllers() -> dict[str, tuple[int, bool]]:
    """/proc/cgroups: name -> (v1 hierarchy id, 0 when unbound or on cgroup2; enabled)."""
    known: dict[str, tuple[int, bool]] = {}
    try:
        lines = Path("/proc/cgroups").read_text().splitlines()
    except OSError:
        return known
    for line in lines:
        if line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 4:
            known[parts[0]] = (int(parts[1]), parts[3] == "1")
    return known


def _own_paths() -> tuple[dict[frozenset[str], str], str | None]:
    """/proc/self/cgroup: v1 paths by the hierarchy's controller set, and the v2 path."""
    v1: dict[frozenset[str], str] = {}
    v2: str | None = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        path = path.removesuffix(" (deleted)")
        if hid == "0" and ctrls == "":
            v2 = path
        else:
            v1[frozenset(c for c in ctrls.split(",") if c)] = path
    return v1, v2


def _join(mountpoint: Path, mount_root: str, path: str) -> Path:
    """Our cgroup `path` (as /proc/self/cgroup has it) under a mount of `mount_root`."""
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        path = path[len(mount_root):]  # e.g. docker's v1 mounts of /docker/<id> without cgroupns
    candidate = mountpoint / path.lstrip("/")
    return candidate if candidate.is_dir() or mount_root == "/" else mountpoint


def _hierarchies() -> list[_Hierarchy]:
    """The cgroup hierarchies mounted here that hold our process, v2 last; the first mount of
    each (under /sys/fs/cgroup preferred)."""
    known = _known_controllers()
    v1_paths, v2_path = _own_paths()
    mounts: list[tuple[str, Path, str, str]] = []  # fstype, mountpoint, root, super options
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
            mounts.append((rfields[0], Path(_unescape(fields[4])), _unescape(fields[3]), rfields[2]))
    mounts.sort(key=lambda m: not str(m[1]).startswith("/sys/fs/cgroup"))
    found: list[_Hierarchy] = []
    seen: set[frozenset[str]] = set()
    v2: _Hierarchy | None = None
    for fstype, mountpoint, root, options in mounts:
        if fstype == "cgroup":
            ctrls = frozenset(o for o in options.split(",") if o in known)
            if not ctrls or ctrls in seen or ctrls not in v1_paths:
                continue
            seen.add(ctrls)
            found.append(_Hierarchy(1, mountpoint, ctrls, _join(mountpoint, root, v1_paths[ctrls])))
        elif v2 is None and v2_path is not None:
            offered = frozenset(_read(mountpoint / "cgroup.controllers", "").split())
            v2 = _Hierarchy(2, mountpoint, offered, _join(mountpoint, root, v2_path))
    return found + ([v2] if v2 else [])


def _placement(hierarchies: list[_Hierarchy], controller: str) -> _Hierarchy | None:
    for h in hierarchies:
        if controller in h.controllers:
            return h
    return None


def _read(path: Path, default: str | None = None) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        if default is None:
            raise
        return default


def _write(path: Path, text: str) -> None:
    # one write(2) per value: cgroup files take one value per write
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path / "cgroup.procs", os.W_OK)


# --- available --------------------------------------------------------------------------------


def available(limits: Limits) -> str | None:
    """None when every limit asked for can be enforced here; else why not, one line naming the
    flag (for the CLI to print). No side effects."""
    try:
        hierarchies = _hierarchies()
    except OSError as e:
        return f"{_flags(limits)} need cgroups, which cannot be read here ({e.strerror})"
    known = _known_controllers()
    for controller in limits.controllers():
        reason = _unavailable(hierarchies, known, controller)
        if reason:
            return reason
    if limits.cpus is not None:
        count = len(os.sched_getaffinity(0))
        if limits.cpus > count:
            return (f"--cpus: range of CPUs is from 0.01 to {count}.00, as there are only {count} "
                    f"CPUs available")
    return None


def _flags(limits: Limits) -> str:
    return ", ".join(_FLAGS[c] for c in limits.controllers()) or "limits"


def _unavailable(hierarchies: list[_Hierarchy], known: dict[str, tuple[int, bool]],
                 controller: str) -> str | None:
    flag = _FLAGS[controller]
    lead = f"{flag} needs the {controller} cgroup controller, which is not available"
    h = _placement(hierarchies, controller)
    if h is None:
        hid, enabled = known.get(controller, (0, False))
        if controller not in known or not enabled:
            return f"{lead} (the kernel lacks it or has it disabled)"
        if hid != 0:
            return f"{lead} (its cgroup v1 hierarchy is not mounted)"
        if any(x.version == 2 for x in hierarchies):
            return f"{lead} (not delegated to this cgroup v2 tree)"
        return f"{lead} (no cgroup filesystem is mounted)"
    base = h.base
    if h.version == 1:
        if not _writable(base):
            return f"{flag} needs a writable cgroup, but {base} is not ({_why_not_writable(base, 1)})"
        return None
    if not _writable(base):
        return f"{flag} needs a writable cgroup, but {base} is not ({_why_not_writable(base, 2)})"
    offered = set(_read(base / "cgroup.controllers", "").split())
    if controller not in offered and not _can_enable_above(h, controller):
        return f"{lead} ({_NO_DELEGATION})"
    if (controller not in _read(base / "cgroup.subtree_control", "").split()
            and (base / "cgroup.type").exists()  # the real root cgroup has none: it is exempt
            and _own_processes(base) is None
            and (base == h.mountpoint or not _writable(base.parent))):
        # _v2_parent's cases 4 and 5: no parent to go beside, and processes we must not move
        return (f"{flag} needs the {controller} cgroup controller enabled for {base}, which holds "
                f"other processes (cgroup v2 allows controllers only for cgroups without "
                f"processes; run in a cgroup of your own, e.g. a systemd scope)")
    return None


def _why_not_writable(path: Path, version: int) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "the cgroup filesystem is mounted read-only"
    except OSError:
        pass
    return _V1_ROOTLESS if version == 1 else _NO_DELEGATION


def _can_enable_above(h: _Hierarchy, controller: str) -> bool:
    """Whether the ancestors of our cgroup could be made to pass `controller` down: each one
    either passes it already or has a writable cgroup.subtree_control."""
    for directory in _chain(h.mountpoint, h.base.parent):
        if controller in _read(directory / "cgroup.subtree_control", "").split():
            continue
        if not os.access(directory / "cgroup.subtree_control", os.W_OK):
            return False
    return True


def _chain(top: Path, bottom: Path) -> list[Path]:
    """top, ..., bottom (top first); [] when bottom is above top."""
    if bottom != top and top not in bottom.parents:
        return []
    out = [bottom]
    while out[-1] != top:
        out.append(out[-1].parent)
    return out[::-1]


# --- the container's cgroup -------------------------------------------------------------------


@dataclass
class _Dir:
    version: int
    path: Path
    controllers: frozenset[str]  # the limits set here


@dataclass
class Cgroup:
    """One container's cgroup (a directory per hierarchy used). `Cgroup.create` makes it; use it
    as a context manager, or call `remove()`, which kills whatever is left in it."""

    name: str
    limits: Limits
    dirs: list[_Dir] = field(default_factory=list)
    removed: bool = False

    # creating

    @classmethod
    def create(cls, name: str, limits: Limits) -> Cgroup:
        """A new cgroup `buildpy-<name>` under our own with `limits` set. `CgroupError` (user
        facing, naming the flag) when a limit cannot be enforced here."""
        if not name or "/" in name or name in (".", "..") or "\n" in name:
            raise CgroupError(f"invalid cgroup name {name!r}", user_facing=False)
        reason = available(limits)
        if reason:
            raise CgroupError(reason)
        self = cls(name, limits)
        try:
            self._make()
        except BaseException:
            self.remove()
            raise
        return self

    def _make(self) -> None:
        hierarchies = _hierarchies()
        per: dict[_Hierarchy, set[str]] = {}
        for controller in self.limits.controllers():
            h = _placement(hierarchies, controller)
            assert h is not None  # available() said so
            per.setdefault(h, set()).add(controller)
        tracker = next((h for h in hierarchies if h.version == 2), None)
        if tracker is None and not per:
            tracker = next((h for h in hierarchies if "pids" in h.controllers), None)
        if tracker is not None and tracker not in per and _writable(tracker.base):
            per[tracker] = set()  # no limits there; it only tracks (cgroup.kill, cgroup.procs)
        for h, controllers in per.items():
            if h.version == 2:
                with _lock:
                    parent = _v2_parent(h, controllers, self.name)
            else:
                parent = h.base
            path = parent / (_PREFIX + self.name)
            try:
                path.mkdir()
            except FileExistsError:
                raise CgroupError(f"cgroup {path} already exists", user_facing=False) from None
            except OSError as e:
                if not controllers:
                    continue  # only a tracker: do without
                flags = ", ".join(_FLAGS[c] for c in sorted(controllers))
                raise CgroupError(f"{flags}: cannot create cgroup {path}: {e.strerror}") from None
            self.dirs.append(_Dir(h.version, path, frozenset(controllers)))
        for d in self.dirs:
            self._set_limits(d)

    def _set_limits(self, d: _Dir) -> None:
        lim = self.limits
        if "memory" in d.controllers and lim.memory is not None:
            if d.version == 2:
                self._set(d, "memory", "memory.max", str(lim.memory))
                self._set(d, "memory", "memory.swap.max", "0", optional=True)
            else:
                self._set(d, "memory", "memory.limit_in_bytes", str(lim.memory))
                # memory+swap = memory: no swap on top (the limit must be written first)
                self._set(d, "memory", "memory.memsw.limit_in_bytes", str(lim.memory), optional=True)
        if "cpu" in d.controllers and lim.cpus is not None:
            quota = max(1000, round(lim.cpus * CPU_PERIOD))  # the kernel's minimum quota is 1 ms
            if d.version == 2:
                self._set(d, "cpu", "cpu.max", f"{quota} {CPU_PERIOD}")
            else:
                self._set(d, "cpu", "cpu.cfs_period_us", str(CPU_PERIOD))
                self._set(d, "cpu", "cpu.cfs_quota_us", str(quota))
        if "pids" in d.controllers and lim.pids is not None:
            self._set(d, "pids", "pids.max", str(lim.pids))

    def _set(self, d: _Dir, controller: str, filename: str, value: str, optional: bool = False) -> None:
        path = d.path / filename
        if optional and not path.exists():
            return
        try:
            _write(path, value)
        except OSError as e:
            raise CgroupError(f"{_FLAGS[controller]}: cannot set {filename} to {value} in {d.path}: "
                              f"{e.strerror}") from None

    # using

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into the cgroup, in every hierarchy."""
        for d in self.dirs:
            try:
                _write(d.path / "cgroup.procs", str(pid))
            except OSError as e:
                raise CgroupError(f"cannot move process {pid} into cgroup {d.path}: {e.strerror}",
                                  user_facing=False) from None

    def pids(self) -> list[int]:
        """The processes in the cgroup (and cgroups below it), in any hierarchy."""
        found: set[int] = set()
        for d in self.dirs:
            found.update(_procs_below(d.path))
        return sorted(found)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process here for going over the memory limit."""
        for d in self.dirs:
            if "memory" not in d.controllers:
                continue
            if d.version == 2:
                events = _keyed(_read(d.path / "memory.events", ""))
                if events.get("oom_kill", 0) > 0:
                    return True
                continue
            control = _keyed(_read(d.path / "memory.oom_control", ""))
            if "oom_kill" in control:  # kernel >= 4.13
                if control["oom_kill"] > 0:
                    return True
                continue
            # older kernels: no counter; hitting memory+swap (no swap allowed) means the OOM killer
            if control.get("under_oom", 0) > 0:
                return True
            fails = _read(d.path / "memory.memsw.failcnt", "") or _read(d.path / "memory.failcnt", "0")
            if int(fails or 0) > 0:
                return True
        return False

    def describe(self) -> str:
        """"memory=64MiB cpus=0.5 pids=32", for `ps`."""
        return self.limits.describe()

    @property
    def paths(self) -> list[Path]:
        return [d.path for d in self.dirs]

    # removing

    def remove(self, timeout: float = _KILL_TIMEOUT) -> None:
        """SIGKILL everything left in the cgroup (cgroup.kill where present), wait until it is
        empty, and remove its directories. Does nothing for directories already gone."""
        deadline = time.monotonic() + timeout
        self._kill_all(deadline)
        for d in self.dirs:
            _rmdir_tree(d.path, deadline)
        self.removed = True

    def _kill_all(self, deadline: float) -> None:
        for d in self.dirs:
            if d.version == 2 and (d.path / "cgroup.kill").exists():
                try:
                    _write(d.path / "cgroup.kill", "1")
                except FileNotFoundError:
                    pass
                except OSError:
                    break  # fall back to signals
        delay = 0.001
        while True:
            left = self.pids()
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise CgroupError(f"processes {left} in cgroup {self.paths} did not die",
                                  user_facing=False)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def __enter__(self) -> Cgroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()


def _keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


def _procs_below(path: Path) -> set[int]:
    found: set[int] = set()
    for directory, _, _ in os.walk(path):
        try:
            text = Path(directory, "cgroup.procs").read_text()
        except OSError:
            continue
        found.update(int(p) for p in text.split())
    return found


def _rmdir_tree(path: Path, deadline: float) -> None:
    """rmdir path and any cgroups below it, deepest first; retry EBUSY (processes still exiting)."""
    dirs = [Path(d) for d, _, _ in os.walk(path, topdown=False)]
    for directory in dirs:
        delay = 0.001
        while True:
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove cgroup {directory}: {e.strerror}",
                                      user_facing=False) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)


# --- cgroup v2: where the container's cgroup can go ---------------------------------------------
#
# The v2 "no internal processes" rule: a cgroup other than the root cannot both hold processes and
# pass domain controllers (memory, cpu, pids) to its children (writing +memory to its
# cgroup.subtree_control fails with EBUSY, and moving a process into such a cgroup too). We are in
# a cgroup that holds at least us, so for `<our cgroup>/buildpy-<name>` to get controllers:
#
# 1. they are already in our cgroup.subtree_control (we are in the root cgroup): nothing to do;
# 2. enabling them works (our cgroup has no other processes: the root of the hierarchy, or only
#    threads were there): done;
# 3. our cgroup holds only us and our own descendants (the fork server): we move them into a leaf
#    `<our cgroup>/buildpy-supervisor` and then enable the controllers. This is what podman does
#    (MaybeMoveToSubCgroup/MoveUnderCgroupSubtree moves its processes into an "init" sub-cgroup
#    when in the root cgroup on v2), what docker's dind and kind entrypoints do (move everything
#    to /init, then write subtree_control), and what systemd asks of a delegated manager
#    (CGROUP_DELEGATION: put your own processes in a leaf; DelegateSubgroup= does it for you).
#    runc itself just enables controllers in every ancestor of the path it is given and fails if
#    one holds processes, leaving the layout to its caller - us. The container then stays under
#    our cgroup, so limits on our cgroup (a CI job's, a systemd unit's) still cover it.
# 4. our cgroup holds processes that are not ours (a login shell's session scope, the CI runner's
#    service): we must not move them, so the container goes beside us, under our parent, whose
#    subtree_control already passes the controllers to our cgroup (hence to a sibling too).
# 5. otherwise (a cgroup namespace's root shared with other processes): a user-facing error.


def _v2_parent(h: _Hierarchy, controllers: set[str], name: str) -> Path:
    base = h.base
    if not controllers:
        return base  # tracking only: no controllers, no rule
    needed = sorted(controllers)
    for directory in _chain(h.mountpoint, base.parent):
        _enable(directory, needed)  # best effort: the ancestors must pass them down to us
    offered = set(_read(base / "cgroup.controllers", "").split())
    missing = [c for c in needed if c not in offered]
    if missing:
        raise CgroupError(_unavailable_v2(missing))
    if _enable(base, needed):
        return base
    ours = _own_processes(base)
    if ours is not None:
        leaf = base / SUPERVISOR
        leaf.mkdir(exist_ok=True)
        for pid in ours:
            try:
                _write(leaf / "cgroup.procs", str(pid))
            except ProcessLookupError:
                pass
            except OSError as e:
                raise CgroupError(f"cannot move process {pid} into {leaf}: {e.strerror}",
                                  user_facing=False) from None
        if _enable(base, needed):
            return base
    parent = base.parent
    if base != h.mountpoint and h.mountpoint in base.parents and _writable(parent):
        return parent
    flags = ", ".join(_FLAGS[c] for c in needed)
    raise CgroupError(f"{flags}: cannot enable the {' '.join(needed)} cgroup controllers under {base}: "
                      f"it holds other processes (cgroup v2 allows controllers only for cgroups "
                      f"without processes; run in a cgroup of your own, e.g. a systemd scope)")


def _unavailable_v2(missing: list[str]) -> str:
    c = missing[0]
    return f"{_FLAGS[c]} needs the {c} cgroup controller, which is not available ({_NO_DELEGATION})"


def _enable(directory: Path, controllers: list[str]) -> bool:
    """Write +c to directory's cgroup.subtree_control for each c missing there; whether all are
    enabled afterwards."""
    control = directory / "cgroup.subtree_control"
    for c in controllers:
        if c in _read(control, "").split():
            continue
        try:
            _write(control, f"+{c}")
        except OSError:
            pass
    enabled = set(_read(control, "").split())
    return all(c in enabled for c in controllers)


def _own_processes(directory: Path) -> list[int] | None:
    """The processes in `directory` when all are this process or its descendants, else None."""
    me = os.getpid()
    try:
        procs = [int(p) for p in _read(directory / "cgroup.procs").split()]
    except OSError:
        return None
    for pid in procs:
        if not _descends_from(pid, me):
            return None
    return procs


def _descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True  # gone: it does not count against us
        pid = int(stat.rpartition(")")[2].split()[1])
    return False
