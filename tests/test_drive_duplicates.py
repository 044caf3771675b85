"""Drive keeps two files of one name side by side; its mount shows the second as ``name (1).ext``
(DriveFS's naming; and after the first is gone, the other may keep that name: colabtools#6106).

Drive cannot run here.  Its mount is a folder under the fake mount point, and the duplicate is laid
out the way the mount shows it: the latest manifest under ``manifest (1).json`` beside an older
``manifest.json``, or alone under the mangled name.  Without weighing both, a stage restored the
older version, and a push built on the older manifest (so the newer one's files were dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trees import snapshot

import colab_magics as cm
from colab_magics.persist import Persister
from colab_magics.rclone.process import Rclone


def _two_versions(tmp_path: Path, dest: Path) -> tuple[Path, bytes]:
    """Push v1 then v2 of a folder to ``dest``; returns the folder (at v2) and v1's manifest."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.txt").write_text("in both versions\n")
    (src / "model.pt").write_bytes(b"v1" * 1000)
    cm.push(src, str(dest), pack=True)
    first = (dest / "manifest.json").read_bytes()
    (src / "model.pt").write_bytes(b"v2" * 1000)
    (src / "new-in-v2.txt").write_text("only in v2\n")
    cm.push(src, str(dest), pack=True)
    return src, first


def _generation(raw: bytes) -> int:
    return json.loads(raw)["generation"]


@pytest.mark.parametrize("older_beside", [True, False], ids=["older manifest beside it", "alone, name kept"])
def test_a_stage_reads_the_latest_of_two_manifests_of_one_name(tmp_path, mount, older_beside):
    dest = mount / "ds"
    src, first = _two_versions(tmp_path, dest)
    (dest / "manifest.json").rename(dest / "manifest (1).json")
    if older_beside:
        (dest / "manifest.json").write_bytes(first)
    staged = cm.stage(str(dest), tmp_path / "staged")
    assert snapshot(tmp_path / "staged", modes=False) == snapshot(src, modes=False)  # v2, not v1
    assert staged.files == 3
    assert (dest / "manifest (1).json").exists()  # a stage only reads


def test_a_push_builds_on_the_latest_and_leaves_one_manifest(tmp_path, mount):
    dest = mount / "ds"
    src, first = _two_versions(tmp_path, dest)
    latest = (dest / "manifest.json").read_bytes()
    (dest / "manifest.json").rename(dest / "manifest (1).json")
    (dest / "manifest.json").write_bytes(first)
    (src / "third.txt").write_text("v3\n")
    pushed = cm.push(src, str(dest), pack=True)
    assert pushed.moved_files == 1  # only the new file: v2's files were known to be there
    assert not (dest / "manifest (1).json").exists()
    assert _generation((dest / "manifest.json").read_bytes()) == _generation(latest) + 1
    cm.stage(str(dest), tmp_path / "staged")
    assert snapshot(tmp_path / "staged", modes=False) == snapshot(src, modes=False)


def test_an_older_duplicate_is_ignored_and_a_persist_restores_the_latest(tmp_path, mount):
    dest = mount / "ds"
    src, first = _two_versions(tmp_path, dest)
    (dest / "manifest (1).json").write_bytes(first)  # the older one under the mangled name
    outputs = tmp_path / "outputs"
    persister = Persister(outputs, str(dest), every=3600, rclone=Rclone(), lock_ttl=3600, settle=0.0)
    persister.start(restore=True)
    try:
        assert snapshot(outputs, modes=False) == snapshot(src, modes=False)
    finally:
        persister.stop()
    assert not (dest / "manifest (1).json").exists()  # the writer kept the latest alone


def test_a_part_the_mount_shows_under_a_duplicates_name_is_read_and_never_swept(tmp_path, mount, monkeypatch):
    """After the first of two same-named files is gone, DriveFS may keep showing the other as
    ``part-... (1).tar``: it is still the part the manifest names.  A stage reads it (its MD5 checked
    as any part's), and a sync's stale sweep (here with every unnamed part old enough) keeps it."""
    from colab_magics.packed import upload

    dest = mount / "ds"
    src, _ = _two_versions(tmp_path, dest)
    parts = sorted((dest / "parts").rglob("part-*.tar"))
    shown = parts[0].with_name(parts[0].stem + " (1)" + parts[0].suffix)
    parts[0].rename(shown)
    cm.stage(str(dest), tmp_path / "staged")
    assert snapshot(tmp_path / "staged", modes=False) == snapshot(src, modes=False)
    monkeypatch.setattr(upload, "STALE_SECONDS", -1.0)
    (src / "third.txt").write_text("v3\n")
    cm.push(src, str(dest), pack=True)
    assert shown.exists()
    cm.stage(str(dest), tmp_path / "again")
    assert snapshot(tmp_path / "again", modes=False) == snapshot(src, modes=False)
