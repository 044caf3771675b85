"""Putting a finished tree in place so that readers see the old tree or the new, never a mix.

On Linux ``renameat2(RENAME_EXCHANGE)`` swaps two folders in one atomic step; elsewhere (or on
file systems without it) two renames leave a moment where the destination is absent, but never
a half-written tree.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> object | None:
    try:  # the C library this interpreter runs on (not ctypes.util.find_library: a child process to ask)
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def _exchange(a: Path, b: Path) -> bool:
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)  # type: ignore[operator]
    return rc == 0


def replace_tree(new: Path, dest: Path, trash: Path) -> None:
    """Move folder ``new`` to ``dest``; a previous ``dest`` ends in ``trash`` and is removed."""
    if not dest.exists() and not dest.is_symlink():
        os.rename(new, dest)
        return
    if _exchange(new, dest):
        old = new  # after the exchange, ``new`` names the previous tree
    else:
        os.rename(dest, trash)
        os.rename(new, dest)
        old = trash
    shutil.rmtree(old, ignore_errors=True)
