"""Kaggle's notebooks: a host with no storage of the user's to mount.

Kaggle has nothing like Colab's Drive mount, and ``/kaggle/working`` outlives a session only as the
output of a saved version ("Save Version"), not when an interactive session dies.  So there is no
sensible default remote there: the embedded local folder stays the default, and the warning about
it says how to name a real remote (an rclone config kept in a Kaggle secret).
"""

from __future__ import annotations

import os

HINT = (
    "On Kaggle, /kaggle/working outlives a session only in a saved version: keep an rclone config in a "
    "Kaggle secret and set COLAB_MAGICS_REMOTE to that remote."
)


def on_kaggle() -> bool:
    """A Kaggle kernel: Kaggle sets its run type in every kernel's environment."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or os.path.isdir("/kaggle/working")
