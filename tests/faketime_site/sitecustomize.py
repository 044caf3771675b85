"""Loaded (via PYTHONPATH) only into processes run under libfaketime with a real monotonic clock.

libfaketime's clock_nanosleep mishandles CLOCK_MONOTONIC with TIMER_ABSTIME, which
Python 3.11+ uses for time.sleep(): it fails with EINVAL (wolfcw/libfaketime#426).  Timed
waits on a lock are not affected, so sleep waits on one.  The clock steps stay real.
"""

import threading
import time

_never_set = threading.Event()


def _sleep(seconds: float) -> None:
    _never_set.wait(max(0.0, seconds))


time.sleep = _sleep
