"""Archives other tools made: staged as GNU tar extracts them, or refused in one line.

The corpus is made here at test time with Python's gzip, bz2, lzma and zstandard (whole streams,
several members or frames, streams cut short) and compared with GNU tar's own extraction of the same
file (skipped where GNU tar is missing).  Symlink chains must be judged on the real tree.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import zstandard
from trees import snapshot

import colab_magics as cm
from colab_magics.errors import ColabMagicsError, UnsafeArchive, VerificationError

GNU_TAR = shutil.which("tar")


def _tar(entries: list[tuple[str, str, object]], eof: bool = True, form: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar made by Python's tarfile (entries: file, dir, sym or link); ``eof=False`` leaves out the
    end-of-archive blocks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=form) as tf:
        for kind, path, arg in entries:
            info = tarfile.TarInfo(path)
            info.mtime = 1_700_000_000
            if kind == "file":
                info.size = len(arg)  # type: ignore[arg-type]
                tf.addfile(info, io.BytesIO(arg))  # type: ignore[arg-type]
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.type = tarfile.LNKTYPE if kind == "link" else tarfile.SYMTYPE
                info.linkname = str(arg)
                tf.addfile(info)
        members_end = out.tell()
    data = out.getvalue()
    return data if eof else data[:members_end]


FILES = [("dir", "d", None)] + [("file", f"d/f{i}.txt", (f"file {i} " * 20_000).encode()) for i in range(4)]
WHOLE = _tar(FILES)
THREE = _tar(FILES[:4], eof=False)  # cut where the third file ends: a tar reader sees a clean end


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


def _halves(compress, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """Two members, streams or frames back to back (pigz, pbzip2, ``cat a.gz b.gz``)."""
    return compress(data[: len(data) // 2]) + compress(data[len(data) // 2 :])


COMPRESSORS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "zst": _zstd}
TRAILERS = {"gz": 8, "bz2": 10, "xz": 12, "zst": 4}  # the end marker each format checks


def _corpus() -> dict[str, bytes]:
    corpus = {"plain.tar": WHOLE}
    for ext, compress in COMPRESSORS.items():
        corpus[f"whole.tar.{ext}"] = compress(WHOLE)
        corpus[f"multi.tar.{ext}"] = _halves(compress, WHOLE)
        corpus[f"cut-mid.tar.{ext}"] = compress(WHOLE)[: len(compress(WHOLE)) * 3 // 5]
        corpus[f"cut-at-member.tar.{ext}"] = compress(THREE)[: -TRAILERS[ext]]
    corpus["chain-up.tar"] = _tar([("sym", "cur", "."), ("sym", "par", "cur/..")])
    corpus["chain-through.tar"] = _tar([("sym", "cur", "."), ("sym", "cur/par", "..")])
    corpus["links-inside.tar"] = _tar([("dir", "a", None), ("file", "a/f", b"x"), ("sym", "l", "a/f"),
                                       ("sym", "cur", "."), ("sym", "a/up", "..")])  # fmt: skip
    return corpus


CORPUS = _corpus()


def _gnu_tar(archive: Path, into: Path) -> bool:
    into.mkdir()
    return subprocess.run([GNU_TAR, "-xf", str(archive), "-C", str(into)], capture_output=True).returncode == 0


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_archive_staged_as_gnu_tar_extracts_it_or_refused_in_one_line(name, tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / name).write_bytes(CORPUS[name])
    monkeypatch.setenv("COLAB_MAGICS_REMOTE", str(remote))
    dest = tmp_path / "dest"
    try:
        cm.stage(name, dest)
        ours: Exception | None = None
    except ColabMagicsError as exc:
        ours = exc
    if name.startswith("cut-"):
        assert isinstance(ours, VerificationError) and "is cut short or damaged" in str(ours), ours
    elif name.startswith("chain-"):
        assert isinstance(ours, UnsafeArchive) and "leads outside the destination" in str(ours), ours
    else:
        assert ours is None, ours
    if ours is not None:
        assert "\n" not in str(ours) and not dest.exists()  # one line, and nothing half-staged
        return
    if GNU_TAR is None:
        pytest.skip("GNU tar is not installed: our tree is not compared")
    assert _gnu_tar(remote / name, tmp_path / "gnu")
    assert snapshot(dest, modes=False, mtimes=False) == snapshot(tmp_path / "gnu", modes=False, mtimes=False)


def test_gnu_tar_agrees_that_the_cut_archives_are_cut(tmp_path):
    if GNU_TAR is None:
        pytest.skip("GNU tar is not installed")
    for name in (n for n in CORPUS if n.startswith("cut-") and not n.endswith(".zst")):  # tar -x needs zstd(1) for .zst
        (tmp_path / name).write_bytes(CORPUS[name])
        assert not _gnu_tar(tmp_path / name, tmp_path / f"x-{name}"), name


# -- the classes of foreign archives beyond compression: each either extracts as its peer does, or is
#    refused in one line that names the entry

UNZIP = shutil.which("unzip")


def _zip(entries: list[tuple[str, bytes]], first: dict | None = None, **info_fields: object) -> bytes:
    """A zip by Python's zipfile; ``info_fields`` set on every entry, ``first`` on the first only."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for i, (name, data) in enumerate(entries):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 2, 3, 4, 5))
            for key, value in {**info_fields, **((first or {}) if i == 0 else {})}.items():
                setattr(info, key, value)
            zf.writestr(info, data)
    return out.getvalue()


