"""Drive's Trash as the Drive mount fills it, for tests and benchmarks (Drive cannot run here).

Through the mount, a file that is deleted or replaced by a rename goes to Drive's Trash, and a file
rewritten in place keeps its old version in Drive's version history; both count against the quota
until the Trash is emptied or the versions expire.  :class:`TrashModel` watches a folder on the
(fake) mount from outside, by inode and modification time, and counts what so left it.
"""

from __future__ import annotations

import os
from pathlib import Path


class TrashModel:
    """What Drive counts for ``folder``: its files, and every file gone from it (deleted, replaced by a
    rename or rewritten in place).  Call :meth:`look` after every change."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[tuple[int, int], int] = {}  # (inode, mtime): a file, wherever renames take it -> size
        self.trashed = 0

    def files(self) -> dict[tuple[int, int], int]:
        found = {}
        for dirpath, _, names in os.walk(self.folder):
            for name in names:
                st = os.lstat(os.path.join(dirpath, name))
                found[st.st_ino, st.st_mtime_ns] = st.st_size  # a freed inode may be reused by a new file
        return found

    def look(self) -> None:
        now = self.files()
        self.trashed += sum(size for key, size in self.seen.items() if key not in now)
        self.seen = now

    def usage(self) -> int:
        """What Drive counts: the folder as it is, and its Trash."""
        return sum(self.files().values()) + self.trashed
