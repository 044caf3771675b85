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
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .jobs import Result

Listener = Callable[["Event"], None]

_job_ids = itertools.count(1)


MEANINGFUL_BYTES = 1 << 20  # below this much moved, a transfer rate is noise


class Fact(str, Enum):
    """A state or kind the engine publishes: compares and prints as its plain word."""

    def __str__(self) -> str:
        return str(self.value)


class Kind(Fact):
    """What an event reports."""

    STARTED = "started"
    PROGRESS = "progress"
    FINISHED = "finished"  # carries the job's :class:`Result`
    FAILED = "failed"
    PENDING = "pending"  # a persist's changes not synced yet: ``progress.total_files``/``total_bytes``
    FLUSHED = "flushed"  # Drive's mount was flushed at ``at``
    DEADLINE = "deadline"  # the runtime's estimated end is ``at``


class Direction(Fact):
    DOWN = "down"  # remote -> local
    UP = "up"
    NONE = ""  # not a transfer (the runtime's deadline)


@dataclass(frozen=True)
class Progress:
    """Where a job stands; totals are 0 while unknown, ``eta`` is seconds or None."""

    done_bytes: int = 0
    total_bytes: int = 0
    rate: float = 0.0
    eta: float | None = None
    done_files: int = 0
    total_files: int = 0
    note: str = ""  # what holds the job up now, e.g. "remote unreachable, retrying (2)"

    @property
    def rate_means_something(self) -> bool:
        """A rate is worth showing once enough has moved; "49 Bytes/s" for a tiny sync is noise."""
        return self.rate > 0 and self.done_bytes >= MEANINGFUL_BYTES


def plausible_eta(eta: object, rate: float) -> float | None:
    """An ETA, or None when it means nothing: nothing moving, or longer than two days (a stalled
    transfer once showed "ETA 292 years")."""
    if not isinstance(eta, (int, float)) or rate <= 0 or not 0 <= eta <= 2 * 86400:
        return None
    return float(eta)


@dataclass(frozen=True)
class Event:
    """One report of a job."""

    job_id: int
    name: str
    direction: Direction
    kind: Kind
    progress: Progress = field(default_factory=Progress)
    message: str = ""
    at: float = field(default_factory=time.time)
    where: str = ""  # for uploads: the destination's safety class (:class:`colab_magics.safety.Where`)
    free_bytes: int | None = None  # for uploads: room left at the destination, where it says
    trash_bytes: int | None = None  # of the used space, what sits in Drive's Trash
    target: str = ""  # where the job writes (a local folder, a remote path): one status row per target
    result: Result | None = None  # finished events: what the job did, in numbers


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
                self._thread = threading.Thread(target=self._dispatch, name="colab_magics-events", daemon=True)
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
                event.kind == Kind.PROGRESS
                and last is not None
                and last.kind == Kind.PROGRESS
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
            if queued.kind == Kind.PROGRESS:
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
    """A running stage or push: counts its progress and publishes it, at most ``RATE`` times a second.

    Workers call :meth:`add` for every chunk; counting is a few integer additions under a lock,
    and an event is built only when one is due, so accounting never slows a transfer.
    """

    RATE = 10.0

    def __init__(
        self, name: str, direction: Direction, events: EventBus | None = None, where: str = "", target: str = ""
    ) -> None:
        self.id = next(_job_ids)
        self.name = name
        self.direction = direction
        self.where = where
        self.target = target
        self.room: tuple[int | None, int | None] = (None, None)  # free, trashed (see found_room)
        self._events = events or bus
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._done_bytes = self._done_files = self._total_bytes = self._total_files = 0
        self._rate: float | None = None  # given by rclone's stats, else derived
        self._eta: float | None = None
        self._note = ""
        self._last_publish = 0.0

    @property
    def progress(self) -> Progress:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> Progress:
        rate, eta = self._rate, self._eta
        if rate is None:
            rate = self._done_bytes / max(time.monotonic() - self._started, 1e-6)
            left = self._total_bytes - self._done_bytes
            eta = plausible_eta(left / rate, rate) if rate > 0 and self._total_bytes else None
        return Progress(self._done_bytes, self._total_bytes, rate, eta, self._done_files, self._total_files, self._note)

    def _publish(self, kind: Kind, message: str = "", result: Result | None = None) -> None:
        self._events.publish(
            Event(self.id, self.name, self.direction, kind, self.progress, message, where=self.where,
                  free_bytes=self.room[0], trash_bytes=self.room[1], target=self.target, result=result)
        )  # fmt: skip

    def _maybe_publish(self, force: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_publish < 1.0 / self.RATE:
                return
            self._last_publish = now
            progress = self._snapshot()
        self._events.publish(
            Event(self.id, self.name, self.direction, Kind.PROGRESS, progress, where=self.where, target=self.target)
        )

    def start(self, message: str = "") -> None:
        self._publish(Kind.STARTED, message)

    def update(
        self,
        *,
        done_bytes: int | None = None,
        total_bytes: int | None = None,
        done_files: int | None = None,
        total_files: int | None = None,
        rate: float | None = None,
        eta: float | None = None,
        note: str | None = None,
    ) -> None:
        """Set progress fields (rate and ETA are derived from bytes unless given) and publish."""
        with self._lock:
            if note is not None:
                self._note = note
            if done_bytes is not None:
                self._done_bytes = done_bytes
            if total_bytes is not None:
                self._total_bytes = total_bytes
            if done_files is not None:
                self._done_files = done_files
            if total_files is not None:
                self._total_files = total_files
            if rate is not None:
                self._rate, self._eta = rate, eta
        self._maybe_publish(force=total_bytes is not None or total_files is not None or note is not None)

    def add(self, done_bytes: int = 0, done_files: int = 0) -> None:
        """Count more bytes and files done (thread-safe, for parallel workers)."""
        with self._lock:
            self._done_bytes += done_bytes
            self._done_files += done_files
        self._maybe_publish(force=False)

    def finish(self, result: Result) -> None:
        """Publish the job's numbers, with their one-line summary for plain listeners."""
        self._maybe_publish(force=True)
        self._publish(Kind.FINISHED, result.summary(), result)

    def found_room(self, free: int, trashed: int | None) -> None:
        """The destination's room, measured before the upload: said by every later event."""
        self.room = (free, trashed)

    def fail(self, error: str) -> None:
        self._publish(Kind.FAILED, error)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started
