"""Putting a staged tree in place: atomically where the file system can exchange two folders, and
with two renames where it cannot (FUSE mounts such as Colab's Drive mount answer EINVAL to
``renameat2(RENAME_EXCHANGE)``; Drive cannot run here, so that refusal is played by the call itself)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from colab_magics.local import swap


def _tree(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "a.txt").write_text(text)
    return folder


@pytest.mark.parametrize("exchange", ["this file system's", "refused (EINVAL)", "absent (not Linux)"])
def test_the_new_tree_replaces_the_old_and_the_old_is_removed(tmp_path, monkeypatch, exchange):
    if exchange == "refused (EINVAL)":
        def refused(*args: object) -> int:
            ctypes.set_errno(22)
            return -1

        monkeypatch.setattr(swap, "_RENAMEAT2", refused)
    elif exchange == "absent (not Linux)":
        monkeypatch.setattr(swap, "_RENAMEAT2", None)
    new, dest, trash = _tree(tmp_path / "new", "new"), _tree(tmp_path / "dest", "old"), tmp_path / "trash"
    swap.replace_tree(new, dest, trash)
    assert (dest / "a.txt").read_text() == "new"
    assert not new.exists() and not trash.exists()


def test_a_missing_destination_is_a_plain_rename(tmp_path):
    new = _tree(tmp_path / "new", "new")
    swap.replace_tree(new, tmp_path / "dest", tmp_path / "trash")
    assert (tmp_path / "dest" / "a.txt").read_text() == "new" and not new.exists()
