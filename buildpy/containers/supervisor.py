"""The containers of `buildpy serve`: created, started, watched, signalled and removed on the
Engine API's requests, each started one run by `sandbox.run` in a thread of the server (the same
`run.plan` / `run.sandbox_for` as `buildpy run`).

A container's stdio is a *channel*, made when a client first attaches or when it starts: pipes
(stdin only with OpenStdin, else /dev/null), or a pty with Tty. A pump thread reads its output,
appends it to `ROOT/containers/<id>/log.jsonl` (one JSON line per piece: stream, time, data) and
hands it to every listener (attach, `logs --follow`); attaching before the start (as `docker run`
does) loses nothing, and stdin written before the start waits in the pipe.

Signals: the sandbox's `on_start` pid is its child process (outside the container's pid
namespace); its child is the container's init, which forwards the usual signals to the step
(init.py). A signal goes to the step itself (docker signals the container's main process),
SIGKILL to the init, whose death ends every process of the namespace; the sandbox then reports
137. The server's pid is the record's `pid`: if the server dies, `ps` reads its containers as
exited; on a clean stop `shutdown()` kills them and records them as exited.

Execs (`docker exec`): an `Exec` per POST /containers/{id}/exec, started once as a fresh
`buildpy.sandbox.enter` interpreter (never a fork of this threaded process) that joins the
container's namespaces and cgroups; its stdio is an `_ExecChannel` (pipes or a pty, no log) whose
output goes to the one client. Its exit code is recorded before the client hears the end (the CLI
inspects it next). An exec dies with its container (its pid namespace); records go with the
container's removal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import queue
import selectors
import secrets
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildpy.cas.store import Store
from buildpy.containers import run as runlib
from buildpy.containers import state, volumes
from buildpy.containers.run import RunOptions
from buildpy.containers.state import Conflict, Container, ContainerError

LOG = "log.jsonl"
STOP_TIMEOUT = 10.0
_KILL_WAIT = 30.0  # how long SIGKILL may take to end a container before a request gives up
_STEP_WAIT = 10.0  # how long the init may take to set the root up and fork the step
_EXEC_OUTPUT_GRACE = 1.0  # how long an exec's output may go on after its command ended (see _ExecChannel)


class StartError(ContainerError):
    """The container could not be started (the API answers 500)."""


class InvalidParameter(ContainerError):
    """A request's parameter is malformed (the API answers 400)."""


@dataclass(frozen=True)
class Entry:
    """A piece of a container's output."""

    stream: str  # "stdout" | "stderr"
    data: bytes
    time: float


End = None  # what a listener's queue receives when the container's output has ended


def options_json(opts: RunOptions) -> dict[str, Any]:
    obj = dataclasses.asdict(opts)
    obj.pop("environ")
    return obj


def options_from(obj: dict[str, Any]) -> RunOptions:
    fields = {f.name for f in dataclasses.fields(RunOptions)} - {"environ"}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in obj.items() if k in fields}
    return RunOptions(**kw, environ={})


def parse_signal(text: str | int) -> int:
    """Docker's signal names: "KILL", "SIGKILL", "9"."""
    raw = str(text).strip().upper()
    if raw.isdigit():
        num = int(raw)
        if 0 < num < signal.NSIG:
            return num
    else:
        name = raw if raw.startswith("SIG") else "SIG" + raw
        sig = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if sig is not None:
            return int(sig)
    raise InvalidParameter(f"invalid signal: {text}")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


