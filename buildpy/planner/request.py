"""What a build is asked to do, as the command line read it: light to import, since the
command line and the no-change fast path need it before anything heavy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BuildRequest:
    """What the user asked for, as the CLI read it."""

    context: Path
    dockerfile: Path
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str = ""  # the target platform; "" = the host's
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = "default"
    pull: bool = False  # ask the registry for every FROM image, even one the store has (--pull)
    # --build-context NAME=…, resolved: ("image", REF) or ("dir", PATH)
    named_contexts: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    source_auth: Any = field(default=None, compare=False, repr=False)  # sources.SourceAuth for ADD of git/http


def identity(request: BuildRequest) -> str:
    """Which build this is across runs: its context, Dockerfile and target (the key under which
    its stat cache, its steps' inputs and its fingerprint are kept)."""
    import blake3

    text = f"{request.context.resolve()}\0{request.dockerfile.resolve()}\0{request.target or ''}"
    return blake3.blake3(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]
