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
from colab_magics import errors
from colab_magics.packed.manifest import Manifest
from colab_magics.rclone import remotes


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
@pytest.mark.bad_input
def test_unsafe_tar_entries_are_refused(case, tmp_path, staged, no_loss):
    before = snapshot(staged)
    root = os.environ["COLAB_MAGICS_REMOTE"]
    _tar_with(os.path.join(root, "evil.tar"), EVIL[case])
    with pytest.raises(errors.UnsafeArchive):
        cm.stage("evil.tar", staged, force=True)
    no_loss(before, snapshot(staged), "dest after a refused stage")
    assert not [p for p in tmp_path.rglob("evil*") if p.suffix not in (".tar", ".zip")] and not os.path.exists(
        "/tmp/cm-evil-absolute.txt"
    )
    assert not list(staged.parent.glob(".*cm-stage*/**/fine.txt"))  # unsafe data is not kept for resume


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/cm-evil-zip.txt"])
@pytest.mark.bad_input
def test_unsafe_zip_entries_are_refused(name, tmp_path, staged, no_loss):
    before = snapshot(staged)
    with zipfile.ZipFile(os.path.join(os.environ["COLAB_MAGICS_REMOTE"], "evil.zip"), "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr(zipfile.ZipInfo(name), "evil")
    with pytest.raises(errors.UnsafeArchive):
        cm.stage("evil.zip", staged, force=True)
    no_loss(before, snapshot(staged), "dest after a refused stage")
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


@pytest.mark.bad_input
def test_tampered_part_is_detected_and_dest_kept(tmp_path, staged, no_loss):
    src, folder, manifest = _packed(tmp_path)
    before = snapshot(staged)
    _flip_byte(os.path.join(folder, manifest.parts[0].name), 700)  # inside the first member's data
    with pytest.raises(errors.VerificationError, match="re-push"):
        cm.stage("ds", staged, force=True)
    no_loss(before, snapshot(staged), "dest after a refused stage")


@pytest.mark.bad_input
def test_truncated_part_is_detected(tmp_path, staged, no_loss):
    src, folder, manifest = _packed(tmp_path)
    before = snapshot(staged)
    part = os.path.join(folder, manifest.parts[-1].name)
    os.truncate(part, os.path.getsize(part) // 2)
    with pytest.raises(errors.VerificationError):
        cm.stage("ds", staged, force=True)
    no_loss(before, snapshot(staged), "dest after a refused stage")


@pytest.mark.bad_input
def test_part_with_unlisted_member_is_refused(tmp_path, staged):
    src, folder, manifest = _packed(tmp_path)
    part = os.path.join(folder, manifest.parts[0].name)
    # 8 MiB after it: refused at its first members, the part's stream is still running (not "cut short")
    _tar_with(part, _entry("smuggled.txt"), _entry("padding.bin", data=os.urandom(8 << 20)))
    with pytest.raises(errors.VerificationError, match="does not list"):
        cm.stage("ds", staged, force=True)


@pytest.mark.bad_input
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
    good_path = data["files"][0]["path"]
    data["files"][0]["path"] = "../escape"
    open(path, "w").write(json.dumps(data))
    with pytest.raises(errors.ManifestError, match="malformed"):
        cm.stage("ds", staged, force=True)
    data["files"][0]["path"] = good_path
    data["files"][0]["segments"][0]["part"] = len(data["parts"])  # a part that is not there
    open(path, "w").write(json.dumps(data))
    with pytest.raises(errors.ManifestError, match="malformed.*a part the manifest does not list"):
        cm.stage("ds", staged, force=True)


@pytest.mark.fault("a stage failing on a corrupt part, then resumed")
def test_interrupted_stage_resumes_without_refetching_done_parts(tmp_path, no_loss):
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
    no_loss(snapshot(src), snapshot(tmp_path / "dest"), "dest after the resumed stage")
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
@pytest.mark.bad_input
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


# -- names: every hostile name survives a packed round trip, and a plain one on a folder -------
LONG = "L" * 255  # the longest name a Linux file system allows
HOSTILE_NAMES = {
    "space": "with space.txt",
    "quotes": 'quote\'s "double".txt',
    "dollar": "$HOME $(id) `id`.txt",
    "newline": "new\nline.txt",
    "tab": "tab\tname.txt",
    "backslash": "back\\slash.txt",
    "leading-dash": "-rf --force",
    "hidden": ".hidden",
    "trailing-space": "trailing space ",
    "unicode-nfc-nfd": ("\u00e9t\u00e9.txt", "e\u0301te\u0301.txt"),  # two different files that look alike
    "emoji": "\U0001f525 model.pt",
    "windows-reserved": "CON",
    "non-utf8": b"latin1-\xe9t\xe9.txt",
    "255-bytes": LONG,
    "deep-3000-bytes": "/".join(["d" * 200] * 14) + "/" + LONG,
}


def _write_named(root, names) -> None:
    for name in names if isinstance(names, tuple) else (names,):
        path = os.path.join(os.fsencode(root), os.fsencode(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(b"content of " + os.fsencode(name))


@pytest.mark.bad_input
@pytest.mark.parametrize("case", sorted(HOSTILE_NAMES))
def test_hostile_names_round_trip(case, tmp_path, no_loss):
    src = tmp_path / "src"
    src.mkdir()
    _write_named(src, HOSTILE_NAMES[case])
    cm.push(src, "packed", pack=True)
    cm.stage("packed", tmp_path / "back-packed")
    no_loss(snapshot(src), snapshot(tmp_path / "back-packed"), f"{case}, packed")
    if case == "non-utf8":  # remotes keep UTF-8 names: a plain copy says so instead of renaming
        with pytest.raises(errors.BadInput, match="not a UTF-8 name.*--pack"):
            cm.push(src, "plain")
        assert not os.path.exists(os.path.join(os.environ["COLAB_MAGICS_REMOTE"], "plain"))
    elif case != "deep-3000-bytes":  # the plain copy's temporary names would pass PATH_MAX here
        cm.push(src, "plain")
        cm.stage("plain", tmp_path / "back-plain")
        no_loss(snapshot(src, mtimes=False, modes=False), snapshot(tmp_path / "back-plain", mtimes=False, modes=False),
                f"{case}, plain")  # fmt: skip


# -- malformed remotes and paths: one clear line, nothing touched ------------------------------
@pytest.mark.bad_input
@pytest.mark.parametrize(
    "remote, match",
    [(":", "malformed remote"), ("::", "malformed remote"), ("$HOME:x", "malformed remote"),
     (" :x", "malformed remote"), ("-x:y", "malformed remote"), ("a b :x", "malformed remote"),
     ("nosuch:x", "unknown remote"), ("http://example.com/x", "unknown remote 'http:'"),
     ("../outside", "climbs out"), ("a/../../outside", "climbs out"), (":local:", "overlaps")],
)  # fmt: skip
def test_malformed_remotes_are_one_clear_line(remote, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    for call in (lambda: cm.stage(remote, tmp_path / "dest"), lambda: cm.push(tmp_path / "src", remote, pack=True)):
        with pytest.raises(errors.ColabMagicsError, match=match) as info:
            call()
        assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert not (tmp_path / "dest").exists()
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before  # nothing written beside the test folder


# -- every magic flag given a wrong type or an out-of-range value --------------------------------
FLAGS = [
    ("drive_stage", "x --workers zero", "invalid int"),
    ("drive_stage", "x --workers 1.5", "invalid int"),
    ("drive_stage", "x --workers 0", "between 1 and 32"),
    ("drive_stage", "x --workers -3", "between 1 and 32"),
    ("drive_stage", "x --workers 1000", "between 1 and 32"),
    ("drive_stage", "x --workers", "expected one argument"),
    ("drive_stage", "", "required"),
    ("drive_stage", "a b c", "unrecognized"),
    ("drive_stage", "x --bogus", "unrecognized"),
    ("drive_stage", '"unclosed', "check the quotes"),
    ("drive_push", "{src} x --pack --part-size 12x", "cannot read '12x'"),
    ("drive_push", "{src} x --pack --part-size 0", "must be positive"),
    ("drive_push", "{src} x --pack --part-size -1M", "cannot read '-1M'|expected one argument"),
    ("drive_push", "{src} x --pack --part-size nan", "cannot read 'nan'"),
    ("drive_push", "{src} x --pack --part-size 1000", "too small"),
    ("drive_push", "{src} x --pack --part-size", "expected one argument"),
    ("drive_push", "", "required"),
    ("drive_push", "{src} a b", "unrecognized"),
    ("persist", "out --every abc", "cannot read 'abc'"),
    ("persist", "out --every 0", "positive"),
    ("persist", "out --every -5s", "cannot read '-5s'|expected one argument"),
    ("persist", "out --every 0.1s", "too short"),
    ("persist", "out --every nan", "cannot read 'nan'"),
    ("persist", "out --every 5x", "cannot read '5x'"),
    ("persist", "out --every", "expected one argument"),
    ("persist", "out --to nosuch:x", "unknown remote"),
    ("persist", "out --to :", "malformed remote"),
    ("persist", "out --to ../x", "climbs out"),
    ("persist", "", "required"),
    ("persist", "a b", "unrecognized"),
    ("config", "part_size=abc", "cannot read 'abc'"),
    ("config", "part_size=0", "must be positive"),
    ("config", "sync_interval=soon", "cannot read 'soon'"),
    ("config", "workers=0", "between 1 and 32"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("magic, line, match", FLAGS, ids=[f"{m}:{line}" for m, line, _ in FLAGS])
def test_every_flag_rejects_wrong_values(magic, line, match, ip, tmp_path, monkeypatch):
    from IPython.core.error import UsageError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    cell = "open('ran', 'w').write('the cell ran')"
    with pytest.raises(UsageError, match=match) as info:
        if magic == "config":  # a setting that only fails when used
            setting, value = line.split("=")
            ip.run_line_magic("config", f"ColabMagics.{setting} = {value!r}" if setting != "workers" else
                              f"ColabMagics.{setting} = {value}")  # fmt: skip
            use = {"part_size": ("drive_push", "src x --pack"), "sync_interval": ("persist", "out"),
                   "workers": ("drive_stage", "x")}[setting]  # fmt: skip
            magic, line = use
        if magic == "persist":
            ip.run_cell_magic("persist", line, cell)
        else:
            ip.run_line_magic(magic, line.format(src=tmp_path / "src"))
    assert "\n" not in str(info.value).strip() and len(str(info.value)) < 400
    assert not (tmp_path / "ran").exists() and not (tmp_path / "default-remote").exists()  # nothing happened


# -- a huge compression ratio -----------------------------------------------------------------
class _Zeros(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = bytes(len(buffer))
        return len(buffer)


def _bomb(path, members: int, size: int) -> None:
    """A tar.zst of ``members`` files of ``size`` zero bytes each: kilobytes that unpack to gigabytes."""
    import zstandard

    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as zst:
        with tarfile.open(fileobj=zst, mode="w|") as tf:
            for i in range(members):
                info = tarfile.TarInfo(f"zeros-{i:05d}.bin")
                info.size = size
                tf.addfile(info, io.BufferedReader(_Zeros()))


@pytest.mark.bad_input
@pytest.mark.parametrize("members, size", [(1, 2 << 30), (2000, 64 << 10)], ids=["one-2GiB-member", "many-members"])
def test_huge_compression_ratio_fills_no_disk(members, size, tmp_path, small_disk, no_loss):
    old = make_tree(tmp_path / "old", small=3, odd=False)
    cm.push(old, "old", pack=True)
    cm.stage("old", small_disk / "dest")
    root = os.environ["COLAB_MAGICS_REMOTE"]
    _bomb(os.path.join(root, "bomb.tar.zst"), members, size)
    assert os.path.getsize(os.path.join(root, "bomb.tar.zst")) < 1 << 20  # at least 100:1, up to 10,000:1
    with pytest.raises(errors.ColabMagicsError, match="disk") as info:
        cm.stage("bomb.tar.zst", small_disk / "dest", force=True)
    assert "\n" not in str(info.value)
    no_loss(snapshot(old), snapshot(small_disk / "dest"), "dest after the bomb")
    assert sorted(p.name for p in small_disk.iterdir()) == ["dest"]  # nothing half-extracted left behind


@pytest.mark.bad_input
def test_plain_push_to_the_top_of_a_remote(tmp_path, dav, no_loss):
    src = make_tree(tmp_path / "src", small=3, odd=False)
    cm.push(src, f"{dav.name}:top")  # a folder at the remote's top level (its temporary goes beside it)
    cm.stage(f"{dav.name}:top", tmp_path / "back")
    plain = {"mtimes": False, "modes": False}  # a plain copy keeps neither modes nor exact times
    no_loss(snapshot(src, **plain), snapshot(tmp_path / "back", **plain), "a top-level plain push")
    cm.push(src, f"{dav.name}:")  # "into the top": as src
    assert sorted(p.name for p in dav.folder.iterdir()) == ["src", "top"]  # no temporary left beside them
