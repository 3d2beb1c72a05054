"""`run -t`: a pseudo-terminal for the container, as docker gives one. The container's process
gets the pty's slave as stdin/stdout/stderr and as its controlling terminal (job control, line
editing, ^C reaching it); this process relays between its own stdin/stdout and the master, with
its own terminal in raw mode (so keys pass through unchanged) and the window size passed on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import termios
import threading
import tty
from collections.abc import Iterator


@contextlib.contextmanager
def pty_for_container(interactive: bool) -> Iterator[int]:
    """Yields the slave fd to give the container; relays until the block ends."""
    master, slave = os.openpty()
    _copy_window_size(master)
    stop_r, stop_w = os.pipe()
    saved = None
    if interactive and os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0, termios.TCSANOW)  # not TCSAFLUSH: keys typed ahead still reach the container
    old_winch = signal.getsignal(signal.SIGWINCH) if threading.current_thread() is threading.main_thread() else None
    if old_winch is not None:
        signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(master))
    relay = threading.Thread(target=_relay, args=(master, interactive, stop_r), name="pty-relay", daemon=True)
    relay.start()
    try:
        yield slave
    finally:
        os.close(slave)  # the container's copies are gone once it ended: the master sees EOF
        relay.join(timeout=2)
        os.write(stop_w, b"x")
        relay.join(timeout=2)
        for fd in (stop_r, stop_w, master):
            with contextlib.suppress(OSError):
                os.close(fd)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)


def _relay(master: int, interactive: bool, stop: int) -> None:
    sources = [master, stop] + ([0] if interactive else [])
    while True:
        try:
            ready, _, _ = select.select(sources, [], [])
        except InterruptedError:
            continue
        if stop in ready:
            _drain(master)
            return
        if master in ready:
            try:
                data = os.read(master, 1 << 16)
            except OSError as e:
                if e.errno == errno.EIO:  # every slave fd closed: the container ended
                    return
                raise
            if not data:
                return
            _write_all(1, data)
        if 0 in ready:
            data = os.read(0, 1 << 16)
            if not data:
                sources.remove(0)  # our stdin ended: the terminal's EOF character tells the shell
                _write_all(master, b"\x04")
                continue
            _write_all(master, data)


def _drain(master: int) -> None:
    os.set_blocking(master, False)
    with contextlib.suppress(OSError):
        while data := os.read(master, 1 << 16):
            _write_all(1, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


def _copy_window_size(master: int) -> None:
    for fd in (0, 1, 2):
        if os.isatty(fd):
            size = fcntl.ioctl(fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            return
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
