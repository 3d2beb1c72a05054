"""`run(spec)`: one process in a fresh sandbox, its exit status back (128+n when a signal killed
it, as docker); `SandboxError` when the sandbox could not run it. The public entry of the
sandbox; namespaces and mounts are child.py's, init.py's and rootfs.py's, privileges
privileges.py's, id maps idmap.py's, starting the child forkserver.py's.

Processes: this (possibly threaded) process never forks. A fork server (a fresh, single-threaded
interpreter started once) forks the child, or with `use_forkserver = False` subprocess starts a
fresh interpreter per run; the child unshares the namespaces and forks the init, PID 1 of the new
pid namespace, which forks the step. Ctrl-C (KeyboardInterrupt here), `spec.timeout` or any
exception in here kills the init, and with it every process of the namespace, before `run`
returns or raises.

Mount points: with `spec.overlay`, the upper dir receives exactly the step's change. Mount points
the image lacks (/proc, /dev, /sys, /etc/hosts, /etc/resolv.conf, /etc/hostname, RUN mount
targets) go to a *stub layer*: an extra topmost lower dir holding only them, under copies of
their existing parent dirs (same mode, owner, times), never to the upper dir; stub layers are
cached per lowers and mount points in this process's temp dir (removed at exit). Without an
overlay they are made in the rootfs and removed after the step (when still empty; their parents
get their times back). Either way the diff needs no list of them.

For the diff: the upper dir's files carry host ids (`idmap.for_current_user().to_container`, or
its ranges as /proc/PID/uid_map lines, map them back). Overlays are mounted with `userxattr` (a
user namespace cannot use trusted.* xattrs), so opaque dirs are marked `user.overlay.opaque=y`,
whiteouts are 0:0 character devices, and lowers must mark theirs the same way. With
`Overlay.volatile` (the default) nothing is synced: fsync the upper dir to keep it.

/etc/hosts (localhost, the hostname, spec.extra_hosts), /etc/resolv.conf (the host's; with a
private network without its loopback nameservers, Docker's defaults when none remain) and
/etc/hostname are read-only bind mounts of files in this process's temp dir, as BuildKit
supplies them, unless spec.mounts has that target.
"""

from __future__ import annotations

import atexit
import hashlib
import ipaddress
import marshal
import os
import selectors
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from buildpy.sandbox import forkserver, idmap
from buildpy.sandbox.spec import Mount, SandboxSpec

Output = Callable[[bytes], None]
NETWORKS = ("none", "host", "default")
# Start children through the fork server (forkserver.py); False: a fresh interpreter per run.
use_forkserver = True
_DOCKER_DNS = ("8.8.8.8", "8.8.4.4")
_MAX_LINE = 1 << 16
_KILL_GRACE = 10.0


class SandboxError(Exception):
    """The sandbox could not run the step. `user_facing` when the user can fix it (USER, cwd,
    command, network option, timeout): then the message is one line for the CLI."""

    def __init__(self, message: str, user_facing: bool = False) -> None:
        super().__init__(message)
        self.user_facing = user_facing


class SandboxTimeout(SandboxError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"step timed out after {seconds:g} s", user_facing=True)


class SandboxCancelled(SandboxError):
    """`cancel_fd` turned readable: the step was killed (the caller says why)."""

    def __init__(self) -> None:
        super().__init__("the step was cancelled", user_facing=True)


