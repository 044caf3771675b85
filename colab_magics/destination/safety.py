"""Where data sent to a destination really lives, and so whether losing the runtime loses it.

Three classes, decided from the destination alone (never from a transfer's success):

- *this machine*: a local folder that is not a network mount, the embedded default included.
  A runtime that dies takes it along.
- *mount*: a FUSE or network mount, above all Colab's Drive mount.  The data is written there,
  but DriveFS uploads it later, asynchronously; until the mount is flushed
  (``google.colab.drive.flush_and_unmount()``) it is in the VM's cache.
- *remote*: an rclone network backend.  What was verified against it is there.
"""

from __future__ import annotations

import os
from enum import Enum

from ..host.colab import in_drive_mount, require_drive_mounted
from ..rclone import remotes
from ..rclone.process import Rclone

# file systems whose writes leave this machine later (or not at all if it dies first)
_NETWORK_FS = ("fuse", "nfs", "cifs", "smb", "9p", "ceph", "glusterfs", "lustre", "gcsfuse", "davfs", "afs")


class Where(str, Enum):
    THIS_MACHINE = "this machine"
    MOUNT = "mount"
    REMOTE = "remote"

    def caveat(self) -> str:
        """Where the data is, in the words every summary and status line uses."""
        if self is Where.THIS_MACHINE:
            return "kept on this machine only: lost if the runtime is lost"
        if self is Where.MOUNT:
            return "on the Drive mount, upload pending: run %drive_flush before you disconnect"
        return "verified on the remote"


FLUSHED = "flushed to Drive"  # what a mount's caveat becomes once Drive's flush succeeded


def where(dest: str, rclone: Rclone | None = None) -> Where:
    """The safety class of the rclone path ``dest``; refuses a path on Drive while Drive is unmounted."""
    local = remotes.local_path(dest)
    if local is None:
        local_backend = remotes.remote_info(rclone or Rclone(), dest).type == "local"  # a remote named for a folder
        return Where.THIS_MACHINE if local_backend else Where.REMOTE
    if in_drive_mount(local):
        require_drive_mounted(local)
        return Where.MOUNT
    return Where.MOUNT if _fs_type(local).startswith(_NETWORK_FS) else Where.THIS_MACHINE


def _fs_type(path: str) -> str:
    """The file system type of the mount that holds ``path`` (``/proc/self/mountinfo``), "" if unknown."""
    path = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                point = left.split()[4].replace("\\040", " ")
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best) and right.split():
                    best, kind = point, right.split()[0]
    except OSError:
        return ""
    return kind
