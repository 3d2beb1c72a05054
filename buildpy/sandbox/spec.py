"""What a sandbox is asked to run: frozen descriptions passed from the executor (or `run`) to the
sandbox, and from the sandbox's parent to its child process (as JSON, since the child is a fresh
interpreter: a threaded parent is never forked without exec).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Network = Literal["none", "host", "default"]


@dataclass(frozen=True)
class Overlay:
    """The root as overlayfs: read-only snapshot dirs (topmost first) under a fresh upper dir,
    which receives exactly the step's change."""

    lowers: tuple[Path, ...]
    upper: Path
    work: Path
    # overlayfs "volatile": no syncs of the upper dir's filesystem, inside the step (fsync) or when
    # the overlay goes away (which would otherwise sync the whole host filesystem once per step).
    # The upper dir is read right after the step; fsync it yourself if you keep it. The work dir
    # then holds work/incompat/volatile, and cannot be used for another mount.
    volatile: bool = True


@dataclass(frozen=True)
class Mount:
    """One mount in the container, applied after the root is in place and before the process.

    type: "bind" (source is a host path), "tmpfs", or "file" (source is a host file bound over
    `target`, e.g. a secret or /etc/hosts). Nothing under a mount ends up in the layer."""

    target: str
    type: Literal["bind", "tmpfs", "file"] = "bind"
    source: Path | None = None
    readonly: bool = True
    options: tuple[str, ...] = ()  # e.g. ("size=64m", "mode=1777") for tmpfs


@dataclass(frozen=True)
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...] = ()  # "KEY=VALUE", in order
    cwd: str = "/"
    user: str = ""  # Docker's USER: "name|uid[:group|gid]", resolved in the rootfs; "" is root
    terminal: bool = False


@dataclass(frozen=True)
class SandboxSpec:
    """rootfs: the directory that becomes `/`. With `overlay`, the sandbox mounts the overlay on
    it (inside its own user and mount namespaces, so rootless works); without, rootfs is used
    as it is (the copy fallback)."""

    rootfs: Path
    process: Process
    overlay: Overlay | None = None
    mounts: tuple[Mount, ...] = ()
    network: str = "none"  # "none" | "host" | "default"
    hostname: str = "buildpy"
    extra_hosts: tuple[tuple[str, str], ...] = ()  # (name, address) for /etc/hosts
    insecure: bool = False  # RUN --security=insecure, allowed by the caller's entitlements
    timeout: float | None = None
