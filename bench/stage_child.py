"""Child process of the memory benchmark: one ``colab_magics.stage`` call, then its peak RSS.

Usage: ``python bench/stage_child.py SOURCE DEST`` (run by ``bench/run.py``).  Prints one JSON
line on stdout: the stage result, this process's peak RSS (``RUSAGE_SELF``), the peak RSS of its
largest finished child, i.e. an rclone (``RUSAGE_CHILDREN``), and the RSS after imports only.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def rss_now_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    source, dest = sys.argv[1], sys.argv[2]
    import colab_magics

    after_import = rss_now_kib()
    t0 = time.perf_counter()
    result = colab_magics.stage(source, dest)
    seconds = time.perf_counter() - t0
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "files": result.files,
                "bytes": result.bytes,
                "up_to_date": result.up_to_date,
                "rss_after_import_kib": after_import,
                "self_maxrss_kib": self_kib,
                "children_maxrss_kib": children_kib,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
