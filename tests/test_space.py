"""Room at the destination: an upload that cannot fit is refused before anything of it is sent,
and the status says how much room is left.  The destination is a real 24 MiB file system."""

from __future__ import annotations

import os

import pytest

import colab_magics as cm
from colab_magics.errors import NoRoom
from colab_magics.persist import Persister

MiB = 1 << 20


def _refusal(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message and "free, and this upload needs at least" in message, message
    return message


def test_a_push_that_cannot_fit_is_refused_before_anything_is_sent(small_disk, tmp_path):
    src = tmp_path / "run"
    src.mkdir()
    (src / "model.ckpt").write_bytes(os.urandom(30 * MiB))
    (src / "notes.txt").write_text("small")
    for dest, pack in (("plain", False), ("packed", True)):
        with pytest.raises(NoRoom) as info:
            cm.push(src, str(small_disk / dest), pack=pack)
        assert "needs at least 30.0 MiB" in _refusal(info)
    with pytest.raises(NoRoom) as info:
        cm.push(src / "model.ckpt", str(small_disk / "model.ckpt"))
    _refusal(info)
    assert os.listdir(small_disk) == []  # nothing sent, nothing half-written


def test_a_push_that_fits_goes_through_and_an_unchanged_one_needs_no_room(small_disk, tmp_path):
    src = tmp_path / "run"
    src.mkdir()
    (src / "model.ckpt").write_bytes(os.urandom(20 * MiB))
    cm.push(src, str(small_disk / "plain"))
    assert cm.push(src, str(small_disk / "plain")).up_to_date  # 20 MiB already there: nothing more needed


def test_a_persist_sync_that_cannot_fit_keeps_the_last_version(small_disk, tmp_path):
    persister = Persister(tmp_path / "outputs", str(small_disk / "outputs"), every=3600)
    persister.start()
    try:
        (tmp_path / "outputs" / "step.txt").write_text("step 1")
        persister.sync()
        (tmp_path / "outputs" / "model.ckpt").write_bytes(os.urandom(30 * MiB))
        with pytest.raises(NoRoom) as info:
            persister.sync()
        _refusal(info)
        assert "model.ckpt" not in (small_disk / "outputs" / "manifest.json").read_text()
        assert persister.status().state == "error"
    finally:
        (tmp_path / "outputs" / "model.ckpt").unlink()
        persister.stop()


def test_the_status_says_how_much_room_is_left(small_disk, ip, tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"w" * 1000)
    ip.run_line_magic("drive_push", f"{tmp_path / 'model.pt'} {small_disk / 'model.pt'}")
    capsys.readouterr()
    ip.run_line_magic("drive_status", "")
    assert "24.0 MiB free there" in capsys.readouterr().out
