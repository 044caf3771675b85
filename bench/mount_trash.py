"""Benchmark: what a persist on Colab's Drive mount costs in Drive's quota, Trash included (issue #9).

Through the mount, a file deleted or replaced by a rename goes to Drive's Trash, and a file rewritten
in place keeps its old version; both count against the quota until the Trash is emptied (or 30 days
pass).  The case the issue sets: a 200 MB checkpoint rewritten before each of 50 syncs, then the
cell's final sync.  Side by side, on the same rewrites:

  budget (default)  a real Persister on a (fake) Drive mount, its timed syncs keeping to the Trash
                    budget (COLAB_MAGICS_MOUNT_TRASH=1x): rewrites it cannot afford are held back;
  no budget         the same with COLAB_MAGICS_MOUNT_TRASH=off: every sync goes up;
  seeds' snippet    ``shutil.copy(checkpoint, '/content/drive/MyDrive/...')`` after each rewrite.

Drive cannot run here: its Trash is modelled from outside (``tests/trash_model.py``: every file gone
from the folder, by inode and modification time, keeps counting).  The table gives Drive's usage as a
multiple of the folder's size, and how many of the 50 versions reached Drive (what a runtime lost
at that point would keep), then the target with PASS or MISS.  A benchmark, not a test
(``tests/test_mount_trash.py`` holds the bounds): it never fails on a missed target.

Run::

    python bench/mount_trash.py          # 200 MB x 50 syncs, about 3 minutes
    python bench/mount_trash.py --quick  # 20 MB x 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import results  # noqa: E402
from trash_model import TrashModel  # noqa: E402

from colab_magics.destination.trash import parse_factor  # noqa: E402
from colab_magics.persist import Persister  # noqa: E402

TARGET = 2.0  # Drive's usage, Trash included, within 2x the folder's size
SLACK = 0.01  # what two versions of the data bring besides: tar headers, the manifests, the lock


def _rewrite(path: Path, size: int, version: int) -> None:
    """A new version of the whole checkpoint, as ``torch.save`` writes one: every byte differs."""
    block = bytes([version % 251]) * (1 << 20)
    with open(path, "wb") as fh:
        for _ in range(size >> 20):
            fh.write(block)


def run_persist(work: Path, size: int, syncs: int, budget: str) -> tuple[TrashModel, int]:
    """``syncs`` timed syncs of a real persist on the fake mount, each after a rewrite, then the final one."""
    local, target = work / f"outputs-{budget}", work / "drive" / "MyDrive" / f"outputs-{budget}"
    local.mkdir()
    persister = Persister(local, str(target), every=3600, settle=0.0, lock_ttl=24 * 3600,
                          mount_trash=parse_factor(budget))  # fmt: skip
    persister.start()
    model = TrashModel(target)
    went = 0
    try:
        for version in range(syncs):
            _rewrite(local / "model.pt", size, version)
            outcome = persister.sync(timed=True)
            went += not outcome.held
            model.look()
    finally:
        persister.stop(final=True)
    model.look()
    return model, went


def run_seeds(work: Path, size: int, syncs: int) -> tuple[TrashModel, int]:
    """The seeds' snippet: the checkpoint copied onto the mount after each rewrite."""
    local, target = work / "seeds", work / "drive" / "MyDrive" / "seeds"
    local.mkdir()
    target.mkdir(parents=True)
    model = TrashModel(target)
    for version in range(syncs):
        _rewrite(local / "model.pt", size, version)
        shutil.copy(local / "model.pt", target / "model.pt")
        model.look()
    return model, syncs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 MB x 10 syncs instead of 200 MB x 50")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "mount_trash.json")
    args = ap.parse_args()
    size, syncs = (20 << 20, 10) if args.quick else (200 << 20, 50)
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cm-bench-trash-") as tmp:
        work = Path(tmp)
        os.environ["COLAB_MAGICS_DRIVE_MOUNT"] = str(work / "drive")
        os.environ["COLAB_MAGICS_STATE_DIR"] = str(work / "state")
        (work / "drive" / "MyDrive").mkdir(parents=True)
        runs: dict[str, Callable[[], tuple[TrashModel, int]]] = {
            "budget 1x (default)": lambda: run_persist(work, size, syncs, "1x"),
            "no budget (off)": lambda: run_persist(work, size, syncs, "off"),
            "seeds' snippet (shutil.copy)": lambda: run_seeds(work, size, syncs),
        }
        for name, run in runs.items():
            t0 = time.monotonic()
            model, went = run()
            rows.append({"policy": name, "usage_x": model.usage() / size, "trash_mb": model.trashed / 1e6,
                         "versions_up": went, "seconds": time.monotonic() - t0})  # fmt: skip
            print(f"  {name}: done in {rows[-1]['seconds']:.0f} s", file=sys.stderr)
            shutil.rmtree(work / "drive" / "MyDrive")  # the next run starts from an empty Drive
            (work / "drive" / "MyDrive").mkdir()
    print(f"\nDrive usage of a {size >> 20} MB checkpoint rewritten before each of {syncs} syncs, then the final "
          "sync (Trash modelled as the mount fills it)\n")  # fmt: skip
    head = f"{'policy':<30}  {'usage / folder':>14}  {'Trash':>10}  {'timed syncs up':>14}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['policy']:<30}  {r['usage_x']:>13.2f}x  {r['trash_mb']:>7.0f} MB  {r['versions_up']:>10}/{syncs}")
    ours = rows[0]["usage_x"]
    verdict = "PASS" if ours <= TARGET + SLACK else "MISS"
    print(f"\ntarget: Drive usage, Trash included, within {TARGET:.0f}x the folder (+{SLACK:.0%} for tar headers, "
          f"manifests and the lock): {ours:.3f}x  {verdict}")  # fmt: skip
    off, seeds = rows[1]["usage_x"], rows[2]["usage_x"]
    print(f"ratios: no budget / budget {off / ours:.1f}x, seeds / budget {seeds / ours:.1f}x")
    print("the cost: with the budget, held versions are not on Drive until Sync now or the final sync")
    results.save(args.json, started, {"size": size, "syncs": syncs}, {}, rows=rows,
                 target={"usage_x": ours, "goal": TARGET, "verdict": verdict})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
