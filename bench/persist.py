"""Benchmark: what ``%%persist`` costs a training loop, and how soon its checkpoints are safe.

What it measures, side by side in one run, in a REAL IPython ``InteractiveShell`` (history off,
``%load_ext colab_magics``) on a plain local-folder remote (or, with ``--remote webdav``,
``rclone serve webdav`` on 127.0.0.1, pacer off):

  a training-like loop, run for a fixed wall-clock duration (default 60 s; 15 s with --quick):
    * CPU work: each step runs a fixed number (``--work``, default 80,000) of iterations of
      pure-Python integer/float arithmetic (an LCG; numpy is not required), ~10 ms here;
    * a growing log: one line appended (and flushed) to ``outputs/train.log`` every step;
    * a checkpoint of ``--ckpt-mib`` MiB (default 200) rewritten every ``--ckpt-every`` seconds
      (default 5) the way training code does it: written to ``checkpoint.pt.tmp``, then
      ``os.replace``d onto ``outputs/checkpoint.pt``; its first bytes hold the version number.
      Checkpoints are due at fixed times from the start, so every run writes as many.
  run twice or more, interleaved (``--order``, default base,persist,base, to control for drift):
    base     the cell run by the shell as is (``shell.ex``, what ``%%persist`` itself calls);
    persist  the same cell under ``%%persist outputs --every 10s`` (``run_cell_magic``).

Reported:
  * throughput (steps/s over the loop's wall time) of every run, the slowdown of the persist
    runs against the mean of the base runs (target: under 1 %), and the base runs' spread;
    where the loop's time went (compute, log, checkpoint writes; step-time percentiles) and the
    CPU used meanwhile by the training thread, the other threads of this process (the persist
    thread, rclone's pipe readers, the event bus) and the rclone children;
  * the lag between a checkpoint version being written (wall clock after ``os.replace``) and
    the remote holding it: a watcher thread polls ``<remote>/outputs/manifest.json`` (on disk,
    every 50 ms) and matches ``checkpoint.pt``'s ``mtime_ns``; min/median/max over the versions
    published by periodic syncs, the versions only the final flush published, and how many
    versions were superseded before any sync took them (skipped);
  * every sync: its summary from the event bus (``finished`` events of job ``persist outputs``:
    "pushed N changed of M files (X of Y)"), the bytes of new parts that appeared in the manifest,
    and the time spent in each phase of ``PackedSync`` and the rclone calls it made (the
    benchmark wraps those methods in this process only; it edits nothing);
  * the start-up cost (restore + lock + first listing) and the final flush after the loop;
  * at the end, the version inside the remote's checkpoint, read back from its tar part.

It is a benchmark, not a test: it prints a table and writes ``bench/results/persist.json``
(git-ignored); it never fails on a missed target.

Run::

    python bench/persist.py                  # default: 3 x 60 s runs, ~3.5 minutes on 2 cores
    python bench/persist.py --quick          # 3 x 15 s runs, ~1 minute
    python bench/persist.py --remote webdav --ckpt-mib 100 --order base,persist,base,persist
    python bench/persist.py --profile        # + cProfile (wall clock) of the persist thread's syncs
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import psutil  # noqa: E402
import results  # noqa: E402

from colab_magics.events import Event, Kind, bus  # noqa: E402
from colab_magics.jobs import Result  # noqa: E402
from colab_magics.packed.upload import PackedSync  # noqa: E402
from colab_magics.persist import Persister  # noqa: E402
from colab_magics.rclone import process as runner  # noqa: E402
from colab_magics.rclone.binary import find_rclone  # noqa: E402

MiB = 2**20
MB = 10**6
TARGET_SLOWDOWN = 1.0  # percent (issue #12)
CKPT = "checkpoint.pt"
LOG = "train.log"
HEADER = struct.Struct("<8sQQ")  # magic, version, step (the first 24 bytes of a checkpoint)
MAGIC = b"CMBENCH1"
WATCH_INTERVAL = 0.05
PHASES = ("settled_scan", "_upload_part", "_verify_parts", "_put_manifest", "_remove_unreferenced")
REMOTE = "cmbench"  # the webdav remote's name (RCLONE_CONFIG_CMBENCH_*)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the training-like loop (runs inside the notebook cell) -----------------------------------------
def compute(x: int, n: int) -> tuple[int, float]:
    """Deterministic pure-Python work: ``n`` steps of an LCG and a float accumulation."""
    acc = 0.0
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        acc += (x & 1023) * 0.0009765625
    return x, acc


def training_loop(outdir: str, seconds: float, ckpt_every: float, body: bytes, work: int) -> dict:
    """Steps of ``compute`` for ``seconds``, a log line per step, a checkpoint every ``ckpt_every`` s."""
    me = psutil.Process()
    os.makedirs(outdir, exist_ok=True)
    ckpt = os.path.join(outdir, CKPT)
    tmp = ckpt + ".tmp"
    step_wall: list[float] = []
    versions: list[dict] = []
    compute_cpu = log_wall = 0.0
    x = 1
    cpu0, sys0, disk0 = me.cpu_times(), psutil.cpu_times(), _disk_written()
    thread0 = time.thread_time()
    start = time.perf_counter()
    wall_start = time.time()
    deadline = start + seconds
    next_ckpt = start + ckpt_every
    with open(os.path.join(outdir, LOG), "a") as logf:
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            c0 = time.thread_time()
            x, acc = compute(x, work)
            t1 = time.perf_counter()
            compute_cpu += time.thread_time() - c0
            step_wall.append(t1 - t0)
            logf.write(f"step {len(step_wall)} loss {acc / work:.6f} x {x}\n")
            logf.flush()
            t2 = time.perf_counter()
            log_wall += t2 - t1
            if t2 >= next_ckpt:
                version = len(versions) + 1
                with open(tmp, "wb") as f:
                    f.write(HEADER.pack(MAGIC, version, len(step_wall)))
                    f.write(body)
                os.replace(tmp, ckpt)
                written = time.time()
                st = os.stat(ckpt)
                versions.append(
                    {"version": version, "step": len(step_wall), "written": written, "mtime_ns": st.st_mtime_ns,
                     "size": st.st_size, "write_s": time.perf_counter() - t2}
                )  # fmt: skip
                next_ckpt += ckpt_every
                while next_ckpt <= time.perf_counter():  # a write longer than the interval: skip, as training would
                    next_ckpt += ckpt_every
    end = time.perf_counter()
    thread_cpu = time.thread_time() - thread0
    cpu1, sys1, disk1 = me.cpu_times(), psutil.cpu_times(), _disk_written()
    proc_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    children_cpu = (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system)
    sys_busy = (sum(sys1) - sys1.idle - getattr(sys1, "iowait", 0)) - (
        sum(sys0) - sys0.idle - getattr(sys0, "iowait", 0)
    )
    return {
        "wall_start": wall_start,
        "wall_end": time.time(),
        "seconds": end - start,
        "steps": len(step_wall),
        "steps_per_s": len(step_wall) / (end - start),
        "step_wall": step_wall,
        "compute_wall": sum(step_wall),
        "compute_cpu": compute_cpu,
        "log_wall": log_wall,
        "versions": versions,
        "ckpt_wall": sum(v["write_s"] for v in versions),
        "loop_thread_cpu": thread_cpu,
        "other_threads_cpu": proc_cpu - thread_cpu,
        "children_cpu": children_cpu,
        "machine_busy_cpu": sys_busy,
        "machine_steal_cpu": getattr(sys1, "steal", 0.0) - getattr(sys0, "steal", 0.0),
        "disk_written_mb": None if disk0 is None or disk1 is None else (disk1 - disk0) / MB,
        "log_bytes": os.path.getsize(os.path.join(outdir, LOG)),
    }


def _disk_written() -> int | None:
    try:
        counters = psutil.disk_io_counters()
    except Exception:  # noqa: BLE001  (no /proc/diskstats in some containers)
        return None
    return counters.write_bytes if counters else None


CELL = "_cm_bench_result = _cm_bench_loop(**_cm_bench_kwargs)\n"


# -- observers ---------------------------------------------------------------------------------------
class ManifestWatcher(threading.Thread):
    """Polls the remote's manifest.json on disk; records every new version with the time it appeared."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="bench-manifest-watcher", daemon=True)
        self.path = path
        self.stop_event = threading.Event()
        self.snapshots: list[dict] = []
        self._last: tuple | None = None

    def poll(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._last:
            return
        seen = time.time()
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):  # caught mid-write (webdav): next poll
            return
        self._last = key
        self.snapshots.append(
            {
                "seen": seen,
                "files": {f["path"]: [f["size"], f["mtime_ns"]] for f in data.get("files", [])},
                "parts": {p["name"]: p["size"] for p in data.get("parts", [])},
                "skip": {p["name"]: list(p.get("skip", [])) for p in data.get("parts", [])},
            }
        )

    def run(self) -> None:
        while not self.stop_event.wait(WATCH_INTERVAL):
            self.poll()

    def finish(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.poll()


class SyncEvents:
    """Listener on the event bus: the numbers of every sync of a persist job (its :class:`Result`)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: Event) -> None:
        if event.kind in (Kind.FINISHED, Kind.FAILED) and event.name.startswith("persist"):
            self.events.append({"at": event.at, "kind": str(event.kind), "message": event.message,
                                **_numbers(event.result)})  # fmt: skip


def _numbers(result: Result | None) -> dict:
    """What a sync moved, read from its result (a failed sync has none)."""
    if result is None:
        return {}
    moved_files = result.files if result.moved_files is None else result.moved_files
    moved_bytes = result.bytes if result.moved_bytes is None else result.moved_bytes
    return {"moved_files": 0 if result.up_to_date else moved_files, "files": result.files,
            "moved_bytes": 0 if result.up_to_date else moved_bytes, "total_bytes": result.bytes,
            "seconds": result.seconds, "up_to_date": result.up_to_date}  # fmt: skip


class Instrument:
    """Times PackedSync's phases and counts rclone children per sync, by wrapping them in this process.

    Only calls made on a persist thread (``colab_magics-persist ...``) or during a sync are
    attributed; the wrappers add a few microseconds per call.
    """

    def __init__(self, profile: bool = False) -> None:
        self.syncs: list[dict] = []
        self.current: dict | None = None
        self.lock = threading.Lock()
        self.profiler = cProfile.Profile() if profile else None
        self._saved: list[tuple[object, str, object]] = []
        self.between: dict = {"phases": {}, "rclone": {}}  # rclone calls of the persist thread outside a sync

    def _patch(self, owner: object, name: str, make) -> None:  # type: ignore[no-untyped-def]
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def __enter__(self):  # type: ignore[no-untyped-def]
        inst = self

        def sync_wrapper(original):  # type: ignore[no-untyped-def]
            @functools.wraps(original)
            def sync(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                background = threading.current_thread().name.startswith("colab_magics-persist")
                record = {"start": time.time(), "thread": "background" if background else "final",
                          "phases": {}, "rclone": {}}  # fmt: skip
                inst.current = record
                c0 = time.thread_time()
                prof = inst.profiler if background else None
                if prof is not None:
                    prof.enable()
                try:
                    return original(self, *args, **kwargs)
                finally:
                    if prof is not None:
                        prof.disable()
                    record["end"] = time.time()
                    record["thread_cpu"] = time.thread_time() - c0
                    inst.current = None
                    with inst.lock:
                        inst.syncs.append(record)

            return sync

        def phase_wrapper(name):  # type: ignore[no-untyped-def]
            def make(original):  # type: ignore[no-untyped-def]
                @functools.wraps(original)
                def phase(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                    t0 = time.perf_counter()
                    try:
                        return original(self, *args, **kwargs)
                    finally:
                        record = inst.current
                        if record is not None:
                            record["phases"][name] = record["phases"].get(name, 0.0) + time.perf_counter() - t0

                return phase

            return make

        def process_wrapper(original):  # type: ignore[no-untyped-def]
            @functools.wraps(original)
            def init(self, argv, *args, **kwargs):  # type: ignore[no-untyped-def]
                t0 = time.perf_counter()
                original(self, argv, *args, **kwargs)
                spawn = time.perf_counter() - t0
                record = inst.current
                name = threading.current_thread().name
                if record is not None or name.startswith("colab_magics-persist"):
                    key = argv[1] if len(argv) > 1 else "?"
                    if record is None:  # the lock's refresh, between syncs
                        record = inst.between
                    got = record["rclone"].setdefault(key, [0, 0.0])
                    got[0] += 1
                    got[1] += spawn

            return init

        self._patch(Persister, "sync", sync_wrapper)
        for name in PHASES:
            self._patch(PackedSync, name, phase_wrapper(name))
        self._patch(runner.RcloneProcess, "__init__", process_wrapper)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)

    def take(self) -> tuple[list[dict], dict]:
        with self.lock:
            syncs, self.syncs = self.syncs, []
            between, self.between = self.between, {"phases": {}, "rclone": {}}
        return syncs, between

    def profile_text(self) -> str | None:
        if self.profiler is None:
            return None
        buf = io.StringIO()
        stats = pstats.Stats(self.profiler, stream=buf)
        stats.sort_stats("tottime").print_stats(15)
        stats.sort_stats("cumulative").print_stats(25)
        return buf.getvalue()


# -- one run -------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, base: Path, body: bytes, ip, server_folder: Path | None) -> None:  # type: ignore[no-untyped-def]
        self.args = args
        self.base = base
        self.body = body
        self.ip = ip
        self.server_folder = server_folder
        self.counter = 0

    def remote_for(self, index: int) -> tuple[str, Path]:
        """The remote root for run ``index`` and the folder on disk that holds its files."""
        if self.server_folder is not None:
            return f"{REMOTE}:run-{index}", self.server_folder / f"run-{index}"
        folder = self.base / f"remote-{index}"
        return str(folder), folder

    def run(self, mode: str, inst: Instrument) -> dict:
        self.counter += 1
        index = self.counter
        work = self.base / f"run-{index}"
        work.mkdir()
        root, folder = self.remote_for(index)
        os.environ["COLAB_MAGICS_REMOTE"] = root
        os.sync()  # the previous run's dirty pages must not be written back during this one
        watcher = ManifestWatcher(folder / "outputs" / "manifest.json")
        events = SyncEvents()
        unsubscribe = bus.subscribe(events)
        self.ip.user_ns["_cm_bench_loop"] = training_loop
        self.ip.user_ns["_cm_bench_kwargs"] = {
            "outdir": str(work / "outputs"), "seconds": self.args.seconds, "ckpt_every": self.args.ckpt_every,
            "body": self.body, "work": self.args.work,
        }  # fmt: skip
        self.ip.user_ns.pop("_cm_bench_result", None)
        old_cwd = os.getcwd()
        out = io.StringIO()
        error = None
        inst.take()
        watcher.start()
        t_call = time.time()
        try:
            os.chdir(work)
            with contextlib.redirect_stdout(out):
                if mode == "persist":
                    self.ip.run_cell_magic("persist", f"outputs --every {self.args.every}", CELL)
                else:
                    self.ip.ex(self.ip.transform_cell(CELL))
        except BaseException as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        finally:
            t_return = time.time()
            os.chdir(old_cwd)
            watcher.finish()
            bus.flush()
            unsubscribe()
        syncs, between = inst.take()
        loop = self.ip.user_ns.pop("_cm_bench_result", None)
        result = {"mode": mode, "index": index, "remote": root, "error": error, "magic_output": out.getvalue()}
        if loop is None:
            result["error"] = error or "the loop did not return"
            return result
        result["loop"] = {k: v for k, v in loop.items() if k != "step_wall"}
        result["step_ms"] = percentiles([s * 1000 for s in loop["step_wall"]])
        result["startup_s"] = loop["wall_start"] - t_call
        result["after_loop_s"] = t_return - loop["wall_end"]
        if mode == "persist":
            result.update(analyse(loop, watcher.snapshots, events.events, syncs, between))
            result["remote_check"] = check_remote_checkpoint(folder / "outputs", watcher.snapshots, loop["versions"])
        # free the disk and the page cache for the next run
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        return result


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    s = sorted(values)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s[-1], "mean": statistics.fmean(s)}


def analyse(loop: dict, snapshots: list[dict], events: list[dict], syncs: list[dict], between: dict) -> dict:
    """Lag per checkpoint version, bytes per sync, what happened to the log and stray files."""
    end = loop["wall_end"]
    by_mtime: dict[int, float] = {}
    log_updates = 0
    prev_log = None
    uploaded: list[dict] = []
    prev_parts: dict[str, int] = {}
    stray: set[str] = set()
    remote_log_at_end = 0
    for snap in snapshots:
        ck = snap["files"].get(CKPT)
        if ck is not None:
            by_mtime.setdefault(ck[1], snap["seen"])
        lg = snap["files"].get(LOG)
        if snap["seen"] <= end:
            if lg != prev_log:
                log_updates += 1
            remote_log_at_end = lg[0] if lg else 0
        prev_log = lg
        stray |= set(snap["files"]) - {CKPT, LOG}
        new = {n: s for n, s in snap["parts"].items() if n not in prev_parts}
        skipped_in_new = sorted({p for n in new for p in snap["skip"].get(n, [])})
        uploaded.append({"seen": snap["seen"], "final": snap["seen"] > end, "new_parts": len(new),
                         "new_part_bytes": sum(new.values()), "torn_in_new_parts": skipped_in_new,
                         "parts": len(snap["parts"]), "remote_bytes": sum(snap["parts"].values())})  # fmt: skip
        prev_parts = snap["parts"]
    versions = []
    for v in loop["versions"]:
        seen = by_mtime.get(v["mtime_ns"])
        versions.append({**v, "seen": seen, "lag_s": None if seen is None else seen - v["written"],
                         "by": None if seen is None else ("final" if seen > end else "periodic")})  # fmt: skip
    periodic = [v["lag_s"] for v in versions if v["by"] == "periodic"]
    final = [v["lag_s"] for v in versions if v["by"] == "final"]
    summaries = [{**e, "final": e["at"] > end} for e in events]
    return {
        "versions": versions,
        "lag": {
            "written": len(versions),
            "periodic": len(periodic),
            "final": len(final),
            "skipped": sum(1 for v in versions if v["seen"] is None),
            "min": min(periodic) if periodic else None,
            "median": statistics.median(periodic) if periodic else None,
            "max": max(periodic) if periodic else None,
            "final_lags": final,
        },
        "manifests": uploaded,
        "sync_events": summaries,
        "sync_phases": syncs,
        "rclone_between_syncs": between["rclone"],
        "log": {
            "local_bytes": loop["log_bytes"],
            "remote_bytes_at_loop_end": remote_log_at_end,
            "manifests_updating_it_during_loop": log_updates,
        },
        "stray_remote_files": sorted(stray),
    }


def check_remote_checkpoint(dest: Path, snapshots: list[dict], versions: list[dict]) -> dict:
    """Read the version back from the remote's tar part (local remote or the webdav server's folder)."""
    try:
        manifest = json.loads((dest / "manifest.json").read_bytes())
        entry = next(f for f in manifest["files"] if f["path"] == CKPT)
        part = manifest["parts"][
            entry["segments"][0]["part"] if isinstance(entry["segments"][0], dict) else entry["segments"][0][0]
        ]
        with tarfile.open(dest / part["name"]) as tf:
            member = tf.getmember(CKPT)
            fh = tf.extractfile(member)
            assert fh is not None
            magic, version, step = HEADER.unpack(fh.read(HEADER.size))
        last = versions[-1]["version"] if versions else None
        return {"remote_version": version, "remote_step": step, "last_written": last, "magic_ok": magic == MAGIC,
                "ok": magic == MAGIC and version == last}  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def _outside(loop: dict) -> float:
    """CPU seconds the rest of the machine used during the loop (another job on a shared machine skews a run)."""
    return loop["machine_busy_cpu"] - loop["loop_thread_cpu"] - loop["other_threads_cpu"] - loop["children_cpu"]


# -- report --------------------------------------------------------------------------------------------
def f1(x: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def report(runs: list[dict], args: argparse.Namespace, meta: dict) -> tuple[str, dict]:
    lines: list[str] = []
    p = lines.append
    ok = [r for r in runs if "loop" in r]
    base = [r for r in ok if r["mode"] == "base"]
    pers = [r for r in ok if r["mode"] == "persist"]
    base_tput = [r["loop"]["steps_per_s"] for r in base]
    mean_base = statistics.fmean(base_tput) if base_tput else None
    p("")
    p(f"%%persist overhead: {meta['remote_desc']}; checkpoint {args.ckpt_mib} MiB every {args.ckpt_every:g} s "
      f"(tmp + os.replace), a log line per step, {args.work:,} LCG iterations per step; runs of {args.seconds:g} s; "
      f"%%persist outputs --every {args.every}")  # fmt: skip
    p(f"{meta['rclone']}; Python {platform.python_version()}; IPython {meta['ipython']}; {os.cpu_count()} CPUs")
    p("")
    head = (f"{'#':>2} {'run':<8} {'steps':>6} {'steps/s':>8} {'vs base':>8} {'step p50/p99/max ms':>21} "
            f"{'CPU ms/step':>11} {'ckpts':>5} {'ckpt write s':>13} {'CPU s: loop/other/rclone':>25} "
            f"{'start s':>7} {'flush s':>7}")  # fmt: skip
    p(head)
    p("-" * len(head))
    for r in runs:
        if "loop" not in r:
            p(f"{r['index']:>2} {r['mode']:<8} ERROR: {r['error']}")
            continue
        lp = r["loop"]
        rel = f"{(lp['steps_per_s'] / mean_base - 1) * 100:+.2f}%" if mean_base else "-"
        sm = r["step_ms"]
        writes = [v["write_s"] for v in lp["versions"]]
        wtxt = f"{statistics.fmean(writes):.2f}/{max(writes):.2f}" if writes else "-"
        cpu = f"{lp['loop_thread_cpu']:.1f}/{lp['other_threads_cpu']:.1f}/{lp['children_cpu']:.1f}"
        p(f"{r['index']:>2} {r['mode']:<8} {lp['steps']:>6} {lp['steps_per_s']:>8.2f} {rel:>8} "
          f"{sm['p50']:>6.1f}/{sm['p99']:>5.1f}/{sm['max']:>6.0f}  {lp['compute_cpu'] / lp['steps'] * 1000:>11.2f} "
          f"{len(writes):>5} {wtxt + ' (mean/max)':>13} "
          f"{cpu:>25} {r['startup_s']:>7.2f} {r['after_loop_s']:>7.2f}")  # fmt: skip
        if r.get("error"):
            p(f"   ! {r['error']}")
        if _outside(lp) > 0.05 * lp["seconds"]:
            p(f"   ! other processes used {_outside(lp):.0f} CPU-s during this run: its throughput is skewed")
    summary: dict = {"mean_base_steps_per_s": mean_base}
    p("")
    if base_tput:
        spread = (max(base_tput) - min(base_tput)) / mean_base * 100
        summary["base_spread_pct"] = spread
        p(f"base runs: {len(base_tput)}, {min(base_tput):.2f}-{max(base_tput):.2f} steps/s (spread {spread:.2f}% of "
          f"their mean {mean_base:.2f})")  # fmt: skip
    slow = [(1 - r["loop"]["steps_per_s"] / mean_base) * 100 for r in pers] if mean_base else []
    summary["slowdown_pct"] = slow
    if slow:
        mean_slow = statistics.fmean(slow)
        summary["mean_slowdown_pct"] = mean_slow
        verdict = "PASS" if mean_slow < TARGET_SLOWDOWN else "MISS"
        noise = summary.get("base_spread_pct")
        p(f"slowdown under %%persist: {', '.join(f'{s:.2f}%' for s in slow)} (mean {mean_slow:.2f}%; target < "
          f"{TARGET_SLOWDOWN:g}%: {verdict}; noise between base runs {f1(noise, '%', 2)})")  # fmt: skip
        p("  where the loop's time went (s of the run): " + "; ".join(
            f"#{r['index']} {r['mode']}: compute {r['loop']['compute_wall']:.1f} (CPU {r['loop']['compute_cpu']:.1f}), "
            f"ckpt writes {r['loop']['ckpt_wall']:.1f}, log {r['loop']['log_wall']:.2f}" for r in ok))  # fmt: skip
        p("  machine CPU busy during the loop (of CPUs x wall): " + "; ".join(
            f"#{r['index']} {r['loop']['machine_busy_cpu']:.0f}/{(os.cpu_count() or 1) * r['loop']['seconds']:.0f} s"
            f" (other processes {_outside(r['loop']):.1f} s, steal {r['loop']['machine_steal_cpu']:.1f} s)"
            + (f", disk written {r['loop']['disk_written_mb']:.0f} MB"
               if r['loop']['disk_written_mb'] is not None else "")
            for r in ok))  # fmt: skip
    for r in pers:
        lag = r["lag"]
        p("")
        p(f"run #{r['index']} (persist): checkpoint versions written {lag['written']}: safe on the remote by a "
          f"periodic sync {lag['periodic']}, by the final flush {lag['final']}, skipped (superseded before a sync) "
          f"{lag['skipped']}")  # fmt: skip
        p(f"  lag written -> in the remote manifest (periodic syncs): min {f1(lag['min'], ' s')}, median "
          f"{f1(lag['median'], ' s')}, max {f1(lag['max'], ' s')}"
          + (f"; final flush: {', '.join(f'{x:.1f} s' for x in lag['final_lags'])}"
             if lag["final_lags"] else ""))  # fmt: skip
        ev = [e for e in r["sync_events"] if e["kind"] == "finished"]
        periodic = [e for e in ev if not e["final"]]
        moved = [e["moved_bytes"] / MB for e in periodic if e.get("moved_bytes") is not None]
        man = [m for m in r["manifests"] if not m["final"]]
        up = [m["new_part_bytes"] / MB for m in man]
        failed = [e for e in r["sync_events"] if e["kind"] == "failed"]
        p(f"  syncs during the loop: {len(periodic)} finished"
          + (f", {len(failed)} FAILED ({failed[0]['message'][:120]})" if failed else "")
          + (f"; moved per sync (result) mean {statistics.fmean(moved):.0f} MB, max {max(moved):.0f} MB"
             if moved else "")
          + (f"; new part bytes per manifest mean {statistics.fmean(up):.0f} MB, max {max(up):.0f} MB"
             if up else ""))  # fmt: skip
        bg = [s for s in r["sync_phases"] if s["thread"] == "background"]
        if bg:
            dur = [s["end"] - s["start"] for s in bg]
            phases = {name: statistics.fmean(s["phases"].get(name, 0.0) for s in bg) for name in PHASES}
            calls: dict[str, int] = {}
            for s in bg:
                for k, (n, _) in s["rclone"].items():
                    calls[k] = calls.get(k, 0) + n
            p(f"  background sync: {statistics.fmean(dur):.2f} s mean ({min(dur):.2f}-{max(dur):.2f}), "
              f"persist-thread CPU {statistics.fmean(s['thread_cpu'] for s in bg):.2f} s per sync; phases (mean s): "
              + ", ".join(f"{k.strip('_')} {v:.2f}" for k, v in phases.items()))  # fmt: skip
            spawn = sum(t for s in bg for (_, t) in s["rclone"].values()) / max(1, sum(calls.values()))
            p(f"  rclone children per sync: {sum(calls.values()) / len(bg):.1f}, {spawn * 1000:.0f} ms each to start ("
              + ", ".join(f"{k} {v / len(bg):.1g}" for k, v in sorted(calls.items())) + ")")  # fmt: skip
        fin = [s for s in r["sync_phases"] if s["thread"] == "final"]
        if fin:
            s0 = fin[-1]
            n = sum(c for c, _ in s0["rclone"].values())
            spawn = sum(t for _, t in s0["rclone"].values()) / max(1, n)
            p(f"  final flush (main thread, loop stopped): {s0['end'] - s0['start']:.2f} s; phases: "
              + ", ".join(f"{k.strip('_')} {s0['phases'].get(k, 0.0):.2f}" for k in PHASES)
              + f"; {n} rclone children, {spawn * 1000:.0f} ms each to start")  # fmt: skip
        torn = sorted({p_ for m in r["manifests"] if not m["final"] for p_ in m["torn_in_new_parts"]})
        lg = r["log"]
        p(f"  {LOG}: {lg['local_bytes']:,} bytes locally at loop end, {lg['remote_bytes_at_loop_end']:,} in the remote "
          f"manifest then; manifests that updated it during the loop: "
          f"{lg['manifests_updating_it_during_loop']} of {len(man)}"
          + (f"; uploaded but left for the next sync (torn): {', '.join(torn)}" if torn else ""))  # fmt: skip
        if r["stray_remote_files"]:
            p(f"  ! files on the remote besides {CKPT} and {LOG}: {', '.join(r['stray_remote_files'])}")
        rc = r["remote_check"]
        if "error" in rc:
            p(f"  remote checkpoint read back: ERROR {rc['error']}")
        else:
            p(f"  remote checkpoint read back after the flush: version {rc['remote_version']} (last written "
              f"{rc['last_written']}): {'OK' if rc['ok'] else 'MISMATCH'}")  # fmt: skip
    p("")
    p("CPU ms/step = the training thread's CPU time per step of compute: if it moves with steps/s, the CPU itself was")
    p("slower (host noise, shared caches), not the thread kept waiting (GIL, run queue).")
    p("steps/s = steps completed / loop wall time; 'vs base' is relative to the mean of the base runs. CPU s: the")
    p("training thread / the other threads of this process (persist thread, rclone pipe readers, event bus) / rclone")
    p("children, during the loop. start s = cell start -> loop start (restore, lock, listing); flush s = loop end ->")
    p("cell end (the final sync). Lag = wall time from os.replace of a version to its manifest entry on the remote.")
    return "\n".join(lines), summary


# -- main ------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=None, help="length of each run (default 60; 15 with --quick)")
    ap.add_argument("--ckpt-mib", type=int, default=200, help="checkpoint size in MiB (default 200)")
    ap.add_argument(
        "--ckpt-every", type=float, default=None, help="seconds between checkpoints (default 5; 3 with --quick)"
    )
    ap.add_argument("--every", default="10s", help="the %%persist interval (default 10s)")
    ap.add_argument("--work", type=int, default=80_000, help="LCG iterations per step (default 80,000: ~10 ms here)")
    ap.add_argument("--order", default="base,persist,base", help="runs in order (default base,persist,base)")
    ap.add_argument("--remote", choices=("local", "webdav"), default="local", help="local folder (default) or webdav")
    ap.add_argument("--quick", action="store_true", help="15 s runs, a checkpoint every 3 s (~1 minute)")
    ap.add_argument("--profile", action="store_true", help="cProfile (wall clock) the background syncs")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "persist.json", help="where to write the results")
    args = ap.parse_args()
    args.seconds = args.seconds or (15.0 if args.quick else 60.0)
    args.ckpt_every = args.ckpt_every or (3.0 if args.quick else 5.0)
    order = [o.strip() for o in args.order.split(",") if o.strip()]
    if not order or any(o not in ("base", "persist") for o in order):
        ap.error("--order takes a comma-separated list of base and persist")

    import IPython
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    rclone = find_rclone()
    meta = {
        "rclone": subprocess.run([rclone, "version"], check=False, capture_output=True, text=True).stdout.splitlines()[
            0
        ],
        "ipython": IPython.__version__,
    }
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="cm-bench-persist-", dir="/tmp"))
    saved_env = {k: os.environ.get(k) for k in ("RCLONE_CONFIG", "COLAB_MAGICS_STATE_DIR", "COLAB_MAGICS_REMOTE",
                                                 "COLAB_MAGICS_RCLONE_FLAGS")}  # fmt: skip
    server = None
    ip = None
    runs: list[dict] = []
    profile_text = None
    try:
        os.environ["RCLONE_CONFIG"] = "/dev/null"
        os.environ["COLAB_MAGICS_STATE_DIR"] = str(base / "state")
        os.environ.pop("COLAB_MAGICS_RCLONE_FLAGS", None)
        server_folder = None
        if args.remote == "webdav":
            from servers import Server

            server_folder = base / "served"
            server = Server("webdav", server_folder, name=REMOTE).start()
            os.environ.update(server.env())
            meta["remote_desc"] = "rclone serve webdav on 127.0.0.1 (pacer off)"
        else:
            meta["remote_desc"] = "local-folder remote"

        log(f"setup: {args.ckpt_mib} MiB checkpoint body, IPython shell (in {base})")
        body = os.urandom(args.ckpt_mib * MiB - HEADER.size)
        config = Config()
        config.HistoryAccessor.enabled = False
        ip = InteractiveShell.instance(config=config)
        ip.run_line_magic("load_ext", "colab_magics")
        # warm-up, not measured: the interpreter, the page cache, the CPU's clocks
        warm = base / "warm"
        training_loop(str(warm), 3.0, 1.5, body, args.work)
        shutil.rmtree(warm, ignore_errors=True)

        bench = Bench(args, base, body, ip, server_folder)
        with Instrument(profile=args.profile) as inst:
            for i, mode in enumerate(order):
                log(f"run {i + 1}/{len(order)}: {mode}, {args.seconds:g} s")
                result = bench.run(mode, inst)
                runs.append(result)
                if "loop" in result:
                    log(f"  {result['loop']['steps_per_s']:.2f} steps/s"
                        + (f"; lag median {f1(result['lag']['median'], ' s')}, skipped {result['lag']['skipped']}"
                           if mode == "persist" else ""))  # fmt: skip
            profile_text = inst.profile_text()
    finally:
        if ip is not None:
            try:
                ip.run_line_magic("unload_ext", "colab_magics")
            finally:
                InteractiveShell.clear_instance()
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    text, summary = report(runs, args, meta)
    print(text, flush=True)
    if profile_text:
        print("\ncProfile of the background syncs (wall clock, persist thread only):\n" + profile_text)
    config = {
        "seconds": args.seconds,
        "ckpt_mib": args.ckpt_mib,
        "ckpt_every": args.ckpt_every,
        "every": args.every,
        "work": args.work,
        "order": order,
        "remote": meta["remote_desc"],
        "target_slowdown_pct": TARGET_SLOWDOWN,
    }
    versions = {"rclone": meta["rclone"], "ipython": meta["ipython"]}
    results.save(args.json, started, config, versions, summary=summary, runs=runs, profile=profile_text, table=text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
