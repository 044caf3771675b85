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
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from trees import snapshot

import colab_magics as cm
from colab_magics.errors import ColabMagicsError, UnsafeArchive, VerificationError

GNU_TAR = shutil.which("tar")


def _tar(entries: list[tuple[str, str, object]], eof: bool = True) -> bytes:
    """A tar made by Python's tarfile; ``eof=False`` leaves out the end-of-archive blocks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
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
                info.type, info.linkname = tarfile.SYMTYPE, str(arg)
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
