"""The container endpoints: create, start, wait, logs, attach (a hijacked connection), resize,
stop, kill, remove, list, inspect, prune — Docker's JSON translated to and from the calls of
`buildpy.containers.supervisor`, which runs the containers in this server."""

from __future__ import annotations

import contextlib
import queue
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from buildpy.api import events, server
from buildpy.api.errors import ApiError, as_api_error
from buildpy.api import networks
from buildpy.api.routing import Query, labels_match, route
from buildpy.cas.store import Store
from buildpy.containers import filesystem
from buildpy.containers import supervisor as sup
from buildpy.containers import volumes
from buildpy.containers.network import Port, recorded_port
from buildpy.containers import run as runlib
from buildpy.containers.run import NoSuchImage, RunOptions
from buildpy.containers.state import Conflict, Container, ContainerError, NoSuchContainer

RAW = "application/vnd.docker.raw-stream"
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
_ZERO_TIME = "0001-01-01T00:00:00Z"
_STREAMS = {"stdin": 0, "stdout": 1, "stderr": 2}

server._STOP_HOOKS.append(sup.shutdown_all)


def supervisor_of(h) -> sup.Supervisor:  # noqa: ANN001 - h: the server's exchange
    return sup.for_store(h.store)


@contextlib.contextmanager
def answers(name: str = "", user_error: int = 400) -> Iterator[None]:
    """The library's exceptions as Docker's status codes; `user_error` for other mistakes."""
    try:
        yield
    except ApiError:
        raise
    except NoSuchContainer:
        raise ApiError(404, f"No such container: {name}") from None
    except (NoSuchImage, filesystem.PathNotFound) as e:
        raise ApiError(404, str(e)) from None
    except Conflict as e:
        raise ApiError(409, str(e)) from None
    except (sup.InvalidParameter, filesystem.BadArchive) as e:
        raise ApiError(400, str(e)) from None
    except sup.StartError as e:
        raise ApiError(500, str(e)) from None
    except (ContainerError, OSError) as e:
        raise ApiError(user_error, str(e)) from None
    except Exception as e:  # noqa: BLE001
        if getattr(e, "user_facing", False):
            raise ApiError(user_error, str(e).strip()) from None
        raise as_api_error(e) from None


