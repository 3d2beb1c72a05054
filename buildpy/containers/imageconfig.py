"""The config a committed container's image gets (`docker commit`): its image's, with what the
container was created with on top (command, entrypoint, env, working dir, user), then the
`--change` lines (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL),
parsed by the Dockerfile grammar."""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Sequence
from typing import Any

from buildpy.containers.state import Container, ContainerError

_ALLOWED = "CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR"


def committed(container: Container, base: dict[str, Any], changes: Sequence[str] = ()) -> dict[str, Any]:
    """The `config` object of the committed image (`base`: the container's image's)."""
    cfg = copy.deepcopy(base)
    opts = container.extra.get("options") or {}
    resolved = container.extra.get("resolved") or {}
    if opts.get("command"):
        cfg["Cmd"] = list(opts["command"])
    if isinstance(opts.get("entrypoint"), list):
        cfg["Entrypoint"] = list(opts["entrypoint"]) or None
    if resolved.get("env"):
        cfg["Env"] = list(resolved["env"])
    if opts.get("workdir"):
        cfg["WorkingDir"] = opts["workdir"]
    if opts.get("user") is not None and opts.get("user") != "":
        cfg["User"] = opts["user"]
    lines = [line for text in changes for line in text.splitlines() if line.strip()]
    if lines:
        apply_changes(cfg, lines)
    return cfg


def apply_changes(cfg: dict[str, Any], lines: Sequence[str]) -> None:
    """Apply Dockerfile-like lines to `cfg` (ContainerError for anything else)."""
    from buildpy.grammar import instructions as ins
    from buildpy.grammar.errors import DockerfileError
    from buildpy.grammar.parser import parse

    try:
        nodes = parse("\n".join(lines), file="--change").nodes
        parsed = [ins.instruction_from_node(n, "--change") for n in nodes]
    except DockerfileError as e:
        raise ContainerError(f"invalid --change: {e}") from None
    for i in parsed:
        if isinstance(i, (ins.Cmd, ins.Entrypoint)):
            argv = ["/bin/sh", "-c", *i.args] if i.shell else list(i.args)
            cfg["Cmd" if isinstance(i, ins.Cmd) else "Entrypoint"] = argv
        elif isinstance(i, ins.Env):
            env = [e for e in cfg.get("Env") or [] if e.partition("=")[0] not in {k for k, _ in i.pairs}]
            cfg["Env"] = env + [f"{k}={v}" for k, v in i.pairs]
        elif isinstance(i, ins.Label):
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **dict(i.pairs)}
        elif isinstance(i, ins.Expose):
            ports = dict(cfg.get("ExposedPorts") or {})
            for p in i.ports:
                ports[p if "/" in p else f"{p}/tcp"] = {}
            cfg["ExposedPorts"] = ports
        elif isinstance(i, ins.Volume):
            cfg["Volumes"] = {**(cfg.get("Volumes") or {}), **{p: {} for p in i.paths}}
        elif isinstance(i, ins.Workdir):
            cfg["WorkingDir"] = posixpath.join(cfg.get("WorkingDir") or "/", i.path)
        elif isinstance(i, ins.User):
            cfg["User"] = i.user
        elif isinstance(i, ins.StopSignal):
            cfg["StopSignal"] = i.signal
        else:
            keyword = i.text.split(None, 1)[0].upper() if i.text else type(i).__name__.upper()
            raise ContainerError(f"{keyword} is not a valid change command: use {_ALLOWED}")