class _Channel:
    """One run's stdio: the container's ends (given to the sandbox), ours (read by the pump,
    written by attach), the listeners and the log."""

    def __init__(self, log: Path, tty: bool, open_stdin: bool) -> None:
        self.lock = threading.Lock()
        self.log = log
        self.tty = tty
        self.listeners: list[queue.SimpleQueue] = []
        self.ended = False
        self.theirs: list[int] = []  # closed once the sandbox has them
        self.ours: list[int] = []
        self.stdin: int | None = None  # where attach writes: the pipe's write end or the pty master
        self.outputs: list[tuple[int, str]] = []
        if tty:
            master, slave = os.openpty()
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            self.stdio = (slave, slave, slave)
            self.theirs = [slave]
            self.ours = [master]
            self.stdin = master if open_stdin else None
            self.outputs = [(master, "stdout")]
            return
        if open_stdin:
            in_r, in_w = os.pipe()
            self.stdin = in_w
            self.ours.append(in_w)
        else:
            in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.stdio = (in_r, out_w, err_w)
        self.theirs = [in_r, out_w, err_w]
        self.ours += [out_r, err_r]
        self.outputs = [(out_r, "stdout"), (err_r, "stderr")]

    def handed_over(self) -> None:
        """The sandbox holds the container's ends now: ours go, so the pump sees EOF at its end."""
        with self.lock:
            for fd in self.theirs:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.theirs = []

    def listen(self, history: bool) -> tuple[list[Entry], queue.SimpleQueue | None]:
        with self.lock:
            past = read_log(self.log) if history else []
            if self.ended:
                return past, None
            q: queue.SimpleQueue = queue.SimpleQueue()
            self.listeners.append(q)
            return past, q

    def unlisten(self, q: queue.SimpleQueue) -> None:
        with self.lock:
            if q in self.listeners:
                self.listeners.remove(q)

    def emit(self, stream: str, data: bytes) -> None:
        now = time.time()
        with self.lock:
            pieces = data.splitlines(keepends=True) if not self.tty else [data]
            with open(self.log, "a", encoding="utf-8") as f:
                for piece in pieces:
                    f.write(json.dumps({"stream": stream, "time": now,
                                        "data": piece.decode("utf-8", "surrogateescape")}) + "\n")
            entry = Entry(stream, data, now)
            for q in self.listeners:
                q.put(entry)

    def write_stdin(self, data: bytes) -> None:
        fd = self.stdin
        if fd is None:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except OSError:
                return  # the container closed its stdin or ended: the rest is dropped, as docker

    def close_stdin(self) -> None:
        """StdinOnce: the client's stdin ended, so the container's does (^D on a terminal)."""
        with self.lock:
            fd, self.stdin = self.stdin, None
            if fd is None:
                return
            if self.tty:
                with contextlib.suppress(OSError):
                    os.write(fd, b"\x04")
            else:
                with contextlib.suppress(OSError):
                    os.close(fd)
                self.ours.remove(fd)

    def resize(self, height: int, width: int) -> None:
        if self.tty and self.ours:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.ours[0], termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def pump(self, wake: int | None = None) -> None:
        """Read the output until its end (every writer gone), or until `wake` is readable: then
        what is already there, and no more."""
        sel = selectors.DefaultSelector()
        for fd, stream in self.outputs:
            sel.register(fd, selectors.EVENT_READ, stream)
        if wake is not None:
            sel.register(wake, selectors.EVENT_READ, None)
        try:
            while any(k.data is not None for k in sel.get_map().values()):
                for key, _ in sel.select():
                    if key.data is None:
                        for fd, stream in [(k.fd, k.data) for k in sel.get_map().values() if k.data]:
                            self._drain(fd, stream)
                        return
                    try:
                        data = os.read(key.fd, 1 << 16)
                    except OSError:  # EIO: a pty whose every slave is closed
                        data = b""
                    if not data:
                        sel.unregister(key.fd)
                        continue
                    self.emit(key.data, data)
        finally:
            sel.close()

    def _drain(self, fd: int, stream: str) -> None:
        os.set_blocking(fd, False)
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # EAGAIN: nothing more now; EIO: a closed pty
                return
            if not data:
                return
            self.emit(stream, data)

    def end(self) -> None:
        """The run is over: listeners get End, every fd of ours goes."""
        self.handed_over()
        with self.lock:
            self.ended = True
            for q in self.listeners:
                q.put(End)
            self.listeners = []
            self.stdin = None
            for fd in self.ours:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.ours = []


