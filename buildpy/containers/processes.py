"""A running container's processes as `docker top` shows them: every process of its pid
namespace but the sandbox's own init, with host pids, read from /proc (`ps -ef`'s columns), or
the host's `ps` with the caller's arguments, its rows kept for the container's pids."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from buildpy.containers.state import ContainerError

TITLES = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]


def pids_of(step: int) -> list[int]:
    """The host pids of the processes sharing `step`'s pid namespace, less its parent (the
    sandbox's init, which docker's containers do not have)."""
    try:
        ns = os.readlink(f"/proc/{step}/ns/pid")
    except OSError:
        return []
    init = _stat_fields(step)[1] if _stat_fields(step) else 0
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == init:
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                out.append(int(entry))
        except OSError:
            continue  # gone, or a kernel thread
    return sorted(out)


def top(step: int, ps_args: str = "") -> tuple[list[str], list[list[str]]]:
    """(titles, rows) for the container whose main process is `step`."""
    pids = pids_of(step)
    if ps_args.strip():
        return _with_ps(pids, ps_args)
    return TITLES, [row for pid in pids if (row := _row(pid)) is not None]


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, … (empty if the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    return text[text.rindex(")") + 2:].split()


def _row(pid: int) -> list[str] | None:
    fields = _stat_fields(pid)
    if not fields:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        uid = int(next(line.split()[1] for line in open(f"/proc/{pid}/status", encoding="utf-8")
                       if line.startswith("Uid:")))
    except (OSError, StopIteration, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) // ticks
    with open("/proc/uptime", encoding="ascii") as f:
        uptime = float(f.read().split()[0])
    started = time.time() - uptime + int(fields[19]) / ticks
    elapsed = max(time.time() - started, 1e-9)
    if argv:
        cmd = " ".join(argv)
    else:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            cmd = f"[{f.read().strip()}]"
    return [_user(uid), str(pid), fields[1], str(int(100 * cpu / elapsed)), time.strftime("%H:%M", time.localtime(started)),
            _tty(int(fields[4])), f"{cpu // 3600:02d}:{cpu // 60 % 60:02d}:{cpu % 60:02d}", cmd]


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name  # the host's name, as the host's ps shows it
    except KeyError:
        return str(uid)


def _tty(nr: int) -> str:
    if nr == 0:
        return "?"
    major, minor = os.major(nr), os.minor(nr)
    if 136 <= major <= 143:
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4:
        return f"tty{minor}"
    return "?"


def _with_ps(pids: list[int], ps_args: str) -> tuple[list[str], list[list[str]]]:
    """As dockerd: the host's `ps` with the arguments, its rows kept where the PID column is
    one of the container's."""
    import shlex

    ps = shutil.which("ps")
    if ps is None:
        raise ContainerError("ps_args needs the host's ps, which is not installed")
    try:
        args = shlex.split(ps_args)
    except ValueError as e:
        raise ContainerError(f"invalid ps_args {ps_args!r}: {e}") from None
    r = subprocess.run([ps, *args], capture_output=True, text=True, errors="replace", timeout=60)
    if r.returncode != 0:
        raise ContainerError(f"ps {ps_args}: {r.stderr.strip() or f'exit status {r.returncode}'}")
    lines = r.stdout.splitlines()
    if not lines:
        return [], []
    titles = lines[0].split()
    if "PID" not in titles:
        raise ContainerError("Couldn't find PID field in ps output")
    col = titles.index("PID")
    wanted = {str(p) for p in pids}
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) > col and fields[col] in wanted:
            rows.append(fields)
    return titles, rows
