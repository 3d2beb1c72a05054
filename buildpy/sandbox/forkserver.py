"""Starting the sandbox's child process, from the parent's side: through the fork server (a fresh
interpreter, started once per parent process, that forks a child per run: no interpreter start
and no imports per step), or directly as a fresh interpreter per run.

Either way the parent process itself never forks: it may have threads. The server is a
single-threaded interpreter that only ever forks; it exits when the parent closes its end of the
control socket, including when the parent dies. Both ways hand back the child's pid and a pidfd
(so a later kill cannot hit a recycled pid).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# -I: no environment, no user site, no cwd on the path; -S: no site (its .pth files cost ~10 ms);
# the package's own root is put on the path explicitly instead.
_BOOT = (f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); "
         "from buildpy.sandbox.child import main; main()")


class Child:
    """A started child: pid, pidfd, and the Popen when we started it directly (to reap it)."""

    def __init__(self, pid: int, pidfd: int | None, popen: subprocess.Popen | None = None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.popen = popen

    def wait(self, timeout: float | None = None) -> bool:
        """True once the child has exited (within `timeout`)."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        if self.pidfd is None:
            return True
        import select

        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else int(timeout * 1000)))

    def kill(self) -> None:
        import signal

        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif self.popen is not None:
            self.popen.kill()

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _interpreter(*args: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", _BOOT, *args]


def start_direct(run_sock: int, stdio: tuple[int, int, int]) -> Child:
    popen = subprocess.Popen(_interpreter(str(run_sock)), stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
                             pass_fds=(run_sock,), start_new_session=True, env={}, cwd="/")
    return Child(popen.pid, os.pidfd_open(popen.pid), popen)


class _Server:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # No stdio of ours: a pipe the caller waits on must not stay open in the server
            # (each child gets the run's stdio with the request).
            self.popen = subprocess.Popen(_interpreter("--serve", str(theirs.fileno())),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                                          start_new_session=True, env={}, cwd="/")
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.owner = (os.getpid(), os.geteuid(), os.getegid())

    def request(self, fds: list[int]) -> Child:
        socket.send_fds(self.sock, [b"R"], fds)
        msg, pidfds, _flags, _addr = socket.recv_fds(self.sock, 16, 1)
        if len(msg) != 4:
            raise ConnectionError("the sandbox fork server went away")
        return Child(int.from_bytes(msg, "little"), pidfds[0] if pidfds else None)

    def close(self) -> None:
        self.sock.close()  # the server exits on EOF
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


_server: _Server | None = None
_lock = threading.Lock()


def start_forked(run_sock: int, stdio: tuple[int, int, int]) -> Child:
    """A child forked by this process's fork server (started on first use, and again when it
    died, or when this process forked or changed its ids since)."""
    global _server
    with _lock:
        for attempt in (0, 1):
            if _server is None or _server.owner != (os.getpid(), os.geteuid(), os.getegid()):
                _server = _Server()
                _at_exit()
            server = _server
            try:
                return server.request([run_sock, *stdio])
            except BaseException as e:
                # Interrupted or failed half-way, the server may still send a reply nobody
                # reads: never use it again (it exits when its socket closes).
                _server = None
                try:
                    server.close()
                except OSError:
                    pass
                if attempt or not isinstance(e, OSError):  # ConnectionError is an OSError
                    raise
    raise AssertionError("unreachable")


def prestart() -> None:
    """Start the fork server now, without waiting for it: its interpreter boots while the
    caller does other work (a build plans), and the first step finds it ready."""
    global _server
    with _lock:
        if _server is None or _server.owner != (os.getpid(), os.geteuid(), os.getegid()):
            _server = _Server()
            _at_exit()


_registered = False


def _at_exit() -> None:
    global _registered
    if not _registered:
        atexit.register(shutdown)
        _registered = True


def shutdown() -> None:
    """Stop the fork server (tests; it also ends by itself when this process exits)."""
    global _server
    with _lock:
        if _server is not None:
            _server.close()
            _server = None
