"""Faults: the remote dies mid-transfer, Ctrl-C, a full disk. Each case asserts the clear outcome
and that nothing was lost: the remote keeps its previous complete version, dest its content."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest
from servers import Server
from trees import leftovers, make_tree, parts_staged, snapshot
from waiting import poll, wait_until

import colab_magics as cm
from colab_magics import errors
from colab_magics.persist import Persister
from colab_magics.rclone import process as runner

# give up fast on a dead server instead of rclone's default minutes of retries
FAST_FAIL = ["--retries", "1", "--low-level-retries", "1", "--contimeout", "2s", "--timeout", "5s"]


def _kill_when(server: Server, ready: Callable[[], bool]) -> threading.Thread:
    """Kill ``server`` as soon as ``ready()``: mid-transfer, however slowly the transfer got going.
    (Never ready: the server lives, the transfer succeeds, and the test's ``raises`` fails.)"""
    thread = threading.Thread(target=lambda: poll(ready) and server.kill())
    thread.start()
    return thread


def _uploading(folder: Path) -> Callable[[], bool]:
    """True once an upload under ``folder`` on the server has begun (a part that no manifest names yet)."""
    return lambda: bool(leftovers(folder))


@pytest.mark.fault("server killed mid push")
def test_server_killed_mid_push_keeps_previous_version(dav, tmp_path, no_loss):
    v1 = make_tree(tmp_path / "v1", small=20, odd=False)
    cm.push(v1, f"{dav.name}:ds", pack=True, part_size=1 << 20)
    v2 = make_tree(tmp_path / "v2", small=20, big=6 << 20, odd=False)
    slow = runner.Rclone(flags=["--bwlimit", "2M", *FAST_FAIL])
    killer = _kill_when(dav, _uploading(dav.folder / "ds"))
    with pytest.raises(errors.ColabMagicsError):
        cm.push(v2, f"{dav.name}:ds", pack=True, part_size=1 << 20, rclone=slow)
    killer.join()
    assert not runner._live
    dav.start()  # the server comes back
    cm.stage(f"{dav.name}:ds", tmp_path / "check")
    no_loss(snapshot(v1), snapshot(tmp_path / "check"), "remote after the failed push")  # previous version
    cm.push(v2, f"{dav.name}:ds", pack=True, part_size=1 << 20)  # the next try succeeds
    cm.stage(f"{dav.name}:ds", tmp_path / "check")
    no_loss(snapshot(v2), snapshot(tmp_path / "check"), "remote after the retry")


@pytest.mark.fault("server killed mid stage")
def test_server_killed_mid_stage_keeps_dest_then_resumes(dav, tmp_path, no_loss):
    v1 = make_tree(tmp_path / "v1", small=5, odd=False)
    cm.push(v1, f"{dav.name}:old", pack=True)
    cm.stage(f"{dav.name}:old", tmp_path / "dest")
    big = make_tree(tmp_path / "big", small=5, big=8 << 20, odd=False)
    cm.push(big, f"{dav.name}:new", pack=True, part_size=1 << 20)
    slow = runner.Rclone(flags=["--bwlimit", "2M", *FAST_FAIL])
    killer = _kill_when(dav, lambda: parts_staged(tmp_path / "dest") > 0)
    with pytest.raises(errors.ColabMagicsError):
        cm.stage(f"{dav.name}:new", tmp_path / "dest", force=True, rclone=slow, workers=1)
    killer.join()
    no_loss(snapshot(v1), snapshot(tmp_path / "dest"), "dest after the failed stage")  # its previous content
    assert not runner._live
    dav.start()
    result = cm.stage(f"{dav.name}:new", tmp_path / "dest", force=True, workers=1)
    assert result.reused_parts >= 1  # parts finished before the failure were not fetched again
    no_loss(snapshot(big), snapshot(tmp_path / "dest"), "dest after the resumed stage")


@pytest.mark.fault("server killed mid persist sync")
def test_server_killed_during_a_persist_sync(dav, tmp_path, no_loss):
    local = tmp_path / "outputs"
    local.mkdir()
    (local / "epoch-1.txt").write_text("one")
    p = Persister(local, f"{dav.name}:run", every=3600, rclone=runner.Rclone(flags=FAST_FAIL))
    p.start()
    try:
        p.trigger().result(timeout=60)
        (local / "epoch-2.bin").write_bytes(os.urandom(4 << 20))
        p.rclone = runner.Rclone(flags=["--bwlimit", "2M", *FAST_FAIL])
        killer = _kill_when(dav, _uploading(dav.folder / "run"))
        with pytest.raises(errors.ColabMagicsError):
            p.trigger().result(timeout=120)
        killer.join()
        assert p.status().state == "error" and p.status().last_error
        dav.start()
        cm.stage(f"{dav.name}:run", tmp_path / "check")
        assert {f.name for f in (tmp_path / "check").iterdir()} == {"epoch-1.txt"}  # previous version intact
        p.rclone = runner.Rclone(flags=FAST_FAIL)
        p.trigger().result(timeout=60)  # the next sync succeeds
    finally:
        p.stop()
    cm.stage(f"{dav.name}:run", tmp_path / "check", force=True)
    no_loss(snapshot(local), snapshot(tmp_path / "check"), "remote after the next sync")


@pytest.mark.fault("Ctrl-C during a CLI push")
def test_ctrl_c_during_a_cli_push_leaves_nothing_behind(tmp_path):
    src = make_tree(tmp_path / "src", small=5, big=20 << 20, odd=False)
    remote = tmp_path / "remote"
    env = dict(os.environ, COLAB_MAGICS_RCLONE_FLAGS="--bwlimit 2M", COLAB_MAGICS_REMOTE=str(remote))
    proc = subprocess.Popen(
        [sys.executable, "-m", "colab_magics.cli", "push", str(src), "--pack"],
        stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    wait_until(_uploading(remote / "src"), "the CLI's upload under way")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "cancelled" in err and "Traceback" not in err
    left = subprocess.run(["pgrep", "-f", str(remote)], capture_output=True, text=True).stdout
    assert not left.strip()  # no rclone child still running
    assert not (remote / "src" / "manifest.json").exists()
    assert not [p for p in remote.rglob("*") if p.is_file()]  # no temporary or partial upload


@pytest.mark.fault("local disk full during a stage")
def test_disk_full_during_stage_is_a_clear_error(tmp_path, small_disk, no_loss):
    old = make_tree(tmp_path / "old", small=3, odd=False)
    cm.push(old, "old", pack=True)
    cm.stage("old", small_disk / "dest")
    big = make_tree(tmp_path / "big", small=3, big=40 << 20, odd=False)
    cm.push(big, "big", pack=True)
    with pytest.raises(errors.ColabMagicsError, match="disk"):
        cm.stage("big", small_disk / "dest", force=True)
    no_loss(snapshot(old), snapshot(small_disk / "dest"), "dest after the full disk")
