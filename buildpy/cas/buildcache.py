"""The build cache's records: a step's cache key → what the step made (its layer, or that it
made no change). One small JSON file a key under `ROOT/buildcache/`, written atomically; a
record whose layer blob is gone (pruned) reads as a miss, so prune needs no knowledge of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from buildpy.cas.media import Descriptor
from buildpy.cas.store import Store, canonical_json, write_atomic

DIR = "buildcache"


@dataclass(frozen=True)
class CacheRecord:
    """layer: the step's layer (None when it changed nothing); diff_id: its uncompressed digest."""

    layer: Descriptor | None
    diff_id: str = ""
    created: str = ""  # when the step first ran (RFC 3339): its history entry's time

    @property
    def empty(self) -> bool:
        return self.layer is None


def _path(store: Store, key: str) -> Path:
    return store.root / DIR / key[:2] / key


def lookup(store: Store, key: str) -> CacheRecord | None:
    """The record for `key`, or None (absent, unreadable, or its layer no longer stored)."""
    try:
        with open(_path(store, key), "rb") as f:
            obj = json.loads(f.read())
        layer = obj.get("layer")
        created = str(obj.get("created", ""))
        if layer is None:
            return CacheRecord(None, "", created)
        desc = Descriptor.from_json(layer, "cache record")
        if not store.has_blob(desc.digest):
            return None
        return CacheRecord(desc, str(obj["diff_id"]), created)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record(store: Store, key: str, rec: CacheRecord) -> None:
    obj = {"layer": rec.layer.to_json() if rec.layer else None, "diff_id": rec.diff_id, "created": rec.created}
    path = _path(store, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, canonical_json(obj), store.tmp_dir)


def clear(store: Store) -> int:
    """Forget every record (the layers stay until prune); returns how many were removed."""
    n = 0
    root = store.root / DIR
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.unlink(os.path.join(dirpath, name))
            n += 1
    return n
