"""The notebook host's own services: Colab's Drive mount and its flush, and ending the runtime.

Only Google provides these, through ``google.colab``, which is imported when a service is used
and never at import time: everywhere else this module only answers "not here".
"""

from __future__ import annotations

import os

from ..errors import BadInput, FlushFailed

DRIVE_MOUNT = "/content/drive"  # where Colab mounts Drive by convention
DRIVEFS_LOG = "~/.config/Google/DriveFS/Logs/drive_fs.txt"  # where DriveFS says what went wrong


def drive_mount_point() -> str:
    """Colab's Drive mount point (``COLAB_MAGICS_DRIVE_MOUNT`` moves it, for tests only)."""
    return os.environ.get("COLAB_MAGICS_DRIVE_MOUNT", "").strip() or DRIVE_MOUNT


def drive_root() -> str:
    """The user's My Drive inside the mount."""
    return os.path.join(drive_mount_point(), "MyDrive")


def on_colab() -> bool:
    """A hosted Colab runtime (its release tag in the environment, or its host marker)."""
    return bool(os.environ.get("COLAB_RELEASE_TAG")) or os.path.exists("/var/colab/hostname")


def in_drive_mount(path: str) -> bool:
    """``path`` (absolute) is inside Colab's Drive mount point, mounted or not."""
    mount = drive_mount_point().rstrip("/")
    return path == mount or path.startswith(mount + "/")


def drive_mounted() -> bool:
    """Drive is mounted: after ``flush_and_unmount`` the mount point is an empty folder of the VM."""
    return os.path.isdir(drive_root())


def require_drive_mounted(path: str) -> None:
    """Refuse to write under the Drive mount point while Drive is not mounted there: the data would
    stay in an ordinary folder of the VM, and the next mount refuses a mount point that holds files."""
    if in_drive_mount(path) and not drive_mounted():
        raise BadInput(
            f"{path} is on Google Drive, which is not mounted (no longer, after a flush): mount it again "
            "with `from google.colab import drive; drive.mount('/content/drive')`"
        )


def mount_drive() -> None:
    """Mount Drive with Colab's own consent prompt; raises whatever Colab raises on refusal."""
    from google.colab import drive

    drive.mount(drive_mount_point())


def flush_drive() -> None:
    """Upload what DriveFS still holds in the VM's cache, then unmount: the only flush Colab has
    (there is no flush without the unmount, and DriveFS answers only through its exit status)."""
    if not on_colab():
        raise BadInput("nothing to flush: the Google Drive mount is a Colab service, and this is not Colab")
    if not drive_mounted():
        raise BadInput(f"nothing to flush: Google Drive is not mounted at {drive_mount_point()}")
    try:
        from google.colab import drive

        drive.flush_and_unmount()
    except Exception as exc:  # colabtools raises ValueError('flush_and_unmount failed')
        raise FlushFailed(
            f"Google Drive's flush failed ({str(exc).strip() or type(exc).__name__}): what was written to the "
            f"mount may not be on Drive yet; see {DRIVEFS_LOG}, then mount and flush again"
        ) from None
    if drive_mounted():
        raise FlushFailed(
            f"Google Drive is still mounted at {drive_mount_point()} after its flush: the upload may not be "
            f"complete; see {DRIVEFS_LOG}"
        )


def end_runtime() -> None:
    """End this Colab runtime on purpose (``google.colab.runtime.unassign``)."""
    from google.colab import runtime

    runtime.unassign()
