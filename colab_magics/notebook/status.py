"""What is synced, what is pending, what failed: the latest state of every job, from engine events.

A :class:`StatusBoard` only listens; the notebook panel and the text view render what it holds.
Rows are keyed by where a job writes, so the successive syncs of one ``%%persist`` update one row,
two persists of folders with the same name keep a row each, and a later success on a target
clears the error a failed job left there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import humanize

from ..destination.safety import FLUSHED, Where
from ..events import Direction, Event, EventBus, Fact, Kind, Progress, bus

if TYPE_CHECKING:
    from ..jobs import Result


class RowState(Fact):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    WAITING = "waiting"  # a persist that has not synced yet


class OverallState(Fact):
    IDLE = "idle"  # nothing ran
    SYNCING = "syncing"
    PENDING = "pending changes"
    SYNCED = "synced"
    ERROR = "error"


RUNNING, DONE, FAILED, WAITING = RowState.RUNNING, RowState.DONE, RowState.FAILED, RowState.WAITING


@dataclass(frozen=True)
class Row:
    key: str  # what the row stands for: the job's target (where it writes), else its name
    name: str  # for people: "persist outputs", "restore outputs", "stage flowers"
    direction: Direction
    state: RowState
    progress: Progress
    target: str = ""  # where the job writes: a local folder, or a remote path
    last_success: float | None = None
    result: Result | None = None  # what the last finished job did
    note: str = ""  # a finished step without numbers (Drive's flush)
    flushed: bool = False  # uploads into the Drive mount: flushed to Drive since
    error: str = ""  # the last error, in plain words; cleared by a later success
    pending_files: int = 0  # for persists: local changes not on the remote yet
    pending_bytes: int = 0
    held: str = ""  # why pending changes wait, where something holds them back (the Trash budget)
    where: str = ""  # uploads: where the data really lives (a :class:`Where` value)
    free_bytes: int | None = None  # uploads: room left at the destination, where it says
    trash_bytes: int | None = None


@dataclass(frozen=True)
class Overall:
    state: OverallState
    safe_to_disconnect: bool
    detail: str
    ends_at: float | None = None  # the runtime's estimated end (Unix time), where one is known

    def runtime_left(self, now: float | None = None) -> str:
        """"runtime ends in about 25 minutes", or "" where no end is known."""
        if self.ends_at is None:
            return ""
        left = self.ends_at - (now or time.time())
        if left <= 0:
            return "runtime past its estimated end"
        return f"runtime ends in about {humanize.naturaldelta(left)}"


class StatusBoard:
    """Collects engine events into rows; calls ``on_change`` listeners (from the event thread)."""

    def __init__(self, events: EventBus | None = None) -> None:
        self._rows: dict[str, Row] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._ends_at: float | None = None  # the runtime's estimated end, where one is known
        self._unsubscribe = (events or bus).subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.kind == Kind.FLUSHED:
            self._flushed(event.name, event.at)
            return
        if event.kind == Kind.PENDING:
            progress = event.progress
            held = event.message  # why they wait, if something holds them back
            self._change(event, lambda row: replace(row, pending_files=progress.total_files,
                                                    pending_bytes=progress.total_bytes, held=held))  # fmt: skip
            return
        if event.kind == Kind.DEADLINE:
            with self._lock:
                self._ends_at = event.at
            return
        self._change(event, lambda row: _apply(row, event))

    def _change(self, event: Event, change: Callable[[Row], Row]) -> None:
        key = event.target or event.name
        with self._lock:
            state = WAITING if event.kind == Kind.PENDING else RUNNING
            row = self._rows.get(key) or Row(key, event.name, event.direction, state, Progress(), event.target)
            self._rows[key] = change(replace(row, name=event.name, where=event.where or row.where))
            listeners = list(self._listeners)
        _tell(listeners)

    def dismiss(self, key: str) -> bool:
        """Remove a failed row (the person has seen it); True if there was one."""
        with self._lock:
            row = self._rows.get(key)
            if row is None or row.state != FAILED:
                return False
            del self._rows[key]
            listeners = list(self._listeners)
        _tell(listeners)
        return True

    def _flushed(self, flush: str, at: float) -> None:
        """Drive's flush succeeded: what reached the mount before it is on Drive now."""
        with self._lock:
            for name, row in self._rows.items():
                if row.where == Where.MOUNT and row.state == DONE and (row.last_success or at) <= at:
                    self._rows[name] = replace(row, where=Where.REMOTE.value, flushed=True)
            self._rows[flush] = Row(flush, flush, Direction.UP, DONE, Progress(), last_success=at, note=FLUSHED,
                                    where=Where.REMOTE.value)  # fmt: skip
            listeners = list(self._listeners)
        _tell(listeners)

    def on_change(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def rows(self) -> list[Row]:
        with self._lock:
            return sorted(self._rows.values(), key=lambda r: (r.name, r.key))

    def overall(self) -> Overall:
        """Safe to disconnect only when everything uploaded is verified on a remote: not while an upload
        failed, runs or has changes pending, and not when it went to this machine or a mount's cache.
        A failed or running download (a stage) shows, but puts nothing of the user's at risk."""
        with self._lock:
            ends_at = self._ends_at
        return replace(self._overall(), ends_at=ends_at)

    def _overall(self) -> Overall:
        rows = self.rows()
        if not rows:
            return Overall(OverallState.IDLE, True, "nothing has run yet")
        failed = [r for r in rows if r.state == FAILED]
        running = [r for r in rows if r.state == RUNNING]
        pending = [r for r in rows if r.pending_files]
        exposed = [r for r in rows if r.direction == Direction.UP and r.where in (Where.THIS_MACHINE, Where.MOUNT)]
        at_risk = any(r.direction == Direction.UP for r in failed + running) or bool(pending or exposed)
        if failed:
            return Overall(OverallState.ERROR, not at_risk, f"{failed[0].name}: {failed[0].error}")
        if running:
            return Overall(OverallState.SYNCING, not at_risk, ", ".join(r.name for r in running))
        if pending:
            files = sum(r.pending_files for r in pending)
            held = next((f"{r.name}: {r.held}" for r in pending if r.held), "")
            return Overall(OverallState.PENDING, False, held or f"{files:,} changed file(s) not on the remote yet")
        if exposed:
            return Overall(OverallState.SYNCED, False, Where(exposed[0].where).caveat())
        return Overall(OverallState.SYNCED, True, "everything is on the remote")

    def close(self) -> None:
        self._unsubscribe()
        with self._lock:
            self._listeners.clear()


def _tell(listeners: list[Callable[[], None]]) -> None:
    """Call the listeners taken under the lock, outside it (they render, which takes time)."""
    for listener in listeners:
        listener()


def _apply(row: Row, event: Event) -> Row:
    """A job's event on its row: running, done (clears an earlier error) or failed."""
    if event.free_bytes is not None:
        row = replace(row, free_bytes=event.free_bytes, trash_bytes=event.trash_bytes)
    if event.kind in (Kind.STARTED, Kind.PROGRESS):
        return replace(row, state=RUNNING, progress=event.progress)
    if event.kind == Kind.FINISHED:
        return replace(row, state=DONE, progress=event.progress, last_success=event.at, result=event.result,
                       note="" if event.result else event.message, flushed=False, error="")  # fmt: skip
    if event.kind == Kind.FAILED:
        return replace(row, state=FAILED, error=event.message)
    return row


def age(when: float | None, now: float | None = None) -> float | None:
    """Seconds since ``when`` (None stays None)."""
    return None if when is None else max(0.0, (now or time.time()) - when)
