"""What the build checks read beside the Dockerfile, gathered where the planner's knowledge is:
the context's `.dockerignore` (for CopyIgnoredFile), the configs of base images the store
already has (for UndefinedVar and the platform checks; the checks never pull), and what a
remembered verdict depends on (the ignore files' bytes, a stamp of the store's refs: a changed
ref checks anew). The checks package itself imports nothing of the planner or the store.
Each is read when first asked for: a remembered verdict needs only `depends_on`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildpy.cas.store import Store


@dataclass(frozen=True)
class CheckFacts:
    context: Path
    dockerfile: Path
    store: Store | None

    @functools.cached_property
    def ignored(self):  # noqa: ANN201 - a dockerignore.Matcher: callable on a context path
        from buildpy.planner.dockerignore import Matcher, read_patterns

        return Matcher(read_patterns(self.context, self.dockerfile))

    def base_config(self, ref: str) -> dict[str, Any] | None:
        """The config of the image `ref` names if the store has it, else None."""
        if self.store is None:
            return None
        from buildpy.cas.reference import resolve

        try:
            return resolve(self.store, ref)[1].config
        except Exception:  # noqa: BLE001 - an image the checks cannot see is an unknown one
            return None

    @functools.cached_property
    def depends_on(self) -> tuple[bytes, ...]:
        """Beyond the Dockerfile and the flags, what a verdict depends on."""
        def read(path: Path) -> bytes:
            try:
                return path.read_bytes()
            except OSError:
                return b"\0missing"

        refs_stamp = b"none"
        if self.store is not None:
            try:
                st = self.store.index_path.stat()
                refs_stamp = f"{st.st_size}:{st.st_mtime_ns}".encode()
            except OSError:
                pass
        ignore_files = (self.context / ".dockerignore", Path(str(self.dockerfile) + ".dockerignore"))
        return (*(read(p) for p in ignore_files), refs_stamp)


def check_facts(context: Path | str, dockerfile: Path | str, store: Store | None) -> CheckFacts:
    return CheckFacts(Path(context), Path(dockerfile), store)
