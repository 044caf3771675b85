"""Keeping a local folder safe on a remote while work runs: restore, periodic sync, final flush.

A :class:`Persister` owns one background thread that wakes on a stop event (never a bare
sleep) to sync every ``every`` seconds, on :meth:`trigger`, and to refresh a lock on the
remote that stops a second writer.  The lock's expiry is judged by wall clocks, which can
be wrong or jump; so every commit also checks that the lock is still ours, and a kernel
that was taken over stops syncing instead of overwriting the newer writer's manifest.
Each sync is an incremental packed upload (:mod:`.packed.upload`) with copy semantics by
default, and tolerant of files still being written: those keep their previous remote
version and go up at the next sync.  The remote
therefore always holds a complete, verified version; a killed kernel loses at most one
interval.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Callable, Protocol, TypeVar

from .destination.safety import Where, where
from .destination.trash import TrashBudget
from .errors import ColabMagicsError, LockLost
from .events import Direction, Event, EventBus, Fact, Job, Kind, Progress, bus
from .host.colab import require_drive_mounted
from .jobs import Context, Result, read_json, state_dir, write_json
from .local import tree as localtree
from .lock import LOCK_TTL, Clock, RemoteLock
from .packed.manifest import DEFAULT_PART_SIZE, MANIFEST_NAME, FileEntry, Manifest
from .packed.upload import PackedSync, SyncOptions, SyncOutcome
from .push import default_remote_dest
from .rclone import remotes
from .rclone.process import Rclone
from .stage import stage

logger = logging.getLogger(__name__)

DEFAULT_EVERY = 300.0
MIN_EVERY = 1.0  # what the magics accept: every sync costs requests against the remote's quota
PENDING_EVERY = 5.0  # seconds between two looks for changes not synced yet (longer for huge folders)


class PersistState(Fact):
    STARTING = "starting"
    IDLE = "idle"
    SYNCING = "syncing"
    PAUSED = "paused"
    ERROR = "error"
    STOPPED = "stopped"


def _resting(paused: bool) -> PersistState:
    """The state between two syncs."""
    return PersistState.PAUSED if paused else PersistState.IDLE


@dataclass
class PersistStatus:
    """What the panel shows for one persist."""

    local: str
    dest: str
    state: PersistState
    last_sync: float | None  # wall-clock time of the last successful sync
    last_error: str
    pending: list[str]  # files left for the next sync (still being written)
    syncs: int
    last_result: Result | None
    held: str = ""  # why changed files wait (the Trash budget of a destination on the Drive mount)


class Ending(Enum):
    """How a persist used as a context manager ended."""

    SYNCED = "synced"  # the final sync ran
    FAILED = "failed"  # the final sync failed while the body's own exception went on
    FLUSHED = "flushed"  # a flush of the Drive mount had ended it: changes since then are only here


@dataclass
class Final:
    """What :meth:`Persister.__exit__` tells the face: the ending, and whether the body was interrupted."""

    ending: Ending
    interrupted: bool  # the body ended with Ctrl-C
    outcome: SyncOutcome | None = None  # SYNCED
    error: Exception | None = None  # FAILED


T = TypeVar("T")


class PersistReport(Protocol):
    """How a face runs and tells one persist: the CLI in lines on stderr, the magics in the cell."""

    def step(self, work: Callable[[], T]) -> T:
        """Run the restore or the final sync, with its progress shown; what it raises goes on."""

    def started(self, persister: Persister, restored: Result | None) -> None:
        """The persist runs; ``restored`` is what the restore brought back, if anything."""

    def ended(self, persister: Persister, final: Final) -> None:
        """The persist is over (lock released), as ``final`` says."""


class _Unsaid:
    """The report of a persist nobody watches."""

    def step(self, work: Callable[[], T]) -> T:
        return work()

    def started(self, persister: Persister, restored: Result | None) -> None:
        pass

    def ended(self, persister: Persister, final: Final) -> None:
        pass


class Persister:
    """Restore, then keep ``local`` synced to ``dest`` until :meth:`stop`, which flushes.

    ``with Persister(..., restore=True, report=...) as p:`` is the whole lifecycle the magics and the
    CLI share: see :meth:`__enter__` and :meth:`__exit__`."""

    def __init__(
        self,
        local: str | os.PathLike[str],
        dest: str | None = None,
        *,
        every: float = DEFAULT_EVERY,
        mirror: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
        settle: float = 0.5,
        mount_trash: float | None = 1.0,
        root: str | None = None,
        rclone: Rclone | None = None,
        events: EventBus | None = None,
        lock_ttl: float = LOCK_TTL,
        clock: Clock = time.time,
        restore: bool = False,
        steal_lock: bool = False,
        report: PersistReport | None = None,
    ) -> None:
        self.local = os.path.abspath(os.fspath(local))
        self.dest = remotes.resolve(dest, root) if dest else default_remote_dest(self.local, root)
        self.every = every
        self.settle = settle
        self.options = SyncOptions("none", part_size, keep_deleted=not mirror, tolerant=True)
        self.rclone = rclone or Rclone()
        self.events = events
        self.name = f"persist {os.path.basename(self.local)}"
        self.where = where(self.dest, self.rclone)  # said in every status and summary of this persist
        # through the Drive mount, every part deleted fills Drive's Trash: timed syncs keep to a budget
        self.trash = TrashBudget(self.dest, mount_trash) if self.where is Where.MOUNT else None
        self.clock = clock
        self.lock = RemoteLock(self.rclone, self.dest, lock_ttl, clock)
        self._restore_first, self._steal_lock = restore, steal_lock  # what entering the ``with`` does
        self._report: PersistReport = report or _Unsaid()
        self._manifest: Manifest | None = None
        # after a failed sync the remote's manifest is not known: the failure may have come after the commit
        # (the old parts' deletion, the final check), and a sync built on the older manifest would name
        # parts that are gone; the next sync reads it again
        self._manifest_unsure = False
        # leftovers of killed or failed runs may lie on the remote: true at start and after a failed sync,
        # false after a sync of ours that swept and ended cleanly (the lock keeps other writers out)
        self._unswept = True
        self._sync_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._paused = False
        self._waiting: list[Future] = []
        self._thread: threading.Thread | None = None
        self._lost: LockLost | None = None
        self._status = PersistStatus(self.local, self.dest, PersistState.STARTING, None, "", [], 0, None)
        key = hashlib.sha1(f"{self.local}\n{self.dest}".encode()).hexdigest()[:16]
        self._journal_path = state_dir() / "persist" / f"{key}.json"

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Persister:
        """One whole persist for both faces: take the lock, restore (``restore``), start syncing."""
        restored = self._report.step(lambda: self.start(steal_lock=self._steal_lock, restore=self._restore_first))
        self._report.started(self, restored)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        """However the body ended (Ctrl-C included): the final sync, the stop, the report.  The body's
        own exception goes on unchanged; a final sync that fails is then reported, else raised."""
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        if self.status().state == PersistState.STOPPED:  # a flush of the Drive mount ended it during the body
            self.publish_pending()
            final = Final(Ending.FLUSHED, interrupted)
        else:
            try:
                final = Final(Ending.SYNCED, interrupted, outcome=self._report.step(lambda: self.stop(final=True)))
            except Exception as exc:
                if kind is None:
                    raise
                final = Final(Ending.FAILED, interrupted, error=exc)
        self._report.ended(self, final)

    def restore(self) -> Result | None:
        """Bring back the last sync if ``local`` is missing or empty; else files missing here, or changed
        on the remote but not here since this machine last synced (see :func:`_stale`)."""
        ctx = self._context()
        raw = ctx.read_replaced(remotes.join(self.dest, MANIFEST_NAME), Manifest.generation_of, repair=True)
        if raw is None:
            return None
        manifest = Manifest.from_json(raw, self.dest)
        self._manifest = manifest  # the remote's state: start() need not read it again
        if not os.path.isdir(self.local) or not any(os.scandir(self.local)):
            result = self._stage_into(self.local)
            self._remember(manifest)
            return result
        journal = self._journal()
        need = [f for f in manifest.files if _stale(os.path.join(self.local, f.path), f, journal.get(f.path))]
        if not need:
            return None
        tmp = Path(self.local).parent / f".{Path(self.local).name}.cm-restore"
        try:
            result = self._stage_into(tmp)
            for f in need:
                target = os.path.join(self.local, f.path)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(tmp / f.path, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result.files, result.bytes = len(need), sum(f.size for f in need)
        self._remember(manifest, replaced={f.path for f in need})
        return result

    def _stage_into(self, folder: str | Path) -> Result:
        name = f"restore {os.path.basename(self.local)}"
        return stage(self.dest, folder, force=True, rclone=self.rclone, events=self.events, name=name)

    def start(self, steal_lock: bool = False, restore: bool = False) -> Result | None:
        """Take the lock on the destination, then (``restore``) bring back what is missing here,
        then start the background sync.  The lock comes first: a kernel that is refused leaves
        its local folder untouched."""
        ctx = self._context()
        self.lock.acquire(ctx, steal=steal_lock)
        try:
            restored = self.restore() if restore else None
            os.makedirs(self.local, exist_ok=True)
            if self._manifest is None:  # not read by the restore: also refuses a folder of other files
                self._manifest = PackedSync(ctx, self.local, self.dest, self.options).load_old()
        except BaseException:
            self.lock.release(ctx)
            raise
        self._set(state=PersistState.IDLE)
        self._thread = threading.Thread(target=self._loop, name=f"colab_magics-{self.name}", daemon=True)
        self._thread.start()
        return restored

    def stop(self, final: bool = True, timeout: float = 30.0) -> SyncOutcome | None:
        """Stop the thread, then (``final``) sync once more in this thread and release the lock."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            return self.sync(settle=0.0) if final else None
        finally:
            self._set(state=PersistState.STOPPED)
            self.publish_pending()
            self.lock.release(self._context())
            for future in self._drain_waiting():
                if not future.done():
                    future.cancel()

    # -- control (the panel's buttons) --------------------------------------------------------
    def trigger(self, trash_emptied: bool = False) -> Future:
        """Sync as soon as possible; the future resolves with that sync's outcome.  ``trash_emptied``
        (the person's Sync now, which the held message asks for once Drive's Trash is emptied): the
        Trash budget counts afresh."""
        if trash_emptied and self.trash is not None:
            self.trash.reset()
        future: Future = Future()
        with self._state_lock:
            self._waiting.append(future)
        self._wake.set()
        return future

    def pause(self) -> None:
        self._set(paused=True)

    def resume(self) -> None:
        self._set(paused=False)
        self._wake.set()

    def pending(self) -> tuple[int, int]:
        """Files (and bytes) whose current local state is not on the remote yet: a quick ``stat`` walk."""
        if not os.path.isdir(self.local):
            return 0, 0
        known = {f.path: f.stat_key() for f in self._manifest.files} if self._manifest else {}
        changed = [
            f for f in localtree.scan(self.local).files if known.get(f.path) != (f.path, f.size, f.mtime_ns, f.mode)
        ]
        return len(changed), sum(f.size for f in changed)

    def publish_pending(self) -> tuple[int, int]:
        """Measure :meth:`pending` and publish it (the views never walk the folder themselves)."""
        files, size = self.pending()
        progress = Progress(total_bytes=size, total_files=files)
        held = self.status().held if files else ""
        pending = Event(0, self.name, Direction.UP, Kind.PENDING, progress, held, where=self.where, target=self.dest)
        (self.events or bus).publish(pending)
        return files, size

    def status(self) -> PersistStatus:
        with self._state_lock:
            return PersistStatus(**vars(self._status))

    # -- work -------------------------------------------------------------------------------
    def sync(self, settle: float | None = None, timed: bool = False) -> SyncOutcome:
        """One incremental sync now (serialised with the background one); ``timed``: one of the
        background's periodic syncs, which keep to the Trash budget (:mod:`.destination.trash`)."""
        with self._sync_lock:
            self._set(state=PersistState.SYNCING)
            ctx = self._context()
            options = SyncOptions(**{**vars(self.options), "settle": self.settle if settle is None else settle})
            try:
                if self._lost is not None:
                    raise self._lost
                if self.where is Where.MOUNT:  # never into the empty mount point Drive's flush leaves
                    require_drive_mounted(os.path.abspath(self.dest))
                outcome = PackedSync(ctx, self.local, self.dest, options).run(
                    self._manifest, fetch_old=self._manifest_unsure, before_commit=lambda: self.lock.check(ctx),
                    sweep=self._unswept, trash=self.trash, timed=timed,
                )  # fmt: skip
            except BaseException as exc:
                self._unswept = True  # whatever it left (a part, a temporary manifest): the next sync sweeps
                self._manifest_unsure = True
                if isinstance(exc, LockLost):
                    self._lost = exc  # every later sync refuses at once
                self._set(state=PersistState.ERROR, last_error=str(exc) or type(exc).__name__)
                ctx.job.fail(str(exc) or type(exc).__name__)
                raise
            self._manifest, self._manifest_unsure = outcome.manifest, False
            self._unswept = self._unswept and outcome.result.up_to_date  # an up-to-date sync sweeps nothing
            self._remember(outcome.manifest)
            with self._state_lock:
                s = self._status
                s.state, s.last_error, s.pending = _resting(self._paused), "", outcome.deferred
                s.held = self.trash.held_note(len(outcome.held)) if self.trash and outcome.held else ""
                s.last_sync, s.syncs, s.last_result = self.clock(), s.syncs + 1, outcome.result
            ctx.job.finish(outcome.result)
            self.publish_pending()
            return outcome

    def _loop(self) -> None:
        beat = self.lock.ttl / 3
        next_sync = time.monotonic() + self.every
        next_beat = time.monotonic() + beat
        next_look = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(max(0.0, min(next_sync, next_beat, next_look) - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            if now >= next_look:  # what is not on the remote yet, for the status views
                self.publish_pending()
                next_look = time.monotonic() + max(PENDING_EVERY, 20 * (time.monotonic() - now))
            # a deadline can never lie further ahead than one period, whatever a clock did
            next_sync, next_beat = min(next_sync, now + self.every), min(next_beat, now + beat)
            if now >= next_beat and self._lost is None:
                next_beat = now + beat
                try:
                    self.lock.refresh(self._context())
                except LockLost as exc:
                    self._lost = exc
                    self._set(state=PersistState.ERROR, last_error=str(exc))
                except ColabMagicsError as exc:
                    logger.debug("%s: lock refresh failed, next try in %.0fs: %s", self.name, beat, exc)
                    self._set(last_error=f"could not refresh the lock: {exc}")
            waiting = self._drain_waiting()
            if not waiting and (now < next_sync or self._paused):
                continue
            started = time.monotonic()
            try:
                outcome = self.sync(timed=not waiting)
            except Exception as exc:  # recorded in the status; the next interval tries again
                logger.debug("%s: sync failed, next try in %.0fs: %s", self.name, self.every, exc)
                for future in waiting:
                    future.set_exception(exc)
            else:
                for future in waiting:
                    future.set_result(outcome)
            next_sync = started + self.every  # "every 10s": syncs start 10 s apart

    def _drain_waiting(self) -> list[Future]:
        with self._state_lock:
            waiting, self._waiting = self._waiting, []
        return waiting

    def _set(self, **changes: object) -> None:
        with self._state_lock:
            if "paused" in changes:
                self._paused = bool(changes.pop("paused"))
                if self._status.state in (PersistState.IDLE, PersistState.PAUSED):
                    self._status.state = _resting(self._paused)
            for key, value in changes.items():
                setattr(self._status, key, value)

    def _context(self) -> Context:
        return Context(self.rclone, Job(self.name, Direction.UP, self.events, self.where, self.dest), None)

    # -- the journal: what this machine last saw on both sides, to tell who changed a file --
    def _journal(self) -> dict[str, list[int]]:
        data = read_json(self._journal_path)
        files = data.get("files") if data.get("dest") == self.dest else None
        return files if isinstance(files, dict) else {}

    def _remember(self, manifest: Manifest, replaced: set[str] | None = None) -> None:
        """Record each file's local state that equals its remote version (after a sync or restore)."""
        files = {f.path: [f.size, f.mtime_ns] for f in manifest.files}
        if replaced is not None:  # after a restore: keep the earlier record of files left alone
            files = {**self._journal(), **{p: files[p] for p in replaced}}
        write_json(self._journal_path, {"local": self.local, "dest": self.dest, "files": files})


def _stale(path: str, remote: FileEntry, synced: list[int] | None) -> bool:
    """Should the restore replace the local file at ``path`` with its remote version?

    Missing: yes.  Equal to the remote: no.  Otherwise ``synced`` (this machine's record of
    the file when it last matched the remote) tells who changed it: unchanged here means the
    remote moved on (yes); changed here means newer local work (no), whatever the mtimes say,
    since a clock that jumped back stamps new work with old times.  Without a record (a fresh
    runtime), the newer modification time wins.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    here = [st.st_size, st.st_mtime_ns]
    if here == [remote.size, remote.mtime_ns]:
        return False
    if synced is not None:
        return here == list(synced)
    return st.st_mtime_ns < remote.mtime_ns
