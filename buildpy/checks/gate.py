"""The build checks as a build runs them, for every front door (`buildpy build`, `buildpy lint`,
POST /build of the Engine API): the Dockerfile's `# check=` directive merged with the caller's
flags, what else the checks read (`CheckFacts`, which the planner gathers: the .dockerignore, the
base images the store has), and the verdict remembered per Dockerfile (memo.py) so a rebuild of
an unchanged one costs a hash."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from buildpy.checks import memo

if TYPE_CHECKING:
    from buildpy.checks.findings import LintResult


class Facts(Protocol):
    """What the checks read beside the Dockerfile (planner.checkfacts.CheckFacts)."""

    ignored: Callable[[str], bool]
    base_config: Callable[[str], dict[str, Any] | None]
    depends_on: tuple[bytes, ...]


class ChecksError(Exception):
    """The checks cannot run (an unreadable Dockerfile), or failed with `# check=error=true`."""

    user_facing = True


def check(context: Path | str, dockerfile: Path | str, build_args: Mapping[str, str], platform: str,
          facts: Facts, skip: Sequence[str] = (), error: bool | None = None) -> tuple[LintResult, str]:
    """The findings for a Dockerfile and the name they are reported under."""
    from buildpy.checks.config import config_from_directive, merge
    from buildpy.checks.lint import lint
    from buildpy.grammar.errors import DockerfileError

    dockerfile = Path(dockerfile)
    try:
        source = dockerfile.read_bytes()
    except OSError as e:
        raise ChecksError(f"cannot read {dockerfile}: {e.strerror}") from None
    name = dockerfile.name if dockerfile.parent == Path(context) else str(dockerfile)
    try:
        config = merge(config_from_directive(source, name), skip, error)
    except DockerfileError:
        config = None  # lint reports the directive's mistake

    def base_env(ref: str) -> dict[str, str] | None:
        found = facts.base_config(ref)
        if found is None:
            return None
        return dict(item.partition("=")[::2] for item in (found.get("config") or {}).get("Env") or [])

    def base_platform(ref: str) -> str | None:
        found = facts.base_config(ref)
        if found is None or not found.get("os"):
            return None
        return "/".join(p for p in (found.get("os"), found.get("architecture"), found.get("variant")) if p)

    return lint(source, name, ignored=facts.ignored, build_args=dict(build_args),
                target_platform=platform or "linux/amd64", config=config, base_env=base_env,
                base_platform=base_platform), name


def remembered(memo_dir: Path, context: Path | str, dockerfile: Path | str, build_args: Mapping[str, str],
               platform: str, facts: Facts) -> memo.Verdict:
    """The verdict a build starts with, remembered (under `memo_dir`) by everything the checks read."""
    from buildpy import __version__

    dockerfile = Path(dockerfile)
    try:
        source = dockerfile.read_bytes()
    except OSError:
        source = b"\0missing"
    key = memo.key_of([__version__, str(dockerfile), source, *facts.depends_on, platform,
                       json.dumps(sorted(build_args.items()))])

    def compute() -> memo.Verdict:
        result, _ = check(context, dockerfile, build_args, platform, facts)
        lines = tuple(f"{f.file}:{f.line}: {f.rule}: {f.message}" for f in result.findings)
        return memo.Verdict(lines, result.config.error, result.error is not None)

    return memo.verdict(memo_dir, key, compute)


def before_build(memo_dir: Path, context: Path | str, dockerfile: Path | str, build_args: Mapping[str, str],
                 platform: str, facts: Facts, warn: Callable[[str], None]) -> None:
    """What a build does first: `warn` each finding ("FILE:LINE: Rule: message"), then raise
    ChecksError when the Dockerfile makes them errors (`# check=error=true`)."""
    verdict = remembered(memo_dir, context, dockerfile, build_args, platform, facts)
    for line in verdict.lines:
        warn(line)
    if verdict.lines and verdict.error:
        raise ChecksError(f"{len(verdict.lines)} build check(s) failed and the Dockerfile asks for "
                          "error=true (# check=error=true)")