def run(spec: SandboxSpec, *, stdout: Output | None = None, stderr: Output | None = None,
        stdin: int | IO[bytes] | None = None, stdio: tuple[int, int, int] | None = None,
        on_start: Callable[[int], None] | None = None, cancel_fd: int | None = None) -> int:
    """Run `spec.process` in a sandbox; its exit status. stdout/stderr: called with each line
    (bytes, newline included) as it comes; None lets the step write to this process's own fds.
    stdin: a file or fd to read from; None is /dev/null. `stdio`: three fds for the process
    instead (a pty's, with `Process.terminal`). `on_start(pid)`: called once the sandbox's
    namespaces exist and before anything runs in them (to put the pid in a cgroup, to attach
    a network), with the pid of the process that owns them. `cancel_fd`: once readable, the
    sandbox is killed and SandboxCancelled raised."""
    _validate(spec)
    maps = id_maps()
    bpf = b""
    if not spec.insecure:
        from buildpy.sandbox.privileges import seccomp_bpf

        bpf = seccomp_bpf()
    wire = _wire(spec, maps, bpf, _cache_dir())
    return _supervise(spec, wire, maps, stdout, stderr, stdin, stdio, on_start, cancel_fd)


def _validate(spec: SandboxSpec) -> None:
    if spec.network not in NETWORKS:
        raise SandboxError(f"network mode {spec.network!r} is not supported (none, host, default)",
                           user_facing=True)
    if not spec.process.args:
        raise SandboxError("no command to run", user_facing=True)
    if not spec.rootfs.is_dir():
        raise SandboxError(f"rootfs {spec.rootfs} is not a directory")
    if not 0 < len(spec.hostname.encode()) <= 64 or not spec.hostname.isprintable() or " " in spec.hostname:
        raise SandboxError(f"invalid hostname {spec.hostname!r}", user_facing=True)
    for name, address in spec.extra_hosts:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise SandboxError(f"invalid IP address in add-host: {address!r}", user_facing=True) from None
        if not name or not name.isprintable() or any(c.isspace() for c in name):
            raise SandboxError(f"invalid host name in add-host: {name!r}", user_facing=True)
    for m in spec.mounts:
        if os.path.normpath(m.target) == "/":
            raise SandboxError("a mount cannot replace the root directory", user_facing=True)
        if m.type not in ("bind", "tmpfs", "file"):
            raise SandboxError(f"mount type {m.type!r} is not supported", user_facing=True)
        if m.type != "tmpfs" and m.source is None:
            raise SandboxError(f"mount on {m.target}: a {m.type} mount needs a source", user_facing=True)
        if not m.target.startswith("/"):
            raise SandboxError(f"mount target {m.target!r} is not an absolute path", user_facing=True)


_maps_cache: dict[tuple[int, int], idmap.IdMaps] = {}


def id_maps() -> idmap.IdMaps:
    """The id maps, looked up once per effective user (they read /etc/subuid and PATH)."""
    key = (os.geteuid(), os.getegid())
    if key not in _maps_cache:
        _maps_cache[key] = idmap.for_current_user()
    return _maps_cache[key]


