"""A rebuild with nothing changed, answered by stat alone: every input of a build — the
Dockerfile's bytes, the `.dockerignore` patterns, the request (args, target, platform, labels),
the base images the names resolved to, and the stat of every context file the ignore rules keep
(path, type, mode, size, mtime, inode, ctime) — hashed into one fingerprint. When it equals the
last build's and that build's image is still stored, its result is the answer: no parsing, no
planning, no hashing of file contents.

Any doubt takes the full path, which reuses every step through the cache keys anyway: a
touched file (a new mtime) or a re-tagged base image only costs the planning. Builds that
read the network (ADD of a URL) never record a fingerprint.
"""

from __future__ import annotations

import json
import marshal
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from buildpy.cas.store import Store, write_atomic
from buildpy.planner.dockerignore import Matcher
from buildpy.planner.request import BuildRequest

DIR = "builds"
VERSION = 1


@dataclass(frozen=True)
class Remembered:
    manifest: dict[str, Any]  # the image's manifest descriptor, as stored
    steps: list[str]  # the labels of its filesystem steps, for the progress lines
    names: dict[str, str]  # the tags it was given, as the store names them


def fingerprint(request: BuildRequest, dockerfile: bytes, patterns: list[str]) -> str:
    h = blake3.blake3()
    meta = {
        "v": VERSION, "context": os.fspath(request.context.absolute()), "args": sorted(request.build_args.items()),
        "target": request.target, "platform": request.platform, "labels": sorted(request.labels.items()),
        "network": request.network, "patterns": patterns, "epoch": os.environ.get("SOURCE_DATE_EPOCH"),
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update(blake3.blake3(dockerfile).digest())
    _stat_tree(request.context, Matcher(patterns), h)
    return h.hexdigest()


def _stat_tree(root: Path, ignore: Matcher, h: Any) -> None:
    """Every kept entry's stat, depth first in name order; ignored directories are skipped
    unless an exception could bring something inside back (as the context reader walks)."""
    use_ignore = bool(ignore)
    dumps = marshal.dumps
    isdir = stat.S_ISDIR

    def walk(path: str, rel_dir: str) -> None:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        rows = []
        subdirs = []
        for e in entries:
            st = e.stat(follow_symlinks=False)
            if use_ignore:
                rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                if ignore.matches(rel):
                    if isdir(st.st_mode) and ignore.may_include_below(rel):
                        # the reader copies such a dir when something inside comes back: its stat counts
                        rows.append((e.name, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
                        subdirs.append(e)
                    continue
            rows.append((e.name, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
            if isdir(st.st_mode):
                subdirs.append(e)
        h.update(dumps((rel_dir, rows)))
        for e in subdirs:
            walk(e.path, f"{rel_dir}/{e.name}" if rel_dir else e.name)

    walk(os.fspath(root), "")


def _path(store: Store, ident: str) -> Path:
    return store.root / DIR / f"{ident}.fast"


def recall(store: Store, ident: str, fp: str) -> Remembered | None:
    """The last build's result when its fingerprint is `fp` and all it used is still there."""
    try:
        obj = json.loads(_path(store, ident).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("fingerprint") != fp:
        return None
    try:
        manifest = obj["manifest"]
        if not store.has_blob(manifest["digest"]):
            return None
        if obj["bases"]:
            refs = store.refs()
            for name, digest in obj["bases"].items():
                if name not in refs or refs[name].digest != digest:
                    return None
        return Remembered(manifest, list(obj["steps"]), dict(obj.get("names", {})))
    except (KeyError, TypeError, AttributeError):
        return None


def remember(store: Store, ident: str, fp: str, manifest: dict[str, Any], bases: dict[str, str],
             steps: list[str], names: dict[str, str]) -> None:
    obj = {"fingerprint": fp, "manifest": manifest, "bases": bases, "steps": steps, "names": names}
    path = _path(store, ident)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(obj, sort_keys=True).encode(), store.tmp_dir)


def forget(store: Store, ident: str) -> None:
    try:
        _path(store, ident).unlink()
    except FileNotFoundError:
        pass
