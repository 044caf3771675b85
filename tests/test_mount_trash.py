"""Drive's Trash, filled through the mount, stays bounded: the Trash budget of a persist on the Drive mount.

Drive cannot run here.  Its mount is a folder under the fake mount point, and its Trash is modelled
the way the mount behaves: every file that is deleted, replaced by a rename or rewritten goes there
and keeps its size (``trash_model.TrashModel``, which watches the destination's files, independently
of the engine's own count).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trash_model import TrashModel

from colab_magics.destination.trash import parse_factor
from colab_magics.errors import BadInput
from colab_magics.events import EventBus
from colab_magics.notebook.status import OverallState, StatusBoard
from colab_magics.persist import Persister
from colab_magics.rclone.process import Rclone

CHECKPOINT = 1 << 20


def _checkpoint(folder: Path, version: int) -> None:
    (folder / "model.pt").write_bytes(bytes([version % 251]) * CHECKPOINT)


def _persister(tmp_path: Path, mount: Path, **options) -> Persister:
    local = tmp_path / "outputs"
    local.mkdir(exist_ok=True)
    p = Persister(local, str(mount / "outputs"), every=3600, rclone=Rclone(), events=EventBus(), lock_ttl=3600,
                  settle=0.0, **options)
    p.start()
    return p


def test_timed_syncs_hold_a_rewritten_checkpoint_back_and_explicit_syncs_always_go(tmp_path, mount):
    p = _persister(tmp_path, mount)
    local, trash = tmp_path / "outputs", TrashModel(mount / "outputs")
    try:
        assert p.trash is not None
        _checkpoint(local, 1)
        (local / "log.txt").write_text("epoch 1\n")
        first = p.sync(timed=True)
        trash.look()
        assert first.held == [] and first.trashed == 0 and {f.path for f in first.manifest.files} == {
            "log.txt", "model.pt"}  # fmt: skip

        _checkpoint(local, 2)  # a new version of the whole checkpoint: its part would go to the Trash
        (local / "metrics.json").write_text("{}")
        held = p.sync(timed=True)
        trash.look()
        assert held.held == ["model.pt"] and held.trashed == trash.trashed < 10_000  # the manifest replaced
        synced = {f.path: f for f in held.manifest.files}
        assert "metrics.json" in synced  # new files still go up
        assert synced["model.pt"].sha256 == {f.path: f for f in first.manifest.files}["model.pt"].sha256
        status = p.status()
        assert "1 changed file(s) held back: their new versions would leave more" in status.held
        assert "raise the budget (COLAB_MAGICS_MOUNT_TRASH" in status.held  # emptying the Trash would not help
        assert p.pending() == (1, CHECKPOINT)

        explicit = p.sync()  # Sync now, the final sync, a flush: never held
        trash.look()
        assert explicit.held == [] and p.status().held == "" and p.pending() == (0, 0)
        assert CHECKPOINT <= explicit.trashed and held.trashed + explicit.trashed == p.trash.spent()
        assert trash.trashed == p.trash.spent()  # the engine's count is the model's, byte for byte

        _checkpoint(local, 3)  # now the Trash holds what the budget allows: emptying it would help
        assert p.sync(timed=True).held == ["model.pt"]
        assert "Drive's Trash already holds 1.0 MiB" in p.status().held and "empty Drive's Trash" in p.status().held
    finally:
        p.stop(final=False)


def test_rewrites_of_a_checkpoint_leave_drive_under_twice_the_folder(tmp_path, mount):
    """The issue's case, scaled down (``bench/mount_trash.py`` runs it at 200 MB and 50 syncs): a
    checkpoint rewritten before each of 20 timed syncs, then the final sync.  Without the budget the
    Trash holds every superseded version."""
    usage = {}
    for budget in (1.0, None):
        target = mount / f"outputs-{budget}"
        local = tmp_path / f"outputs-{budget}"
        local.mkdir()
        p = Persister(local, str(target), every=3600, rclone=Rclone(), events=EventBus(), lock_ttl=3600, settle=0.0,
                      mount_trash=budget)
        p.start()
        trash = TrashModel(target)
        try:
            for version in range(20):
                _checkpoint(local, version)
                p.sync(timed=True)
                trash.look()
        finally:
            p.stop(final=True)
        trash.look()
        usage[budget] = trash.usage() / CHECKPOINT
    assert usage[1.0] < 2.05, usage  # the folder, one superseded version, and the small manifests and lock
    assert usage[None] > 19, usage


def test_sync_now_starts_the_count_afresh(tmp_path, mount):
    p = _persister(tmp_path, mount)
    local = tmp_path / "outputs"
    try:
        _checkpoint(local, 1)
        p.sync()
        _checkpoint(local, 2)
        p.sync()
        assert p.trash is not None and p.trash.spent() >= CHECKPOINT
        _checkpoint(local, 3)
        outcome = p.trigger(trash_emptied=True).result(timeout=120)
        assert outcome.held == [] and CHECKPOINT <= p.trash.spent() < 2 * CHECKPOINT
    finally:
        p.stop(final=False)


def test_the_header_says_what_is_held_and_why(tmp_path, mount):
    events = EventBus()
    board = StatusBoard(events)
    local = tmp_path / "outputs"
    local.mkdir()
    p = Persister(local, str(mount / "outputs"), every=3600, rclone=Rclone(), events=events, lock_ttl=3600, settle=0.0)
    p.start()
    try:
        _checkpoint(local, 1)
        p.sync(timed=True)
        _checkpoint(local, 2)
        p.sync(timed=True)
        assert events.flush(timeout=60)
        overall = board.overall()
        assert overall.state == OverallState.PENDING and not overall.safe_to_disconnect
        assert overall.detail.startswith("persist outputs: 1 changed file(s) held back: their new versions")
    finally:
        p.stop(final=False)
        board.close()


def test_other_destinations_have_no_budget(tmp_path):
    local = tmp_path / "outputs"
    local.mkdir()
    p = Persister(local, str(tmp_path / "remote" / "outputs"), every=3600, rclone=Rclone())
    assert p.trash is None


@pytest.mark.parametrize(("text", "factor"), [("1x", 1.0), ("0.5", 0.5), (" 3X ", 3.0), ("off", None), ("none", None)])
def test_the_budget_reads_a_multiple_of_the_folder_or_off(text, factor):
    assert parse_factor(text) == factor


@pytest.mark.parametrize("text", ["-1x", "lots", "nan", ""])
def test_a_bad_budget_is_one_line(text):
    with pytest.raises(BadInput) as info:
        parse_factor(text)
    assert "\n" not in str(info.value)
