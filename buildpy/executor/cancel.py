"""Stopping a build from outside (a client that hung up, a server told to stop): a token the
caller cancels and the executor checks between steps. A running RUN sees it too: the token's
pipe turns readable, the sandbox's supervisor selects on it and kills the step's namespace."""

from __future__ import annotations

import os
import threading


class BuildCancelled(Exception):
    """The build was stopped from outside before it ended; the store keeps what was finished."""

    user_facing = True


class Cancel:
    """Cancelled once, for good. `fileno()` is readable from then on (for select/poll)."""

    def __init__(self, reason: str = "the build was cancelled") -> None:
        self.reason = reason
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._read, self._write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def cancel(self, reason: str | None = None) -> None:
        with self._lock:
            if self._event.is_set():
                return
            if reason:
                self.reason = reason
            self._event.set()
            if self._write >= 0:
                os.write(self._write, b"x")

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise BuildCancelled once cancelled."""
        if self._event.is_set():
            raise BuildCancelled(self.reason)

    def fileno(self) -> int:
        return self._read

    def close(self) -> None:
        with self._lock:
            for fd in (self._read, self._write):
                if fd >= 0:
                    os.close(fd)
            self._read = self._write = -1

    def __enter__(self) -> Cancel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Running:
    """The tokens of the builds in progress, so a stopping server cancels every one and waits
    for them to clean up. Once `cancel_all` ran, a build that starts is cancelled at once."""

    def __init__(self) -> None:
        self._tokens: set[Cancel] = set()
        self._cond = threading.Condition()
        self._closed: str | None = None

    def add(self, token: Cancel) -> None:
        with self._cond:
            self._tokens.add(token)
            closed = self._closed
        if closed is not None:
            token.cancel(closed)

    def discard(self, token: Cancel) -> None:
        with self._cond:
            self._tokens.discard(token)
            self._cond.notify_all()

    def cancel_all(self, reason: str) -> None:
        with self._cond:
            self._closed = reason
            tokens = list(self._tokens)
        for token in tokens:
            token.cancel(reason)

    def wait(self, timeout: float) -> bool:
        """True once no build is in progress (within `timeout` seconds)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._tokens, timeout)
