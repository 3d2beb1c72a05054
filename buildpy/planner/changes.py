"""`docker commit --change`: Dockerfile lines (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL,
USER, VOLUME, WORKDIR) applied to an image's `config` object the way a build's steps apply them
(plan.apply_metadata), parsed by the grammar."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

ALLOWED = "CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR"


class ChangeError(Exception):
    user_facing = True


def apply_changes(cfg: dict[str, Any], changes: Sequence[str]) -> None:
    """Apply each line of `changes` to `cfg`; ChangeError for a line that is not one of ALLOWED."""
    from buildpy.grammar import instructions as ins
    from buildpy.grammar.errors import DockerfileError
    from buildpy.grammar.parser import parse
    from buildpy.planner.plan import apply_metadata

    lines = [line for text in changes for line in text.splitlines() if line.strip()]
    if not lines:
        return
    try:
        parsed = [ins.instruction_from_node(n, "--change") for n in parse("\n".join(lines), file="--change").nodes]
    except DockerfileError as e:
        raise ChangeError(f"invalid --change: {e}") from None
    allowed = (ins.Cmd, ins.Entrypoint, ins.Env, ins.Expose, ins.Label, ins.StopSignal, ins.User, ins.Volume)
    for i in parsed:
        if isinstance(i, ins.Workdir):
            cfg["WorkingDir"] = posixpath.normpath(posixpath.join(cfg.get("WorkingDir") or "/", i.path))
        elif isinstance(i, allowed):
            try:
                apply_metadata(cfg, i, ("/bin/sh", "-c"), cmd_set=True)  # a commit keeps the CMD an ENTRYPOINT meets
            except DockerfileError as e:
                raise ChangeError(f"invalid --change: {e}") from None
        else:
            keyword = i.text.split(None, 1)[0].upper() if i.text else type(i).__name__.upper()
            raise ChangeError(f"{keyword} is not a valid change command: use {ALLOWED}")
