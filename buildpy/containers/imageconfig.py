"""The config a committed container's image gets (`docker commit`): its image's, with what the
container was created with on top (command, entrypoint, env, working dir, user). `--change`
lines are applied after, by the caller (planner/changes.py)."""

from __future__ import annotations

import copy
from typing import Any

from buildpy.containers.state import Container

def committed(container: Container, base: dict[str, Any]) -> dict[str, Any]:
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
    return cfg
