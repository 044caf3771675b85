"""Who may write a destination: the lock's decisions, on a clock the test moves and a remote that
is a dict (no rclone).

On this machine a lock's owner is known to be alive or dead (its pid and that process's start
time); elsewhere only the expiry tells.  Stealing always works; a race lost at the moment of
writing is a clear refusal.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
from waiting import ManualClock

from colab_magics.errors import LockHeld, LockLost, VerificationError
from colab_magics.lock import LOCK_NAME, RemoteLock, _started

DEST = "remote:runs/outputs"
PATH = f"{DEST}/{LOCK_NAME}"
TTL = 90.0


class FakeRemote:
    """The calls the lock makes on a Context, on a dict; ``racer`` writes first when the lock writes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.racer: dict | None = None

    def read_optional(self, path: str) -> bytes | None:
        return self.files.get(path)

    def read_replaced(self, path: str, rank: object, repair: bool) -> bytes | None:
        """No cut copies here (``tests/reliability/test_rate_limits.py`` has those, on a real server)."""
        return self.files.get(path)

    def replace(self, path: str, data: bytes) -> None:
        if self.racer is not None:  # another kernel's write lands instead: the read-back differs
            self.files[path] = json.dumps(self.racer).encode()
            raise VerificationError(f"{path} does not hold what was just written to it")
        self.files[path] = data

    def held(self) -> dict:
        return json.loads(self.files[PATH])

    def put(self, **lock: object) -> None:
        self.files[PATH] = json.dumps(lock).encode()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def remote() -> FakeRemote:
    return FakeRemote()


def _lock(clock: ManualClock) -> RemoteLock:
    return RemoteLock(None, DEST, TTL, clock)  # type: ignore[arg-type]  # no rclone: only release would use it


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _elsewhere(clock: ManualClock, expires_in: float) -> dict:
    return {"owner": "colab-vm-2 pid 77 (abcd1234)", "host": "colab-vm-2", "pid": 77, "expires": clock.now + expires_in}


def _here(pid: int, started: int | None, expires_in: float, clock: ManualClock) -> dict:
    return {"owner": f"{socket.gethostname()} pid {pid} (feed0000)", "host": socket.gethostname(), "pid": pid,
            "started": started, "expires": clock.now + expires_in}  # fmt: skip


def test_a_free_destination_is_taken_with_an_owner_that_names_this_process(clock, remote):
    lock = _lock(clock)
    lock.acquire(remote)
    assert remote.held() == {"owner": lock.owner, "host": socket.gethostname(), "pid": os.getpid(),
                             "started": _started(os.getpid()), "expires": clock.now + TTL}  # fmt: skip


def test_another_machines_unexpired_lock_refuses_with_the_time_left(clock, remote):
    remote.put(**_elsewhere(clock, 29.5))
    with pytest.raises(LockHeld) as info:
        _lock(clock).acquire(remote)
    assert str(info.value) == (
        f"{DEST} is being persisted by colab-vm-2 pid 77 (abcd1234) (lock expires in 30s); "
        "stop that persist first, wait, or take over with --steal-lock"
    )
    assert remote.held()["owner"] == "colab-vm-2 pid 77 (abcd1234)"  # untouched


def test_another_machines_lock_is_free_once_expired_on_this_clock(clock, remote):
    remote.put(**_elsewhere(clock, 30))
    clock.now += 30.001
    lock = _lock(clock)
    lock.acquire(remote)
    assert remote.held()["owner"] == lock.owner


def test_stealing_takes_any_lock(clock, remote):
    for held in (_elsewhere(clock, 3600), _here(os.getppid(), _started(os.getppid()), 3600, clock)):
        remote.put(**held)
        lock = _lock(clock)
        lock.acquire(remote, steal=True)
        assert remote.held()["owner"] == lock.owner


