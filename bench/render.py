"""Benchmark: what a status refresh costs with a big persist running (#13: under 5 ms at 50,000 files).

A real :class:`Persister` keeps a folder of N small files (default 50,000) synced to a local-folder
remote; the persist publishes its pending changes itself, from its own scans.  Then every view is
rendered ``--repeats`` times: the text form, the web panel's HTML, and the widgets panel's refresh.
The views only read the board, so their cost must not grow with the folder: the table prints each
view's median and worst time with PASS/MISS against 5 ms, and, for comparison, what one walk of the
folder costs (what a render paid before status flowed one way).

Run::

    python bench/render.py                 # 50,000 files, about a minute on 2 cores
    python bench/render.py --files 5000    # quicker
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402

from colab_magics.events import EventBus  # noqa: E402
from colab_magics.local import tree as localtree  # noqa: E402
from colab_magics.notebook.controls import Controls  # noqa: E402
from colab_magics.notebook.panel import Panel, render_html, render_text  # noqa: E402
from colab_magics.notebook.status import StatusBoard  # noqa: E402
from colab_magics.persist import Persister  # noqa: E402

TARGET_MS = 5.0


def timed(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "render.json")
    args = ap.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cm-render-") as tmp:
        base = Path(tmp)
        local = base / "outputs"
        for i in range(args.files):
            path = local / f"d{i % 50:02d}" / f"f{i:06d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 64)
        events = EventBus()
        board = StatusBoard(events)
        print(f"[render] {args.files:,} files: persisting to a local-folder remote", flush=True)
        persister = Persister(local, str(base / "remote" / "outputs"), every=3600, events=events)
        persister.start()
        try:
            persister.trigger().result(timeout=1800)  # everything on the remote once
            for i in range(10):  # changes the persist has not synced: its pending count is on the board
                (local / "d00" / f"new{i}.txt").write_text("new")
            persister.publish_pending()
            if not events.flush(60):
                raise SystemExit("the event bus did not deliver within 60 s")
            panel = Panel(board, Controls(board, lambda: [persister], lambda: None))
            views = {
                "text form (render_text)": lambda: render_text(board),
                "web panel HTML (render_html)": lambda: render_html(board),
                "widgets panel refresh": panel.refresh,
            }
            rows = {name: timed(fn, args.repeats) for name, fn in views.items()}
            walk = timed(lambda: localtree.scan(local), 3)
            shown = render_text(board)
            panel.close()
        finally:
            persister.stop()
            board.close()
    print(f"\ncolab_magics status refresh with a persist of {args.files:,} files (median and worst of "
          f"{args.repeats} renders)\n")
    print(f"{'view':34} {'median ms':>10} {'worst ms':>10}  target    result")
    table = {}
    for name, ms in rows.items():
        med, worst = statistics.median(ms), max(ms)
        table[name] = {"median_ms": med, "worst_ms": worst}
        print(f"{name:34} {med:10.3f} {worst:10.3f}  < {TARGET_MS:.0f} ms    {'PASS' if med < TARGET_MS else 'MISS'}")
    print(f"\n(not a view: one walk of the folder, what a render cost when it walked: "
          f"{statistics.median(walk):.0f} ms)")
    print("the text form rendered:\n" + "\n".join("  " + line for line in shown.splitlines()))
    results.save(args.json, started, {"files": args.files, "repeats": args.repeats}, {}, views=table,
                 walk_ms=statistics.median(walk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
