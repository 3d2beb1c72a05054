"""How a build runs (jobs, cache use, compression, network, secrets, entitlements): light to
import, for the command line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buildpy.cas.buildcache import CacheRecord
    from buildpy.cas.image import Image
    from buildpy.executor.cancel import Cancel


@dataclass(frozen=True)
class BuildOptions:
    jobs: int = 0  # 0: the core count for in-process work, RUN steps unbounded
    no_cache: bool = False
    no_cache_filter: frozenset[str] = frozenset()  # stage names (or indexes) not to reuse
    compression: str = "gzip"
    network: str = "default"  # for RUN without --network
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    ssh_agents: Mapping[str, str] | None = None
    allow: frozenset[str] = frozenset()
    hostname: str = "buildpy"
    rootfs_mode: str = "auto"
    cancel: Cancel | None = field(default=None, compare=False)  # stops the build from outside (cancel.py)


@dataclass(frozen=True)
class BuildResult:
    image: Image
    ran: int  # steps that ran
    cached: int  # steps reused
    records: tuple[tuple[int, str, CacheRecord], ...] = ()  # (stage index, key, record) of every step
