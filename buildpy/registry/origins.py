"""Where a blob is known to live in registries (`ROOT/registry/origins/HEX`: lines of
`domain/repository`), learnt from pulls and pushes, so a push to another repository of the
same registry can ask it to mount the blob instead of uploading it (Docker's v2 metadata)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

from buildpy.cas.digest import hex_of
from buildpy.cas.store import Store, write_atomic

DIR = "registry/origins"
KEEP = 8


def _path(store: Store, digest: str) -> Path:
    return store.root / DIR / hex_of(digest)


def lookup(store: Store, digest: str) -> list[str]:
    """`domain/repository` names holding `digest`, most recent first."""
    try:
        return [line for line in _path(store, digest).read_text().splitlines() if line]
    except (OSError, ValueError):
        return []


def remember(store: Store, digests: Iterable[str], domain: str, repo: str) -> None:
    where = f"{domain}/{repo}"
    for digest in digests:
        with contextlib.suppress(OSError, ValueError):
            known = lookup(store, digest)
            if known[:1] == [where]:
                continue
            lines = [where] + [k for k in known if k != where][: KEEP - 1]
            path = _path(store, digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, ("\n".join(lines) + "\n").encode(), store.tmp_dir)
