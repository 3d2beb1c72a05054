"""A command driven under a pseudo-terminal, as a person at a terminal drives it (`run -it`)."""

from __future__ import annotations

import os
import pty
import select
import time


def drive(argv: list[str], typed: bytes, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[bytes, int | None]:
    """Run `argv` on a new pty, type `typed`, read until it closes; (what the terminal showed,
    the exit status, None if it had to be killed)."""
    pid, fd = pty.fork()
    if pid == 0:
        if env is None:
            os.execv(argv[0], argv)
        os.execve(argv[0], argv, env)
    out = b""
    try:
        os.write(fd, typed)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
    finally:
        status = None
        deadline = time.monotonic() + 30
        while status is None and time.monotonic() < deadline:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
            else:
                time.sleep(0.05)
        if status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    return out, (os.waitstatus_to_exitcode(status) if status is not None else None)
