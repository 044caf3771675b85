"""Benchmark: colab_magics stage/push against plain rclone, through a Drive-like remote.

What it measures, side by side in one run, through ``rclone serve webdav`` on 127.0.0.1 (pacer
off) with ``--tpslimit 10`` on every client call (Google Drive manages about 10 requests/s), on
N small files of 20 KiB in a few folders (default N = 5,000):

  download (staging)
    1. ``rclone copy remote:plain dest``, file by file (default --transfers), once, on a sample
       (default 1,000 files: at 10 tps a file costs ~0.1 s) scaled linearly to N;
    2. the seeds' recipe: ``rclone copy remote:data.tar.gz tmp`` + ``tarfile.extractall(filter="data")``;
    3. the floor: ``rclone cat remote:data.tar | tar -x -C dest``;
    4. our ``colab_magics.stage("remote:packed", dest)`` of a dataset pushed with ``pack=True``;
    5. the same stage again on unchanged data (must be "up to date");
  upload
    6. ``rclone copy local remote:plain2``, file by file, once, on a sample of the files
       (default 300: at 10 tps a file costs ~0.3 s) and scaled linearly to N;
    7. our ``colab_magics.push(src, "remote:packed2", pack=True)``;
  and 8. the repeat stage of row 5 through the CLI (``colab-magics stage``: a new process each time).

Rows 2-5, 7 and 8 run ``--repeats`` times (default 3, interleaved) and report the median; every
measured run gets a fresh, empty destination.  Remote-side inputs are prepared without the tps
limit (setup is not measured).  File-by-file times are also shown scaled linearly to 5,000 files;
the ratios compare equal file counts (N).  Then, unless ``--skip-memory``: a 2 GiB packed dataset
(64 x 32 MiB, part size 512 MiB: 5 parts, 4 staged at once) on a plain local folder remote is
staged in a separate Python process, whose peak RSS (and its rclone children's) is reported.

It is a benchmark, not a test: it prints a table with PASS/MISS per target and writes
``bench/results/latest.json``; it never fails on a missed target.

Run::

    python bench/run.py                    # default, ~4-5 minutes on 2 cores
    python bench/run.py --quick            # 500 files, small memory dataset (~1 minute)
    python bench/run.py --download-files 5000 --upload-files 5000   # no extrapolation (~35 minutes)
    python bench/run.py --skip-memory --profile            # + cProfile of one unthrottled stage
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
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

import results  # noqa: E402
from servers import Server  # noqa: E402

import colab_magics  # noqa: E402
from colab_magics.rclone import remotes  # noqa: E402
from colab_magics.rclone.binary import find_rclone  # noqa: E402

FILE_SIZE = 20 * 1024
FOLDERS = 4
TPS = ["--tpslimit", "10"]
SCALE_TO = 5000
REMOTE = "cmbench"  # the webdav remote's name (RCLONE_CONFIG_CMBENCH_*)
MB = 10**6


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


# -- dataset and remote-side inputs (not measured) ------------------------------------------------
def make_dataset(root: Path, n: int) -> list[str]:
    """``n`` files of 20 KiB of random bytes; file i goes to folder i % FOLDERS."""
    rels = []
    for d in range(min(FOLDERS, n)):
        (root / f"d{d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rel = f"d{i % FOLDERS}/f{i:05d}.bin"
        (root / rel).write_bytes(os.urandom(FILE_SIZE))
        rels.append(rel)
    return rels


def make_tar(src: Path, out: Path, mode: str) -> None:
    with tarfile.open(out, mode) as tf:
        for entry in sorted(src.iterdir()):
            tf.add(entry, arcname=entry.name)


# -- measured rows ---------------------------------------------------------------------------------
class Runner:
    def __init__(self, base: Path, rclone: str, env: dict[str, str]) -> None:
        self.base = base
        self.rclone = rclone
        self.env = env
        self.counter = 0
        (base / "logs").mkdir(exist_ok=True)

    def fresh(self, name: str) -> Path:
        """A new, empty destination folder."""
        self.counter += 1
        path = self.base / "out" / f"{name}-{self.counter}"
        path.mkdir(parents=True)
        return path

    @staticmethod
    def settle() -> None:
        """Flush dirty pages left by setup or the previous row, so that their writeback does not
        slow down the next timed run (this disk creates small files slowly: ~0.3 ms each)."""
        os.sync()

    def logfile(self, name: str) -> Path:
        return self.base / "logs" / f"{name}-{self.counter}.log"

    def rclone_run(self, name: str, *args: str) -> None:
        with open(self.logfile(name), "wb") as err:
            rc = subprocess.run(
                [self.rclone, *args, *TPS], check=False, env=self.env, stdout=subprocess.DEVNULL, stderr=err
            ).returncode
        if rc:
            raise RuntimeError(f"rclone {args[0]} exited {rc}: {self.logfile(name).read_text()[-500:]}")

    # 1 and 6
    def copy_file_by_file(self, src: str, dst: str, name: str) -> float:
        self.settle()
        t0 = time.perf_counter()
        self.rclone_run(name, "copy", src, dst)
        return time.perf_counter() - t0

    # 2
    def seeds_recipe(self) -> tuple[float, int]:
        dest = self.fresh("seeds")
        download = self.fresh("seeds-download")
        self.settle()
        t0 = time.perf_counter()
        self.rclone_run("seeds", "copy", f"{REMOTE}:data.tar.gz", str(download))
        with tarfile.open(download / "data.tar.gz") as tf:
            tf.extractall(dest, filter="data")
        seconds = time.perf_counter() - t0
        shutil.rmtree(download)
        return seconds, count_files(dest)

    # 3
    def floor(self) -> tuple[float, int]:
        dest = self.fresh("floor")
        self.settle()
        with open(self.logfile("floor"), "wb") as err:
            t0 = time.perf_counter()
            cat = subprocess.Popen(
                [self.rclone, "cat", f"{REMOTE}:data.tar", *TPS], env=self.env, stdout=subprocess.PIPE, stderr=err
            )
            untar = subprocess.Popen(["tar", "-x", "-C", str(dest)], stdin=cat.stdout, stderr=err)
            assert cat.stdout is not None
            cat.stdout.close()
            rc_tar, rc_cat = untar.wait(), cat.wait()
            seconds = time.perf_counter() - t0
        if rc_tar or rc_cat:
            raise RuntimeError(f"rclone cat | tar -x exited {rc_cat}/{rc_tar}")
        return seconds, count_files(dest)

    # 4 and 5
    def stage(self, dest: Path | None = None) -> tuple[float, int, Path, bool]:
        dest = dest or self.fresh("stage")
        os.environ["COLAB_MAGICS_RCLONE_FLAGS"] = " ".join(TPS)
        self.settle()
        try:
            t0 = time.perf_counter()
            result = colab_magics.stage(f"{REMOTE}:packed", dest)
            seconds = time.perf_counter() - t0
        finally:
            os.environ.pop("COLAB_MAGICS_RCLONE_FLAGS", None)
        return seconds, count_files(dest), dest, result.up_to_date

    # 8
    def stage_cli(self, dest: Path) -> tuple[float, int, bool]:
        """The repeat stage as a terminal or a ``!colab-magics`` cell runs it: a new process each time."""
        self.settle()
        env = {**self.env, "COLAB_MAGICS_RCLONE_FLAGS": " ".join(TPS)}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "colab_magics.cli", "stage", f"{REMOTE}:packed", str(dest)],
                              env=env, capture_output=True, text=True, check=False)  # fmt: skip
        seconds = time.perf_counter() - t0
        if done.returncode:
            raise RuntimeError(f"colab-magics stage exited {done.returncode}: {done.stderr[-500:]}")
        return seconds, count_files(dest), "already up to date" in done.stdout

    # 7
    def push(self, src: Path) -> tuple[float, int]:
        self.counter += 1
        cached = getattr(remotes, "_info", None)  # engine internals: the per-process backend-probe cache
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()  # each run pays the backend probe, as a fresh kernel would
        os.environ["COLAB_MAGICS_RCLONE_FLAGS"] = " ".join(TPS)
        self.settle()
        try:
            t0 = time.perf_counter()
            result = colab_magics.push(src, f"{REMOTE}:packed2-{self.counter}", pack=True)
            seconds = time.perf_counter() - t0
        finally:
            os.environ.pop("COLAB_MAGICS_RCLONE_FLAGS", None)
        return seconds, result.files


class Row:
    def __init__(self, key: str, number: int, direction: str, label: str, file_by_file: bool = False) -> None:
        self.key = key
        self.number = number
        self.direction = direction
        self.label = label
        self.file_by_file = file_by_file
        self.times: list[float] = []
        self.files: int | None = None
        self.measured_files: int | None = None  # files in the measured sample (file-by-file rows)
        self.error: str | None = None
        self.notes: list[str] = []

    @property
    def time(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    def add(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run one measurement; a failure is recorded, not raised."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports and carries on
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            log(f"row {self.number} failed: {self.error}")
            traceback.print_exc(file=sys.stderr)
            return None

    def to_json(self) -> dict:
        return {
            "row": self.number, "key": self.key, "direction": self.direction, "label": self.label,
            "time_s": self.time, "runs_s": self.times, "files": self.files,
            "measured_files": self.measured_files, "error": self.error, "notes": self.notes,
        }  # fmt: skip


# -- memory --------------------------------------------------------------------------------------
def tree_rss_sampler(pid: int, stop: threading.Event, out: dict) -> None:
    """Peak of the summed RSS of ``pid`` and its descendants, sampled every 20 ms (upper bound:
    pages shared between the rclone children count once per process)."""
    try:
        import psutil
    except ImportError:
        return
    peak = 0
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            total = 0
            try:
                procs = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                break
            children = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                    children += p is not proc
                except psutil.Error:
                    pass
            if total > peak:
                peak = total
                out["peak_tree_rss"] = peak
            out["max_children"] = max(out.get("max_children", 0), children)
            stop.wait(0.02)
    except psutil.Error:
        pass


def memory_bench(total_mib: int) -> dict:
    file_mib = 32
    count = max(1, total_mib // file_mib)
    part_size = max(1, total_mib // 4) * 1024**2
    base = Path(tempfile.mkdtemp(prefix="cm-bench-mem-", dir="/tmp"))
    try:
        src = base / "src"
        log(f"memory: writing {count} files x {file_mib} MiB = {count * file_mib} MiB")
        block = bytearray(os.urandom(file_mib * 1024**2))
        for i in range(count):
            folder = src / f"d{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            block[:16] = os.urandom(16)  # every file differs; the rest is incompressible anyway
            (folder / f"big{i:03d}.bin").write_bytes(block)
        del block
        remote = base / "remote" / "packed"
        log(f"memory: push --pack to a local folder remote (part size {part_size // 1024**2} MiB)")
        pushed = colab_magics.push(src, str(remote), pack=True, part_size=part_size)
        parts = len(json.loads((remote / "manifest.json").read_bytes())["parts"])
        shutil.rmtree(src)  # not needed any more: keep the disk peak at 2x, not 3x
        log(f"memory: staging {parts} parts in a separate Python process")
        os.sync()
        env = dict(os.environ, COLAB_MAGICS_STATE_DIR=str(base / "state"), RCLONE_CONFIG="/dev/null")
        env.pop("COLAB_MAGICS_RCLONE_FLAGS", None)
        child = subprocess.Popen(
            [sys.executable, str(BENCH / "stage_child.py"), str(remote), str(base / "dest")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        stop, sampled = threading.Event(), {}
        sampler = threading.Thread(target=tree_rss_sampler, args=(child.pid, stop, sampled), daemon=True)
        sampler.start()
        out, err = child.communicate()
        stop.set()
        sampler.join(5)
        if child.returncode:
            raise RuntimeError(f"stage child exited {child.returncode}: {err.decode()[-800:]}")
        data = json.loads(out.decode().strip().splitlines()[-1])
        data.update(
            dataset_bytes=pushed.bytes, dataset_files=pushed.files, parts=parts, part_size=part_size,
            peak_tree_rss_sampled=sampled.get("peak_tree_rss"), max_concurrent_children=sampled.get("max_children"),
        )  # fmt: skip
        return data
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- profile ---------------------------------------------------------------------------------------
def profile_stage(dest: Path) -> str:
    """cProfile of one stage against the unthrottled remote, worker threads included."""
    stage_module = sys.modules["colab_magics.stage"]  # the package exports the function as `stage`

    profiles: list[cProfile.Profile] = []
    original = getattr(getattr(stage_module, "_Stage", None), "extract_part", None)
    if original is None:
        return "profile: colab_magics.stage._Stage.extract_part not found (engine changed); nothing profiled"

    def profiled(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()
        try:
            return original(self, *args, **kwargs)
        finally:
            prof.disable()

    main = cProfile.Profile()
    stage_module._Stage.extract_part = profiled  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        main.enable()
        colab_magics.stage(f"{REMOTE}:packed", dest)
        main.disable()
        wall = time.perf_counter() - t0
    finally:
        stage_module._Stage.extract_part = original  # type: ignore[method-assign]
    buf = io.StringIO()
    stats = pstats.Stats(main, stream=buf)
    for prof in profiles:
        stats.add(prof)
    buf.write(f"stage without --tpslimit: {wall:.3f} s wall (worker threads merged into the profile)\n")
    stats.sort_stats("tottime").print_stats(18)
    stats.sort_stats("cumulative").print_stats(18)
    return buf.getvalue()


# -- report ----------------------------------------------------------------------------------------
def fmt_s(x: float | None) -> str:
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def report(
    rows: dict[str, Row], args: argparse.Namespace, n: int, k: int, kd: int, memory: dict | None, rclone_version: str
) -> dict:
    lines = []
    p = lines.append
    p("")
    p("colab_magics benchmark: Drive emulation = rclone serve webdav on 127.0.0.1 (pacer off), client --tpslimit 10")
    p(f"dataset: {n:,} files x 20 KiB ({n * FILE_SIZE / 2**20:.1f} MiB) in {min(FOLDERS, n)} folders; "
      f"{rclone_version}; Python {platform.python_version()}; {os.cpu_count()} CPUs")  # fmt: skip
    p("")
    head = (
        f"{'#':>2}  {'dir':<4}  {'row':<58}  {'time (s)':>9}  {'runs':<26}  {'files':>6}  {'scaled to 5,000 files':<24}"
    )
    p(head)
    p("-" * len(head))
    for row in sorted(rows.values(), key=lambda r: r.number):
        if row.error and not row.times:
            p(f"{row.number:>2}  {row.direction:<4}  {row.label:<58}  ERROR: {row.error}")
            continue
        if len(row.times) > 1:
            runs = f"median of {len(row.times)} ({min(row.times):.2f}-{max(row.times):.2f})"
        else:
            runs = "1 run"
        scaled = "-"
        if row.file_by_file and row.time is not None and row.measured_files:
            scaled = f"{row.time * SCALE_TO / row.measured_files:,.0f} s (linear, x{SCALE_TO / row.measured_files:.3g})"
        files = f"{row.files:,}" if row.files is not None else "-"
        p(
            f"{row.number:>2}  {row.direction:<4}  {row.label:<58}  {fmt_s(row.time):>9}  {runs:<26}  "
            f"{files:>6}  {scaled:<24}"
        )
        for note in row.notes:
            p(f"{'':>2}  {'':<4}  ! {note}")
    p("")
    p("File-by-file rows cost the same per file at 10 tps, so they scale linearly; the 5,000-file column is that")
    p(f"extrapolation (row 1 was measured on {kd:,} and row 6 on {k:,} of the {n:,} files). Our rows are NOT")
    p(f"extrapolated, and the ratios below compare equal file counts ({n:,} files; rows 1 and 6 scaled to {n:,}).")

    def t(key: str) -> float | None:
        return rows[key].time

    up_fbf = t("copy_up") * n / k if t("copy_up") is not None else None
    down_fbf = t("copy_down") * n / kd if t("copy_down") is not None else None
    targets = []

    def target(name: str, value: float | None, goal: str, ok) -> None:  # type: ignore[no-untyped-def]
        good = None if value is None else bool(ok(value))
        targets.append({"target": name, "value": value, "goal": goal, "result": verdict(good)})

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b <= 0 else a / b

    # the targets of issue #12 (the training-loop slowdown is bench/persist.py's, the process starts bench/starts.py's)
    target("file-by-file download / our stage", ratio(down_fbf, t("stage")), ">= 100x", lambda v: v >= 100)
    target("our stage / floor (rclone cat | tar -x)", ratio(t("stage"), t("floor")), "<= 1.0x", lambda v: v <= 1.0)
    target("our stage vs seeds' recipe (seeds / ours)", ratio(t("seeds"), t("stage")), ">= 3x", lambda v: v >= 3)
    target("file-by-file upload / our push --pack", ratio(up_fbf, t("push")), ">= 500x", lambda v: v >= 500)
    for key, name, goal in (("restage", "repeat stage of unchanged data, in process", 0.15),
                            ("restage_cli", "repeat stage of unchanged data, through the CLI", 0.4)):  # fmt: skip
        ok = bool(rows[key].times) and not any(x.startswith("NOT") for x in rows[key].notes)
        target(name, t(key), f"< {goal} s", lambda v, ok=ok, goal=goal: v < goal and ok)
    tree_goal = "< 150 MB"
    if memory and "error" not in memory and memory.get("peak_tree_rss_sampled"):
        size = f"{memory['dataset_bytes'] / 2**30:.2g} GiB"
        # judged on the bound, not the sample: a 20 ms sampler can miss a short peak, and the peaks of
        # Python and of rclone may coincide; a child that ended is counted as if it peaked then too
        peaks = ("self_peak_kib", "running_children_peak_kib", "ended_children_maxrss_kib")
        bound = sum(memory[k] for k in peaks) * 1024
        memory["peak_tree_rss_bound"] = max(bound, memory["peak_tree_rss_sampled"])
        target(f"peak RSS of the whole process tree (staging {size} packed)", memory["peak_tree_rss_bound"] / MB,
               tree_goal, lambda v: v < 150)  # fmt: skip
    elif not args.skip_memory:
        targets.append({"target": "peak RSS of the whole process tree", "value": None, "goal": tree_goal,
                        "result": "n/a", "error": (memory or {}).get("error")})  # fmt: skip
    p("")
    head = f"{'target':<56}  {'value':>10}  {'goal':<9}  result"
    p(head)
    p("-" * len(head))
    for tg in targets:
        v = tg["value"]
        unit = "x" if tg["goal"].endswith("x") else (" MB" if "MB" in tg["goal"] else " s")
        shown = "-" if v is None else (f"{v:,.1f}{unit}" if v >= 10 else f"{v:.2f}{unit}")
        p(f"{tg['target']:<56}  {shown:>10}  {tg['goal']:<9}  {tg['result']}")
    if memory:
        p("")
        if "error" in memory:
            p(f"memory: ERROR: {memory['error']}")
        else:
            tree = memory.get("peak_tree_rss_sampled")
            p(f"memory: staged {memory['dataset_files']} files, {memory['dataset_bytes'] / 2**30:.2f} GiB in "
              f"{memory['parts']} parts of {memory['part_size'] // 2**20} MiB from a local folder remote "
              f"in {memory['seconds']:.1f} s (separate Python process, 4 workers)")  # fmt: skip
            p(f"  peak RSS (the kernel's high-water mark, VmHWM) of the staging Python process = "
              f"{memory['self_peak_kib'] * 1024 / MB:.0f} MB "
              f"(of which {memory['rss_after_import_kib'] * 1024 / MB:.0f} MB "
              f"is the interpreter + imports)")  # fmt: skip
            p(f"  processes below it, still running at the end ({memory['running_children']}: the rclone daemon and "
              f"its sh watcher): peaks summed = {memory['running_children_peak_kib'] * 1024 / MB:.0f} MB; "
              f"largest peak of those that ended (RUSAGE_CHILDREN) = "
              f"{memory['ended_children_maxrss_kib'] * 1024 / MB:.0f} MB; "
              f"up to {memory.get('max_concurrent_children') or '?'} processes below Python at once")  # fmt: skip
            if tree:
                p(f"  whole process tree (summed RSS sampled every 20 ms, shared pages counted per process) peaked "
                  f"at {tree / MB:.0f} MB as sampled; the target is judged on the sum of the peaks above = "
                  f"{memory['peak_tree_rss_bound'] / MB:.0f} MB")  # fmt: skip
    text = "\n".join(lines)
    print(text, flush=True)
    return {"targets": targets, "text": text, "upload_file_by_file_scaled_to_n_s": up_fbf}


# -- main ------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--files", type=int, default=None, help="number of 20 KiB files (default 5000; 500 with --quick)")
    ap.add_argument("--upload-files", type=int, default=None,
                    help="files in the file-by-file upload sample "
                         "(row 6; default min(files, 300), 60 with --quick)")  # fmt: skip
    ap.add_argument(
        "--download-files",
        type=int,
        default=None,
        help="files in the file-by-file download sample, scaled to --files (default 1000; 100 with --quick)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs of each fast row (median reported; default 3)")
    ap.add_argument(
        "--quick", action="store_true", help="small run: 200 files, 60-file upload sample, 256 MiB memory dataset"
    )
    ap.add_argument("--skip-memory", action="store_true", help="skip the 2 GiB peak-memory measurement")
    ap.add_argument("--memory-mib", type=int, default=None, help="size of the memory dataset in MiB (default 2048)")
    ap.add_argument("--profile", action="store_true", help="also cProfile one stage against the unthrottled remote")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "latest.json", help="where to write the results")
    args = ap.parse_args()
    n = args.files or (500 if args.quick else 5000)
    k = min(n, args.upload_files or (60 if args.quick else 300))
    kd = min(n, args.download_files or (100 if args.quick else 1000))
    memory_mib = args.memory_mib or (256 if args.quick else 2048)

    rclone = find_rclone()
    rclone_version = subprocess.run(
        [rclone, "version"], check=False, capture_output=True, text=True
    ).stdout.splitlines()[0]
    base = Path(tempfile.mkdtemp(prefix="cm-bench-", dir="/tmp"))
    server: Server | None = None
    rows = {
        "copy_down": Row("copy_down", 1, "down", "rclone copy remote:plain dest (file by file)", file_by_file=True),
        "seeds": Row("seeds", 2, "down", "rclone copy remote:data.tar.gz + tarfile extractall(data)"),
        "floor": Row("floor", 3, "down", "floor: rclone cat remote:data.tar | tar -x"),
        "stage": Row("stage", 4, "down", "our stage (packed dataset)"),
        "restage": Row("restage", 5, "down", "our stage again, unchanged data"),
        "copy_up": Row("copy_up", 6, "up", "rclone copy src remote:plain2 (file by file)", file_by_file=True),
        "push": Row("push", 7, "up", "our push --pack"),
        "restage_cli": Row("restage_cli", 8, "down", "our stage again, unchanged data, through the CLI"),
    }
    memory: dict | None = None
    profile_text = None
    started = time.monotonic()
    try:
        # environment of the engine (this process) and of the baselines: no user config or state
        os.environ["RCLONE_CONFIG"] = "/dev/null"
        os.environ["COLAB_MAGICS_STATE_DIR"] = str(base / "state")
        os.environ["COLAB_MAGICS_REMOTE"] = str(base / "default-remote")
        os.environ.pop("COLAB_MAGICS_RCLONE_FLAGS", None)

        log(f"setup: {n} files of 20 KiB, data.tar, data.tar.gz, plain copy (in {base})")
        src = base / "src"
        rels = make_dataset(src, n)
        sample = base / "upload-sample"
        for rel in rels[:k]:
            (sample / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, sample / rel)
        served = base / "served"
        served.mkdir()
        for rel in rels[:kd]:  # the file-by-file download runs on a sample, scaled to N
            (served / "plain" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, served / "plain" / rel)
        make_tar(src, served / "data.tar", "w")
        make_tar(src, served / "data.tar.gz", "w:gz")
        # files written before the server starts: its directory cache cannot hide them
        server = Server("webdav", served, name=REMOTE).start()
        os.environ.update(server.env())
        env = dict(os.environ)
        log("setup: push --pack to the remote (no tps limit)")
        colab_magics.push(src, f"{REMOTE}:packed", pack=True)
        run = Runner(base, rclone, env)

        # fast rows, interleaved so that drift affects them alike
        for i in range(args.repeats):
            log(f"fast rows, round {i + 1}/{args.repeats}")
            got = rows["seeds"].add(run.seeds_recipe)
            if got:
                rows["seeds"].times.append(got[0])
                rows["seeds"].files = got[1]
            got = rows["floor"].add(run.floor)
            if got:
                rows["floor"].times.append(got[0])
                rows["floor"].files = got[1]
            got = rows["stage"].add(run.stage)
            if got:
                seconds, files, dest, up_to_date = got
                rows["stage"].times.append(seconds)
                rows["stage"].files = files
                if up_to_date:
                    rows["stage"].notes.append("a fresh stage reported up to date: it did nothing")
                repeats = (("restage", run.stage, "the repeat"), ("restage_cli", run.stage_cli, "the CLI"))
                for key, measure, who in repeats:
                    again = rows[key].add(measure, dest)  # (seconds, files, ..., up to date)
                    if again:
                        rows[key].times.append(again[0])
                        rows[key].files = again[1]
                        if not again[-1]:
                            rows[key].notes.insert(0, f"NOT up to date: {who} staged everything again")
            got = rows["push"].add(run.push, src)
            if got:
                rows["push"].times.append(got[0])
                rows["push"].files = got[1]
        for key in ("restage", "restage_cli"):
            if rows[key].times and not any(x.startswith("NOT") for x in rows[key].notes):
                rows[key].notes.insert(0, "up to date: yes, every run")
                rows[key].label += " (up to date)"

        log(f"row 1: rclone copy file by file, {kd} files down at 10 tps (~{kd * 0.105:.0f} s)")
        dest = run.fresh("copy-down")
        got = rows["copy_down"].add(run.copy_file_by_file, f"{REMOTE}:plain", str(dest), "copy-down")
        if got is not None:
            rows["copy_down"].times.append(got)
        rows["copy_down"].files = rows["copy_down"].measured_files = count_files(dest)
        if kd < n:
            rows["copy_down"].label = f"rclone copy remote:plain dest (file by file, {kd} files)"

        log(f"row 6: rclone copy file by file, {k} files up at 10 tps (~{k * 0.31:.0f} s)")
        got = rows["copy_up"].add(run.copy_file_by_file, str(sample), f"{REMOTE}:plain2", "copy-up")
        if got is not None:
            rows["copy_up"].times.append(got)
        rows["copy_up"].files = rows["copy_up"].measured_files = (
            count_files(served / "plain2") if (served / "plain2").exists() else 0
        )
        if k < n:
            rows["copy_up"].label = f"rclone copy src remote:plain2 (file by file, {k} files)"

        if args.profile:
            log("profile: one stage without --tpslimit under cProfile")
            try:
                profile_text = profile_stage(run.fresh("profile"))
            except Exception as exc:  # noqa: BLE001
                profile_text = f"profile failed: {exc!r}"
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)

    if not args.skip_memory:
        try:
            memory = memory_bench(memory_mib)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            memory = {"error": f"{type(exc).__name__}: {exc}"[:500]}

    summary = report(rows, args, n, k, kd, memory, rclone_version)
    if profile_text:
        print("\n" + profile_text)
    config = {
        "files": n,
        "file_size": FILE_SIZE,
        "folders": min(FOLDERS, n),
        "upload_sample": k,
        "download_sample": kd,
        "repeats": args.repeats,
        "client_flags": TPS,
        "remote": "rclone serve webdav, pacer off",
        "scaled_to": SCALE_TO,
        "memory_mib": None if args.skip_memory else memory_mib,
    }
    results.save(
        args.json, started, config, {"rclone": rclone_version},
        rows=[r.to_json() for r in sorted(rows.values(), key=lambda r: r.number)],
        upload_file_by_file_scaled_to_n_s=summary["upload_file_by_file_scaled_to_n_s"],
        targets=summary["targets"], memory=memory, profile=profile_text, table=summary["text"],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
