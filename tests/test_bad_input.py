"""Hostile archives, tampered datasets and wrong arguments: a clear error, and nothing harmed."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile

import pytest
from trees import make_tree, snapshot

import colab_magics as cm
from colab_magics import errors, remotes
from colab_magics.manifest import Manifest


@pytest.fixture
def staged(tmp_path):
    """A dest that already holds a good staged dataset: bad stages must leave it as it is."""
    good = make_tree(tmp_path / "good", small=5, odd=False)
    cm.push(good, "good", pack=True)
    dest = tmp_path / "work" / "dest"
    cm.stage("good", dest)
    return dest


def _tar_with(path, *members):
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data else None)


def _entry(name, kind=tarfile.REGTYPE, link="", data=b"x"):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


EVIL = {
    "dotdot": _entry("../evil.txt"),
    "dotdot-deep": _entry("a/../../evil.txt"),
    "absolute": _entry("/tmp/cm-evil-absolute.txt"),
    "symlink-absolute": _entry("link", tarfile.SYMTYPE, "/etc"),
    "symlink-escape": _entry("sub/link", tarfile.SYMTYPE, "../../evil"),
    "hardlink-escape": _entry("hard", tarfile.LNKTYPE, "../evil.txt"),
    "hardlink-absolute": _entry("hard", tarfile.LNKTYPE, "/etc/passwd"),
    "char-device": _entry("dev", tarfile.CHRTYPE),
    "block-device": _entry("blk", tarfile.BLKTYPE),
    "fifo": _entry("fifo", tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("case", sorted(EVIL))
def test_unsafe_tar_entries_are_refused(case, tmp_path, staged):
    before = snapshot(staged)
    root = os.environ["COLAB_MAGICS_REMOTE"]
    _tar_with(os.path.join(root, "evil.tar"), EVIL[case])
    with pytest.raises(errors.UnsafeArchive):
        cm.stage("evil.tar", staged, force=True)
    assert snapshot(staged) == before
    assert not [p for p in tmp_path.rglob("evil*") if p.suffix not in (".tar", ".zip")] and not os.path.exists(
        "/tmp/cm-evil-absolute.txt"
    )
    assert not list(staged.parent.glob(".*cm-stage*/**/fine.txt"))  # unsafe data is not kept for resume


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/cm-evil-zip.txt"])
def test_unsafe_zip_entries_are_refused(name, tmp_path, staged):
    before = snapshot(staged)
    with zipfile.ZipFile(os.path.join(os.environ["COLAB_MAGICS_REMOTE"], "evil.zip"), "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr(zipfile.ZipInfo(name), "evil")
    with pytest.raises(errors.UnsafeArchive):
        cm.stage("evil.zip", staged, force=True)
    assert snapshot(staged) == before
    assert not [p for p in tmp_path.rglob("evil*") if p.suffix not in (".tar", ".zip")] and not os.path.exists(
        "/tmp/cm-evil-zip.txt"
    )


def test_safe_internal_links_are_kept(tmp_path):
    root = os.environ["COLAB_MAGICS_REMOTE"]
    os.makedirs(root)
    _tar_with(
        os.path.join(root, "links.tar"),
        _entry("dir/target.txt", data=b"target"),
        _entry("dir/rel-link", tarfile.SYMTYPE, "target.txt"),
        _entry("up-link", tarfile.SYMTYPE, "dir/target.txt"),
        _entry("hard", tarfile.LNKTYPE, "dir/target.txt"),
    )
    cm.stage("links.tar", tmp_path / "out")
    assert (tmp_path / "out" / "up-link").read_text() == "target"
    assert os.readlink(tmp_path / "out" / "dir" / "rel-link") == "target.txt"
    assert (tmp_path / "out" / "hard").read_text() == "target"


def _packed(tmp_path, name="ds", part_size=64 * 1024):
    src = make_tree(tmp_path / f"src-{name}", small=30, big=150_000, odd=False)
    cm.push(src, name, pack=True, part_size=part_size)
    folder = os.path.join(os.environ["COLAB_MAGICS_REMOTE"], name)
    manifest = Manifest.from_json(open(os.path.join(folder, "manifest.json"), "rb").read(), name)
    return src, folder, manifest


def _flip_byte(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_tampered_part_is_detected_and_dest_kept(tmp_path, staged):
    src, folder, manifest = _packed(tmp_path)
    before = snapshot(staged)
    _flip_byte(os.path.join(folder, manifest.parts[0].name), 700)  # inside the first member's data
    with pytest.raises(errors.VerificationError, match="re-push"):
        cm.stage("ds", staged, force=True)
    assert snapshot(staged) == before


def test_truncated_part_is_detected(tmp_path, staged):
    src, folder, manifest = _packed(tmp_path)
    before = snapshot(staged)
    part = os.path.join(folder, manifest.parts[-1].name)
    os.truncate(part, os.path.getsize(part) // 2)
    with pytest.raises(errors.VerificationError):
        cm.stage("ds", staged, force=True)
    assert snapshot(staged) == before


def test_part_with_unlisted_member_is_refused(tmp_path, staged):
    src, folder, manifest = _packed(tmp_path)
    part = os.path.join(folder, manifest.parts[0].name)
    _tar_with(part, _entry("smuggled.txt"))
    with pytest.raises(errors.VerificationError, match="does not list"):
        cm.stage("ds", staged, force=True)


def test_manifest_of_newer_format_or_malformed(tmp_path, staged):
    src, folder, manifest = _packed(tmp_path)
    path = os.path.join(folder, "manifest.json")
    data = json.loads(open(path).read())
    data["version"] = 99
    open(path, "w").write(json.dumps(data))
    with pytest.raises(errors.ManifestError, match="newer"):
        cm.stage("ds", staged, force=True)
    open(path, "w").write("{not json")
    with pytest.raises(errors.ManifestError, match="not valid JSON"):
        cm.stage("ds", staged, force=True)
    data["version"] = 1
    data["files"][0]["path"] = "../escape"
    open(path, "w").write(json.dumps(data))
    with pytest.raises(errors.ManifestError, match="malformed"):
        cm.stage("ds", staged, force=True)


def test_interrupted_stage_resumes_without_refetching_done_parts(tmp_path):
    src, folder, manifest = _packed(tmp_path, part_size=64 * 1024)
    assert len(manifest.parts) >= 3
    last = os.path.join(folder, manifest.parts[-1].name)
    good = open(last, "rb").read()
    _flip_byte(last, 600)
    with pytest.raises(errors.VerificationError):
        cm.stage("ds", tmp_path / "dest", workers=1)
    assert not (tmp_path / "dest").exists()  # never half a tree at dest
    open(last, "wb").write(good)
    result = cm.stage("ds", tmp_path / "dest", workers=1)
    assert result.reused_parts == len(manifest.parts) - 1
    assert snapshot(tmp_path / "dest") == snapshot(src)
    assert not list(tmp_path.glob(".dest.cm-stage*"))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda t: cm.stage("does/not/exist", t / "d"), errors.RemoteNotFound, "does not exist"),
        (lambda t: cm.stage("nosuchremote:x", t / "d"), errors.UnknownRemote, "RCLONE_CONFIG_NOSUCHREMOTE_TYPE"),
        (lambda t: cm.stage("plain.txt", t / "d"), errors.BadInput, "not an archive"),
        (lambda t: cm.stage("good", t / "a-file"), errors.BadInput, "is a file"),
        (lambda t: cm.stage("good", os.environ["COLAB_MAGICS_REMOTE"] + "/good/inner"), errors.BadInput, "overlaps"),
        (lambda t: cm.stage("good", t / "foreign"), errors.BadInput, "--force"),
        (lambda t: cm.push(t / "missing"), errors.BadInput, "does not exist"),
        (lambda t: cm.push(t / "a-file", pack=True), errors.BadInput, "takes a folder"),
        (lambda t: cm.push(t / "good", "plainfolder", pack=True), errors.BadInput, "not a packed dataset"),
        (lambda t: cm.push(t / "good", "x", pack=True, part_size=1000), errors.BadInput, "too small"),
        (lambda t: cm.push(t / "good", os.path.join(str(t), "good", "sub")), errors.BadInput, "overlaps"),
        (lambda t: cm.stage("   ", t / "d"), errors.BadInput, "empty"),
    ],
    ids=[
        "missing-source", "unknown-remote", "not-an-archive", "dest-is-file", "dest-inside-source",
        "dest-foreign", "push-missing", "pack-a-file", "pack-onto-plain", "part-too-small",
        "push-into-itself", "empty-name",
    ],
)  # fmt: skip
def test_bad_arguments_give_one_clear_line(call, error, match, tmp_path):
    root = os.environ["COLAB_MAGICS_REMOTE"]
    os.makedirs(os.path.join(root, "plainfolder"))
    open(os.path.join(root, "plainfolder", "x.txt"), "w").write("x")
    open(os.path.join(root, "plain.txt"), "w").write("x")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "mine.txt").write_text("user data")
    make_tree(tmp_path / "good", small=2, odd=False)
    cm.push(tmp_path / "good", "good", pack=True)
    with pytest.raises(error, match=match) as info:
        call(tmp_path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert (tmp_path / "foreign" / "mine.txt").read_text() == "user data"
    assert open(os.path.join(root, "plainfolder", "x.txt")).read() == "x"


def test_force_replaces_foreign_dest(tmp_path):
    make_tree(tmp_path / "good", small=2, odd=False)
    cm.push(tmp_path / "good", "good", pack=True)
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "old.txt").write_text("old")
    cm.stage("good", tmp_path / "dest", force=True)
    assert snapshot(tmp_path / "dest") == snapshot(tmp_path / "good")


def test_remote_path_rules(monkeypatch):
    monkeypatch.setenv("COLAB_MAGICS_REMOTE", "gdrive:colab")
    assert remotes.resolve("datasets/flowers") == "gdrive:colab/datasets/flowers"
    assert remotes.resolve("s3:bucket/x") == "s3:bucket/x"
    assert remotes.resolve("/mnt/data") == "/mnt/data"
    assert remotes.join("gdrive:", "a", "b/") == "gdrive:a/b"
    assert remotes.basename("gdrive:a/b/") == "b"
    assert remotes.listed_name("new\u240aline \u201b\u240a.txt") == "new\nline \u240a.txt"
