"""The build checks' verdict on a Dockerfile, remembered: a rebuild of an unchanged Dockerfile
prints the same warnings without importing the front end (some 60 ms, half of a no-change
rebuild). Keyed by everything the checks read — the Dockerfile's bytes, the .dockerignore's,
the build args, the platform, buildpy's version — so any change checks anew."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Verdict:
    lines: tuple[str, ...]  # "FILE:LINE: Rule: message", one per finding
    error: bool  # the findings are errors (# check=error=true)
    parse_error: bool  # the checks could not read the Dockerfile (the build will say why)


def key_of(parts: Iterable[bytes | str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def verdict(directory: Path, key: str, compute: Callable[[], Verdict]) -> Verdict:
    path = directory / key[:32]
    try:
        obj = json.loads(path.read_text())
        return Verdict(tuple(obj["lines"]), bool(obj["error"]), bool(obj["parse_error"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = compute()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({"lines": list(result.lines), "error": result.error, "parse_error": result.parse_error}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a memo only
    return result