def _rfc3339(t: float | None) -> str:
    if t is None:
        return _ZERO_TIME
    whole = int(t)
    nanos = int(round((t - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _api_version(h) -> tuple[int, int]:  # noqa: ANN001
    m = re.match(r"/v(\d+)\.(\d+)/", h.path)
    return (int(m.group(1)), int(m.group(2))) if m else (1, 41)


def stream_type(h, tty: bool) -> str:  # noqa: ANN001
    return MULTIPLEXED if not tty and _api_version(h) >= (1, 42) else RAW


def frame(stream: str, data: bytes, tty: bool) -> bytes:
    if tty:
        return data
    return bytes([_STREAMS.get(stream, 1), 0, 0, 0]) + len(data).to_bytes(4, "big") + data


# create


def strings(value: Any, what: str) -> tuple[str, ...] | None:
    """A list of strings (or one string, as old clients send Cmd) from the request; None if null."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ApiError(400, f"invalid {what}: expected a list of strings")
    return tuple(value)


def _mount_text(store: Store, m: Any) -> str:
    """A HostConfig.Mounts entry as `run -v` text."""
    if not isinstance(m, dict):
        raise ApiError(400, "invalid mount config: not an object")
    kind = m.get("Type") or "volume"
    target = str(m.get("Target") or m.get("Destination") or "")
    source = str(m.get("Source") or "")
    if not target.startswith("/"):
        raise ApiError(400, f"invalid mount config for type {kind!r}: the target {target!r} must be an absolute path")
    if kind == "bind":
        if not source.startswith("/"):
            raise ApiError(400, f'invalid mount config for type "bind": invalid mount path: {source!r} mount path '
                                "must be absolute")
        if not os.path.exists(source):
            raise ApiError(400, f'invalid mount config for type "bind": bind source path does not exist: {source}')
    elif kind == "volume":
        source = source or volumes.create(store).name
    else:
        raise ApiError(501, f"buildpy does not implement mounts of type {kind!r} (bind, volume)")
    if ":" in source or ":" in target:
        raise ApiError(400, f"invalid mount config: {source}:{target}: a path with ':' is not supported")
    return f"{source}:{target}" + (":ro" if m.get("ReadOnly") else "")


def _ports(bindings: Any) -> tuple[str, ...]:
    """HostConfig.PortBindings ({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}) as `-p` text."""
    if not bindings:
        return ()
    if not isinstance(bindings, dict):
        raise ApiError(400, "invalid PortBindings: not an object")
    out = []
    for key, binds in bindings.items():
        port, _, proto = str(key).partition("/")
        for b in binds or []:
            host_port = str((b or {}).get("HostPort") or port)
            ip = (b or {}).get("HostIp") or ""
            out.append(f"{ip + ':' if ip and ip != '0.0.0.0' else ''}{host_port}:{port}/{proto or 'tcp'}")
    return tuple(out)


# HostConfig keys `options` turns into run's options, or that ask for nothing a container of
# buildpy lacks (the terminal's first size, the log driver docker's CLI leaves empty)
_HOST_HONOURED = {"Binds", "Mounts", "AutoRemove", "NetworkMode", "PortBindings", "Memory", "NanoCpus",
                  "PidsLimit", "ConsoleSize", "LogConfig", "Isolation"}
_HOST_NOTHING = {  # values of other keys that ask for nothing (besides null, "", 0, false, [], {})
    "RestartPolicy": ({"Name": "no", "MaximumRetryCount": 0}, {"Name": "", "MaximumRetryCount": 0},
                      {"Name": "no"}, {"Name": ""}),
    "CgroupnsMode": ("private", "host"), "IpcMode": ("private", "shareable"), "UsernsMode": ("host",),
    "MemorySwappiness": (-1,),
}


def _refuse_not_honoured(host: dict[str, Any]) -> None:
    """A setting buildpy's containers cannot have is refused (501), never dropped unsaid."""
    for key, value in host.items():
        if key in _HOST_HONOURED or value in (None, "", 0, False, [], {}) or value in _HOST_NOTHING.get(key, ()):
            continue
        raise ApiError(501, f"buildpy does not implement POST /containers/create with HostConfig.{key}="
                            f"{json.dumps(value)[:80]} (its containers have no such setting)")
    log = host.get("LogConfig") or {}
    if isinstance(log, dict) and (log.get("Type") or "json-file") != "json-file":
        raise ApiError(501, f"buildpy does not implement the log driver {log.get('Type')!r} (it keeps json lines)")


def options(store: Store, name: str, body: dict[str, Any]) -> tuple[RunOptions, tuple[str, ...]]:
    """POST /containers/create's Config and HostConfig as `run`'s options, with the anonymous
    volumes made for the image's VOLUMEs and Config.Volumes (run's shared code), and their names
    (removed should the create fail)."""
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        raise ApiError(400, "invalid HostConfig: not an object")
    _refuse_not_honoured(host)
    image = body.get("Image")
    if not image or not isinstance(image, str):
        raise ApiError(400, "config has no Image")
    network = networks.mode_of(str(host.get("NetworkMode") or ""))
    binds = list(strings(host.get("Binds"), "Binds") or ())
    mounts = host.get("Mounts") or []
    if not isinstance(mounts, list):
        raise ApiError(400, "invalid Mounts: not a list")
    binds += [_mount_text(store, m) for m in mounts]
    wanted = body.get("Volumes") or {}  # anonymous volumes the config asks for (`-v /path`)
    if not isinstance(wanted, dict):
        raise ApiError(400, "invalid Volumes: not an object")
    memory = host.get("Memory") or 0
    nano_cpus = host.get("NanoCpus") or 0
    pids = host.get("PidsLimit")
    for value, what in ((memory, "Memory"), (nano_cpus, "NanoCpus"), (pids or 0, "PidsLimit")):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError(400, f"invalid {what}: not an integer")
    entrypoint = strings(body.get("Entrypoint"), "Entrypoint")
    if entrypoint == ("",):
        entrypoint = ()  # `--entrypoint ""`: none
    opts = RunOptions(
        image=image, command=strings(body.get("Cmd"), "Cmd") or (), name=name, remove=bool(host.get("AutoRemove")),
        env=strings(body.get("Env"), "Env") or (), workdir=str(body.get("WorkingDir") or ""),
        user=str(body.get("User")) if body.get("User") else None, volumes=tuple(binds), network=network,
        ports=_ports(host.get("PortBindings")), hostname=str(body.get("Hostname") or ""),
        interactive=bool(body.get("OpenStdin")), tty=bool(body.get("Tty")),
        memory=str(memory) if memory > 0 else "", cpus=nano_cpus / 1e9 if nano_cpus > 0 else None,
        pids_limit=pids if pids and pids > 0 else None, entrypoint=entrypoint, environ={},
    )
    # last, once the request is checked: nothing is made for a create refused above
    return runlib.with_anonymous_volumes(store, opts, runlib.local_image(store, image), tuple(wanted))


@route("POST", r"/containers/create")
def _create(h, q: Query) -> None:  # noqa: ANN001
    body = h.json_body() or {}
    name = q.one("name").removeprefix("/")
    with answers(name):
        opts, made = options(h.store, name, body)
        config = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
        try:
            c = supervisor_of(h).create(opts, {"docker": {"Config": config, "HostConfig": body.get("HostConfig") or {}}})
        except BaseException:
            runlib.discard(h.store, made)
            raise
    events.container("create", c)
    h.json(201, {"Id": c.id, "Warnings": []})


# run


@route("POST", r"/containers/([^/]+)/start")
def _start(h, q: Query, name: str) -> None:  # noqa: ANN001
    with answers(name):
        started = supervisor_of(h).start(name)
    h.send(204 if started else 304, b"", "text/plain; charset=utf-8")


@route("POST", r"/containers/([^/]+)/wait")
def _wait(h, q: Query, name: str) -> None:  # noqa: ANN001
    with answers(name):
        block = supervisor_of(h).waiter(name, q.one("condition"))
    h.start_stream("application/json")  # the client knows the wait is registered: it may start now
    code, _error = block()  # why it failed is the container's State.Error and its log: the wait itself worked
    try:
        h.chunk((json.dumps({"StatusCode": code, "Error": None}) + "\n").encode())
        h.end_stream()
    except OSError:
        h.close_connection = True  # the client stopped waiting


@route("POST", r"/containers/([^/]+)/stop")
def _stop(h, q: Query, name: str) -> None:  # noqa: ANN001
    with answers(name):
        c = supervisor_of(h).find(name)
        stop_signal = (c.extra.get("docker", {}).get("Config") or {}).get("StopSignal") or "SIGTERM"
        signum = sup.parse_signal(q.one("signal") or stop_signal)
        stopped = supervisor_of(h).stop(name, q.integer("t"), signum)
    if stopped:
        events.container("stop", c)
    h.send(204 if stopped else 304, b"", "text/plain; charset=utf-8")


@route("POST", r"/containers/([^/]+)/restart")
def _restart(h, q: Query, name: str) -> None:  # noqa: ANN001
    with answers(name):
        supervisor_of(h).stop(name, q.integer("t"))
        supervisor_of(h).start(name)
        events.container("restart", supervisor_of(h).find(name))
    h.send(204, b"", "text/plain; charset=utf-8")


@route("POST", r"/containers/([^/]+)/kill")
def _kill(h, q: Query, name: str) -> None:  # noqa: ANN001
    with answers(name):
        supervisor_of(h).kill(name, sup.parse_signal(q.one("signal") or "KILL"))
    h.send(204, b"", "text/plain; charset=utf-8")


@route("DELETE", r"/containers/([^/]+)")
def _remove(h, q: Query, name: str) -> None:  # noqa: ANN001
    with answers(name):
        c = supervisor_of(h).find(name)
        supervisor_of(h).remove(name, force=q.flag("force"), anonymous_volumes=q.flag("v"))
    events.container("destroy", c)
    h.send(204, b"", "text/plain; charset=utf-8")


@route("POST", r"/containers/prune")
def _prune(h, q: Query) -> None:  # noqa: ANN001
    s = supervisor_of(h)
    labels = q.filters(("label",)).get("label", [])
    deleted = []
    for c in s.all():
        if s.is_running(c) or c.status == "running" or not labels_match(_labels(c), labels):
            continue
        with contextlib.suppress(ContainerError, ApiError):
            with answers(c.id):
                s.remove(c.id)
            events.container("destroy", c)
            deleted.append(c.id)
    h.json(200, {"ContainersDeleted": deleted, "SpaceReclaimed": 0})


@route("POST", r"/containers/([^/]+)/resize")
def _resize(h, q: Query, name: str) -> None:  # noqa: ANN001
    height, width = q.integer("h", 0) or 0, q.integer("w", 0) or 0
    if height < 0 or width < 0 or height > 0xFFFF or width > 0xFFFF:
        raise ApiError(400, f"invalid terminal size {height}x{width}")
    with answers(name):
        supervisor_of(h).resize(name, height, width)
    try:
        h.send(200, b"", "text/plain; charset=utf-8")
    except OSError:
        h.close_connection = True  # a client exiting resizes on its way out and does not read the answer


# output


@route("GET", r"/containers/([^/]+)/logs")
def _logs(h, q: Query, name: str) -> None:  # noqa: ANN001
    wanted = {s for s in ("stdout", "stderr") if q.flag(s)}
    if not wanted:
        raise ApiError(400, "Bad parameters: you must choose at least one stream")
    tail_text = q.one("tail") or "all"
    try:
        tail = None if tail_text == "all" else int(tail_text)
    except ValueError:
        raise ApiError(400, f"invalid tail {tail_text!r}: a number or all") from None
    since, until = _unix_time(q.one("since")), _unix_time(q.one("until"))
    with answers(name):
        c, past, listener, stop = supervisor_of(h).logs(name, q.flag("follow"))
    tty = bool(c.extra.get("options", {}).get("tty"))
    stamps = q.flag("timestamps")

    def out(e: sup.Entry) -> bytes:
        if e.stream not in wanted or (since is not None and e.time < since) or (until is not None and e.time > until):
            return b""
        data = (_rfc3339(e.time).encode() + b" " + e.data) if stamps else e.data
        return frame(e.stream, data, tty)

    past = [e for e in past if e.stream in wanted]
    if tail is not None:
        past = past[len(past) - tail:] if 0 <= tail < len(past) else past
    h.start_stream(stream_type(h, tty))
    try:
        for e in past:
            h.chunk(out(e))
        while listener is not None:
            e = listener.get()
            if e is sup.End:
                break
            h.chunk(out(e))
        h.end_stream()
    except OSError:
        h.close_connection = True  # the client went away
    finally:
        stop()


def _unix_time(text: str) -> float | None:
    if not text or text == "0":
        return None
    try:
        return float(text)
    except ValueError:
        raise ApiError(400, f"invalid time {text!r}: seconds since the epoch") from None


@route("POST", r"/containers/([^/]+)/attach")
def _attach(h, q: Query, name: str) -> None:  # noqa: ANN001
    wanted = {s for s in ("stdout", "stderr") if q.flag(s)}
    with answers(name):
        c, channel, past, listener = supervisor_of(h).attach(name, q.flag("logs"))
    opts = c.extra.get("options", {})
    tty = bool(opts.get("tty"))
    stdin_once = bool((c.extra.get("docker", {}).get("Config") or {}).get("StdinOnce"))
    if not q.flag("stream") and listener is not None:
        channel.unlisten(listener)
        listener = None
    events.container("attach", c)  # before the answer: `docker run` starts the container once it has it
    try:
        reader, sock = h.hijack(stream_type(h, tty))
    except OSError:
        if listener is not None:
            channel.unlisten(listener)
        raise
    relay(reader, sock, channel, past, listener, wanted, tty,
          stdin=q.flag("stdin") and bool(opts.get("interactive")), close_stdin_at_end=stdin_once)


def relay(reader, sock: socket.socket, channel: sup._Channel, past: list[sup.Entry],  # noqa: ANN001
          listener: queue.SimpleQueue | None, wanted: set[str], tty: bool, *, stdin: bool,
          close_stdin_at_end: bool) -> None:
    """A hijacked connection's two ways (attach, exec start): the client's bytes to the process's
    stdin (closed when they end, if `close_stdin_at_end`), the process's output (`past`, then
    what the listener gets) to the client, framed unless a tty; a client gone ends the relay
    only, never the process."""
    if stdin:
        threading.Thread(target=_copy_stdin, args=(reader, channel, close_stdin_at_end), daemon=True).start()
    try:
        for e in past:
            if e.stream in wanted:
                sock.sendall(frame(e.stream, e.data, tty))
        while listener is not None:
            e = listener.get()
            if e is sup.End:
                break
            if e.stream in wanted:
                sock.sendall(frame(e.stream, e.data, tty))
    except OSError:
        pass  # the client went away; the process goes on
    finally:
        if listener is not None:
            channel.unlisten(listener)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _copy_stdin(reader, channel: sup._Channel, close_at_end: bool) -> None:  # noqa: ANN001
    """The client's stdin to the process's, until the client closes its side or leaves."""
    try:
        while data := reader.read1(1 << 16):
            channel.write_stdin(data)
    except (OSError, ValueError):
        pass  # the connection is gone
    if close_at_end:
        channel.close_stdin()  # ^D on a terminal


# list, inspect


def _labels(c: Container) -> dict[str, str]:
    labels = dict((c.extra.get("resolved", {}).get("image_config") or {}).get("Labels") or {})
    labels.update((c.extra.get("docker", {}).get("Config") or {}).get("Labels") or {})
    return {str(k): str(v) for k, v in labels.items()}


def _state(s: sup.Supervisor, c: Container) -> str:
    if s.is_running(c) or c.status == "running":
        return "running"
    return c.status


def _status_text(c: Container, state: str, now: float) -> str:
    from buildpy.containers.display import human_duration

    if state == "running":
        return "Up " + human_duration(now - (c.started or c.created))
    if state == "exited":
        return f"Exited ({c.exit_code if c.exit_code is not None else 0}) " + human_duration(
            now - (c.finished or c.created)) + " ago"
    return state.capitalize()


def _mounts(store: Store, c: Container) -> list[dict[str, Any]]:
    targets = list(c.mounts)
    out = []
    for i, what in enumerate(c.extra.get("volumes", [])):
        kind, _, source = what.partition(":")
        target = targets[i] if i < len(targets) else ""
        binds = c.extra.get("options", {}).get("volumes") or []
        rw = not (i < len(binds) and str(binds[i]).endswith(":ro"))
        if kind == "volume":
            out.append({"Type": "volume", "Name": source, "Source": str(volumes.path(store, source)),
                        "Destination": target, "Driver": "local", "Mode": "z", "RW": rw, "Propagation": ""})
        else:
            out.append({"Type": "bind", "Source": source, "Destination": target, "Mode": "", "RW": rw,
                        "Propagation": "rprivate"})
    return out


def _network_mode(c: Container) -> str:
    return {"private": "default"}.get(c.network, c.network)


def _published(c: Container) -> list[Port]:
    return [recorded_port(text) for text in c.ports]


def _port_map(c: Container, running: bool) -> dict[str, list[dict[str, str]]]:
    """NetworkSettings.Ports (what `docker port` reads): bound only while it runs."""
    out: dict[str, list[dict[str, str]]] = {}
    for p in _published(c) if running else []:
        out.setdefault(f"{p.container_port}/{p.proto}", []).append({"HostIp": p.host_ip, "HostPort": str(p.host_port)})
    return out


def summary(s: sup.Supervisor, c: Container, now: float) -> dict[str, Any]:
    state = _state(s, c)
    return {
        "Id": c.id,
        "Names": ["/" + c.name],
        "Image": c.image,
        "ImageID": c.extra.get("resolved", {}).get("image_id", ""),
        "Command": " ".join(c.command),
        "Created": int(c.created),
        "Ports": [{"IP": p.host_ip, "PrivatePort": p.container_port, "PublicPort": p.host_port, "Type": p.proto}
                  for p in (_published(c) if state == "running" else [])],
        "Labels": _labels(c),
        "State": state,
        "Status": _status_text(c, state, now),
        "HostConfig": {"NetworkMode": _network_mode(c)},
        "NetworkSettings": {"Networks": {}},
        "Mounts": _mounts(s.store, c),
    }


@route("GET", r"/containers/json")
def _list(h, q: Query) -> None:  # noqa: ANN001
    s = supervisor_of(h)
    filters = q.filters(("label", "name", "id", "status"))
    now = time.time()
    out = []
    for c in s.all():
        state = _state(s, c)
        if not q.flag("all") and state != "running" and "status" not in filters:
            continue
        if "status" in filters and state not in filters["status"]:
            continue
        if "id" in filters and not any(c.id.startswith(x) for x in filters["id"]):
            continue
        if "name" in filters and not any(_name_matches(c.name, x) for x in filters["name"]):
            continue
        if not labels_match(_labels(c), filters.get("label", [])):
            continue
        out.append(summary(s, c, now))
    limit = q.integer("limit", -1)
    if limit is not None and limit > 0:
        out = out[:limit]
    h.json(200, out)


def _name_matches(name: str, pattern: str) -> bool:
    try:
        return re.search(pattern.removeprefix("/"), name) is not None
    except re.error:
        return pattern.removeprefix("/") in name


def inspect(s: sup.Supervisor, c: Container) -> dict[str, Any]:
    opts = c.extra.get("options", {})
    docker = c.extra.get("docker", {})
    resolved = c.extra.get("resolved", {})
    image_cfg = resolved.get("image_config") or {}
    given = docker.get("Config") or {}
    state = _state(s, c)
    running = state == "running"
    host = dict(docker.get("HostConfig") or {})
    host.setdefault("NetworkMode", _network_mode(c))
    host.setdefault("AutoRemove", bool(opts.get("remove")))
    host["LogConfig"] = {"Type": "json-file", "Config": {}}  # docker-py reads output back only then
    host.setdefault("RestartPolicy", {"Name": "no", "MaximumRetryCount": 0})
    for key in ("Binds", "PortBindings"):
        host.setdefault(key, None)
    for key in ("Memory", "NanoCpus"):
        host.setdefault(key, 0)
    entrypoint = given.get("Entrypoint") if given.get("Entrypoint") is not None else image_cfg.get("Entrypoint")
    cmd = given.get("Cmd") if given.get("Cmd") else image_cfg.get("Cmd")
    config = {
        "Hostname": opts.get("hostname") or c.short_id,
        "Domainname": "",
        "User": resolved.get("user", ""),
        "AttachStdin": bool(given.get("AttachStdin")),
        "AttachStdout": bool(given.get("AttachStdout")),
        "AttachStderr": bool(given.get("AttachStderr")),
        "ExposedPorts": given.get("ExposedPorts"),
        "Tty": bool(opts.get("tty")),
        "OpenStdin": bool(opts.get("interactive")),
        "StdinOnce": bool(given.get("StdinOnce")),
        "Env": resolved.get("env", []),
        "Cmd": cmd,
        "Image": c.image,
        "Volumes": given.get("Volumes"),
        "WorkingDir": given.get("WorkingDir") or image_cfg.get("WorkingDir") or "",
        "Entrypoint": entrypoint,
        "OnBuild": None,
        "Labels": _labels(c),
    }
    if given.get("StopSignal"):
        config["StopSignal"] = given["StopSignal"]
    return {
        "Id": c.id,
        "Created": _rfc3339(c.created),
        "Path": c.command[0] if c.command else "",
        "Args": list(c.command[1:]),
        "State": {
            "Status": state,
            "Running": running,
            "Paused": False,
            "Restarting": False,
            "OOMKilled": c.exit_code == 137 and bool(c.limits) and "memory" in c.limits,
            "Dead": False,
            "Pid": s.main_pid(c) if running else 0,
            "ExitCode": c.exit_code or 0,
            "Error": c.error,
            "StartedAt": _rfc3339(c.started),
            "FinishedAt": _rfc3339(c.finished) if not running else _ZERO_TIME,
        },
        "Image": resolved.get("image_id", ""),
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": str(s.log_path(c)),
        "Name": "/" + c.name,
        "RestartCount": 0,
        "Driver": "buildpy",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": host,
        "GraphDriver": {"Name": "buildpy", "Data": {}},
        "Mounts": _mounts(s.store, c),
        "Config": config,
        "NetworkSettings": {"Bridge": "", "SandboxID": "", "HairpinMode": False,
                            "Ports": _port_map(c, _state(s, c) == "running"),
                            "SandboxKey": "", "IPAddress": "", "IPPrefixLen": 0, "Gateway": "",
                            "MacAddress": "", "Networks": {}},
    }


@route("GET", r"/containers/([^/]+)/json")
def _inspect(h, q: Query, name: str) -> None:  # noqa: ANN001
    s = supervisor_of(h)
    with answers(name):
        c = s.find(name)
    h.json(200, inspect(s, c))

