"""The exec endpoints (`docker exec`, docker-py's `exec_run`): create an exec instance in a running
container, start it (the connection hijacked as for attach: multiplexed frames without a tty, raw
bytes with one; or detached), resize its terminal, inspect it. The processes are the supervisor's
(`Supervisor.exec_*`), which starts each through `buildpy.sandbox.enter`."""

from __future__ import annotations

from typing import Any

from buildpy.api import events
from buildpy.api.containers import answers, relay, stream_type, strings, supervisor_of
from buildpy.api.errors import ApiError
from buildpy.api.routing import Query, route
from buildpy.containers import supervisor as sup


def _exec(h, exec_id: str) -> sup.Exec:  # noqa: ANN001 - h: the server's exchange
    try:
        return supervisor_of(h).exec_get(exec_id)
    except sup.NoSuchExec:
        raise ApiError(404, f"No such exec instance: {exec_id}") from None


def _config(body: dict[str, Any]) -> sup.ExecConfig:
    if body.get("Privileged"):
        raise ApiError(501, "buildpy does not implement privileged exec (its containers are never privileged)")
    args = strings(body.get("Cmd"), "Cmd") or ()
    if not args:
        raise ApiError(400, "No exec command specified")
    user = body.get("User") or ""
    workdir = body.get("WorkingDir") or ""
    if not isinstance(user, str) or not isinstance(workdir, str):
        raise ApiError(400, "invalid User or WorkingDir: expected strings")
    if workdir and not workdir.startswith("/"):
        raise ApiError(400, f"the working directory '{workdir}' is invalid, it needs to be an absolute path")
    env = strings(body.get("Env"), "Env") or ()
    for item in env:
        if not item.partition("=")[0]:
            raise ApiError(400, f"invalid environment variable: {item!r}")
    return sup.ExecConfig(args=args, env=env, user=user, workdir=workdir, tty=bool(body.get("Tty")),
                          stdin=bool(body.get("AttachStdin")), stdout=bool(body.get("AttachStdout")),
                          stderr=bool(body.get("AttachStderr")))


@route("POST", r"/containers/([^/]+)/exec")
def _create(h, q: Query, name: str) -> None:  # noqa: ANN001
    body = h.json_body() or {}
    config = _config(body)  # DetachKeys: the client's business
    with answers(name):
        e = supervisor_of(h).exec_create(name, config)
    events.exec_event(h.store, "exec_create", e)
    h.json(201, {"Id": e.id})


@route("POST", r"/exec/([^/]+)/start")
def _start(h, q: Query, exec_id: str) -> None:  # noqa: ANN001
    body = h.json_body() or {}
    detach = bool(body.get("Detach"))
    e = _exec(h, exec_id)
    with answers(e.container_id):
        _, channel, listener = supervisor_of(h).exec_start(e.id, listen=not detach)
    events.exec_event(h.store, "exec_start", e)
    if detach:
        h.send(200, b"", "application/json")
        return
    tty = e.config.tty
    wanted = {s for s, on in (("stdout", e.config.stdout), ("stderr", e.config.stderr)) if on}
    try:
        reader, sock = h.hijack(stream_type(h, tty))
    except OSError:
        if listener is not None:
            channel.unlisten(listener)
        channel.close_stdin()
        raise
    # the client's half-close ends the command's stdin, as docker exec does
    relay(reader, sock, channel, [], listener, wanted, tty, stdin=e.config.stdin, close_stdin_at_end=True)


@route("POST", r"/exec/([^/]+)/resize")
def _resize(h, q: Query, exec_id: str) -> None:  # noqa: ANN001
    height, width = q.integer("h", 0) or 0, q.integer("w", 0) or 0
    if height < 0 or width < 0 or height > 0xFFFF or width > 0xFFFF:
        raise ApiError(400, f"invalid terminal size {height}x{width}")
    e = _exec(h, exec_id)
    supervisor_of(h).exec_resize(e.id, height, width)
    try:
        h.send(200, b"", "text/plain; charset=utf-8")
    except OSError:
        h.close_connection = True


@route("GET", r"/exec/([^/]+)/json")
def _inspect(h, q: Query, exec_id: str) -> None:  # noqa: ANN001
    e = _exec(h, exec_id)
    cfg = e.config
    h.json(200, {
        "ID": e.id,
        "Running": e.running,
        "ExitCode": e.exit_code,
        "Pid": e.process_pid(),
        "ContainerID": e.container_id,
        "OpenStdin": cfg.stdin,
        "OpenStdout": cfg.stdout,
        "OpenStderr": cfg.stderr,
        "CanRemove": False,
        "DetachKeys": "",
        "ProcessConfig": {"tty": cfg.tty, "entrypoint": cfg.args[0], "arguments": list(cfg.args[1:]),
                          "privileged": False, "user": cfg.user},
    })
