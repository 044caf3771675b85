"""Plain-text renderings of job progress, for terminals and front-ends without widgets."""

from __future__ import annotations

import threading
import time
from typing import TextIO

import humanize

from ..events import Event, Progress


def progress_line(name: str, p: Progress) -> str:
    """``push outputs  42% 1.2 GiB/2.9 GiB  35.1 MiB/s  ETA 48s  120/300 files``."""

    def size(n: float) -> str:
        return humanize.naturalsize(n, binary=True)

    parts = [name]
    if p.total_bytes > 0:
        pct = min(100, int(100 * p.done_bytes / p.total_bytes))
        parts.append(f"{pct:3d}% {size(p.done_bytes)}/{size(p.total_bytes)}")
    else:
        parts.append(size(p.done_bytes))
    if p.rate_means_something:
        parts.append(f"{size(p.rate)}/s")
    if p.eta is not None and p.total_bytes > 0 and p.done_bytes < p.total_bytes:
        parts.append("ETA " + humanize.naturaldelta(p.eta))
    if p.total_files:
        parts.append(f"{p.done_files:,}/{p.total_files:,} files")
    if p.note:
        parts.append(p.note)
    return "  ".join(parts)


class ProgressPrinter:
    """Renders engine events on a stream, throttled."""

    def __init__(
        self, stream: TextIO, interval: float | None = None, rewrite: bool | None = None, delay: float = 0.0
    ) -> None:
        self.stream = stream
        # rewrite one line with "\r": terminals, and notebook outputs, which honour it too
        self.tty = stream.isatty() if rewrite is None else rewrite
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.delay = delay  # a job shows progress only once it has run this long: quick ones just finish
        self._first: dict[int, float] = {}
        self._last = 0.0
        self._width = 0
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.kind == "progress":
                now = time.monotonic()
                if now - self._first.setdefault(event.job_id, now) < self.delay or now - self._last < self.interval:
                    return
                self._last = now
                self._emit(progress_line(event.name, event.progress))
            elif self.tty and self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self._width = 0

    def _emit(self, line: str, final: bool = False) -> None:
        if self.tty and not final:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(("\n" if self.tty and self._width else "") + line + "\n")
            self._width = 0
        self.stream.flush()