def read_log(path: Path) -> list[Entry]:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                    out.append(Entry(obj["stream"], obj["data"].encode("utf-8", "surrogateescape"),
                                     float(obj["time"])))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash
    except FileNotFoundError:
        pass
    return out


class _Live:
    """A started container: its thread, the sandbox child's pid once known, kill requests."""

    def __init__(self, container_id: str) -> None:
        self.id = container_id
        self.started = threading.Event()  # on_start ran, or the start failed
        self.finished = threading.Event()  # the record says exited (or is removed)
        self.start_error: str | None = None
        self.child: int | None = None
        self.killed = False
        self.cgroups: list[str] = []  # the container's cgroup dirs, for execs to join
        self.lock = threading.Lock()


class NoSuchExec(ContainerError):
    """No exec instance has this id (the API answers 404)."""


@dataclass(frozen=True)
class ExecConfig:
    """What POST /containers/{id}/exec asks for."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    user: str = ""  # "": the container's user
    workdir: str = ""  # "": the container's working directory
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


class _ExecChannel(_Channel):
    """An exec's stdio: a container's channel without the log (docker keeps no exec output), whose
    pump can be told to stop: a process the command left in the background may hold its output
    open for ever, and the exec has ended for its client when the command has."""

    def __init__(self, tty: bool, open_stdin: bool) -> None:
        super().__init__(Path(os.devnull), tty, open_stdin)
        self._wake_r, self._wake_w = os.pipe()

    def emit(self, stream: str, data: bytes) -> None:
        entry = Entry(stream, data, time.time())
        with self.lock:
            for q in self.listeners:
                q.put(entry)

    def stop_pump(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def pump(self, wake: int | None = None) -> None:
        super().pump(self._wake_r if wake is None else wake)

    def end(self) -> None:
        super().end()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class Exec:
    """One exec instance of a running container: created, then started once."""

    def __init__(self, exec_id: str, container_id: str, config: ExecConfig) -> None:
        self.id = exec_id
        self.container_id = container_id
        self.config = config
        self.started = False
        self.running = False
        self.exit_code: int | None = None
        self.pid = 0  # the enter process on the host (enter.py); the command is its child
        self.channel: _ExecChannel | None = None
        self.size: tuple[int, int] | None = None  # asked for before the start
        self.done = threading.Event()

    def process_pid(self) -> int:
        """The command's host pid while it runs (else the enter process's, or 0)."""
        if not self.running:
            return 0
        kids = _children(self.pid)
        return kids[0] if kids else self.pid


EventHook = Callable[[str, Container, dict[str, str]], None]


class Supervisor:
    """The containers one server supervises (see the module's docstring)."""

    # Told what happens to a container on its own (action, container, attributes): "start" once
    # its process runs, "kill" (signal), "die" (exitCode), "destroy" when auto-removed, "exec_die"
    # (execID, exitCode). Called outside the supervisor's lock, before whoever waits on that is
    # woken; a hook must not block. The API's event bus appends here (containers never import it).
    on_event: list[EventHook] = []

    def _emit(self, action: str, c: Container, attributes: dict[str, str] | None = None) -> None:
        for hook in list(self.on_event):
            try:
                hook(action, c, attributes or {})
            except Exception:  # noqa: BLE001 - a listener's failure never disturbs a container
                traceback.print_exc()

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cond = threading.Condition(threading.RLock())
        self._live: dict[str, _Live] = {}
        self._channels: dict[str, _Channel] = {}
        self._exits: dict[str, int] = {}  # how often each container exited while we watched
        self._results: dict[str, tuple[int, str]] = {}
        self._removed: set[str] = set()
        self._execs: dict[str, Exec] = {}
        self._closing = False

    # lookup

    def find(self, ref: str) -> Container:
        return state.find(self.store, ref)

    def is_running(self, container: Container) -> bool:
        with self._cond:
            return container.id in self._live

    def main_pid(self, container: Container) -> int:
        """The host pid of the container's main process (0 when it has none)."""
        with self._cond:
            live = self._live.get(container.id)
        return (self._process(live)[1] or 0) if live is not None else 0

    def all(self) -> list[Container]:
        return state.all_containers(self.store)

    def log_path(self, container: Container) -> Path:
        return state.directory(self.store, container) / LOG

    # create, start

    def create(self, opts: RunOptions, extra: dict[str, Any]) -> Container:
        """A container record for `opts` on a local image (`run.NoSuchImage` if missing)."""
        image = runlib.local_image(self.store, opts.image)
        p = runlib.plan(self.store, opts, image)
        merged = {"env": list(p.env), "cwd": p.cwd, "user": p.user, "image_id": image.id,
                  "image_config": image.config.get("config") or {}}
        return runlib.record(self.store, opts, p, extra={"options": options_json(opts), "resolved": merged, **extra})

    def start(self, ref: str) -> bool:
        """Start the container; False when it runs already. Returns once its sandbox exists."""
        with self._cond:
            if self._closing:
                raise StartError("the server is stopping")
            c = self.find(ref)
            if c.id in self._live:
                return False
            raw = c.extra.get("options")
            if not isinstance(raw, dict):
                raise Conflict(f"container {c.name} was made by `buildpy run` and cannot be started here")
            opts = options_from(raw)
            live = self._live[c.id] = _Live(c.id)
            channel = self._channel(c, opts)
            threading.Thread(target=self._run, args=(live, channel, c, opts), name=f"container-{c.short_id}",
                             daemon=True).start()
        live.started.wait()
        if live.start_error is not None:
            raise StartError(live.start_error)
        self._process(live, wait=_STEP_WAIT)  # as docker: start returns once the process exists
        return True

    def _process(self, live: _Live, wait: float = 0.0) -> tuple[int | None, int | None]:
        """(init, step) host pids, waiting up to `wait` seconds for the step to be forked (the
        sandbox's hook runs before the init sets up the root and forks it)."""
        deadline = time.monotonic() + wait
        while True:
            with live.lock:
                child = live.child
            inits = _children(child) if child else []
            steps = _children(inits[0]) if inits else []
            if steps or live.finished.is_set() or time.monotonic() >= deadline:
                return (inits[0] if inits else None), (steps[0] if steps else None)
            time.sleep(0.005)

    def _channel(self, c: Container, opts: RunOptions) -> _Channel:
        ch = self._channels.get(c.id)
        if ch is None:
            ch = self._channels[c.id] = _Channel(self.log_path(c), opts.tty, opts.interactive)
        return ch

    def _run(self, live: _Live, channel: _Channel, c: Container, opts: RunOptions) -> None:
        from buildpy.sandbox.run import SandboxError
        from buildpy.sandbox.run import run as sandbox_run

        code, error = 125, ""
        pump = threading.Thread(target=channel.pump, name=f"pump-{c.short_id}", daemon=True)
        pump.start()
        try:
            p = runlib.plan(self.store, opts, runlib.image_of(self.store, c))
            with runlib.sandbox_for(self.store, c, p, opts) as box:
                with self._cond:
                    c = dataclasses.replace(c, status="running", pid=os.getpid(), started=time.time(),
                                            finished=None, exit_code=None, error="", limits=box.limits)
                    state.save(self.store, c)

                if box.cgroup is not None:
                    live.cgroups = [str(path) for path in box.cgroup.paths]

                def on_start(pid: int) -> None:
                    box.on_start(pid)
                    channel.handed_over()
                    with live.lock:
                        live.child = pid
                        if live.killed:  # killed before it ran: the sandbox kills it when we raise
                            raise StartError("killed")
                    self._emit("start", c)  # before the start's answer, and before its death
                    live.started.set()

                try:
                    code = sandbox_run(box.spec, stdio=channel.stdio, on_start=on_start)
                except (SandboxError, StartError):
                    if not live.killed:
                        raise
                    code = 137
                if code < 0:
                    code = 128 - code
                if box.oom_killed():
                    code = 137
        except Exception as e:  # noqa: BLE001 - recorded, and told to whoever waits
            if getattr(e, "user_facing", False):
                error = str(e)
            else:
                traceback.print_exc()
                error = f"{type(e).__name__}: {e}"
            code = 127 if "executable file not found" in error else 126 if "permission denied" in error else 125
        finally:
            channel.handed_over()
            if error and live.started.is_set():  # it ran for a while: docker run shows why it ended
                channel.emit("stderr", f"buildpy: {error}\n".encode())
            pump.join()
            ran = live.started.is_set()  # on_start ran: until the end of this block, only it sets `started`
            with self._cond:
                channel.end()
                self._channels.pop(c.id, None)
                if not live.started.is_set():
                    live.start_error = error or "the container did not start"
                c = dataclasses.replace(c, status="exited", exit_code=code, finished=time.time(), error=error)
                if opts.remove:  # AutoRemove: the container and its anonymous volumes, as docker's
                    with contextlib.suppress(Exception):
                        state.remove(self.store, c, force=True)
                        volumes.remove_anonymous(self.store, c.extra.get("volumes", []))
                    self._removed.add(c.id)
                    self._forget_execs(c.id)
                else:
                    state.save(self.store, c)
                del self._live[c.id]
                self._exits[c.id] = self._exits.get(c.id, 0) + 1
                self._results[c.id] = (code, error)
            # told outside the lock, once the record says exited (or is gone), before any waiter wakes
            if ran:
                self._emit("die", c, {"exitCode": str(code)})
            if opts.remove:
                self._emit("destroy", c)
            with self._cond:
                self._cond.notify_all()
            live.started.set()
            live.finished.set()

    # stdio

    def attach(self, ref: str, history: bool) -> tuple[Container, _Channel, list[Entry], queue.SimpleQueue | None]:
        """(container, channel, past output, listener) for a client attaching; a container not
        running gets its channel now, so nothing of its next run is missed (`docker start -a`
        attaches, then starts)."""
        with self._cond:
            c = self.find(ref)
            raw = c.extra.get("options")
            if not isinstance(raw, dict):
                raise Conflict(f"container {c.name} was made by `buildpy run` and cannot be attached here")
            ch = self._channel(c, options_from(raw))
            past, q = ch.listen(history)
            return c, ch, past, q

    def logs(self, ref: str, follow: bool) -> tuple[Container, list[Entry], queue.SimpleQueue | None, Callable[[], None]]:
        """(container, its output so far, a listener for what comes when following a running
        container, a function ending the listening)."""
        with self._cond:
            c = self.find(ref)
            ch = self._channels.get(c.id) if c.id in self._live else None
            if ch is None:
                return c, read_log(self.log_path(c)), None, lambda: None
            past, q = ch.listen(True)
            if not follow and q is not None:
                ch.unlisten(q)
                q = None
            return c, past, q, (lambda: ch.unlisten(q)) if q is not None else (lambda: None)

    def resize(self, ref: str, height: int, width: int) -> None:
        with self._cond:
            c = self.find(ref)
            ch = self._channels.get(c.id)
        if ch is None:
            raise Conflict(f"Container {c.id} is not running")
        ch.resize(height, width)

    # exec

    def _forget_execs(self, container_id: str) -> None:
        with self._cond:
            for exec_id in [e.id for e in self._execs.values() if e.container_id == container_id]:
                del self._execs[exec_id]

    def exec_create(self, ref: str, config: ExecConfig) -> Exec:
        with self._cond:
            c = self.find(ref)
            if c.id not in self._live:
                raise Conflict(f"Container {c.id} is not running")
            e = Exec(secrets.token_hex(32), c.id, config)
            self._execs[e.id] = e
            return e

    def exec_get(self, exec_id: str) -> Exec:
        with self._cond:
            e = self._execs.get(exec_id)
        if e is None:
            raise NoSuchExec(f"No such exec instance: {exec_id}")
        return e

    def exec_start(self, exec_id: str, listen: bool) -> tuple[Exec, _ExecChannel, queue.SimpleQueue | None]:
        """Start the exec's command in its container; (exec, channel, a listener for its output
        when `listen`). Returns once the command's process is spawned."""
        with self._cond:
            e = self.exec_get(exec_id)
            if e.started:
                raise Conflict(f"Exec command {e.id} has already run")
            live = self._live.get(e.container_id)
            if live is None:
                raise Conflict(f"Container {e.container_id} is not running")
            c = self.find(e.container_id)
            e.started = True
        try:
            return self._exec_spawn(e, live, c, listen)
        except BaseException:
            with self._cond:
                e.started = False
            raise

    def _exec_spawn(self, e: Exec, live: _Live, c: Container,
                    listen: bool) -> tuple[Exec, _ExecChannel, queue.SimpleQueue | None]:
        from buildpy.sandbox import enter

        _, step = self._process(live, wait=_STEP_WAIT)
        if step is None or live.finished.is_set():
            raise Conflict(f"Container {c.id} is not running")
        resolved = c.extra.get("resolved", {})
        cfg = e.config
        process = enter.ExecProcess(
            args=tuple(cfg.args), env=tuple(resolved.get("env") or ()) + tuple(cfg.env),
            cwd=cfg.workdir or resolved.get("cwd") or "/", user=cfg.user or resolved.get("user") or "",
            terminal=cfg.tty)
        channel = _ExecChannel(cfg.tty, cfg.stdin)
        if e.size is not None:
            channel.resize(*e.size)
        listener = channel.listen(False)[1] if listen else None
        try:
            proc = enter.spawn(step, process, tuple(live.cgroups), channel.stdio)
        except OSError as err:
            channel.end()
            raise StartError(f"cannot start the exec: {err.strerror or err}") from None
        channel.handed_over()
        with self._cond:
            e.pid = proc.pid
            e.running = True
            e.channel = channel
        threading.Thread(target=self._exec_wait, args=(e, proc, channel, c), name=f"exec-{e.id[:12]}",
                         daemon=True).start()
        return e, channel, listener

    def _exec_wait(self, e: Exec, proc: subprocess.Popen, channel: _ExecChannel, c: Container) -> None:
        pump = threading.Thread(target=channel.pump, name=f"exec-pump-{e.id[:12]}", daemon=True)
        pump.start()
        code = proc.wait()
        pump.join(_EXEC_OUTPUT_GRACE)  # its output ends when every writer is gone, or soon after it
        if pump.is_alive():
            channel.stop_pump()
            pump.join()
        with self._cond:
            e.exit_code = 128 - code if code < 0 else code
            e.running = False
        self._emit("exec_die", c, {"execID": e.id, "exitCode": str(e.exit_code)})  # before the client hears the end
        with self._cond:
            channel.end()  # the code is recorded before the client hears the end: it asks next
            self._cond.notify_all()
        e.done.set()

    def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        e = self.exec_get(exec_id)
        with self._cond:
            if e.channel is None:
                e.size = (height, width)  # docker's CLI may resize before the start ends
                return
            channel = e.channel
        channel.resize(height, width)

    # waiting

    def waiter(self, ref: str, condition: str) -> Callable[[], tuple[int, str]]:
        """A function blocking until `condition` holds (registered now: an exit after this call
        is seen even if it comes before the function is called)."""
        if condition not in ("", "not-running", "next-exit", "removed"):
            raise InvalidParameter(f"invalid condition: {condition!r}")
        with self._cond:
            c = self.find(ref)
            seen = self._exits.get(c.id, 0)
            if condition in ("", "not-running") and c.id not in self._live:
                result = (c.exit_code or 0, c.error)
                return lambda: result

            def block() -> tuple[int, str]:
                with self._cond:
                    if condition == "removed":
                        self._cond.wait_for(lambda: c.id in self._removed)
                    else:
                        self._cond.wait_for(lambda: self._exits.get(c.id, 0) > seen)
                    return self._results.get(c.id, (0, ""))

            return block

    # signals

    def _signal(self, live: _Live, signum: int) -> None:
        with live.lock:
            if signum == signal.SIGKILL:
                live.killed = True
            child = live.child
        if child is None:
            return  # not in its sandbox yet: on_start sees `killed` (other signals are lost, as before exec)
        if signum == signal.SIGKILL:
            init, _ = self._process(live)
            target = init or child  # the child's death kills the init too (PDEATHSIG)
        else:
            init, step = self._process(live, wait=_STEP_WAIT)
            target = step or init
        if target is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signum)

    def kill(self, ref: str, signum: int) -> None:
        with self._cond:
            c = self.find(ref)
            live = self._live.get(c.id)
        if live is None:
            raise Conflict(f"Cannot kill container: {ref}: Container {c.id} is not running")
        self._emit("kill", c, {"signal": str(signum)})
        self._signal(live, signum)
        if signum == signal.SIGKILL:
            live.finished.wait(_KILL_WAIT)

    def stop(self, ref: str, timeout: float | None, signum: int = signal.SIGTERM) -> bool:
        """SIGTERM (or the container's stop signal), SIGKILL after `timeout` seconds (None:
        STOP_TIMEOUT; negative: wait for ever). False when it was not running."""
        with self._cond:
            c = self.find(ref)
            live = self._live.get(c.id)
        if live is None:
            return False
        timeout = STOP_TIMEOUT if timeout is None else timeout
        self._emit("kill", c, {"signal": str(signum)})
        self._signal(live, signum)
        if not live.finished.wait(None if timeout < 0 else timeout):
            self._emit("kill", c, {"signal": str(int(signal.SIGKILL))})
            self._signal(live, signal.SIGKILL)
            live.finished.wait(_KILL_WAIT)
        return True

    # removing

    def remove(self, ref: str, force: bool = False, anonymous_volumes: bool = False) -> None:
        with self._cond:
            c = self.find(ref)
            live = self._live.get(c.id)
        if live is not None:
            if not force:
                raise Conflict(f"You cannot remove a running container {c.id}. Stop the container before "
                               "attempting removal or force remove")
            self._emit("kill", c, {"signal": str(int(signal.SIGKILL))})
            self._signal(live, signal.SIGKILL)
            live.finished.wait(_KILL_WAIT)
        with self._cond:
            if c.id in self._live:
                raise Conflict(f"container {c.id} did not stop in time to be removed")
            if c.id in self._removed:
                return  # auto-removed when it was killed
            c = self.find(c.id)
            channel = self._channels.pop(c.id, None)
            if channel is not None:  # attached to, never started
                channel.end()
            state.remove(self.store, c, force=True)
            self._removed.add(c.id)
            self._forget_execs(c.id)
            self._cond.notify_all()
        if anonymous_volumes:
            volumes.remove_anonymous(self.store, c.extra.get("volumes", []))

    def shutdown(self, timeout: float = 10.0) -> None:
        """The server stops: every running container is killed and recorded as exited."""
        with self._cond:
            self._closing = True
            lives = list(self._live.values())
        for live in lives:
            self._signal(live, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for live in lives:
            if not live.finished.wait(max(0.0, deadline - time.monotonic())):
                print(f"buildpy serve: container {live.id[:12]} did not end in time", file=sys.stderr)


_supervisors: dict[Path, Supervisor] = {}
_lock = threading.Lock()


def for_store(store: Store) -> Supervisor:
    """The one supervisor of a store in this process."""
    with _lock:
        sup = _supervisors.get(store.root)
        if sup is None:
            sup = _supervisors[store.root] = Supervisor(store)
        return sup


def shutdown_all() -> None:
    with _lock:
        sups = list(_supervisors.values())
    for sup in sups:
        sup.shutdown()
