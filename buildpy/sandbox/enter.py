"""`docker exec`'s process: a fresh interpreter (`python -I -S -c ...`, or `python -m
buildpy.sandbox.enter FD`) that joins a running container's namespaces and cgroups and starts a
command there as the container's step is started (init.become).

The spec is JSON on the fd given as the only argument: {"pid": the container's step on the host,
"args", "env" (the container's, then the exec's: later wins), "cwd", "user", "terminal",
"seccomp" (hex of the BPF), "insecure", "idmode", "cgroups": [cgroup dirs to join]}. stdio are the
exec's own (pipes, or a pty's slave with "terminal").

Order matters: every /proc/PID/ns/* is opened and the cgroups are joined while this process still
sees the host's /proc and /sys; then setns, the user namespace first (it grants the capabilities
the others need, as in runc's nsexec), the mount namespace making the container's root ours. The
pid namespace applies to children only: the command runs in a child, which this process waits for,
forwarding signals, and whose status it exits with (128+n for a signal). A command that cannot
start (no such user, working directory or executable) exits 126, or 127 when not found, with one
line on stderr, as docker.
"""

from __future__ import annotations

import _signal
import ctypes
import json
import os
import sys
from dataclasses import dataclass

from buildpy.sandbox import init, syscalls as sc, users

# user first: joining it gives the capabilities the other namespaces ask for
NAMESPACES = ("user", "mnt", "pid", "uts", "ipc", "net", "cgroup")
FORWARDED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGWINCH)
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127

_libc = ctypes.CDLL(None, use_errno=True)
_setns = _libc.setns
_setns.argtypes = (ctypes.c_int, ctypes.c_int)


class EnterError(Exception):
    user_facing = True


@dataclass(frozen=True)
class ExecProcess:
    args: tuple[str, ...]
    env: tuple[str, ...]  # the container's, then the exec's: later wins
    cwd: str
    user: str
    terminal: bool


_BOOT = ("import sys; sys.path.insert(0, {root!r}); from buildpy.sandbox.enter import main; main()")


def spawn(pid: int, process: ExecProcess, cgroups: tuple[str, ...], stdio: tuple[int, int, int]):  # noqa: ANN201
    """The exec's process (a subprocess.Popen) started into the container whose step is host
    `pid`, with the same seccomp filter and capabilities as the step, on `stdio`."""
    import subprocess
    from pathlib import Path

    from buildpy.sandbox.privileges import seccomp_bpf
    from buildpy.sandbox.run import id_maps

    spec = {"pid": pid, "args": list(process.args), "env": list(process.env), "cwd": process.cwd,
            "user": process.user, "terminal": process.terminal, "seccomp": seccomp_bpf().hex(),
            "insecure": False, "idmode": id_maps().mode, "cgroups": list(cgroups)}
    boot = _BOOT.format(root=str(Path(__file__).resolve().parents[2]))
    r, w = os.pipe()
    try:
        # a fresh interpreter, never a fork of a threaded server; the spec on a pipe of its own
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", boot, str(r)], stdin=stdio[0], stdout=stdio[1],
                                stderr=stdio[2], pass_fds=(r,), start_new_session=True, env={}, cwd="/")
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    try:
        with open(w, "wb") as f:
            f.write(json.dumps(spec).encode())
    except OSError:
        pass  # it died before reading: its status says so
    return proc


def setns(fd: int, name: str) -> None:
    if _setns(fd, 0) != 0:
        err = ctypes.get_errno()
        raise EnterError(f"cannot join the container's {name} namespace: {os.strerror(err)}")


def _open_namespaces(pid: int) -> list[tuple[str, int]]:
    """The container's namespaces that differ from ours, opened (in NAMESPACES' order)."""
    out = []
    for name in NAMESPACES:
        try:
            theirs = os.stat(f"/proc/{pid}/ns/{name}")
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}"):
                raise EnterError("the container's process is gone (it is not running)") from None
            continue  # a namespace type this kernel lacks
        mine = os.stat(f"/proc/self/ns/{name}")
        if (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino):
            continue
        out.append((name, os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)))
    return out


def _join_cgroups(paths: list[str]) -> None:
    """Into the container's cgroups (before the fork: the command is born there), so its limits
    hold for the exec too."""
    for path in paths:
        try:
            with open(os.path.join(path, "cgroup.procs"), "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
        except OSError as e:
            raise EnterError(f"cannot join the container's cgroup {path}: {e.strerror}") from None


def _fail(e: BaseException) -> None:
    """One line on stderr and docker's exit code; never returns."""
    text = str(e) if getattr(e, "user_facing", False) else f"{type(e).__name__}: {e}"
    code = EXIT_NOT_FOUND if "executable file not found" in text else EXIT_CANNOT_RUN
    try:
        os.write(2, f"exec failed: {text}\n".encode(errors="replace"))
    finally:
        os._exit(code)


def _start(spec: dict) -> None:
    """In the container (child of the pid namespace): resolve user, env, cwd; become the command."""
    user = users.lookup("/", spec["user"])
    env = init._environment(list(spec["env"]), user)
    cwd = os.path.normpath("/" + (spec["cwd"] or "/"))
    if not os.path.isdir(cwd):
        raise init.StepError(f'chdir to cwd ("{spec["cwd"]}"): no such directory')
    if not spec["args"]:
        raise init.StepError("no command to run")
    init.become(list(spec["args"]), env, user, cwd, user_text=spec["user"], terminal=bool(spec["terminal"]),
                insecure=bool(spec["insecure"]), idmode=spec["idmode"], seccomp=bytes.fromhex(spec["seccomp"]))


def _wait(child: int) -> int:
    init.forward_signals(child, FORWARDED)
    while True:
        try:
            _, status = os.waitpid(child, 0)
        except InterruptedError:
            continue
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code


def enter(spec: dict) -> None:
    """Everything; never returns."""
    try:
        # No PR_SET_PDEATHSIG: it fires when the thread that started us ends (a request's), not
        # the server; the command dies with the container's pid namespace instead.
        # while root here and not yet the command: no process of the container may ptrace us
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        namespaces = _open_namespaces(int(spec["pid"]))
        _join_cgroups(list(spec.get("cgroups") or []))
        for name, fd in namespaces:
            setns(fd, name)
            os.close(fd)
        os.chdir("/")  # joining the mount namespace made its root ours; the cwd follows
        init.seal_imports()
        os.umask(0o022)
        pid = os.fork()
    except BaseException as e:
        _fail(e)
    if pid == 0:
        try:
            _start(spec)
        except BaseException as e:
            _fail(e)
    os._exit(_wait(pid))


def main(argv: list[str] | None = None) -> None:
    args = (argv or sys.argv)[1:]
    try:
        if len(args) != 1 or not args[0].isdigit():
            raise EnterError("usage: enter FD (a JSON spec on fd FD)")
        with os.fdopen(int(args[0]), "rb") as f:
            spec = json.loads(f.read())
        if not isinstance(spec, dict):
            raise EnterError("the spec is not a JSON object")
    except (OSError, ValueError, EnterError) as e:
        _fail(e)
    enter(spec)


if __name__ == "__main__":
    main()