def _patched(data: bytes, old: bytes, new: bytes, count: int = -1) -> bytes:
    assert old in data
    return data.replace(old, new, count)


def _flags(data: bytes, clear: int = 0, set_: int = 0) -> bytes:
    """Change general-purpose flag bits in every local and central header, as another maker writes them."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = out.find(signature)
        while at != -1:
            flags = int.from_bytes(out[at + offset : at + offset + 2], "little") & ~clear | set_
            out[at + offset : at + offset + 2] = flags.to_bytes(2, "little")
            at = out.find(signature, at + 4)
    return bytes(out)


def _method(data: bytes, method: int) -> bytes:
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = out.find(signature)
        out[at + offset : at + offset + 2] = method.to_bytes(2, "little")
    return bytes(out)


def _ut_extra(mtime: int) -> bytes:
    return (0x5455).to_bytes(2, "little") + (5).to_bytes(2, "little") + b"\x01" + mtime.to_bytes(4, "little")


def _gnu_types_tar() -> bytes:
    """A GNU dumpdir (D) and a volume label (V) beside a file: GNU tar extracts the folder and the file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tf:
        label = tarfile.TarInfo("backup of 2024")
        label.type = b"V"
        tf.addfile(label)
        dump = tarfile.TarInfo("snap")
        dump.type, dump.mode = b"D", 0o755
        tf.addfile(dump)
        info = tarfile.TarInfo("snap/f.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
    return out.getvalue()


STORED = _zip([("notes.txt", b"stored bytes, not compressed")], compress_type=zipfile.ZIP_STORED)
ZIPS = {
    "dos-date-zero.zip": _zip([("a.txt", b"a")], date_time=(1980, 0, 0, 0, 0, 0)),
    "macos-utf8-names.zip": _flags(_zip([("caf\u00e9/cr\u00e8me.txt", b"x")]), clear=0x800),
    "windows-backslashes.zip": _zip([("dir\\sub\\f.txt", b"x")], create_system=0),
    "msdos-folder-entry.zip": _zip([("folder", b""), ("folder/f.txt", b"x")], {"external_attr": 0x10}, create_system=0),
    "encrypted.zip": _flags(STORED, set_=0x1),
    "deflate64.zip": _method(STORED, 9),
    "bad-crc.zip": _patched(STORED, b"stored bytes", b"STORED bytes"),
    "names-differ.zip": _patched(STORED, b"notes.txt", b"nodes.txt", 1),
}
UNREADABLE = {"encrypted.zip": "is encrypted", "deflate64.zip": "uses a compression Python cannot read",
              "bad-crc.zip": "is damaged", "names-differ.zip": "is damaged"}  # fmt: skip
TARS = {
    "hardlinks-and-order.tar": _tar([("file", "t", b"version 1"), ("link", "h", "t"), ("file", "t", b"version 2!"),
                                     ("sym", "s", "t"), ("link", "hs", "s"), ("sym", "x", "t"),
                                     ("file", "x", b"file wins")], form=tarfile.GNU_FORMAT),  # fmt: skip
    "gnu-dumpdir-and-label.tar": _gnu_types_tar(),
    "file-then-folder.tar": _tar([("file", "a", b"x"), ("dir", "a", None)]),
    "file-then-child.tar": _tar([("file", "a", b"x"), ("file", "a/b", b"y")]),
    "huge-name.tar": _tar([("file", "n" * (1 << 20), b"x"), ("sym", "up", "/etc")]),
    "headers-only.tar": _tar([("dir", "empty", None)]),
    "no-entries.tar": _tar([]),  # what `tar cf x.tar -T /dev/null` makes
}


def _stage(tmp_path: Path, name: str, data: bytes, monkeypatch) -> tuple[Path, Exception | None]:  # type: ignore[no-untyped-def]
    remote = tmp_path / "remote"
    remote.mkdir(exist_ok=True)
    (remote / name).write_bytes(data)
    monkeypatch.setenv("COLAB_MAGICS_REMOTE", str(remote))
    dest = tmp_path / "dest"
    try:
        cm.stage(name, dest)
    except ColabMagicsError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600 and not dest.exists(), str(exc)[:300]
        return dest, exc
    return dest, None


@pytest.mark.parametrize("name", sorted(ZIPS))
def test_zip_from_other_makers(name, tmp_path, monkeypatch):
    dest, error = _stage(tmp_path, name, ZIPS[name], monkeypatch)
    if name in UNREADABLE:
        assert isinstance(error, ColabMagicsError) and UNREADABLE[name] in str(error), error
        assert "'notes.txt'" in str(error) or "'nodes.txt'" in str(error)
        return
    assert error is None, error
    files = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    expected = {"dos-date-zero.zip": {"a.txt"}, "macos-utf8-names.zip": {"caf\u00e9/cr\u00e8me.txt"},
                "windows-backslashes.zip": {"dir/sub/f.txt"}, "msdos-folder-entry.zip": {"folder/f.txt"}}  # fmt: skip
    assert files == expected[name]
    if name == "dos-date-zero.zip":
        assert (dest / "a.txt").stat().st_mtime == 315532800  # 1980-01-01, not a crash
    if name == "msdos-folder-entry.zip":  # unzip 6.0 ignores the MS-DOS folder attribute: it writes
        return  # 'folder' as an empty file, then cannot write folder/f.txt; the folder is what was meant
    if UNZIP is None:
        pytest.skip("unzip is not installed: our tree is not compared")
    peer = tmp_path / "unzip"
    subprocess.run([UNZIP, "-q", str(tmp_path / "remote" / name), "-d", str(peer)], capture_output=True)
    assert snapshot(dest, modes=False, mtimes=False) == snapshot(peer, modes=False, mtimes=False)


def test_zip_modification_time_comes_from_the_ut_extra_field(tmp_path, monkeypatch):
    data = _zip([("t.txt", b"x")], extra=_ut_extra(1_600_000_000))  # the MS-DOS time says 2020-01-02 03:04:05
    dest, error = _stage(tmp_path, "ut.zip", data, monkeypatch)
    assert error is None and (dest / "t.txt").stat().st_mtime == 1_600_000_000
    if UNZIP:
        (tmp_path / "peer").mkdir()
        subprocess.run([UNZIP, "-q", str(tmp_path / "remote" / "ut.zip"), "-d", str(tmp_path / "peer")], check=True)
        assert (tmp_path / "peer" / "t.txt").stat().st_mtime == 1_600_000_000


@pytest.mark.parametrize("name", sorted(TARS))
def test_tar_from_other_makers(name, tmp_path, monkeypatch):
    dest, error = _stage(tmp_path, name, TARS[name], monkeypatch)
    if name.startswith("file-then-"):
        assert isinstance(error, UnsafeArchive) and "has both a file and a folder at 'a" in str(error), error
        return
    if name == "huge-name.tar":  # a name no file system takes: said in a line of bounded length
        assert isinstance(error, ColabMagicsError) and "name too long" in str(error), str(error)[:300]
        return
    assert error is None, error
    if name == "hardlinks-and-order.tar":
        assert (dest / "h").read_bytes() == b"version 1"  # bound when it came, as GNU tar binds it
        assert (dest / "t").read_bytes() == b"version 2!"
        assert (dest / "x").read_bytes() == b"file wins" and not (dest / "x").is_symlink()  # the later entry
        assert os.readlink(dest / "s") == "t" and os.readlink(dest / "hs") == "t"  # a hard link to a symlink
    if GNU_TAR is None:
        pytest.skip("GNU tar is not installed: our tree is not compared")
    assert _gnu_tar(tmp_path / "remote" / name, tmp_path / "gnu")
    assert snapshot(dest, modes=False, mtimes=False) == snapshot(tmp_path / "gnu", modes=False, mtimes=False)


# -- sparse members: holes stay holes, the space check counts the data, PAX 1.0's real size is the size

GiB = 1 << 30
SPARSE_DATA = {4096: b"hello", GiB - 3: b"end"}  # a 1 GiB file holding 8 bytes


def _sparse_file(path: Path) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(GiB)
        for offset, data in SPARSE_DATA.items():
            fh.seek(offset)
            fh.write(data)
    return path


def _pax10_with_size_record() -> bytes:
    """PAX 1.0 sparse as some writers make it: a "size" record (the data's size) beside the real size."""
    blocks = sorted(SPARSE_DATA.items())
    sparse_map = f"{len(blocks)}\n" + "".join(f"{offset}\n{len(data)}\n" for offset, data in blocks)
    head = sparse_map.encode().ljust(512, b"\0")
    body = head + b"".join(data for _, data in blocks)
    info = tarfile.TarInfo("GNUSparseFile.0/sp")
    info.size, info.mtime = len(body), 1_700_000_000
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "sp",
                        "GNU.sparse.realsize": str(GiB), "size": str(len(body))}  # fmt: skip
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(body))
    return out.getvalue()


