"""Build arguments: `--build-arg` values, the args BuildKit predefines (platforms, proxies),
and SOURCE_DATE_EPOCH.

Platform args are in the global scope without a declaration (usable in FROM); inside a stage
they need `ARG NAME` like any other. Proxy args need no declaration at all: RUN sees them, and
they stay out of history and cache keys, as BuildKit keeps them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

PROXY_ARGS = frozenset(
    name
    for base in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
    for name in (base, base.lower())
)


class BuildArgError(Exception):
    user_facing = True


def parse_build_args(items: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`--build-arg K=V` values; a bare `K` takes the value from the environment (and is left
    out when the environment has none), as `docker build` does."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            raise BuildArgError(f"invalid --build-arg {item!r}: the name is empty")
        if eq:
            out[key] = value
        elif key in environ:
            out[key] = environ[key]
    return out


def platform_args(target: str, build: str) -> dict[str, str]:
    """TARGETPLATFORM/TARGETOS/TARGETARCH/TARGETVARIANT and the BUILD* ones."""
    out: dict[str, str] = {}
    for prefix, platform in (("BUILD", build), ("TARGET", target)):
        parts = platform.split("/")
        out[f"{prefix}PLATFORM"] = platform
        out[f"{prefix}OS"] = parts[0]
        out[f"{prefix}ARCH"] = parts[1] if len(parts) > 1 else ""
        out[f"{prefix}VARIANT"] = parts[2] if len(parts) > 2 else ""
    return out


def source_date_epoch(build_args: Mapping[str, str], environ: Mapping[str, str] | None = None) -> int | None:
    """SOURCE_DATE_EPOCH from `--build-arg` (first) or the environment; None when unset."""
    environ = os.environ if environ is None else environ
    text = build_args.get("SOURCE_DATE_EPOCH", environ.get("SOURCE_DATE_EPOCH", ""))
    if text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise BuildArgError(f"invalid SOURCE_DATE_EPOCH {text!r}: not a number of seconds") from None
    if value < 0:
        raise BuildArgError(f"invalid SOURCE_DATE_EPOCH {text!r}: negative")
    return value
