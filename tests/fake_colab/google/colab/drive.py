"""``google.colab.drive`` as the library uses it: ``mount`` makes the mount folder appear, or refuses;
``flush_and_unmount`` moves what the mount holds to "Drive" and leaves the empty mount point.

Drive itself is the folder ``<mountpoint>.drive`` (what a flush uploaded); a later mount shows it again.
``FAKE_COLAB_MOUNT=refuse`` answers as Colab does when the user declines the consent prompt
(colabtools raises ``ValueError: mount failed``); ``FAKE_COLAB_FLUSH=fail`` as DriveFS does when
its upload fails (``ValueError: flush_and_unmount failed``), with Drive still mounted.
"""

from __future__ import annotations

import json
import os
import shutil

from google.colab import _record


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False) -> None:
    _record("drive.mount", mountpoint=mountpoint)
    if os.environ.get("FAKE_COLAB_MOUNT") == "refuse":
        raise ValueError("mount failed")
    if os.path.isdir(mountpoint) and os.listdir(mountpoint):
        if os.path.isdir(os.path.join(mountpoint, "MyDrive")):
            return  # already mounted
        raise ValueError("Mountpoint must not already contain files")
    cloud = mountpoint.rstrip("/") + ".drive"
    os.makedirs(mountpoint, exist_ok=True)
    if os.path.isdir(cloud):
        shutil.move(cloud, os.path.join(mountpoint, "MyDrive"))
    else:
        os.makedirs(os.path.join(mountpoint, "MyDrive"))


def _mounted() -> str | None:
    """The mount point of the last mount still in place, from the call log (like Colab's ``/bin/mount``)."""
    log = os.environ.get("FAKE_COLAB_LOG", "")
    calls = [json.loads(line) for line in open(log)] if log and os.path.exists(log) else []
    points = [c["mountpoint"] for c in calls if c["call"] == "drive.mount"]
    return points[-1] if points and os.path.isdir(os.path.join(points[-1], "MyDrive")) else None


def flush_and_unmount(timeout_ms: int = 24 * 60 * 60 * 1000) -> None:
    _record("drive.flush_and_unmount")
    mountpoint = _mounted()
    if mountpoint is None:
        print("Drive not mounted, so nothing to flush and unmount.")
        return
    if os.environ.get("FAKE_COLAB_FLUSH") == "fail":
        raise ValueError("flush_and_unmount failed")
    shutil.move(os.path.join(mountpoint, "MyDrive"), mountpoint.rstrip("/") + ".drive")
