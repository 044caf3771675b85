"""One writer per destination: a lock file on the remote with an owner and an expiry.

The lock is refreshed by its persist; a killed kernel's lock blocks a new writer for at most
:data:`LOCK_TTL`.  On this machine liveness is known exactly (a process and its start time);
across machines only the expiry can tell, judged by wall clocks that can be wrong, which is why
every commit of a persist also checks that the lock is still its own.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Callable

from .errors import LockHeld, LockLost, VerificationError
from .jobs import Context, quietly
from .rclone import remotes
from .rclone.process import Rclone

logger = logging.getLogger(__name__)

LOCK_NAME = ".cm-lock.json"
LOCK_TTL = 90.0  # a killed kernel's lock blocks a new writer for at most this long

Clock = Callable[[], float]  # wall-clock seconds; injected by tests so that expiry needs no sleeping


class RemoteLock:
    """One writer per destination: ``.cm-lock.json`` with an owner and an expiry, refreshed."""

    def __init__(self, rclone: Rclone, dest: str, ttl: float = LOCK_TTL, clock: Clock = time.time) -> None:
        self.rclone = rclone
        self.path = remotes.join(dest, LOCK_NAME)
        self.ttl = ttl
        self.clock = clock
        self.host = socket.gethostname()
        self.owner = f"{self.host} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"
        self._cut = False  # a write of ours failed: a copy of our lock may lie beside the file (see release)

    def _read(self, ctx: Context, copies: bool = False) -> dict:
        """The lock; ``copies``: where the file is missing, the copy a cut write left (see
        :meth:`Context.read_replaced`).  Only this kernel's own check and release look there: a copy
        left behind must not hold the next writer back, and one that is this kernel's lock, cut by a
        refresh, must not be taken for a takeover."""
        raw = ctx.read_replaced(self.path, _expiry, repair=False) if copies else ctx.read_optional(self.path)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, ctx: Context) -> None:
        """Write the lock, proven: a refresh the server silently dropped would let the lock expire."""
        data = {
            "owner": self.owner, "host": self.host, "pid": os.getpid(), "started": _started(os.getpid()),
            "expires": self.clock() + self.ttl,
        }  # fmt: skip
        try:
            ctx.replace(self.path, json.dumps(data).encode())
        except BaseException:
            self._cut = True
            raise

    def acquire(self, ctx: Context, steal: bool = False) -> None:
        """Take the lock unless another live writer holds it.  On this machine liveness is known
        exactly (the process and its start time); across machines the expiry decides."""
        held = self._read(ctx)
        left = float(held.get("expires", 0)) - self.clock()
        alive = _alive_here(held)
        if held.get("owner") is not None:
            logger.debug(
                "lock %s: held by %s (alive here: %s, expires in %.0fs)%s; this kernel is %s",
                self.path, held["owner"], alive, left, ", stealing it" if steal else "", self.owner,
            )  # fmt: skip
        if held.get("owner") not in (None, self.owner) and not steal and (alive or (alive is None and left > 0)):
            until = "while it runs on this machine" if alive else f"lock expires in {int(left) + 1}s"
            raise LockHeld(
                f"{self.path.rsplit('/', 1)[0]} is being persisted by {held['owner']} ({until}); "
                "stop that persist first, wait, or take over with --steal-lock"
            )
        try:
            self._write(ctx)
        except VerificationError:
            if self._read(ctx).get("owner") not in (None, self.owner):
                raise LockHeld(f"another kernel took the lock on {self.path} at the same moment; try again") from None
            raise
        logger.debug("lock %s taken: expires in %.0fs", self.path, self.ttl)

    def check(self, ctx: Context) -> None:
        """Raise :class:`LockLost` unless this kernel still holds the lock it took: another kernel holds
        it now, or took it over and has since released it (its lock file gone): a sync from here would
        then overwrite that kernel's work."""
        owner = self._read(ctx, copies=True).get("owner")
        if owner != self.owner:
            who = owner or "another kernel, which has since released it"
            raise LockLost(
                f"{self.path.rsplit('/', 1)[0]} was taken over by {who}; this kernel stopped syncing to it "
                "so as not to overwrite that kernel's work (local files are untouched)"
            )

    def refresh(self, ctx: Context) -> None:
        self.check(ctx)
        self._write(ctx)
        logger.debug("lock %s refreshed: expires in %.0fs", self.path, self.ttl)

    def release(self, ctx: Context) -> None:
        owner = self._read(ctx, copies=True).get("owner")
        if owner == self.owner:
            quietly(self.rclone.deletefile, self.path)
            if self._cut:  # this kernel's copies, left by a cut refresh: none outlives its lock
                ctx.drop_copies(self.path)
                self._cut = False
        logger.debug("lock %s %s", self.path, "released" if owner == self.owner else f"not released: held by {owner}")


def _started(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process
    for good (a pid can be reused; the pair cannot)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive_here(lock: dict) -> bool | None:
    """Is the lock's owner a live process on this machine?  None when that cannot tell: another
    machine, or this very process (a persist here that was never stopped still lets its lock expire)."""
    pid = lock.get("pid")
    if lock.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = lock.get("started")
    return started is None or _started(pid) in (None, started)


def _expiry(raw: bytes) -> float | None:
    """The expiry of the lock ``raw``, which ranks copies of it (the latest write wins); None if it is
    not a whole lock (a copy cut short)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    expires = data.get("expires") if isinstance(data, dict) and "owner" in data else None
    return float(expires) if isinstance(expires, (int, float)) else None
