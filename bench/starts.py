"""Benchmark: how many rclone processes a persist starts, step by step (issue #12, "avoid work").

Each rclone start costs about a quarter of a second here, and on Drive each also re-reads the
config and spends requests against the quota; so the count is what matters, not the time (the
machine may be busy: nothing here is timed).  A real :class:`~colab_magics.persist.Persister`
runs against a plain local-folder remote and against ``rclone serve webdav`` on 127.0.0.1
(pacer off), on a folder of a few small files that an earlier persist already synced:

  start      a new kernel re-runs the cell: the lock taken, the restore (nothing to bring back),
             the background thread started (caches of this process cleared first, as in a new kernel);
  first      the first sync after one small file changed: it also sweeps what killed runs left;
  sync       a later sync after one small file changed (every sync from then on);
  unchanged  one sync with nothing changed;
  heartbeat  one lock refresh, as the background thread does every ``ttl / 3``;
  stop       the final stop after one more small change: the last sync and the lock's release.

Every rclone child is counted by wrapping :class:`~colab_magics.rclone.process.RcloneProcess` in
this process (it edits nothing); the table shows how many started and which subcommands, then
the targets with PASS or MISS.  It is a benchmark, not a test (``tests/test_request_budget.py``
holds the bounds that catch a regression): it prints a table, writes ``bench/results/starts.json``
(git-ignored) and never fails on a missed target.

Run::

    python bench/starts.py                 # both remotes, ~10 s
    python bench/starts.py --remote local  # one of them
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import results  # noqa: E402
from servers import Server  # noqa: E402

from colab_magics.destination import space  # noqa: E402
from colab_magics.persist import Persister  # noqa: E402
from colab_magics.rclone import daemon, remotes  # noqa: E402
from colab_magics.rclone import process as runner  # noqa: E402
from colab_magics.rclone.binary import find_rclone  # noqa: E402

STEPS = ("start", "first", "sync", "unchanged", "heartbeat", "stop")
LABELS = {
    "start": "start a persist (lock, restore, thread)",
    "first": "first sync (one small change, sweep)",
    "sync": "sync of one small changed file",
    "unchanged": "sync with nothing changed",
    "heartbeat": "lock heartbeat (refresh)",
    "stop": "final stop (one small change, release)",
}
TARGETS = {"sync": 1, "unchanged": 1, "heartbeat": 0}  # at most this many starts (issue #12)
SYNC_SECONDS = 0.5  # issue #12: a sync of one small changed file, on both remotes
SYNC_REPEATS = 5
FILES = 20  # small files in the persisted folder


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Step:
    """What one step cost: rclone children started (by subcommand), daemon calls (by method), seconds."""

    starts: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Starts:
    """Every rclone child this process starts, and every call to the rclone daemon, while :meth:`counting`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._step: Step | None = None
        start, call = runner.RcloneProcess.__init__, runner.Rclone.call

        @functools.wraps(start)
        def counted_start(process: runner.RcloneProcess, argv: Any, *args: Any, **kw: Any) -> None:
            self._add("starts", _subcommand(list(argv)))
            start(process, argv, *args, **kw)

        @functools.wraps(call)
        def counted_call(rclone: runner.Rclone, method: str, params: dict, **kw: Any) -> dict:
            self._add("calls", method.split("/", 1)[-1])
            return call(rclone, method, params, **kw)

        runner.RcloneProcess.__init__ = counted_start  # type: ignore[method-assign]
        runner.Rclone.call = counted_call  # type: ignore[method-assign]
        # the daemon's own start is a child too: its watcher runs it (sh -c ... rclone rcd)
        launch = daemon.Daemon.__init__

        @functools.wraps(launch)
        def counted_launch(d: daemon.Daemon, *args: Any, **kw: Any) -> None:
            self._add("starts", "rcd")
            launch(d, *args, **kw)

        daemon.Daemon.__init__ = counted_launch  # type: ignore[method-assign]

    def _add(self, what: str, name: str) -> None:
        with self._lock:
            if self._step is not None:
                getattr(self._step, what).append(name)

    @contextmanager
    def counting(self) -> Iterator[Step]:
        step = Step()
        with self._lock:
            self._step = step
        t0 = time.perf_counter()
        try:
            yield step
        finally:
            step.seconds = time.perf_counter() - t0
            with self._lock:
                self._step = None


def _subcommand(argv: list[str]) -> str:
    """``lsjson -R`` (a tree listing) told apart from a plain ``lsjson``; other commands by name."""
    command = argv[1] if len(argv) > 1 else "rclone"
    if command == "lsjson":
        return "lsjson --stat" if "--stat" in argv else "lsjson -R" if "-R" in argv else "lsjson"
    return command


def _touch(folder: Path, step: str) -> None:
    """One small change: a line appended to the log, as a training loop does."""
    with open(folder / "train.log", "a") as fh:
        fh.write(f"{step} {time.time_ns()}\n")


