"""Drive's Trash, filled through the mount: what a persist leaves there, and the budget that bounds it.

Through Colab's Drive mount, a deleted file (and a file replaced by a rename) goes to Drive's Trash
and counts against the quota until the Trash is emptied, by hand or by Drive after 30 days.  A
persist supersedes its parts as files change, so a 200 MB checkpoint rewritten before every sync
would leave 200 MB there each time: 10 GB after 50 syncs, then a full Drive on which every sync
fails.  Writing in place would not help: Drive keeps the old versions of a file, and they count too.

So on a mount a persist's *timed* syncs spend from a budget: what this runtime sent to the Trash
from one destination may reach ``factor`` times the folder's size (1x by default: Drive then holds
at most about twice the folder, Trash included).  A timed sync may trash a part only if the final
sync could still trash as much again within the budget.  The files whose upload would trash more
are held: their last synced version stays whole on Drive, new files still go up, and the status
says what is held and what to do.  Explicit syncs (Sync now, the final sync, ``%drive_flush``, the
runtime's deadline) always go, and count.  Sync now also starts the count afresh: it is what the
held message asks for once the Trash is emptied.

Other destinations have no such Trash: rclone's Drive backend deletes for good (``use_trash=false``).
The count is kept in the state folder, one file per destination, so a restarted kernel on the same
runtime goes on counting; a new runtime starts from zero.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path

import humanize

from ..errors import BadInput
from ..jobs import read_json, state_dir, write_json

DEFAULT_FACTOR = "1x"
_OFF = ("off", "none", "no")


def parse_factor(text: str | float) -> float | None:
    """``"1x"``, ``"2.5"`` -> a multiple of the folder's size; ``"off"`` -> None (no bound)."""
    raw = str(text).strip().lower()
    if raw in _OFF:
        return None
    try:
        factor = float(raw.removesuffix("x"))
    except ValueError:
        raise BadInput(f"{text!r} is not a multiple of the folder's size (e.g. 1x, 0.5x) or off") from None
    if not factor >= 0:  # also NaN
        raise BadInput(f"{text!r}: the Trash budget cannot be negative")
    return factor


class TrashBudget:
    """What one destination on a mount sent to Drive's Trash in this runtime, and what a sync may add."""

    def __init__(self, dest: str, factor: float | None) -> None:
        self.dest = dest
        self.factor = factor
        key = hashlib.sha1(dest.encode()).hexdigest()[:16]
        self._path: Path = state_dir() / "trash" / f"{key}.json"
        self._lock = threading.Lock()
        self._limit = 0  # the last budget worked out, for the held message

    def spent(self) -> int:
        data = read_json(self._path)
        spent = data.get("bytes") if data.get("dest") == self.dest else 0
        return spent if isinstance(spent, int) and spent > 0 else 0

    def limit(self, folder_bytes: int) -> int | None:
        return None if self.factor is None else int(self.factor * folder_bytes)

    def allowance(self, folder_bytes: int, timed: bool) -> int | None:
        """Bytes a sync may send to the Trash now; None: no bound (an explicit sync, or no budget).
        A timed sync keeps as much again for the final sync."""
        limit = self.limit(folder_bytes)
        if not timed or limit is None:
            return None
        self._limit = limit
        return max(0, limit - self.spent()) // 2

    def spend(self, trashed: int) -> None:
        if trashed > 0:
            with self._lock:
                write_json(self._path, {"dest": self.dest, "bytes": self.spent() + trashed})

    def reset(self) -> None:
        with self._lock:
            self._path.unlink(missing_ok=True)

    def held_note(self, files: int) -> str:
        """Why ``files`` changed file(s) wait, and what to do, in one line."""
        size = functools.partial(humanize.naturalsize, binary=True)
        spent = self.spent()
        held = f"{files:,} changed file(s) held back"
        ways = "or persist to an rclone Drive remote, which deletes for good"
        if spent * 4 < self._limit:  # emptying the Trash would not help: the budget is small for them
            return (
                f"{held}: their new versions would leave more in Drive's Trash than this folder's budget allows "
                f"({size(self._limit)}); they go up at Sync now, the final sync or %drive_flush; for saves at "
                f"every interval, raise the budget (COLAB_MAGICS_MOUNT_TRASH, e.g. 5x) {ways}"
            )
        return (
            f"{held}: Drive's Trash already holds {size(spent)} of this folder's old parts (budget "
            f"{size(self._limit)}, COLAB_MAGICS_MOUNT_TRASH); empty Drive's Trash, then press Sync now, {ways}"
        )