def test_a_live_process_here_keeps_its_lock_even_past_its_expiry(clock, remote):
    parent = os.getppid()
    remote.put(**_here(parent, _started(parent), -3600, clock))  # expired an hour ago, by its clock
    with pytest.raises(LockHeld, match=r"\(while it runs on this machine\); stop that persist first"):
        _lock(clock).acquire(remote)


@pytest.mark.parametrize("case", ["dead", "pid reused"])
def test_a_dead_process_here_leaves_its_lock_free_before_its_expiry(clock, remote, case):
    pid, started = (_dead_pid(), None) if case == "dead" else (os.getppid(), -1)  # reused: another start time
    remote.put(**_here(pid, started, 3600, clock))
    lock = _lock(clock)
    lock.acquire(remote)
    assert remote.held()["owner"] == lock.owner


def test_another_persist_of_this_process_is_judged_by_its_expiry(clock, remote):
    """Its liveness says nothing (this process is alive): a persist never stopped lets its lock expire."""
    forgotten = _lock(clock)
    forgotten.acquire(remote)
    clock.now += TTL - 0.5
    with pytest.raises(LockHeld, match=r"lock expires in 1s"):
        _lock(clock).acquire(remote)
    clock.now += 1
    successor = _lock(clock)
    successor.acquire(remote)
    assert remote.held()["owner"] == successor.owner != forgotten.owner


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b""], ids=["garbage", "a list", "empty"])
def test_an_unreadable_lock_is_no_lock(clock, remote, raw):
    remote.files[PATH] = raw
    lock = _lock(clock)
    lock.acquire(remote)
    assert remote.held()["owner"] == lock.owner


def test_a_race_lost_at_the_moment_of_writing_is_a_clear_refusal(clock, remote):
    remote.racer = _elsewhere(clock, TTL)
    with pytest.raises(LockHeld) as info:
        _lock(clock).acquire(remote)
    assert str(info.value) == f"another kernel took the lock on {PATH} at the same moment; try again"


def test_a_write_that_did_not_land_for_another_reason_is_not_called_a_race(clock, remote):
    remote.racer = {}  # the server kept other content, but nobody holds the lock
    with pytest.raises(VerificationError):
        _lock(clock).acquire(remote)


def test_refresh_moves_the_expiry_on_and_check_passes_while_the_lock_is_ours(clock, remote):
    lock = _lock(clock)
    lock.acquire(remote)
    clock.now += 60
    lock.check(remote)
    lock.refresh(remote)
    assert remote.held()["expires"] == clock.now + TTL


def test_a_lock_taken_over_is_noticed_and_never_overwritten(clock, remote):
    lock = _lock(clock)
    lock.acquire(remote)
    thief = _elsewhere(clock, TTL)
    remote.put(**thief)
    with pytest.raises(LockLost) as info:
        lock.refresh(remote)
    assert str(info.value) == (
        f"{DEST} was taken over by {thief['owner']}; this kernel stopped syncing to it "
        "so as not to overwrite that kernel's work (local files are untouched)"
    )
    assert remote.held() == thief
    with pytest.raises(LockLost):
        lock.check(remote)


def test_a_lock_taken_over_and_released_since_is_still_lost(clock, remote):
    """Another kernel stole the lock, finished and released it between two of this kernel's syncs: an
    absent lock is not this kernel's to write under, or its next sync would drop that kernel's files."""
    lock = _lock(clock)
    lock.acquire(remote)
    del remote.files[PATH]  # the thief's release: no lock file at all
    with pytest.raises(LockLost) as info:
        lock.check(remote)
    assert "was taken over by another kernel, which has since released it;" in str(info.value)
    with pytest.raises(LockLost):
        lock.refresh(remote)
    assert PATH not in remote.files  # nothing written back


def test_release_leaves_another_writers_lock_alone(clock, remote):
    thief = _elsewhere(clock, TTL)
    remote.put(**thief)
    _lock(clock).release(remote)  # not ours: nothing is deleted (and no rclone is needed to decide so)
    assert remote.held() == thief
