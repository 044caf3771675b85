"""Load: 50,000 small files, one 5 GiB file, 100 syncs in a row. Each persists to the default
(local-folder) remote, stages the result back and compares it exactly; the persisting side of
the first two runs in a child process (``load_child.py``) whose peak memory must stay bounded.
The measured numbers are printed (``-s`` shows them); times are not asserted (2 shared cores).

Memory bounds, from measurements on 2 cores (Python 3.11):
- 50,000 files: the child peaked at ~150 MB (27 MB interpreter and imports, then ~2.4 KB a file:
  the scan, the file hashes, the manifest entries and its JSON), ~165 MB with the stage in the
  same process. The bound, 200 MB, fails the engine as it was before the manifest's JSON was
  written directly (248 MB: ``asdict`` and the pure-Python encoder that ``indent`` needs).
- 5 GiB: everything streams in 4 MiB pieces; the child peaked at ~40 MB. Bound: 128 MB.
- rclone children (sampled ``VmHWM``): ~80 MB, whatever the size. Bound: 200 MB.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from procs import descendants
from servers import Server
from trees import leftovers, snapshot

import colab_magics as cm
from colab_magics.packed.manifest import Manifest
from colab_magics.persist import Persister

pytestmark = pytest.mark.load

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CHILD = Path(__file__).with_name("load_child.py")
RCLONE_MIB = 200


def _child(kind: str, args: dict) -> dict:
    """Run ``load_child.py kind args`` and return what it measured.

    Through a shell that forks it (the ``exit`` after it): a process started straight from this
    one would inherit this process's peak RSS as its ``ru_maxrss`` (Linux keeps it across exec).
    """
    t0 = time.monotonic()
    argv = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, str(CHILD), kind, json.dumps(args)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"the child failed:\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = round(time.monotonic() - t0, 1)
    return out


def _remote_folder(dest: str) -> Path:
    assert dest.startswith("/"), dest  # the default remote here is a local folder
    return Path(dest)


def _part_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in (folder / "parts").rglob("*") if p.is_file()}


def _print_memory(what: str, out: dict) -> None:
    phases = ", ".join(f"{k} {out[k]['self_mib']}" for k in ("first", "second", "final"))
    print(
        f"{what}: peak RSS (ru_maxrss) of the persisting Python process {out['persist']['self_mib']} MiB "
        f"(after the syncs: {phases}; VmHWM {out['persist']['hwm_mib']}), {out['end']['self_mib']} MiB with "
        f"the stage; RUSAGE_CHILDREN {out['end']['children_mib']} MiB; rclone children (sampled VmHWM) "
        f"{out['rclone_peak_mib']} MiB"
    )


# -- a: many small files ------------------------------------------------------------------------
N_FILES = 50_000


def _small_files(root: Path, n: int, rng: random.Random) -> dict[str, int]:
    """``n`` files of 200 B to 6 KB (random bytes) in 1,000 folders two levels deep; a few odd modes."""
    blob = rng.randbytes(MiB)
    sizes = {}
    for i in range(n):
        rel = f"d{i % 40:02d}/e{i // 40 % 25:02d}/f{i:05d}.bin"
        if i < 1000:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        size = rng.randint(200, 6000)
        start = rng.randrange(len(blob) - size)
        with open(root / rel, "wb") as fh:
            fh.write(blob[start : start + size])
        if i % 5000 == 1:
            os.chmod(root / rel, 0o600 if i % 2 else 0o755)
        sizes[rel] = size
    return sizes


@pytest.mark.fault("persist of 50,000 small files")
def test_persist_of_50000_small_files(tmp_path, no_loss):
    local, back = tmp_path / "many", tmp_path / "many-back"
    local.mkdir()
    rng = random.Random(5)
    t0 = time.monotonic()
    sizes = _small_files(local, N_FILES, rng)
    made = time.monotonic() - t0
    modify = {rel: sizes[rel] + rng.randint(1, 100) for rel in sorted(sizes)[250::500]}  # 100, spread out
    add = {f"new/added-{k}.bin": rng.randint(200, 6000) for k in range(5)} | {"d00/e00/added.bin": 1000}
    out = _child("rewrite", {"local": str(local), "back": str(back), "modify": modify, "add": add})
    first, second, final = out["first"], out["second"], out["final"]
    print(
        f"\n{N_FILES:,} files ({sum(sizes.values()) / MiB:.0f} MiB) made in {made:.1f}s; "
        f"first sync {first['seconds']}s ({len(first['parts'])} parts), "
        f"second sync {second['seconds']}s ({second['moved_files']} files, "
        f"{second['moved_bytes']:,} bytes up), final flush {final['seconds']}s, stage {out['stage_seconds']}s; "
        f"child {out['wall']}s in all"
    )
    _print_memory(f"{N_FILES:,} files", out)

    assert (first["files"], first["moved_files"], first["moved_bytes"]) == (N_FILES, N_FILES, sum(sizes.values()))
    assert len(first["parts"]) == N_FILES // 1000  # at most 1,000 members a part
    # the second sync sends the changed and added files, nothing else: every old part is kept
    changed = len(modify) + len(add)
    assert (second["files"], second["moved_files"]) == (N_FILES + len(add), changed)
    assert second["moved_bytes"] == sum(modify.values()) + sum(add.values())
    assert second["reused_parts"] == len(first["parts"]) and set(first["parts"]) < set(second["parts"])
    remote = _remote_folder(out["dest"])
    on_remote = _part_sizes(remote)
    assert sorted(on_remote) == sorted(second["parts"])  # no stray part
    new_bytes = sum(on_remote[name] for name in set(second["parts"]) - set(first["parts"]))
    assert new_bytes <= second["moved_bytes"] + 1024 * changed + 20 * KiB  # data, tar headers, end padding
    assert final["up_to_date"] and not first["deferred"] and not second["deferred"]
    assert not leftovers(remote, lock=True)

    assert out["persist"]["self_mib"] < 200, "the persisting process holds too much per file"
    assert out["end"]["self_mib"] < 200 and out["end"]["children_mib"] < 200
    assert out["rclone_peak_mib"] < RCLONE_MIB

    t0 = time.monotonic()
    expected = snapshot(local)
    actual = snapshot(back)
    print(f"snapshots of both trees (all bytes, modes, mtimes) in {time.monotonic() - t0:.1f}s")
    no_loss(expected, actual, f"{N_FILES:,} files persisted, changed, persisted again and staged back")


# -- b: one big file -----------------------------------------------------------------------------
BIG = 5 * GiB
# random bytes at unaligned offsets, one across the 4 GiB part boundary: a misplaced piece shows
REGIONS = [(0, MiB), (GiB + 12345, MiB), (4 * GiB - 512 * KiB - 7, MiB), (BIG - MiB, MiB)]
PATCH = [(3 * GiB + 777, 2 * MiB), (GiB + 12345 + 4096, 64 * KiB)]  # a new region, and inside an old one
BIG_RSS_MIB = 128


@pytest.mark.fault("persist of a 5 GiB file")
def test_persist_of_a_5_gib_file(tmp_path, no_loss):
    local, back = tmp_path / "big", tmp_path / "big-back"
    local.mkdir()
    source = local / "weights.bin"
    remote = None
    try:
        with open(source, "wb") as fh:
            fh.truncate(BIG)  # sparse: a few MiB on disk
            for offset, length in REGIONS:
                fh.seek(offset)
                fh.write(os.urandom(length))
        out = _child("patch", {"local": str(local), "back": str(back), "file": source.name, "patch": PATCH})
        remote = _remote_folder(out["dest"])
        first, second, final = out["first"], out["second"], out["final"]
        print(
            f"\n5 GiB file: first sync {first['seconds']}s, second sync {second['seconds']}s, final flush "
            f"{final['seconds']}s, stage {out['stage_seconds']}s; child {out['wall']}s in all"
        )
        _print_memory("5 GiB file", out)

        assert (first["files"], first["moved_bytes"], len(first["parts"])) == (1, BIG, 2)  # split at 4 GiB
        # a changed file goes up whole; the parts it leaves are deleted, not kept beside the new ones
        assert (second["moved_files"], second["moved_bytes"], second["reused_parts"]) == (1, BIG, 0)
        assert not set(first["parts"]) & set(second["parts"])
        on_remote = _part_sizes(remote)
        assert sorted(on_remote) == sorted(second["parts"]) and sum(on_remote.values()) < BIG + MiB
        assert final["up_to_date"] and not leftovers(remote, lock=True)

        assert out["persist"]["self_mib"] < BIG_RSS_MIB and out["end"]["self_mib"] < BIG_RSS_MIB
        assert out["end"]["children_mib"] < RCLONE_MIB and out["rclone_peak_mib"] < RCLONE_MIB

        t0 = time.monotonic()
        no_loss.same_file(source, back / source.name, "a 5 GiB file persisted, patched, persisted again, staged")
        print(f"compared 2 x 5 GiB in {time.monotonic() - t0:.1f}s")
    finally:  # three 5 GiB files would otherwise stay in pytest's kept temporary folders
        shutil.rmtree(back, ignore_errors=True)
        shutil.rmtree(local, ignore_errors=True)
        if remote is not None:
            shutil.rmtree(remote, ignore_errors=True)


# -- c: many syncs in a row ----------------------------------------------------------------------
SYNCS = 100


def _resources() -> dict[str, int]:
    """Threads, open descriptors and child processes (test servers aside) of this process now."""
    children = {c for c in descendants(os.getpid()) if c[0] not in Server.live_pids}
    return {"threads": threading.active_count(), "fds": len(os.listdir("/proc/self/fd")), "children": len(children)}


def _rss_mib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) // 1024


def _half_current(manifest: Manifest) -> list[str]:
    """Parts of which less than half is still current: the compaction the engine promises repacks them."""
    live = [0] * len(manifest.parts)
    for f in manifest.files:
        for seg in f.segments:
            live[seg.part] += seg.length
    return [p.name for p, n in zip(manifest.parts, live) if n * 2 < p.data_bytes]


@pytest.mark.fault("100 consecutive persist syncs")
def test_100_syncs_leak_nothing_and_stay_compact(tmp_path, no_loss):
    local = tmp_path / "run"
    (local / "static").mkdir(parents=True)
    (local / "metrics").mkdir()
    for i in range(20):
        (local / "static" / f"s{i:02d}.bin").write_bytes(os.urandom(2 * KiB))
    p = Persister(local, every=3600, settle=0.0, lock_ttl=3600)  # no heartbeat in between: counts stay still
    p.start()
    seen: dict[int, dict[str, int]] = {}
    rss: dict[int, int] = {}
    parts, times = [], []
    try:
        for i in range(1, SYNCS + 1):
            with open(local / "train.log", "a") as fh:  # a small change before each: a log line,
                fh.write(f"step {i} loss {1 / i:.6f}\n")
            (local / "checkpoint.pt").write_bytes(os.urandom(8 * KiB))  # a checkpoint rewritten,
            (local / f"epoch-{i % 10}.json").write_text(json.dumps({"step": i}))  # a file of ten,
            if i % 10 == 0:
                (local / "metrics" / f"eval-{i:03d}.json").write_text(json.dumps({"step": i}))  # now and then a new one
            t0 = time.monotonic()
            outcome = p.trigger().result(timeout=120)
            times.append(time.monotonic() - t0)
            assert outcome.result.moved_files >= 3 and not outcome.deferred, outcome.result.summary()
            assert not _half_current(outcome.manifest), f"sync {i} kept parts less than half current"
            parts.append(len(outcome.manifest.parts))
            if i in (5, SYNCS):
                seen[i], rss[i] = _resources(), _rss_mib()
    finally:
        p.stop()
    times.sort()
    print(
        f"\n{SYNCS} syncs: median {times[len(times) // 2]:.2f}s, slowest {times[-1]:.2f}s, {sum(times):.0f}s in all; "
        f"parts on the remote: at most {max(parts)}, {parts[-1]} at the end; after sync 5 {seen[5]}, RSS "
        f"{rss[5]} MiB; after sync {SYNCS} {seen[SYNCS]}, RSS {rss[SYNCS]} MiB"
    )
    assert seen[5] == seen[SYNCS]
    assert rss[SYNCS] - rss[5] < 16, "memory grows with the number of syncs"
    assert max(parts) <= 4  # 20 static files in the first part; everything else is repacked as it goes stale

    remote = _remote_folder(p.dest)
    manifest = Manifest.from_json((remote / "manifest.json").read_bytes(), p.dest)
    assert sorted(_part_sizes(remote)) == sorted(part.name for part in manifest.parts)  # nothing unreferenced
    assert not leftovers(remote, lock=True)
    cm.stage(p.dest, tmp_path / "check")
    no_loss(snapshot(local), snapshot(tmp_path / "check"), f"the remote after {SYNCS} syncs")
