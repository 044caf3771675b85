"""Engine events: what every job reports, and a bus that delivers it without slowing transfers.

Transfers publish from their own threads; listeners (the CLI's progress line, the notebook
panel) may be slow.  Publishing therefore only appends to a queue; one dispatcher thread calls
the listeners.  Consecutive progress events of one job collapse into the newest, so a slow
listener sees fewer updates instead of holding up rclone or growing memory.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

Listener = Callable[["Event"], None]

_job_ids = itertools.count(1)


@dataclass(frozen=True)
class Progress:
    """Where a job stands; totals are 0 while unknown, ``eta`` is seconds or None."""

    done_bytes: int = 0
    total_bytes: int = 0
    rate: float = 0.0
    eta: float | None = None
    done_files: int = 0
    total_files: int = 0


@dataclass(frozen=True)
class Event:
    """One report of a job: ``kind`` is started, progress, message, finished or failed."""

    job_id: int
    name: str
    direction: str  # "down" (remote -> local) or "up"
    kind: str
    progress: Progress = field(default_factory=Progress)
    message: str = ""
    at: float = field(default_factory=time.time)


class EventBus:
    """Fan-out of events to listeners on one dispatcher thread."""

    MAX_PENDING = 1000

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._queue: deque[Event] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every later event; returns the function that unsubscribes."""
        with self._cond:
            self._listeners.append(listener)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._dispatch, name="colab_magics-events", daemon=True
                )
                self._thread.start()

        def unsubscribe() -> None:
            with self._cond:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def publish(self, event: Event) -> None:
        """Queue ``event``; never blocks on listeners."""
        with self._cond:
            if not self._listeners:
                return
            last = self._queue[-1] if self._queue else None
            if (
                event.kind == "progress"
                and last is not None
                and last.kind == "progress"
                and last.job_id == event.job_id
            ):
                self._queue[-1] = event
            else:
                self._queue.append(event)
                if len(self._queue) > self.MAX_PENDING:
                    self._drop_oldest_progress()
            self._cond.notify()

    def _drop_oldest_progress(self) -> None:
        for i, queued in enumerate(self._queue):
            if queued.kind == "progress":
                del self._queue[i]
                return
        self._queue.popleft()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event has been delivered (tests, end of a CLI command)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(0.5)
                if self._stop.is_set() and not self._queue:
                    return
                event = self._queue.popleft()
                listeners = list(self._listeners)
                self._busy = True
            for listener in listeners:
                try:
                    listener(event)
                except Exception:  # a broken listener must not stop transfers or other listeners
                    pass
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is queued, stop the dispatcher, forget listeners."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            self._listeners.clear()
            self._queue.clear()
            self._thread = None


bus = EventBus()
atexit.register(bus.close)


class Job:
    """A running stage or push: publishes its events and keeps its latest progress."""

    def __init__(self, name: str, direction: str, events: EventBus | None = None) -> None:
        self.id = next(_job_ids)
        self.name = name
        self.direction = direction
        self.progress = Progress()
        self._events = events or bus
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def _publish(self, kind: str, message: str = "") -> None:
        self._events.publish(Event(self.id, self.name, self.direction, kind, self.progress, message))

    def start(self, message: str = "") -> None:
        self._publish("started", message)

    def update(self, **changes: object) -> None:
        """Set progress fields; rate and ETA follow from bytes unless given."""
        with self._lock:
            self.progress = self._derive(replace(self.progress, **changes), "rate" in changes)  # type: ignore[arg-type]
        self._publish("progress")

    def add(self, done_bytes: int = 0, done_files: int = 0) -> None:
        """Count more bytes and files done (thread-safe, for parallel workers)."""
        with self._lock:
            p = self.progress
            p = replace(p, done_bytes=p.done_bytes + done_bytes, done_files=p.done_files + done_files)
            self.progress = self._derive(p, False)
        self._publish("progress")

    def _derive(self, p: Progress, rate_given: bool) -> Progress:
        if rate_given:
            return p
        rate = p.done_bytes / max(time.monotonic() - self._started, 1e-6)
        eta = (p.total_bytes - p.done_bytes) / rate if rate > 0 and p.total_bytes else None
        return replace(p, rate=rate, eta=eta)

    def message(self, text: str) -> None:
        self._publish("message", text)

    def finish(self, summary: str) -> None:
        self._publish("finished", summary)

    def fail(self, error: str) -> None:
        self._publish("failed", error)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started
