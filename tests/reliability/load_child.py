"""The persisting side of the load tests, run in a child Python process so that its peak memory
is its own: ``python load_child.py rewrite|patch '<json arguments>'`` prints one JSON line.

Peak memory, measured three ways:
- ``ru_maxrss`` of this process (RUSAGE_SELF).  Linux carries a process's high-water mark across
  ``exec``, so a child spawned straight from a big pytest process (``vfork`` then ``exec``) starts
  with pytest's peak: the tests start this script from a forked shell (see ``test_load._child``),
  and ``VmHWM`` (this process's own address space only) is reported beside it as a check;
- RUSAGE_CHILDREN: the largest rclone child, which for the same reason counts this process's
  RSS at the moment it spawned that child;
- rclone's own peak, ``VmHWM`` of every rclone child sampled from /proc every 0.1 s.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procs import descendants

import colab_magics as cm
from colab_magics.packed.upload import SyncOutcome
from colab_magics.persist import Persister


class RclonePeak:
    """The largest ``VmHWM`` of any rclone descendant seen so far, sampled on a thread."""

    def __init__(self, every: float = 0.1) -> None:
        self.mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            for pid, cmd in descendants(os.getpid()):
                if "rclone" not in cmd.split(" ", 1)[0]:
                    continue
                try:
                    with open(f"/proc/{pid}/status") as fh:
                        hwm = next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), 0)
                except (OSError, ValueError):
                    continue
                self.mib = max(self.mib, hwm // 1024)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.mib


def _maxrss() -> dict[str, int]:
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    return {
        "self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "hwm_mib": hwm // 1024,
        "children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
    }


def _outcome(o: SyncOutcome, seconds: float) -> dict:
    r = o.result
    return {
        "seconds": round(seconds, 2), "files": r.files, "bytes": r.bytes, "up_to_date": r.up_to_date,
        "moved_files": r.moved_files, "moved_bytes": r.moved_bytes, "reused_parts": r.reused_parts,
        "parts": [p.name for p in o.manifest.parts], "deferred": o.deferred, **_maxrss(),
    }  # fmt: skip


def _timed_sync(p: Persister) -> dict:
    t0 = time.monotonic()
    return _outcome(p.sync(), time.monotonic() - t0)


def rewrite(local: Path, args: dict) -> None:
    """Small files: rewrite ``modify`` and create ``add`` ({path: size}) with random bytes."""
    for rel, size in {**args["modify"], **args["add"]}.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(os.urandom(size))


def patch(local: Path, args: dict) -> None:
    """One big file: overwrite its ``patch`` regions ([offset, length] pairs) with random bytes."""
    with open(local / args["file"], "r+b") as fh:
        for offset, length in args["patch"]:
            fh.seek(offset)
            fh.write(os.urandom(length))


def persist_and_stage(args: dict, change) -> dict:
    """What a %%persist cell does with ``local``: the first sync, a change, the next sync, the final
    flush; then the remote copy staged into ``back``."""
    local = Path(args["local"])
    p = Persister(local, every=3600, settle=0.0, lock_ttl=3600)
    p.start()
    out = {"dest": p.dest, "first": _timed_sync(p)}
    change(local, args)
    out["second"] = _timed_sync(p)
    t0 = time.monotonic()
    out["final"] = _outcome(p.stop(), time.monotonic() - t0)
    out["persist"] = _maxrss()  # the peaks so far: the persist alone
    t0 = time.monotonic()
    cm.stage(p.dest, args["back"])
    out["stage_seconds"] = round(time.monotonic() - t0, 2)
    return out


if __name__ == "__main__":
    sampler = RclonePeak()
    result = persist_and_stage(json.loads(sys.argv[2]), {"rewrite": rewrite, "patch": patch}[sys.argv[1]])
    result["rclone_peak_mib"] = sampler.stop()
    result["end"] = _maxrss()
    print(json.dumps(result))
