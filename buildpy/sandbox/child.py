"""The sandbox's child, never a fork of the parent (which may have threads): forked by the fork
server (`serve`, a fresh interpreter started once by forkserver.py) or started as a fresh
interpreter itself (`child FD`). It reads the spec from its socket, and

1. unshares the user, ipc, uts, pid, mount (and with network none, net) namespaces, gets its id
   maps (written by itself, or by the parent from outside, synchronised over the socket), sets the
   hostname and brings loopback up;
2. prepares the root (overlay, mount points: rootfs.prepare_root);
3. forks the init, PID 1 of the new pid namespace (init.py), and waits for it, killing it when the
   parent says so ("K") or goes away (EOF): PID 1's death takes every process of the namespace
   with it;
4. removes what it put in the rootfs, reports {"exit": status} and exits.

Protocol on the socket: the parent sends the spec, then single bytes ("M": ids mapped, "K": kill);
the child, init and step send length-prefixed marshal dicts: {"op": "unshared"} (map me now),
{"error": text, "user_facing": bool}, {"exit": status}.

Start-up time is the sandbox's overhead: interpreters run as `python -I -S -c` with an explicit
path to this package, and the child's modules import little more than os, marshal, select and
ctypes. `python -m buildpy.sandbox.child FD` works too, for debugging.
"""

from __future__ import annotations

import marshal
import os
import sys

EXIT_SETUP = 125  # as docker run: the sandbox, not the step, failed


def send(fd: int, msg: dict) -> None:
    data = marshal.dumps(msg)
    os.write(fd, len(data).to_bytes(4, "little") + data)


def recv_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def recv(fd: int) -> dict:
    return marshal.loads(recv_exact(fd, int.from_bytes(recv_exact(fd, 4), "little")))


def report(fd: int, exc: BaseException) -> None:
    """Tell the parent why the sandbox failed: one line for the user's mistakes, the type and
    message for ours."""
    if getattr(exc, "user_facing", False):
        msg = {"error": str(exc), "user_facing": True}
    else:
        msg = {"error": f"{type(exc).__name__}: {exc}", "user_facing": False}
    try:
        send(fd, msg)
    except OSError:
        pass


def _map_ids(spec: dict, sock: int) -> None:
    if spec["idmode"] == "self":
        # An unprivileged process may map only its own id, and only after giving up setgroups.
        for name, text in (("setgroups", "deny"), ("uid_map", spec["uid_map"]), ("gid_map", spec["gid_map"])):
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        return
    send(sock, {"op": "unshared"})
    if os.read(sock, 1) != b"M":
        os._exit(EXIT_SETUP)


def _wait_init(pid: int, sock: int) -> int:
    """Wait for the init, killing it when the parent asks or disappears."""
    import select

    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(sock, select.POLLIN)
    killed = False
    while True:
        ready = [fd for fd, _ in poller.poll()]
        if pidfd in ready:
            break
        if sock in ready and not killed:
            os.read(sock, 1)  # "K", or b"" when the parent is gone: either way, end it all
            os.kill(pid, 9)
            killed = True
            poller.unregister(sock)
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if not killed else 128 + 9


def run_child(sock: int) -> None:
    """Everything the child does for one run; never returns."""
    import gc

    # A short life: no collection needed, and none touching (so copying) the pages shared with
    # the fork server.
    gc.disable()
    try:
        _run_child(sock)
    finally:
        os._exit(EXIT_SETUP)


def _run_child(sock: int) -> None:
    os.set_inheritable(sock, False)  # the step's exec closes it: only our processes report
    try:
        spec = recv(sock)
    except EOFError:
        os._exit(EXIT_SETUP)
    os.umask(0o022)
    try:
        from buildpy.sandbox import rootfs, syscalls as sc

        flags = sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS | sc.CLONE_NEWPID
        if spec["network"] == "none":
            flags |= sc.CLONE_NEWNET
        sc.unshare(flags)
        _map_ids(spec, sock)
        sc.sethostname(spec["hostname"])
        if spec["network"] == "none":
            sc.loopback_up()
        stubs = rootfs.prepare_root(spec)
        # The init's way to see whether we are still there: EOF on this pipe (getppid() is 0 in
        # a new pid namespace whoever the parent is).
        alive_r, alive_w = os.pipe()
        pid = os.fork()
    except BaseException as e:
        report(sock, e)
        os._exit(EXIT_SETUP)
    if pid == 0:
        from buildpy.sandbox import init

        os.close(alive_w)
        init.main(spec, sock, alive_r)  # never returns
    os.close(alive_r)
    code = _wait_init(pid, sock)
    try:
        if stubs:
            rootfs.remove_stubs(spec["rootfs"], stubs)
        # Unmount here, not when this process's mount namespace dies: the caller reads the
        # upper dir as soon as we report.
        if spec["overlay"] is not None:
            sc.umount2(spec["rootfs"], sc.MNT_DETACH)
    except BaseException as e:
        report(sock, e)
        os._exit(EXIT_SETUP)
    try:
        send(sock, {"exit": code})
    except OSError:
        pass
    os._exit(0)


def serve(control: int) -> None:
    """The fork server: a fresh single-threaded interpreter with the child's modules imported,
    forking one child per request instead of paying an interpreter start per step. A request
    is a SEQPACKET message on `control` carrying four fds: the run's socket, stdin, stdout,
    stderr; the reply is the child's pid and a pidfd for it. Ends when the parent closes
    `control` (or dies)."""
    import _signal
    import gc
    import hashlib  # noqa: F401  (preloaded for rootfs's stub layers)
    import select  # noqa: F401  (preloaded for _wait_init)
    import socket

    from buildpy.sandbox import init, privileges, rootfs, syscalls, users  # noqa: F401  (preloaded)

    # What is loaded now is shared with every child: keep the collector off those pages.
    gc.freeze()

    ctl = socket.socket(fileno=control)
    # Children are reaped by the kernel; they report their status on their own socket.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
    while True:
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(ctl, 16, 4)
        except OSError:
            os._exit(0)
        if len(fds) != 4:
            os._exit(0)  # EOF (the parent is gone) or a malformed request
        pid = os.fork()
        if pid == 0:
            try:
                _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                ctl.close()
                os.setsid()
                for target, fd in enumerate(fds[1:]):
                    os.dup2(fd, target)
                for fd in fds[1:]:
                    if fd > 2:
                        os.close(fd)
                run_child(fds[0])
            finally:
                os._exit(EXIT_SETUP)
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
        try:
            socket.send_fds(ctl, [pid.to_bytes(4, "little")], [pidfd] if pidfd is not None else [])
        except OSError:
            os._exit(0)
        finally:
            if pidfd is not None:
                os.close(pidfd)


def main(argv: list[str] | None = None) -> None:
    """`child FD` runs one child; `child --serve FD` is the fork server."""
    args = (argv or sys.argv)[1:]
    if args[:1] == ["--serve"]:
        serve(int(args[1]))
    else:
        run_child(int(args[0]))


if __name__ == "__main__":
    main()
