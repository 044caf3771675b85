"""Round trips through the real rclone binary on a folder, ``serve s3`` and ``serve webdav``."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import pytest
import zstandard
from trees import leftovers, make_tree, plant_leftovers, rewrite_same_size, snapshot

import colab_magics as cm
from colab_magics.packed.manifest import Manifest
from colab_magics.rclone import remotes

PART = 64 * 1024


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "zstd"])
def test_packed_round_trip_is_exact(remote, tmp_path, compress):
    src = make_tree(tmp_path / "src", big=3 * PART + 123, raw_bytes_name=True)
    pushed = cm.push(src, remotes.join(remote.root, "ds"), pack=True, compress=compress, part_size=PART)
    assert pushed.files == len([v for v in snapshot(src).values() if v[0] == "file"])
    staged = cm.stage(remotes.join(remote.root, "ds"), tmp_path / "dest")
    assert staged.kind == "packed" and not staged.up_to_date
    assert snapshot(tmp_path / "dest") == snapshot(src)
    names = [p.name for p in (remote.folder / "ds").rglob("*")]
    assert "manifest.json" in names and not [n for n in names if "cm-tmp" in n]


def test_repeat_stage_of_unchanged_data_moves_nothing(remote, tmp_path):
    src = make_tree(tmp_path / "src", small=50)
    cm.push(src, remotes.join(remote.root, "ds"), pack=True)
    cm.stage(remotes.join(remote.root, "ds"), tmp_path / "dest")
    inode = os.stat(tmp_path / "dest").st_ino
    again = cm.stage(remotes.join(remote.root, "ds"), tmp_path / "dest")
    assert again.up_to_date and "already up to date" in again.summary()
    assert os.stat(tmp_path / "dest").st_ino == inode  # not swapped again
    (tmp_path / "dest" / "zero-length").write_text("local edit")
    repaired = cm.stage(remotes.join(remote.root, "ds"), tmp_path / "dest")
    assert not repaired.up_to_date
    assert snapshot(tmp_path / "dest") == snapshot(src)


def test_a_dataset_of_no_files_is_up_to_date_when_staged_again(tmp_path):
    src = tmp_path / "src"
    (src / "only" / "folders").mkdir(parents=True)
    cm.push(src, str(tmp_path / "remote" / "ds"), pack=True)
    assert not cm.stage(str(tmp_path / "remote" / "ds"), tmp_path / "dest").up_to_date
    assert cm.stage(str(tmp_path / "remote" / "ds"), tmp_path / "dest").up_to_date
    assert (tmp_path / "dest" / "only" / "folders").is_dir()


def test_incremental_packed_push_keeps_unchanged_parts(remote, tmp_path):
    src = make_tree(tmp_path / "src", small=40, big=2 * PART)
    dest = remotes.join(remote.root, "ds")
    first = cm.push(src, dest, pack=True, part_size=PART)
    assert cm.push(src, dest, pack=True, part_size=PART).up_to_date
    (src / "zz-appended.txt").write_text("a new file at the end of the sorted order")
    second = cm.push(src, dest, pack=True, part_size=PART)
    assert second.reused_parts >= 1 and not second.up_to_date
    parts = sorted(p.name for p in (remote.folder / "ds" / "parts").rglob("part-*"))
    manifest = Manifest.from_json((remote.folder / "ds" / "manifest.json").read_bytes(), "t")
    assert sorted(os.path.basename(p.name) for p in manifest.parts) == parts  # superseded parts removed
    cm.stage(dest, tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == snapshot(src)
    assert first.files + 1 == second.files


def test_plain_folder_round_trip(remote, tmp_path):
    src = make_tree(tmp_path / "src", small=10)
    if remote.kind == "s3":
        # serve s3 now and then stores a key with a newline as a literal U+240A (seen in about one
        # run in twenty); push detects the mismatch and refuses the file, which would fail this test
        os.unlink(src / "a" / "new\nline.txt")
    dest = remotes.join(remote.root, "plain")
    pushed = cm.push(src, dest)
    assert pushed.kind == "folder"
    assert cm.push(src, dest).up_to_date
    staged = cm.stage(dest, tmp_path / "dest")
    assert staged.kind == "folder"
    want = snapshot(src, modes=False, mtimes=False)
    if remote.kind == "s3":  # buckets hold no empty folders: plain mode cannot keep them (--pack does)
        want = {k: v for k, v in want.items() if not k.startswith(b"empty")}
    assert snapshot(tmp_path / "dest", modes=False, mtimes=False) == want
    assert not leftovers(remote.folder)  # no temporary upload left behind


def test_plain_push_of_changed_file_updates_it(remote, tmp_path):
    src = make_tree(tmp_path / "src", small=3, odd=False)
    dest = remotes.join(remote.root, "plain")
    cm.push(src, dest)
    (src / "a" / "small-000.bin").write_bytes(b"changed content, other size")
    cm.push(src, dest)
    assert (remote.folder / "plain" / "a" / "small-000.bin").read_bytes() == b"changed content, other size"


def test_same_size_rewrites_reach_the_remote_in_every_mode(remote, tmp_path):
    """New bytes of the same size, stamped in the same second: a replace that compares sizes and
    times would keep the old version and say nothing (tests/reliability/test_servers.py runs the
    same against servers that keep no hashes or times at all)."""
    src = make_tree(tmp_path / "src", small=3, odd=False)
    for mode, dest in (("packed", "ds"), ("folder", "plain")):
        cm.push(src, remotes.join(remote.root, dest), pack=mode == "packed")
        rewrite_same_size(src / "a" / "small-001.bin")
        rewrite_same_size(src / "a" / "private.key")
        cm.push(src, remotes.join(remote.root, dest), pack=mode == "packed")
        staged = cm.stage(remotes.join(remote.root, dest), tmp_path / mode)
        assert staged.kind == mode
        assert snapshot(tmp_path / mode, modes=False, mtimes=False) == {
            k: v for k, v in snapshot(src, modes=False, mtimes=False).items()
            if mode == "packed" or remote.kind != "s3" or not k.startswith(b"empty")
        }  # fmt: skip
    cm.stage(remotes.join(remote.root, "plain"), tmp_path / "folder")  # again, into the old copy
    rewrite_same_size(src / "a" / "small-002.bin")
    cm.push(src, remotes.join(remote.root, "plain"))
    cm.stage(remotes.join(remote.root, "plain"), tmp_path / "folder")
    assert (tmp_path / "folder" / "a" / "small-002.bin").read_bytes() == (src / "a" / "small-002.bin").read_bytes()


def test_leftovers_of_killed_runs_are_swept_by_the_next_run(remote, tmp_path):
    """What a killed push leaves (a staging folder, a half-made manifest, a temporary upload beside a plain
    destination) goes with the next push once it is an hour old; a fresh one (a push running now) stays."""
    old, new = plant_leftovers(remote.root, tmp_path)
    src = make_tree(tmp_path / "src", small=2, odd=False)
    cm.push(src, remotes.join(remote.root, "ds"), pack=True)
    cm.push(src, remotes.join(remote.root, "plain"))
    names = {p.name for p in remote.folder.rglob("*") if p.is_file()}
    assert not {n for n in names if old in n}, sorted(names)
    assert f"part-{new}-0000.tar" in names  # may belong to a push still running


def _archive(kind: str, src, out):
    if kind == "zip":
        with zipfile.ZipFile(out, "w") as zf:
            for path in sorted(src.rglob("*")):
                zf.write(path, path.relative_to(src).as_posix())
        return
    if kind == "tar.zst":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            tf.add(src, arcname=".")
        out.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
        return
    mode = {"tar": "w", "tar.gz": "w:gz", "tgz": "w:gz", "tar.bz2": "w:bz2"}[kind]
    with tarfile.open(out, mode) as tf:
        tf.add(src, arcname=".")


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "tgz", "tar.zst", "tar.bz2", "zip"])
def test_stage_single_archive(remote, tmp_path, kind):
    src = make_tree(tmp_path / "src", small=5, odd=False)
    os.unlink(src / "link-to-deep")  # zip keeps no symlinks
    archive = tmp_path / f"data.{kind}"
    _archive(kind, src, archive)
    cm.push(archive, remote.root + "/")
    staged = cm.stage(remotes.join(remote.root, archive.name), tmp_path / "dest")
    assert staged.files == len([p for p in src.rglob("*") if p.is_file()])
    want = snapshot(src, modes=kind != "zip", mtimes=False)
    assert snapshot(tmp_path / "dest", modes=kind != "zip", mtimes=False) == want


def test_default_dest_strips_archive_suffix(tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src", small=2, odd=False)
    _archive("tar.gz", src, tmp_path / "flowers.tar.gz")
    cm.push(tmp_path / "flowers.tar.gz")
    monkeypatch.chdir(tmp_path)
    result = cm.stage("flowers.tar.gz")
    assert result.dest == str(tmp_path / "flowers")


def test_push_file_into_folder_and_exact_name(remote, tmp_path):
    f = tmp_path / "model $v1.pt"
    f.write_bytes(os.urandom(200_000))
    cm.push(f, remotes.join(remote.root, "models") + "/")
    assert (remote.folder / "models" / "model $v1.pt").read_bytes() == f.read_bytes()
    cm.push(f, remotes.join(remote.root, "exact.pt"))
    assert (remote.folder / "exact.pt").read_bytes() == f.read_bytes()
    assert not [p for p in remote.folder.rglob("*") if "cm-tmp" in p.name]


def test_default_remote_needs_no_configuration(tmp_path, monkeypatch):
    monkeypatch.delenv("COLAB_MAGICS_REMOTE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    src = make_tree(tmp_path / "outputs", small=3, odd=False)
    result = cm.push(src, pack=True)
    assert result.dest.startswith(str(tmp_path / "xdg" / "colab_magics" / "remote"))
    monkeypatch.chdir(tmp_path / "xdg")
    staged = cm.stage("outputs")
    assert snapshot(tmp_path / "xdg" / "outputs") == snapshot(src)
    assert staged.kind == "packed"


def test_one_changed_file_goes_up_alone_and_wins(remote, tmp_path):
    src = make_tree(tmp_path / "src", small=60, big=3 * PART, odd=False)
    dest = remotes.join(remote.root, "ds")
    cm.push(src, dest, pack=True, part_size=PART)
    (src / "a" / "small-007.bin").write_bytes(b"new version")
    os.unlink(src / "a" / "small-008.bin")
    second = cm.push(src, dest, pack=True, part_size=PART)
    assert second.moved_files == 1 and second.reused_parts >= 1
    assert "1 changed of" in second.summary()
    manifest = Manifest.from_json((remote.folder / "ds" / "manifest.json").read_bytes(), "t")
    assert any("a/small-007.bin" in p.skip for p in manifest.parts)  # the old copy stays, skipped
    cm.stage(dest, tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == snapshot(src)
