"""A snapshot of a local folder: every file, folder and symlink with what identifies its state.

One walk serves both directions: push reads it to plan parts and to detect files that change
while they upload; stage records it to answer "is dest still what we staged?" in milliseconds.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileStat:
    path: str  # relative, "/"-separated
    size: int
    mode: int
    mtime_ns: int


@dataclass
class Tree:
    files: list[FileStat] = field(default_factory=list)
    dirs: list[tuple[str, int]] = field(default_factory=list)  # (path, mode)
    links: list[tuple[str, str]] = field(default_factory=list)  # (path, target)
    special: list[str] = field(default_factory=list)  # sockets, fifos, devices: never transferred

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def fingerprint(self) -> dict[str, list[int]]:
        """Files by path with (size, mtime_ns): equal fingerprints mean an unchanged tree."""
        return {f.path: [f.size, f.mtime_ns] for f in self.files}


def scan(root: str | os.PathLike[str]) -> Tree:
    """Walk ``root`` (not following symlinks) in sorted order."""
    tree = Tree()
    _walk(os.fspath(root), "", tree)
    return tree


def _walk(folder: str, prefix: str, tree: Tree) -> None:
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = prefix + entry.name
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            tree.links.append((rel, os.readlink(entry.path)))
        elif stat.S_ISDIR(st.st_mode):
            tree.dirs.append((rel, stat.S_IMODE(st.st_mode)))
            _walk(entry.path, rel + "/", tree)
        elif stat.S_ISREG(st.st_mode):
            tree.files.append(FileStat(rel, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns))
        else:
            tree.special.append(rel)


def fingerprint_of(root: str | os.PathLike[str]) -> dict[str, list[int]] | None:
    """The fingerprint of ``root``, or None when it is missing or not a folder."""
    if not os.path.isdir(root) or os.path.islink(root):
        return None
    return scan(root).fingerprint()


def inside(child: str | os.PathLike[str], parent: str | os.PathLike[str]) -> bool:
    """True when ``child`` is ``parent`` or below it (after resolving symlinks)."""
    c, p = os.path.realpath(child), os.path.realpath(parent)
    return c == p or c.startswith(p.rstrip(os.sep) + os.sep)
