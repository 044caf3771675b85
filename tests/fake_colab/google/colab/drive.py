"""``google.colab.drive`` as the library uses it: ``mount`` makes the mount folder appear, or refuses.

``FAKE_COLAB_MOUNT=refuse`` answers as Colab does when the user declines the consent prompt
(colabtools raises ``ValueError: mount failed``).
"""

from __future__ import annotations

import json
import os


def _record(call: str, **args: object) -> None:
    log = os.environ.get("FAKE_COLAB_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps({"call": call, **args}) + "\n")


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False) -> None:
    _record("drive.mount", mountpoint=mountpoint)
    if os.environ.get("FAKE_COLAB_MOUNT") == "refuse":
        raise ValueError("mount failed")
    os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
