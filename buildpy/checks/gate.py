"""The build checks as a build runs them, for every front door (`buildpy build`, `buildpy lint`,
POST /build of the Engine API): the Dockerfile's `# check=` directive merged with the caller's
flags, the base images' facts from the store (never pulled), and the verdict remembered per
Dockerfile (memo.py) so a rebuild of an unchanged one costs a hash."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildpy.checks import memo

if TYPE_CHECKING:
    from buildpy.cas.store import Store
    from buildpy.checks.findings import LintResult


class ChecksError(Exception):
    """The checks cannot run (an unreadable Dockerfile), or failed with `# check=error=true`."""

    user_facing = True


def check(context: Path | str, dockerfile: Path | str, build_args: Mapping[str, str], platform: str,
          skip: Sequence[str] = (), error: bool | None = None,
          store: Store | None = None) -> tuple[LintResult, str]:
    """The findings for a Dockerfile and the name they are reported under."""
    from buildpy.checks.config import config_from_directive, merge
    from buildpy.checks.lint import lint
    from buildpy.grammar.errors import DockerfileError
    from buildpy.planner.dockerignore import Matcher, read_patterns

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
    ignore = Matcher(read_patterns(Path(context), dockerfile))

    def base_env(ref: str) -> dict[str, str] | None:
        found = _base_config(store, ref)
        if found is None:
            return None
        return dict(item.partition("=")[::2] for item in (found.get("config") or {}).get("Env") or [])

    def base_platform(ref: str) -> str | None:
        found = _base_config(store, ref)
        if found is None or not found.get("os"):
            return None
        return "/".join(p for p in (found.get("os"), found.get("architecture"), found.get("variant")) if p)

    return lint(source, name, ignored=ignore, build_args=dict(build_args), target_platform=platform or "linux/amd64",
                config=config, base_env=base_env, base_platform=base_platform), name


def _base_config(store: Store | None, ref: str) -> dict[str, Any] | None:
    """The config of a base image the store has (the checks never pull), None when unknown."""
    if store is None:
        return None
    from buildpy.cas.reference import resolve

    try:
        return resolve(store, ref)[1].config
    except Exception:  # noqa: BLE001 - an image the checks cannot see is an unknown one
        return None


def remembered(store: Store, context: Path | str, dockerfile: Path | str, build_args: Mapping[str, str],
               platform: str) -> memo.Verdict:
    """The verdict a build starts with, remembered by everything the checks read."""
    from buildpy import __version__

    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError:
            return b"\0missing"

    dockerfile = Path(dockerfile)
    ignore_files = [Path(context) / ".dockerignore", Path(str(dockerfile) + ".dockerignore")]
    try:  # the base images' facts count: any change of the store's refs checks anew
        st = store.index_path.stat()
        refs_stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        refs_stamp = "none"
    key = memo.key_of([__version__, str(dockerfile), read(dockerfile), *(read(p) for p in ignore_files), platform,
                       json.dumps(sorted(build_args.items())), refs_stamp])

    def compute() -> memo.Verdict:
        result, _ = check(context, dockerfile, build_args, platform, store=store)
        lines = tuple(f"{f.file}:{f.line}: {f.rule}: {f.message}" for f in result.findings)
        return memo.Verdict(lines, result.config.error, result.error is not None)

    return memo.verdict(store.root / "checks", key, compute)


def before_build(store: Store, context: Path | str, dockerfile: Path | str, build_args: Mapping[str, str],
                 platform: str, warn: Callable[[str], None]) -> None:
    """What a build does first: `warn` each finding ("FILE:LINE: Rule: message"), then raise
    ChecksError when the Dockerfile makes them errors (`# check=error=true`)."""
    verdict = remembered(store, context, dockerfile, build_args, platform)
    for line in verdict.lines:
        warn(line)
    if verdict.lines and verdict.error:
        raise ChecksError(f"{len(verdict.lines)} build check(s) failed and the Dockerfile asks for "
                          "error=true (# check=error=true)")
