"""Blobs a build may need but the store lacks yet: layers of a base image resolved in a
registry, of an imported build cache. Each is fetched when a step first needs its bytes (or
the final image holds it), once, verified; a build that reuses every step fetches only the
layers of the image it makes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from buildpy.cas.media import Descriptor
from buildpy.cas.store import Store, StoreError
from buildpy.registry import origins, parallel

if TYPE_CHECKING:  # the HTTP client is imported by whoever makes a Client, not by every build
    from buildpy.registry.client import Client

Progress = Callable[[str, str, int, int], None]  # (digest, state, bytes done, total)


def _no_progress(digest: str, state: str, done: int, total: int) -> None:
    pass

Fetcher = Callable[[Descriptor], None]


class BlobSource:
    def __init__(self, store: Store, progress: Progress = _no_progress) -> None:
        self.store = store
        self.progress = progress
        self._where: dict[str, Fetcher] = {}
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}

    def add_registry(self, client: Client, repo: str, descs: Iterable[Descriptor]) -> None:
        def fetch(d: Descriptor) -> None:
            client.fetch_blob(repo, d, self.store, self.progress)
            origins.remember(self.store, [d.digest], client.domain, repo)

        self.add(fetch, descs)

    def add(self, fetcher: Fetcher, descs: Iterable[Descriptor]) -> None:
        with self._lock:
            for d in descs:
                self._where.setdefault(d.digest, fetcher)

    def can_fetch(self, digest: str) -> bool:
        return self.store.has_blob(digest) or digest in self._where

    def ensure(self, descs: Iterable[Descriptor]) -> None:
        """Make every blob of `descs` present, fetching the missing ones in parallel."""
        todo = [d for d in dict.fromkeys(descs) if not self.store.has_blob(d.digest)]
        for d in todo:
            if d.digest not in self._where:
                raise StoreError(f"blob {d.digest} is neither in the store nor in a known registry")
        parallel.each(self._one, todo, name="fetch")

    def _one(self, d: Descriptor) -> None:
        with self._lock:
            busy = self._busy.setdefault(d.digest, threading.Lock())
        with busy:
            if not self.store.has_blob(d.digest):
                self._where[d.digest](d)
