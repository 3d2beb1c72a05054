"""Helpers for the sandbox tests: skip when the machine cannot run a sandbox, a busybox rootfs
extracted with tarfile (not the store's unpacker: these tests must not depend on it), specs with
an overlay over it, and running a shell command to (exit status, stdout, stderr)."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from buildpy.sandbox.spec import Overlay, Process, SandboxSpec
from tests.imagekit import busybox_tar


def sandbox_or_skip() -> None:
    if sys.platform != "linux":
        pytest.skip("the sandbox needs Linux namespaces")
    if not Path("/proc/self/ns/user").exists():
        pytest.skip("the kernel has no user namespaces")
    try:
        if int(Path("/proc/sys/user/max_user_namespaces").read_text()) == 0:
            pytest.skip("user namespaces are disabled (user.max_user_namespaces = 0)")
    except OSError:
        pass
    if os.geteuid() != 0 and Path("/proc/sys/kernel/unprivileged_userns_clone").exists():
        if Path("/proc/sys/kernel/unprivileged_userns_clone").read_text().strip() == "0":
            pytest.skip("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone)")


def other_ids_or_skip() -> None:
    """Steps as users other than root need more than one mapped id: root, or a subuid range."""
    from buildpy.sandbox.idmap import for_current_user

    if for_current_user().mode == "self":
        pytest.skip("rootless without a /etc/subuid range (and newuidmap): only root exists in the sandbox")


def extract(tar: bytes, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        # Our own test tars: trusted, and /tmp must keep its sticky bit.
        if hasattr(tarfile, "fully_trusted_filter"):
            t.extractall(dest, filter="fully_trusted")
        else:
            t.extractall(dest)
    return dest


def busybox_rootfs(dest: Path, extra: dict[str, bytes | str] | None = None) -> Path:
    return extract(busybox_tar(extra), dest)


class Layout:
    """A lower dir with busybox, and fresh upper/work/root dirs for each spec."""

    def __init__(self, base: Path, lower: Path | None = None) -> None:
        self.base = base
        self.lower = lower or busybox_rootfs(base / "lower")
        self.count = 0

    def spec(self, *args: str, overlay: bool = True, **process: object) -> SandboxSpec:
        self.count += 1
        run_dir = self.base / f"run{self.count}"
        run_dir.mkdir()
        fields = {k: v for k, v in process.items() if k in ("env", "cwd", "user")}
        others = {k: v for k, v in process.items() if k not in fields}
        proc = Process(args=args, **fields)  # type: ignore[arg-type]
        if overlay:
            for name in ("upper", "work", "root"):
                (run_dir / name).mkdir()
            ov = Overlay((self.lower,), run_dir / "upper", run_dir / "work")
            return SandboxSpec(rootfs=run_dir / "root", process=proc, overlay=ov, **others)  # type: ignore[arg-type]
        return SandboxSpec(rootfs=self.lower, process=proc, **others)  # type: ignore[arg-type]

    def sh(self, script: str, **kw: object) -> SandboxSpec:
        return self.spec("/bin/sh", "-c", script, **kw)


def run_sh(spec: SandboxSpec, **kw: object) -> tuple[int, str, str]:
    """Run `spec`, collecting its output: (exit status, stdout, stderr)."""
    from buildpy.sandbox.run import run

    out: list[bytes] = []
    err: list[bytes] = []
    code = run(spec, stdout=out.append, stderr=err.append, **kw)  # type: ignore[arg-type]
    return code, b"".join(out).decode(), b"".join(err).decode()


def marker() -> str:
    """A sleep duration no other process on the machine has in its command line."""
    return f"1000.{secrets.randbelow(10**6):06d}"


def processes_with(text: str) -> list[int]:
    """Pids of host processes whose command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry))
    return found


def host_sleep(duration: str) -> subprocess.Popen:
    return subprocess.Popen(["sleep", duration])


__all__ = ["Layout", "busybox_rootfs", "extract", "host_sleep", "marker", "other_ids_or_skip",
           "processes_with", "run_sh", "sandbox_or_skip"]
