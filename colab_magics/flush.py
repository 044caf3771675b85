"""Before a disconnect on Colab: every persist syncs once more, Drive's mount is flushed, and the
runtime may then be ended.  The one step that turns data on the Drive mount into data on Drive.

Persists that write to the mount are ended by their final sync: the flush unmounts Drive, and the
folder left behind is the VM's own disk (they refuse to write there, see ``host``).  Persists to a
remote keep running.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .destination.safety import FLUSHED, Where
from .errors import ColabMagicsError
from .events import Direction, Event, EventBus, Kind, bus
from .host import colab as host
from .persist import Persister

FLUSH_JOB = "Drive mount"  # the name the board's flush fact goes by


@dataclass
class FlushReport:
    at: float
    ended: list[str] = field(default_factory=list)  # persists to the mount, ended by their final sync
    synced: list[str] = field(default_factory=list)  # persists to a remote, synced and still running
    disconnecting: bool = False

    def summary(self) -> str:
        done = [f"{len(self.ended)} persist(s) to the mount ended"] if self.ended else []
        done += [f"{len(self.synced)} persist(s) to a remote synced"] if self.synced else []
        tail = "; ending the runtime now" if self.disconnecting else ""
        head = f"{FLUSHED} at {time.strftime('%H:%M:%S', time.localtime(self.at))}"
        return head + (f" ({', '.join(done)})" if done else "") + tail


def flush(persisters: Iterable[Persister], *, disconnect: bool = False, events: EventBus | None = None) -> FlushReport:
    """Final syncs, then ``google.colab.drive.flush_and_unmount()``, then (``disconnect``) the runtime's end.

    Nothing is unmounted unless every persist to the mount synced first: a failed sync raises with
    Drive still mounted, so that nothing in its cache is cut off."""
    if not host.drive_mounted():
        host.flush_drive()  # says in one line why there is nothing to flush
    report = FlushReport(at=0.0, disconnecting=disconnect)
    for persister in persisters:
        if persister.where is Where.MOUNT:
            persister.stop(final=True)
            report.ended.append(persister.name)
        else:
            persister.sync(settle=0.0)
            report.synced.append(persister.name)
    try:
        host.flush_drive()
    except ColabMagicsError as exc:  # the board says so until a flush succeeds
        failed = Event(0, FLUSH_JOB, Direction.UP, Kind.FAILED, message=str(exc), where=Where.MOUNT.value)
        (events or bus).publish(failed)
        raise
    report.at = time.time()
    (events or bus).publish(Event(0, FLUSH_JOB, Direction.UP, Kind.FLUSHED, at=report.at, where=Where.MOUNT.value))
    if disconnect:
        host.end_runtime()
    return report
