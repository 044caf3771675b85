"""Waiting in tests: for a condition, with a deadline generous enough for a machine under load,
never for a fixed time; and a clock the test moves itself, for decisions that depend on time.

A busy machine (CI shares two cores) makes everything slower, so a test that sleeps "long enough"
or gives up after a few seconds fails there while the code is right.  Here waits end as soon as
what they wait for has happened, and give up only after :data:`PATIENCE`.
"""

from __future__ import annotations

import time
from typing import Callable

from colab_magics.events import EventBus

PATIENCE = 60.0  # seconds: far beyond what anything here needs on an idle machine


def poll(predicate: Callable[[], object], timeout: float = PATIENCE, interval: float = 0.05) -> bool:
    """True as soon as ``predicate()`` is true; False if it still is not after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)
    return True


def wait_until(predicate: Callable[[], object], what: str, timeout: float = PATIENCE, interval: float = 0.05) -> None:
    """Return once ``predicate()`` is true; fail the test, saying ``what`` did not happen, after ``timeout``."""
    assert poll(predicate, timeout, interval), f"{what}: not within {timeout:.0f}s"


def delivered(bus: EventBus) -> None:
    """Every event published so far has reached the bus's listeners (the status board, a panel)."""
    assert bus.flush(timeout=PATIENCE), f"events still undelivered after {PATIENCE:.0f}s"


class ManualClock:
    """A wall clock that moves only when the test says so: expiry and intervals without sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
