"""Blob transfers side by side: a few threads, the first failure cancels what has not started
and is raised once the running ones end."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
JOBS = 4


def each(work: Callable[[T], object], items: Sequence[T], jobs: int = JOBS, name: str = "blob") -> None:
    if not items:
        return
    if len(items) == 1:
        work(items[0])
        return
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(items))), thread_name_prefix=name) as pool:
        futures = [pool.submit(work, item) for item in items]
        error: BaseException | None = None
        for f in futures:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001 - the first one is raised below
                if error is None:
                    error = e
                    for other in futures:
                        other.cancel()
        if error is not None:
            raise error
