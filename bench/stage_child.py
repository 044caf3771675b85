"""Child process of the memory benchmark: one ``colab_magics.stage`` call, then its peak RSS.

Usage: ``python bench/stage_child.py SOURCE DEST`` (run by ``bench/run.py``).  Prints one JSON
line on stdout: the stage result, this process's peak RSS, the peak RSS of every process below it
still running (the rclone daemon and its ``sh`` watcher), the largest peak of those that ended
(``RUSAGE_CHILDREN``), and the RSS after imports only.

Peaks are the kernel's high-water marks (``VmHWM``), read before the processes end: exact, where a
sampler can miss a short peak.  Not ``RUSAGE_SELF``: Linux keeps ``ru_maxrss`` across ``execve``,
so a process started by a large one (the benchmark, which has just written 2 GiB) reports its
parent's size from its first instruction.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def status_kib(field: str, pid: int | str = "self") -> int:
    """``field`` (``VmRSS``, ``VmHWM``) of ``/proc/<pid>/status``, in KiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from ``/proc``: no psutil needed)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        below = [p for p, pp in parent.items() if pp in frontier]
        found += below
        frontier = below
    return found


def main() -> None:
    source, dest = sys.argv[1], sys.argv[2]
    import colab_magics

    after_import = status_kib("VmRSS")
    t0 = time.perf_counter()
    result = colab_magics.stage(source, dest)
    seconds = time.perf_counter() - t0
    self_kib = status_kib("VmHWM")
    running = {pid: status_kib("VmHWM", pid) for pid in descendants(os.getpid())}
    ended_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "seconds": seconds,
                "files": result.files,
                "bytes": result.bytes,
                "up_to_date": result.up_to_date,
                "rss_after_import_kib": after_import,
                "self_peak_kib": self_kib,
                "running_children_peak_kib": sum(running.values()),
                "running_children": len(running),
                "ended_children_maxrss_kib": ended_kib,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