def _sparse_archives(tmp_path: Path) -> dict[str, bytes]:
    archives = {"pax-1.0-with-size-record.tar": _pax10_with_size_record()}
    if GNU_TAR is None:
        return archives
    work = tmp_path / "sparse-src"
    work.mkdir()
    _sparse_file(work / "sp")
    for form, flags in {"gnu": ["--format=gnu"], "pax-0.0": ["--format=pax", "--sparse-version=0.0"],
                        "pax-0.1": ["--format=pax", "--sparse-version=0.1"],
                        "pax-1.0": ["--format=pax", "--sparse-version=1.0"]}.items():  # fmt: skip
        out = tmp_path / f"{form}.tar"
        subprocess.run([GNU_TAR, "--sparse", *flags, "-cf", str(out), "-C", str(work), "sp"], check=True)
        archives[f"{form}.tar"] = out.read_bytes()
    return archives


def test_sparse_members_stay_sparse_and_fit_a_small_disk(tmp_path, small_disk, monkeypatch):
    """A 1 GiB sparse file (8 bytes of data) staged onto a 24 MiB disk, as GNU tar leaves it."""
    archives = _sparse_archives(tmp_path)
    if GNU_TAR is None:
        print("GNU tar is not installed: only the crafted PAX 1.0 archive is tried")
    remote = tmp_path / "remote"
    remote.mkdir()
    monkeypatch.setenv("COLAB_MAGICS_REMOTE", str(remote))
    for name, data in archives.items():
        (remote / name).write_bytes(data)
        dest = small_disk / name
        cm.stage(name, dest)
        st = os.stat(dest / "sp")
        assert st.st_size == GiB and st.st_blocks * 512 <= 1 << 20, (name, st.st_size, st.st_blocks)
        with open(dest / "sp", "rb") as fh:
            for offset, expected in SPARSE_DATA.items():
                fh.seek(offset)
                assert fh.read(len(expected)) == expected, name
        shutil.rmtree(dest)
