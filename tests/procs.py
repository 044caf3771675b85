"""Processes as /proc shows them: what a test started, and what is still running after it."""

from __future__ import annotations

import os


def _table() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every live process (zombies excluded)."""
    rows = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if fields[0] != "Z":
            rows.append((int(pid), int(fields[1]), cmd))
    return rows


def descendants(root: int) -> set[tuple[int, str]]:
    """Live descendants of ``root`` as (pid, command line)."""
    by_parent: dict[int, list[tuple[int, str]]] = {}
    for pid, ppid, cmd in _table():
        by_parent.setdefault(ppid, []).append((pid, cmd))
    out, todo = set(), [root]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            out.add(child)
            todo.append(child[0])
    return out


def running(needle: str) -> list[str]:
    """Command lines of live processes that mention ``needle`` (a test's temporary folder, say)."""
    return [cmd for pid, _, cmd in _table() if needle in cmd and pid != os.getpid()]
