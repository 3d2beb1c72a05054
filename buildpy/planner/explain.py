"""Why a step runs: each build of a (context, Dockerfile, target) leaves the inputs of its
steps in `ROOT/builds/`; a step whose key misses is compared with the same step of the build
before, and the difference is said in words (`3 files changed: src/a.py, …`, `build-arg X
changed`, `parent changed`), as no peer tells its users.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


from buildpy.cas.store import Store, write_atomic
from buildpy.planner.context import changed_files
from buildpy.planner.plan import Plan, Step

DIR = "builds"
_SHOW_FILES = 5


def _slot(step: Step) -> str:
    """Where a step is, independent of its key: the stage and its place in it."""
    return step.label.split("]", 1)[0] + "]"


class Previous:
    """The last build's record for this identity, read only when a step misses."""

    def __init__(self, store: Store, ident: str) -> None:
        self.path = store.root / DIR / f"{ident}.json"
        self._steps: dict[str, Any] | None = None

    def steps(self) -> dict[str, Any]:
        if self._steps is None:
            try:
                steps = json.loads(self.path.read_bytes()).get("steps", {})
            except (OSError, ValueError, AttributeError):
                steps = {}
            self._steps = steps if isinstance(steps, dict) else {}
        return self._steps

    def keys(self) -> dict[str, str]:
        return {slot: entry.get("key", "") for slot, entry in self.steps().items() if isinstance(entry, dict)}

    def reason(self, step: Step, *, no_cache: bool = False) -> str:
        if no_cache:
            return "--no-cache"
        before = self.steps().get(_slot(step))
        if not isinstance(before, dict) or not before:
            return "not built before"
        return describe(before.get("inputs", {}), step.inputs, before.get("files", {}), step.files,
                        before.get("key") == step.key)

    def save(self, store: Store, plan: Plan) -> None:
        steps = {
            _slot(s): {"key": s.key, "inputs": dict(s.inputs), "files": dict(s.files)}
            for s in plan.steps() if s.key
        }
        # the same keys as last time: nothing new to say next time, and nothing to write
        if self.path.exists() and self.keys() == {k: v["key"] for k, v in steps.items()}:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"steps": steps}, sort_keys=True, separators=(",", ":")).encode()
        write_atomic(self.path, data, store.tmp_dir)


def describe(old: Mapping[str, Any], new: Mapping[str, Any], old_files: Mapping[str, str],
             new_files: Mapping[str, str], same_key: bool) -> str:
    if same_key:
        return "its cache record is gone (pruned)"
    reasons: list[str] = []
    changed = changed_files(old_files, new_files)
    if changed:
        shown = ", ".join(changed[:_SHOW_FILES]) + (", …" if len(changed) > _SHOW_FILES else "")
        reasons.append(f"{len(changed)} file{'s' if len(changed) != 1 else ''} changed: {shown}")
    if old.get("env") != new.get("env"):
        reasons.append(_env_change(old.get("env") or [], new.get("env") or []))
    for name, words in (("argv", "command changed"), ("sources", "sources changed"), ("dest", "destination changed"),
                        ("stage", "the stage it copies from changed"), ("image", "the image it copies from changed"),
                        ("cwd", "workdir changed"), ("workdir", "workdir changed"), ("user", "user changed"),
                        ("chown", "--chown changed"), ("chmod", "--chmod changed"), ("mounts", "mounts changed"),
                        ("network", "network changed"), ("path", "path changed"), ("inline", "inline content changed")):
        if old.get(name) != new.get(name) and words not in reasons:
            if name == "mounts" and changed:
                continue
            reasons.append(words)
    if not reasons and old.get("files") != new.get("files"):
        reasons.append("files changed")
    if not reasons and old.get("parent") != new.get("parent"):
        reasons.append("parent changed")
    if not reasons:
        remaining = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        reasons.append("changed: " + ", ".join(remaining) if remaining else "no cache record")
    return "; ".join(reasons)


def _env_change(old: list[str], new: list[str]) -> str:
    o = dict(e.split("=", 1) if "=" in e else (e, "") for e in old)
    n = dict(e.split("=", 1) if "=" in e else (e, "") for e in new)
    names = sorted(k for k in set(o) | set(n) if o.get(k) != n.get(k))
    return f"env/build-arg {', '.join(names)} changed"
