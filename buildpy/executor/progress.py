"""What a build shows while it runs: plain lines (CI, `--progress=plain`), a live view on a
terminal (tqdm: one bar over the steps, step lines printed above it), or nothing but the
image id (`--progress=quiet`, printed by the CLI).

Plain lines follow BuildKit's: `#N [stage i/n] INSTRUCTION`, then `#N CACHED` or the reason the
step runs, its output lines, and `#N DONE 1.2s`. Steps of parallel stages interleave; each
line carries its step number. Callers are threads: every method takes the lock.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from buildpy.planner.plan import Step

_TAIL_LINES = 20


class Progress:
    """The quiet view; the base of the others. Keeps each step's output tail for errors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._tails: dict[int, list[bytes]] = {}
        self._partial: dict[int, bytes] = {}

    def start(self, step: Step) -> None:
        pass

    def cached(self, step: Step) -> None:
        pass

    def reason(self, step: Step, text: str) -> None:
        pass

    def output(self, step: Step, data: bytes) -> None:
        with self.lock:
            buf = self._partial.get(step.number, b"") + data
            *lines, rest = buf.split(b"\n")
            self._partial[step.number] = rest
            tail = self._tails.setdefault(step.number, [])
            tail.extend(lines)
            del tail[:-_TAIL_LINES]
            self._show_output(step, lines)

    def _show_output(self, step: Step, lines: list[bytes]) -> None:
        """Show a step's new output lines (called with the lock held)."""
        for line in lines:
            self._line(f"#{step.number} {line.decode('utf-8', 'replace')}")

    def done(self, step: Step, seconds: float) -> None:
        self._flush(step)

    def failed(self, step: Step, message: str) -> None:
        self._flush(step)

    def tail(self, step: Step) -> list[str]:
        with self.lock:
            lines = list(self._tails.get(step.number, []))
            if self._partial.get(step.number):
                lines.append(self._partial[step.number])
        return [line.decode("utf-8", "replace") for line in lines[-_TAIL_LINES:]]

    def close(self) -> None:
        pass

    def _flush(self, step: Step) -> None:
        with self.lock:
            rest = self._partial.pop(step.number, b"")
            if rest:
                self._tails.setdefault(step.number, []).append(rest)
                self._show_output(step, [rest])

    def _line(self, text: str) -> None:
        """Show one line (called with the lock held); the quiet view shows none."""


class PlainProgress(Progress):
    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _say(self, text: str) -> None:
        with self.lock:
            self._line(text)

    def start(self, step: Step) -> None:
        self._say(f"#{step.number} {step.label}")

    def cached(self, step: Step) -> None:
        self._say(f"#{step.number} CACHED")

    def reason(self, step: Step, text: str) -> None:
        self._say(f"#{step.number} runs: {text}")

    def done(self, step: Step, seconds: float) -> None:
        super().done(step, seconds)
        self._say(f"#{step.number} DONE {seconds:.1f}s")

    def failed(self, step: Step, message: str) -> None:
        super().failed(step, message)
        self._say(f"#{step.number} ERROR: {message}")


class TtyProgress(PlainProgress):
    """Plain lines printed above a live bar of the steps done; RUN output is not echoed (the
    bar shows its last line; a failure prints the tail)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = tqdm(total=total, unit="step", file=self.stream, leave=False, dynamic_ncols=True,
                        bar_format="{desc} {bar} {n_fmt}/{total_fmt} {elapsed}")

    def _line(self, text: str) -> None:
        self._tqdm.write(text, file=self.stream)

    def _show_output(self, step: Step, lines: list[bytes]) -> None:
        if lines:
            self.bar.set_description_str(f"#{step.number} {lines[-1].decode('utf-8', 'replace')[:60]}")

    def cached(self, step: Step) -> None:
        super().cached(step)
        with self.lock:
            self.bar.update(1)

    def done(self, step: Step, seconds: float) -> None:
        super().done(step, seconds)
        with self.lock:
            self.bar.update(1)

    def close(self) -> None:
        with self.lock:
            self.bar.close()


def make_progress(mode: str, total: int, stream: TextIO | None = None) -> Progress:
    """`auto`: the live view on a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if mode == "quiet":
        return Progress()
    if mode == "tty" or (mode == "auto" and stream.isatty()):
        return TtyProgress(total, stream)
    return PlainProgress(stream)
