"""How long this runtime has left, and one last sync of everything before it ends.

Colab ends a runtime at a hard limit (about 12 h on the free tier, up to 24 h paid) with no
warning, no signal and no API that says when (googlecolab/colabtools#676).  We estimate the end
from the runtime's start and a limit the user can set, publish it for the status views ("runtime
ends in about 25 min"), and a margin before it run ``on_margin`` once: the notebook face syncs
every persist there and flushes the Drive mount.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from ..events import Direction, Event, EventBus, Kind, bus
from ..units import parse_duration
from .colab import on_colab

COLAB_LIMIT = 12 * 3600.0  # Colab's free tier; paid runtimes may last 24 h (COLAB_MAGICS_RUNTIME_LIMIT)
DEFAULT_MARGIN = 15 * 60.0
DEADLINE_JOB = "runtime"  # the name the board's deadline fact goes by

Clock = Callable[[], float]


def runtime_start() -> float:
    """When this runtime started: ``COLAB_MAGICS_RUNTIME_START`` (Unix time) if set, else when the
    container's first process started (a Colab runtime is a fresh container), else the boot."""
    configured = os.environ.get("COLAB_MAGICS_RUNTIME_START", "").strip()
    if configured:
        return float(configured)
    try:
        with open("/proc/stat") as fh:
            boot = next(float(line.split()[1]) for line in fh if line.startswith("btime "))
        with open("/proc/1/stat") as fh:
            ticks = float(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, in clock ticks
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return time.time()


def runtime_end() -> float | None:
    """The estimated end of this runtime: its start plus ``COLAB_MAGICS_RUNTIME_LIMIT`` (12h by default
    on Colab, none elsewhere; ``0`` turns it off)."""
    configured = os.environ.get("COLAB_MAGICS_RUNTIME_LIMIT", "").strip()
    if configured in ("0", "off", "none"):
        return None
    if not configured and not on_colab():
        return None
    limit = parse_duration(configured) if configured else COLAB_LIMIT
    return runtime_start() + limit


def margin() -> float:
    """How long before the end everything syncs (``COLAB_MAGICS_DEADLINE_MARGIN``, 15m by default)."""
    configured = os.environ.get("COLAB_MAGICS_DEADLINE_MARGIN", "").strip()
    return parse_duration(configured) if configured else DEFAULT_MARGIN


class DeadlineWatch:
    """Publishes the runtime's end, and calls ``on_margin`` once when ``margin`` seconds are left.

    ``clock`` is the wall clock (injected in tests); the thread only decides when to look again."""

    POLL = 30.0  # the longest wait between two looks: a clock step is noticed within it

    def __init__(
        self,
        end: float,
        on_margin: Callable[[], None],
        margin: float = DEFAULT_MARGIN,
        events: EventBus | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.end = end
        self.margin = margin
        self._on_margin = on_margin
        self._events = events or bus
        self._clock = clock
        self._fired = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DeadlineWatch:
        self._events.publish(Event(0, DEADLINE_JOB, Direction.NONE, Kind.DEADLINE, at=self.end))
        if not self.check():
            self._thread = threading.Thread(target=self._loop, name="colab_magics-deadline", daemon=True)
            self._thread.start()
        return self

    def check(self) -> bool:
        """Run ``on_margin`` if the margin has been reached and it has not run yet; True once it has."""
        with self._lock:
            if self._fired:
                return True
            if self._clock() < self.end - self.margin:
                return False
            self._fired = True
        self._on_margin()
        return True

    def _loop(self) -> None:
        while not self._stop.wait(min(self.POLL, max(0.0, self.end - self.margin - self._clock()))):
            if self.check():
                return

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
