"""The clock jumping: a persisting process whose wall clock steps forward and back, a second
writer whose clock is hours ahead, and files stamped with times from before their last sync.

Clock steps are real for the process under test: libfaketime (Debian's ``faketime``) is
preloaded, its offset file rewritten while the process runs.  Like an NTP step, it moves the
wall clock only (``FAKETIME_DONT_FAKE_MONOTONIC=1``).  File times come from the kernel,
which libfaketime cannot move, so files stamped by a clock that went back are made with
``os.utime``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trees import snapshot
from waiting import wait_until

import colab_magics as cm
from colab_magics.persist import Persister

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))), None)
HOUR = 3600
SITE = str(Path(__file__).parent.parent / "faketime_site")  # works around a libfaketime bug: see there


def _faketime_env(offset_file: Path) -> dict[str, str]:
    if LIBFAKETIME is None:
        if os.environ.get("REQUIRE_FAKETIME"):
            pytest.fail("libfaketime is missing: apt-get install faketime")
        pytest.skip("libfaketime is missing (apt-get install faketime)")
    return {
        "LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(offset_file), "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PYTHONPATH": SITE + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }  # fmt: skip


WRITER = """
import os, time
i = 0
while not os.path.exists("stop"):
    with open(f"out/step-{i:04d}.txt", "w") as f:
        f.write(f"step {i} written at {time.time():.0f}\\n" * 50)
    i += 1
    time.sleep(0.1)
"""


def _persist_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "colab_magics.cli", "persist", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.fault("the clock jumping during a persist")
def test_wall_clock_steps_during_persist(tmp_path, no_loss):
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    env = {**os.environ, **_faketime_env(offset)}
    (tmp_path / "out").mkdir()
    proc = _persist_cli(["out", "--every", "1s", "--", sys.executable, "-c", WRITER], env, tmp_path)
    manifest = tmp_path / "default-remote" / "out" / "manifest.json"
    syncs_by_phase: dict[str, set[str]] = {}
    try:
        for phase, shift in (("before", "+0"), ("forward 2h", "+2h"), ("back 4h", "-2h")):
            offset.write_text(shift + "\n")
            seen = syncs_by_phase.setdefault(phase, set())

            def landed(seen: set[str] = seen) -> bool:  # each phase lasts until three syncs were seen in it
                if manifest.exists():
                    seen.add(hashlib.md5(manifest.read_bytes()).hexdigest())
                return len(seen) >= 3

            wait_until(landed, f"three syncs {phase}")
            if phase == "forward 2h":
                # a second writer whose clock runs two hours ahead sees the lock as long expired:
                # on the same machine, the live owner still holds it
                ahead = tmp_path / "ahead"
                ahead.write_text("+2h\n")
                other = _persist_cli(["out", "--", "true"], {**os.environ, **_faketime_env(ahead)}, tmp_path)
                _, err = other.communicate(timeout=60)
                assert other.returncode == 1 and "being persisted by" in err and "--steal-lock" in err, err
        (tmp_path / "stop").write_text("")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err
    # the interval is measured on the monotonic clock: syncs went on through both steps
    assert all(len(seen) >= 3 for seen in syncs_by_phase.values()), syncs_by_phase
    assert not (manifest.parent / ".cm-lock.json").exists()
    cm.stage("out", tmp_path / "check")
    no_loss(snapshot(tmp_path / "out"), snapshot(tmp_path / "check"), "remote after the clock steps")


@pytest.mark.fault("files stamped by a clock that went back")
def test_restore_keeps_new_work_stamped_in_the_past(tmp_path, no_loss):
    local = tmp_path / "out"
    local.mkdir()
    (local / "ckpt.bin").write_bytes(b"epoch 1 " * 500)
    (local / "notes.txt").write_text("v1")
    p = Persister(local, "run", every=HOUR)
    p.start()
    p.stop()
    synced = os.stat(local / "ckpt.bin").st_mtime_ns
    # new work after the clock stepped back an hour: same size, an older time than the synced copy
    (local / "ckpt.bin").write_bytes(b"epoch 2 " * 500)
    os.utime(local / "ckpt.bin", ns=(synced - HOUR * 10**9, synced - HOUR * 10**9))
    expected = snapshot(local)
    p = Persister(local, "run", every=HOUR)
    assert p.start(restore=True) is None  # nothing to bring back: the older-looking file is newer work
    p.stop()
    no_loss(expected, snapshot(local), "local after the re-run")
    cm.stage("run", tmp_path / "check")
    no_loss(expected, snapshot(tmp_path / "check"), "remote after the re-run")


@pytest.mark.fault("another writer's clock behind ours")
def test_restore_takes_a_remote_update_stamped_in_the_past(tmp_path, no_loss):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    (here / "shared.txt").write_text("version 1")
    p = Persister(here, "run", every=HOUR)
    p.start()
    p.stop()
    # another machine, whose clock is an hour behind, updates the file
    cm.stage("run", there)
    (there / "shared.txt").write_text("version 2")
    old = os.stat(here / "shared.txt").st_mtime_ns - HOUR * 10**9
    os.utime(there / "shared.txt", ns=(old, old))
    p = Persister(there, "run", every=HOUR)
    p.start()
    p.stop()
    # back here, unchanged since our sync: the remote's version is the newer one, whatever its time
    p = Persister(here, "run", every=HOUR)
    restored = p.start(restore=True)
    p.stop()
    assert restored is not None and restored.files == 1
    no_loss(snapshot(there), snapshot(here), "here after the restore")
