"""Files that change while they upload: rewritten in place, replaced (temp + rename), appended.

Whatever the timing, the remote must hold a complete version of each file (the previous one
when the change came mid-read), the change must be reported, never silently half-synced, and
the next sync must carry the final version.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from trees import snapshot

import colab_magics as cm
from colab_magics import errors
from colab_magics.persist import Persister
from colab_magics.rclone import process as runner

SIZE = 24 << 20
SLOW = ["--bwlimit", "6M"]  # reading the file takes seconds: time for a change mid-read


def _rewrite_in_place(path) -> None:
    with open(path, "r+b") as fh:
        fh.writelines(os.urandom(1 << 20) for _ in range(SIZE // (1 << 20)))


def _replace(path) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(os.urandom(SIZE))
    os.replace(tmp, path)


def _append(path) -> None:
    with open(path, "ab") as fh:
        fh.write(os.urandom(1 << 20))


CHANGES = {"rewritten-in-place": _rewrite_in_place, "replaced": _replace, "appended": _append}


def _being_read(path) -> bool:
    """Is ``path`` open in this process with its read position inside the file?"""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    pos = int(info.readline().split()[1])
                if 0 < pos < SIZE:
                    return True
        except (OSError, ValueError):
            continue
    return False


def _change_mid_read(change, path) -> threading.Thread:
    """Apply ``change`` as soon as the engine is part-way through reading ``path``."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while not _being_read(path) and time.monotonic() < deadline:
            time.sleep(0.005)
        change(path)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _v1_folder(tmp_path):
    """A folder at v1 (ckpt.bin and notes.txt)."""
    local = tmp_path / "out"
    local.mkdir()
    (local / "ckpt.bin").write_bytes(os.urandom(SIZE))
    (local / "notes.txt").write_text("v1")
    return local


def _make_v2(local) -> dict:
    """Change both files: the next upload must read ckpt.bin again."""
    (local / "ckpt.bin").write_bytes(os.urandom(SIZE))
    (local / "notes.txt").write_text("v2")
    return snapshot(local)


@pytest.mark.fault("a file changing during a packed push")
@pytest.mark.parametrize("kind", sorted(CHANGES))
def test_change_during_packed_push(kind, tmp_path, dav, no_loss):
    local = _v1_folder(tmp_path)
    cm.push(local, f"{dav.name}:ds", pack=True)
    v1 = snapshot(local)
    v2 = _make_v2(local)
    changer = _change_mid_read(CHANGES[kind], local / "ckpt.bin")
    try:
        if kind == "replaced":  # the open file is v2, whole: what is read is a complete version
            cm.push(local, f"{dav.name}:ds", pack=True, rclone=runner.Rclone(flags=SLOW))
            expected, where = v2, "remote after a push that read the replaced file's earlier version"
        else:
            with pytest.raises(errors.SourceChanged, match="ckpt.bin"):
                cm.push(local, f"{dav.name}:ds", pack=True, rclone=runner.Rclone(flags=SLOW))
            expected, where = v1, "remote after the refused push"  # the last version, all of it
    finally:
        changer.join()
    cm.stage(f"{dav.name}:ds", tmp_path / "check")
    no_loss(expected, snapshot(tmp_path / "check"), where)
    cm.push(local, f"{dav.name}:ds", pack=True)  # once written, it goes up
    cm.stage(f"{dav.name}:ds", tmp_path / "check", force=True)
    no_loss(snapshot(local), snapshot(tmp_path / "check"), "remote after the next push")


@pytest.mark.fault("a file changing during a persist sync")
@pytest.mark.parametrize("kind", sorted(CHANGES))
def test_change_during_persist_sync(kind, tmp_path, dav, no_loss):
    local = _v1_folder(tmp_path)
    p = Persister(local, f"{dav.name}:run", every=3600, settle=0.0)
    p.start()
    try:
        p.sync()
        v1 = snapshot(local)
        v2 = _make_v2(local)
        p.rclone = runner.Rclone(flags=SLOW)
        changer = _change_mid_read(CHANGES[kind], local / "ckpt.bin")
        try:
            outcome = p.sync()
        finally:
            changer.join()
        cm.stage(f"{dav.name}:run", tmp_path / "check")
        if kind == "replaced":  # a complete v2 was read
            assert outcome.deferred == []
            no_loss(v2, snapshot(tmp_path / "check"), "remote after the sync")
        else:  # caught mid-read: the previous version stays, everything else goes up
            assert outcome.deferred == ["ckpt.bin"]
            no_loss({**v2, b"ckpt.bin": v1[b"ckpt.bin"]}, snapshot(tmp_path / "check"), "remote after the sync")
        assert p.pending()[0] == 1  # the panel shows it waiting
        p.rclone = runner.Rclone()
        p.sync()
        assert p.pending() == (0, 0)
    finally:
        p.stop()
    cm.stage(f"{dav.name}:run", tmp_path / "check", force=True)
    no_loss(snapshot(local), snapshot(tmp_path / "check"), "remote after the next sync")
