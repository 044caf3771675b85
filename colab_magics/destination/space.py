"""Room at the destination: how much is free (and in Drive's Trash), and refusing an upload that
cannot fit before anything of it is sent.

A full Drive does not always fail loudly (through the mount, "the code still runs, however no
files are saved": googlecolab/colabtools#5325), and a half-sent upload that dies on a quota error
wastes the time it took.  ``rclone about`` reports the quota where a backend keeps one (Drive,
with its Trash, which deletes through the mount fill until it is emptied; SFTP by ``df``); a
local folder or a mount is asked directly (``statvfs``).  S3 and most WebDAV servers report
nothing, and then nothing is refused: the upload's own error stays loud.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import humanize

from ..errors import ColabMagicsError, NoRoom
from ..jobs import Context
from ..rclone import remotes
from ..rclone.process import Rclone

logger = logging.getLogger(__name__)

FRESH_SECONDS = 600.0  # a measure younger than this is reused where the upload is small next to it


@dataclass(frozen=True)
class Room:
    free: int
    trashed: int | None = None  # Drive's Trash: still counted against the quota


def _size(n: int) -> str:
    return humanize.naturalsize(n, binary=True)


def measure(rclone: Rclone, dest: str) -> Room | None:
    """The room at ``dest``, or None where the backend does not say."""
    local = remotes.local_path(dest)
    if local is not None:
        while not os.path.exists(local) and os.path.dirname(local) != local:
            local = os.path.dirname(local)  # the folder may not exist yet: its file system does
        try:
            st = os.statvfs(local)
        except OSError:
            return None
        return Room(st.f_bavail * st.f_frsize)
    if not remotes.remote_info(rclone, dest).about:  # S3, most WebDAV servers
        return None
    try:
        about = rclone.about(dest)
    except ColabMagicsError:  # a folder not made yet (SFTP asks df about the path itself): its parent
        try:
            about = rclone.about(remotes.parent(dest)[0])
        except ColabMagicsError as exc:  # unknown, not zero
            logger.debug("room at %s unknown: %s", dest, exc)
            return None
    return None if about.free is None else Room(about.free, about.trashed)


_measured: dict[str, tuple[float, Room | None]] = {}  # dest -> (monotonic time, room)
_measured_lock = threading.Lock()


def check_room(ctx: Context, dest: str, needed: int) -> None:
    """Refuse, before anything is sent, an upload that adds at least ``needed`` bytes (a lower bound:
    never refuse what might fit) where the destination has less free.  The room goes on the job's
    events for the status views.  A recent measure is reused while the upload is small next to it,
    so that a persist's syncs cost no extra request."""
    if needed <= 0:
        return
    with _measured_lock:
        when, room = _measured.get(dest, (-FRESH_SECONDS, None))
    # a remote that does not say (None: S3, most WebDAV servers) is asked again only once the measure is old
    if time.monotonic() - when >= FRESH_SECONDS or (room is not None and needed > room.free // 2):
        room = measure(ctx.rc, dest)
        with _measured_lock:
            _measured[dest] = (time.monotonic(), room)
    if room is None:
        return
    ctx.job.found_room(room.free, room.trashed)
    if needed > room.free:
        trash = f"; {_size(room.trashed)} of it is in Drive's Trash: empty it" if room.trashed else ""
        raise NoRoom(
            f"{dest} has {_size(room.free)} free, and this upload needs at least {_size(needed)}{trash}; "
            "free some space there, or send it to another remote"
        )
