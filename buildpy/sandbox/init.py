"""PID 1 of the sandbox's pid namespace, and the start of the step's process.

The init enters the root (rootfs.enter_root), resolves USER and the working directory, forks the
step and then only forwards signals to it and reaps zombies; when the step ends, the init exits
with its status (128+n for a signal, as docker) and the kernel kills whatever the step left behind.
It keeps its capabilities but is not dumpable, so the step cannot ptrace it or read its /proc.

The step's process, between fork and exec (`become`, shared with `docker exec`'s enter.py):
session, groups, gid, uid, capabilities (Docker's default set), no_new_privs, seccomp, then
execvpe with the PATH of its own environment.
"""

from __future__ import annotations

import _signal  # `signal` would import enum and friends: milliseconds on every step
import fcntl  # here, not where it is used: after pivot_root the interpreter's library is gone
import os

TIOCSCTTY = 0x540E  # <asm-generic/ioctls.h>

from buildpy.sandbox import privileges, rootfs, syscalls as sc, users
from buildpy.sandbox.child import EXIT_SETUP, report

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDED = (_signal.SIGHUP, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGTERM, _signal.SIGUSR1,
             _signal.SIGUSR2, _signal.SIGWINCH, _signal.SIGCONT)


def seal_imports() -> None:
    """From here on this interpreter imports nothing from files: called once the process stands
    in a container's root, where every path on sys.path is the image's to fill. A module the
    code forgot to load before would otherwise be read from the image and run with our
    privileges; sealed, such a slip is an ImportError instead. Built-in and frozen modules stay."""
    import sys

    sys.path.clear()
    sys.path_importer_cache.clear()
    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__name__", "") in ("BuiltinImporter", "FrozenImporter")]
    sys.path_hooks.clear()


class StepError(Exception):
    """The step cannot start for a reason the user controls (USER, cwd, executable)."""

    user_facing = True


def _environment(env: list[str], user: users.ExecUser) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        out[key] = value
    out.setdefault("PATH", DEFAULT_PATH)
    out.setdefault("HOME", user.home or "/")
    return out


def _make_cwd(cwd: str) -> str:
    """The working directory, made (owned by root, 0755) when missing, as runc does."""
    path = os.path.normpath("/" + cwd)
    try:
        os.makedirs(path, 0o755, exist_ok=True)
    except FileExistsError:
        raise StepError(f"working directory {cwd}: not a directory") from None
    except OSError as e:
        raise StepError(f"working directory {cwd}: {e.strerror}") from None
    if not os.path.isdir(path):
        raise StepError(f"working directory {cwd}: not a directory")
    return path


def _exec_step(spec: dict, user: users.ExecUser, env: dict[str, str], cwd: str, sock: int) -> None:
    proc = spec["process"]
    try:
        become(proc["args"], env, user, cwd, user_text=proc["user"], terminal=bool(proc.get("terminal")),
               insecure=spec["insecure"], idmode=spec["idmode"], seccomp=spec["seccomp"])
    except BaseException as e:
        report(sock, e)
        os._exit(EXIT_SETUP)


def become(args: list[str], env: dict[str, str], user: users.ExecUser, cwd: str, *, user_text: str,
           terminal: bool, insecure: bool, idmode: str, seccomp: bytes) -> None:
    """Between fork and exec, in the container's namespaces and root: a session (with the pty on
    fd 0 as its terminal), default signals, capabilities, groups, gid, cwd, uid, no_new_privs,
    seccomp, exec. The container's step and `docker exec` (enter.py) both start this way. Never
    returns; raises StepError (or OSError) when the process cannot start."""
    os.setsid()
    if terminal:
        fcntl.ioctl(0, TIOCSCTTY, 0)  # the pty on fd 0 becomes the session's terminal
    # Python ignores these at start-up and ignored signals stay ignored across exec.
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_DFL)
    if not insecure:
        privileges.drop_capabilities(user.uid)
    if idmode != "self":  # setgroups is denied to a namespace that mapped itself
        os.setgroups(list(user.groups))
    try:
        os.setresgid(user.gid, user.gid, user.gid)
        os.chdir(cwd)  # before giving up root: runc too lets root enter the directory
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as e:
        if e.errno == 22:
            raise StepError(f"user {user_text or '0'}: uid {user.uid} or gid {user.gid} has no "
                            "mapping here (rootless without a subuid/subgid range maps only "
                            "root)") from None
        raise
    if not insecure:
        privileges.no_new_privs()
        privileges.load_seccomp(seccomp)
    _execvpe(args, env)


def _execvpe(args: list[str], env: dict[str, str]) -> None:
    """execvp with the PATH of the step's environment. Not os.execvpe: it imports a module, and
    the interpreter's library is not inside the container."""
    name = args[0]
    dirs = [""] if "/" in name else env.get("PATH", DEFAULT_PATH).split(":")
    denied = None
    for d in dirs:
        path = name if not d and "/" in name else f"{d or '.'}/{name}"
        try:
            os.execve(path, args, env)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as e:
            denied = e
    if denied is not None:
        raise StepError(f'exec: "{name}": permission denied')
    raise StepError(f'exec: "{name}": executable file not found in $PATH')


def main(spec: dict, sock: int, parent_alive: int) -> None:
    """The init: never returns. `parent_alive`: a pipe the child holds open while it lives."""
    try:
        # If the child dies (killed by its parent), so does the init, and so the namespace; if it
        # died before the prctl, the pipe says so.
        sc.prctl(sc.PR_SET_PDEATHSIG, 9)
        os.set_blocking(parent_alive, False)
        try:
            if os.read(parent_alive, 1) == b"":
                os._exit(EXIT_SETUP)
        except BlockingIOError:
            pass
        os.close(parent_alive)
        # A mount namespace of our own: pivot_root must not move the child's root too.
        sc.unshare(sc.CLONE_NEWNS)
        rootfs.enter_root(spec)
        seal_imports()
        proc = spec["process"]
        user = users.lookup("/", proc["user"])
        env = _environment(proc["env"], user)
        cwd = _make_cwd(proc["cwd"])
        if not proc["args"]:
            raise StepError("no command to run")
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        pid = os.fork()
    except BaseException as e:
        report(sock, e)
        os._exit(EXIT_SETUP)
    if pid == 0:
        _exec_step(spec, user, env, cwd, sock)
    os._exit(_reap(pid))


def forward_signals(to: int, signals: tuple[int, ...] = FORWARDED) -> None:
    """The signals this process gets go on to process `to` (the step, or an exec's command)."""

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(to, signum)
        except ProcessLookupError:
            pass

    for sig in signals:
        _signal.signal(sig, forward)


def _reap(step: int) -> int:
    """Forward signals to the step and reap every child until the step is gone; its exit code."""
    forward_signals(step)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return EXIT_SETUP
        if pid == step:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code