def measure(kind: str, dest: str, local: Path, starts: Starts) -> dict[str, Step]:
    """The rclone children, daemon calls and time of each step of one persist of ``local`` to ``dest``."""
    local.mkdir(parents=True)
    for i in range(FILES):
        (local / f"file{i:02d}.bin").write_bytes(os.urandom(1024))
    _touch(local, "setup")
    earlier = Persister(local, dest, every=3600)  # an earlier kernel's persist: not measured
    earlier.start()
    earlier.stop()
    remotes._info.cache_clear()  # as in a new kernel: nothing known about the remote yet, no daemon
    space._measured.clear()
    daemon.stop_all()
    steps: dict[str, Step] = {}
    actions: dict[str, Callable[[], object]] = {}
    persister: Persister

    def start() -> None:
        nonlocal persister
        persister = Persister(local, dest, every=3600)
        persister.start(restore=True)

    actions["start"] = start
    actions["first"] = lambda: (_touch(local, "first"), persister.sync(settle=0.0))
    actions["sync"] = lambda: (_touch(local, "sync"), persister.sync(settle=0.0))
    actions["unchanged"] = lambda: persister.sync(settle=0.0)
    actions["heartbeat"] = lambda: persister.lock.refresh(persister._context())
    actions["stop"] = lambda: (_touch(local, "stop"), persister.stop(final=True))
    for name in STEPS:
        times = []
        for _ in range(SYNC_REPEATS if name == "sync" else 1):  # a sync's time: the median of a few
            with starts.counting() as step:
                actions[name]()
            times.append(step.seconds)
        steps[name] = step  # the counts of the last: the same each time
        step.seconds = statistics.median(times)
        log(f"{kind}: {name}: {len(steps[name].starts)} start(s), {len(steps[name].calls)} call(s)")
    daemon.stop_all()
    return steps


def _said(names: list[str]) -> str:
    return ", ".join(f"{c} x{n}" if n > 1 else c for c, n in Counter(names).items()) or "-"


def report(measured: dict[str, dict[str, Step]], rclone_version: str) -> tuple[str, list[dict]]:
    lines = [
        "",
        f"rclone process starts and daemon calls of one persist ({FILES + 1} small files; {rclone_version})",
        "",
    ]
    p = lines.append
    head = f"{'remote':<7}  {'step':<40}  {'starts':>6}  {'calls':>5}  {'time':>7}  what"
    p(head)
    p("-" * len(head))
    for kind, steps in measured.items():
        for name in STEPS:
            step = steps[name]
            what = f"{_said(step.starts)} | {_said(step.calls)}"
            counts = f"{len(step.starts):>6}  {len(step.calls):>5}  {step.seconds:>6.3f}s"
            p(f"{kind:<7}  {LABELS[name]:<40}  {counts}  {what}")
    targets = []
    for name, goal in TARGETS.items():
        worst = max(len(steps[name].starts) for steps in measured.values())
        targets.append({"target": f"rclone process starts per {LABELS[name]}", "value": worst,
                        "goal": f"<= {goal}", "result": "PASS" if worst <= goal else "MISS"})  # fmt: skip
    slowest = max(steps["sync"].seconds for steps in measured.values())
    targets.append({"target": f"seconds per {LABELS['sync']} (median of {SYNC_REPEATS})", "value": round(slowest, 3),
                    "goal": f"< {SYNC_SECONDS}", "result": "PASS" if slowest < SYNC_SECONDS else "MISS"})  # fmt: skip
    p("")
    head = f"{'target (worst remote)':<62}  {'value':>6}  {'goal':<6}  result"
    p(head)
    p("-" * len(head))
    for tg in targets:
        p(f"{tg['target']:<62}  {tg['value']:>6}  {tg['goal']:<6}  {tg['result']}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text, targets


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--remote", choices=("local", "webdav", "both"), default="both")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "starts.json")
    args = ap.parse_args()
    started = time.monotonic()
    rclone_version = subprocess.run([find_rclone(), "version"], capture_output=True, text=True).stdout.split("\n")[0]
    kinds = ("local", "webdav") if args.remote == "both" else (args.remote,)
    starts = Starts()
    measured: dict[str, dict[str, Step]] = {}
    with tempfile.TemporaryDirectory(prefix="cm-bench-starts-") as tmp:
        base = Path(tmp)
        os.environ["RCLONE_CONFIG"] = "/dev/null"
        os.environ["COLAB_MAGICS_STATE_DIR"] = str(base / "state")
        os.environ.pop("COLAB_MAGICS_RCLONE_FLAGS", None)
        for kind in kinds:
            if kind == "local":
                measured[kind] = measure(kind, str(base / "remote"), base / "local-src", starts)
                continue
            server = Server("webdav", base / "webdav", name="cmbench").start()
            try:
                os.environ.update(server.env())
                measured[kind] = measure(kind, f"{server.name}:persisted", base / "webdav-src", starts)
            finally:
                server.stop()
    text, targets = report(measured, rclone_version)
    results.save(args.json, started, {"remotes": list(kinds), "files": FILES + 1}, {"rclone": rclone_version},
                 steps={k: {n: asdict(st) for n, st in v.items()} for k, v in measured.items()},
                 targets=targets, table=text)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