def hosts_file(hostname: str, extra: tuple[tuple[str, str], ...]) -> str:
    lines = [f"127.0.0.1\tlocalhost {hostname}", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{address}\t{name}" for name, address in extra]
    return "\n".join(lines) + "\n"


def resolv_conf(host_text: str, private_network: bool) -> str:
    """Docker's rule: the host's file; in a private network namespace without its loopback
    nameservers (unreachable from there), and Google's when none remain."""
    if not private_network:
        return host_text
    out, servers = [], 0
    for line in host_text.splitlines():
        fields = line.split()
        if fields[:1] == ["nameserver"] and len(fields) > 1:
            try:
                if ipaddress.ip_address(fields[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                pass
            servers += 1
        out.append(line)
    if not servers:
        out += [f"nameserver {s}" for s in _DOCKER_DNS]
    return "\n".join(out) + "\n"


def _host_resolv_conf() -> str:
    try:
        text = Path("/etc/resolv.conf").read_text(errors="replace")
    except OSError:
        return ""
    # systemd-resolved's stub (127.0.0.53) hides the real servers; Docker reads them here.
    if "127.0.0.53" in text:
        try:
            return Path("/run/systemd/resolve/resolv.conf").read_text(errors="replace")
        except OSError:
            pass
    return text


_cache: tuple[int, str] | None = None  # (owner pid, dir)


def _cache_dir() -> str:
    """This process's dir for what runs share: Docker's files by content, and stub layers by
    lowers and mount points (made by the children, which run as the namespace's root). Removed
    when the process exits."""
    global _cache
    if _cache is None or _cache[0] != os.getpid() or not os.path.isdir(_cache[1]):
        path = tempfile.mkdtemp(prefix="buildpy-sandbox-")
        os.chmod(path, 0o755)  # the user namespace's root must reach it
        atexit.register(_remove, path)
        _cache = (os.getpid(), path)
    return _cache[1]


def _content_file(cache: str, text: str) -> str:
    """A read-only file holding `text` in the cache dir, named by its digest."""
    data = text.encode()
    path = os.path.join(cache, "file-" + hashlib.sha256(data).hexdigest()[:32])
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path


def _system_files(spec: SandboxSpec, cache: str) -> list[Mount]:
    targets = {os.path.normpath(m.target) for m in spec.mounts}
    files = {
        "/etc/hosts": hosts_file(spec.hostname, spec.extra_hosts),
        "/etc/resolv.conf": resolv_conf(_host_resolv_conf(), spec.network == "none"),
        "/etc/hostname": spec.hostname + "\n",
    }
    mounts = []
    for target, text in files.items():
        if target in targets:
            continue
        path = _content_file(cache, text)
        mounts.append(Mount(target=target, type="file", source=Path(path), readonly=True))
    return mounts


def _wire(spec: SandboxSpec, maps: idmap.IdMaps, bpf: bytes, cache: str) -> dict:
    """The spec as the child reads it: plain types only (marshal), no dataclasses to import."""
    ov = spec.overlay
    mounts = _system_files(spec, cache) + list(spec.mounts)
    return {
        "rootfs": str(spec.rootfs),
        "overlay": None if ov is None else {"lowers": [str(p) for p in ov.lowers], "upper": str(ov.upper),
                                            "work": str(ov.work), "volatile": ov.volatile},
        "mounts": [{"target": m.target, "type": m.type, "source": None if m.source is None else str(m.source),
                    "readonly": m.readonly, "options": list(m.options)} for m in mounts],
        "network": "none" if spec.network == "none" else "host",
        "hostname": spec.hostname,
        "insecure": spec.insecure,
        "seccomp": bpf,
        "idmode": maps.mode,
        "uid_map": maps.map_text("uid"),
        "gid_map": maps.map_text("gid"),
        "gid5": maps.to_host(5, "gid") is not None,
        "cache": cache,
        "process": {"args": list(spec.process.args), "env": list(spec.process.env), "cwd": spec.process.cwd,
                    "user": spec.process.user, "terminal": spec.process.terminal},
    }


def _supervise(spec: SandboxSpec, wire: dict, maps: idmap.IdMaps, stdout: Output | None,
               stderr: Output | None, stdin: int | IO[bytes] | None, given: tuple[int, int, int] | None = None,
               on_start: Callable[[int], None] | None = None, cancel_fd: int | None = None) -> int:
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pipes: list[tuple[int, Output]] = []  # (read end, callback)
    child: forkserver.Child | None = None
    try:
        theirs = [child_sock.fileno()]  # closed here once the child has them
        try:
            stdio: list[int] = list(given) if given is not None else []
            for i, (given_fd, cb) in enumerate(((stdin, None), (None, stdout), (None, stderr))):
                if given is not None:
                    break
                if cb is not None:
                    r, w = os.pipe()
                    pipes.append((r, cb))
                    theirs.append(w)
                    stdio.append(w)
                elif given_fd is not None:
                    stdio.append(given_fd if isinstance(given_fd, int) else given_fd.fileno())
                elif i == 0:
                    theirs.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
                    stdio.append(theirs[-1])
                else:
                    stdio.append(i)  # the step writes where we write
            start = forkserver.start_forked if use_forkserver else forkserver.start_direct
            child = start(child_sock.fileno(), (stdio[0], stdio[1], stdio[2]))
        finally:
            child_sock.close()
            for fd in theirs[1:]:
                os.close(fd)
        data = marshal.dumps(wire)
        parent_sock.sendall(len(data).to_bytes(4, "little") + data)
        error, code = _loop(spec, child, parent_sock, maps, pipes, on_start, cancel_fd)
        # The child reports last, just before exiting: wait for it to be gone.
        if not child.wait(_KILL_GRACE):
            child.kill()
            child.wait()
    except BaseException:
        if child is not None:
            _kill(child, parent_sock)
        raise
    finally:
        parent_sock.close()
        for r, _ in pipes:
            os.close(r)
        if child is not None:
            child.close()
    if error is not None:
        raise SandboxError(str(error["error"]), bool(error["user_facing"]))
    if code is None:
        raise SandboxError("the sandbox's child exited without a status")
    return code


def _kill(child: forkserver.Child, sock: socket.socket) -> None:
    """Cancel: the child kills the init (so the whole pid namespace) and exits; if it does not,
    kill the child, whose death kills the init (PDEATHSIG)."""
    try:
        sock.send(b"K")
    except OSError:
        pass
    if not child.wait(_KILL_GRACE):
        child.kill()
        child.wait()


def _loop(spec: SandboxSpec, child: forkserver.Child, sock: socket.socket, maps: idmap.IdMaps,
          pipes: list[tuple[int, Output]], on_start: Callable[[int], None] | None = None,
          cancel_fd: int | None = None) -> tuple[dict | None, int | None]:
    """Stream output, answer the child, until every fd is closed; (first error, exit status)."""
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    sel = selectors.DefaultSelector()
    buffers: dict[int, bytearray] = {}
    outputs: dict[int, Output] = {}
    for fd, cb in pipes:
        sel.register(fd, selectors.EVENT_READ)
        buffers[fd] = bytearray()
        outputs[fd] = cb
    sel.register(sock.fileno(), selectors.EVENT_READ)
    if cancel_fd is not None:
        sel.register(cancel_fd, selectors.EVENT_READ)
    inbox = bytearray()
    error: dict | None = None
    code: int | None = None
    watched = 0 if cancel_fd is None else 1  # the cancel fd never closes: not a stream to wait for
    try:
        while len(sel.get_map()) > watched:
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise SandboxTimeout(spec.timeout or 0)
            for key, _ in sel.select(timeout):
                fd = key.fd
                if fd == cancel_fd:
                    raise SandboxCancelled()  # _supervise kills the namespace on the way out
                chunk = os.read(fd, 1 << 16)
                if fd == sock.fileno():
                    if not chunk:
                        sel.unregister(fd)
                        continue
                    inbox += chunk
                    while len(inbox) >= 4 and len(inbox) >= 4 + int.from_bytes(inbox[:4], "little"):
                        size = int.from_bytes(inbox[:4], "little")
                        msg = marshal.loads(bytes(inbox[4:4 + size]))
                        del inbox[:4 + size]
                        if msg.get("op") == "unshared":
                            idmap.apply(maps, child.pid)
                            if on_start is not None:
                                on_start(child.pid)
                            sock.sendall(b"M")
                        elif "error" in msg and error is None:
                            error = msg
                        elif "exit" in msg:
                            code = msg["exit"]
                    continue
                buf = buffers[fd]
                if not chunk:
                    sel.unregister(fd)
                    if buf:
                        outputs[fd](bytes(buf))
                    continue
                buf += chunk
                _emit_lines(buf, outputs[fd])
    finally:
        sel.close()
    return error, code


def _emit_lines(buf: bytearray, out: Output) -> None:
    start = 0
    while (end := buf.find(b"\n", start)) >= 0:
        out(bytes(buf[start:end + 1]))
        start = end + 1
    del buf[:start]
    if len(buf) > _MAX_LINE:  # a line without end: pass it on in pieces
        out(bytes(buf))
        buf.clear()


def _remove(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
