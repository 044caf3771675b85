"""Writing tar parts: planning which file bytes go in which part, and streaming a part out.

The stream is written directly (``TarInfo.tobuf`` for headers) rather than through
``tarfile``'s stream mode, whose buffer handling costs more than the data for small files.

Parts are deterministic for the same files (sorted order, uid/gid 0, whole-second mtimes), so a
part whose files did not change can be kept on the remote as it is.  Each file is read once:
its SHA-256 is computed while it streams into the part, and its ``stat`` after reading must
equal the one planned with, or the file was changing and is reported instead of recorded.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from dataclasses import dataclass
from typing import IO, Callable

from ..errors import BadInput, SourceChanged
from ..local.tree import FileStat
from ..streams import Writable

BLOCK = 512
CHUNK = 4 << 20  # large reads: fewer hand-offs of the interpreter lock with a busy training thread
_END = 2 * BLOCK + 20 * BLOCK  # end-of-archive blocks plus record padding


@dataclass(frozen=True)
class Piece:
    """``length`` bytes of ``file`` from ``offset``: one tar member of a part."""

    file: FileStat
    offset: int
    length: int

    @property
    def whole(self) -> bool:
        return self.offset == 0 and self.length == self.file.size


def _round(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _header(path: str) -> int:
    raw = os.fsencode(path)
    simple = len(raw) <= 100 and raw.isascii()
    return BLOCK if simple else 3 * BLOCK + _round(len(raw) + 64)


MAX_MEMBERS = 1000


def plan(files: list[FileStat], part_size: int, max_members: int = MAX_MEMBERS) -> list[list[Piece]]:
    """Group files into parts of at most ``part_size`` bytes and ``max_members`` files.

    Larger files are split.  The member cap keeps many small files in several parts, which
    stage downloads and extracts in parallel and resumes part by part.
    """
    if part_size < 64 * 1024:
        raise BadInput(f"part size {part_size:,} bytes is too small; use at least 64 KiB (default 4 GiB)")
    parts: list[list[Piece]] = [[]]
    used = _END
    for f in files:
        cost = _header(f.path) + _round(f.size)
        if len(parts[-1]) >= max_members:
            parts.append([])
            used = _END
        if used + cost <= part_size:
            parts[-1].append(Piece(f, 0, f.size))
            used += cost
            continue
        if parts[-1]:
            parts.append([])
            used = _END
        offset = 0
        while True:
            room = (part_size - used - _header(f.path)) // BLOCK * BLOCK
            take = min(f.size - offset, room)
            parts[-1].append(Piece(f, offset, take))
            used += _header(f.path) + _round(take)
            offset += take
            if offset >= f.size:
                break
            parts.append([])
            used = _END
    return [p for p in parts if p] or [[]]


class _Slice:
    """Reads ``length`` bytes of an open file from its position, hashing them.

    A file that shrank is padded with zeros (and flagged) so that the tar stream stays valid.
    """

    def __init__(self, fh: IO[bytes], length: int, digest: hashlib._Hash) -> None:
        self.fh = fh
        self.left = length
        self.digest = digest
        self.short = False

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n)
        if len(data) < n:
            self.short = True
            data += bytes(n - len(data))
        self.left -= len(data)
        self.digest.update(data)
        return data


GROWTH_SLACK = 4 << 20  # a whole file may have grown this much since the scan (logs) and still fit its part


def write_part(
    pieces: list[Piece],
    root: str,
    sink: Writable,
    digests: dict[str, hashlib._Hash],
    on_bytes: Callable[[int], None] | None = None,
    tolerant: bool = False,
    taken: dict[str, FileStat] | None = None,
) -> list[str]:
    """Stream ``pieces`` as one tar into ``sink``; returns the paths that changed while being read.

    A file counts as changed if it changes while it is read, or differs from the scan when it
    is opened.  With ``tolerant`` (persist), a whole file that only grew a little since the
    scan, as a log does, is taken as it is when opened: that ``fstat`` goes into the part and
    into ``taken``.  A file that shrank (a rewrite in progress) is always left out.  ``digests`` carries each file's
    SHA-256 across parts.  A file that vanished is skipped when ``tolerant``, else it is a
    :class:`SourceChanged`.
    """
    changed: list[str] = []
    out = _Batch(sink)
    for piece in pieces:
        f = piece.file
        path = os.path.join(root, f.path)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            if not tolerant:
                raise SourceChanged(f"{path} disappeared while it was being packed; push again", [f.path]) from None
            changed.append(f.path)
            continue
        with fh:
            st0 = os.fstat(fh.fileno())
            if piece.whole and st0.st_size <= CHUNK:  # small: read whole, retried until stable
                small = _stable_read(fh, st0, tries=3 if tolerant else 1)
                if small is None or not _acceptable(f, small[1], tolerant):
                    changed.append(f.path)  # nothing sent: left for the next sync
                    continue
                data, st = small
                now = FileStat(f.path, st.st_size, f.mode, st.st_mtime_ns)
                out.write(_tar_header(f.path, now))
                digests.setdefault(f.path, hashlib.sha256()).update(data)
                out.write(data)
                out.write(bytes(-len(data) % BLOCK))
                if taken is not None:
                    taken[f.path] = now
                if on_bytes is not None:
                    on_bytes(len(data))
                continue
            now = FileStat(f.path, st0.st_size, f.mode, st0.st_mtime_ns)
            if not _acceptable(f, st0, tolerant and piece.whole):
                changed.append(f.path)  # rewritten since the scan: left for the next sync, nothing sent
                continue
            length = now.size if piece.whole else piece.length
            out.write(_tar_header(f.path, FileStat(f.path, length, f.mode, now.mtime_ns)))
            reader = _Slice(fh, length, digests.setdefault(f.path, hashlib.sha256()))
            fh.seek(piece.offset)
            st = st0
            while reader.left:
                data = reader.read(CHUNK)
                if not reader.left:  # before the (possibly blocking) write: the read is what must be stable
                    st = os.fstat(fh.fileno())
                out.write(data)
        out.write(bytes(-length % BLOCK))
        if reader.short or (st.st_size, st.st_mtime_ns) != (now.size, now.mtime_ns):
            changed.append(f.path)
        elif taken is not None:
            taken[f.path] = now
        if on_bytes is not None:
            on_bytes(length)
    out.write(bytes(2 * BLOCK))  # end of archive
    out.write(bytes(-out.count % tarfile.RECORDSIZE))
    out.flush()
    return changed


def _tar_header(path: str, st: FileStat) -> bytes:
    info = tarfile.TarInfo(path)
    info.size = st.size
    info.mode = st.mode
    info.mtime = st.mtime_ns // 10**9
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _acceptable(planned: FileStat, st: os.stat_result, grown_ok: bool) -> bool:
    """Unchanged since the scan, or (persist) only grown a little, as a log does."""
    if (st.st_size, st.st_mtime_ns) == (planned.size, planned.mtime_ns):
        return True
    return grown_ok and planned.size <= st.st_size <= planned.size + GROWTH_SLACK


# A file written this recently may be in the middle of a rewrite whose writer is paused between two
# writes (a training loop's json.dump flushes 8 KiB at a time, and the interpreter or the OS may hold
# it there): its size and time stand still while it is read, and a prefix would pass for the file.
QUIET_NS = 50_000_000


def _settled(fh: IO[bytes], st: os.stat_result) -> os.stat_result:
    """``st``, or a fresh ``fstat`` once the file has been left alone for :data:`QUIET_NS`: a writer
    paused mid-rewrite gets that long to go on, and then shows as changed."""
    young = time.time_ns() - st.st_mtime_ns
    if 0 <= young < QUIET_NS:
        time.sleep((QUIET_NS - young) / 1e9)
        return os.fstat(fh.fileno())
    return st


def _stable_read(fh: IO[bytes], st0: os.stat_result, tries: int) -> tuple[bytes, os.stat_result] | None:
    """The whole content of a small open file, read while its ``fstat`` did not move, and accepted once
    it has stayed as read for a moment if it was just written (:func:`_settled`): a writer paused in the
    middle of a rewrite gets that moment to go on, and then shows as moved.  The last of several tries
    takes a stable read as it stands: a file that never stays (a log appended every millisecond) is
    then a true earlier state of itself.  The read comes first, so a file rewritten often still matches
    the scan that planned it."""
    for attempt in range(tries):
        fh.seek(0)
        data = fh.read(st0.st_size + 1)
        st1 = os.fstat(fh.fileno())
        if len(data) == st0.st_size and (st1.st_size, st1.st_mtime_ns) == (st0.st_size, st0.st_mtime_ns):
            if tries > 1 and attempt == tries - 1:
                return data, st1
            settled = _settled(fh, st1)
            if (settled.st_size, settled.st_mtime_ns) == (st1.st_size, st1.st_mtime_ns):
                return data, st1
            st1 = settled
        st0 = st1
    return None


class _Batch:
    """Coalesces the many small writes of a tar stream (headers, padding) into large ones."""

    def __init__(self, sink: Writable, size: int = CHUNK) -> None:
        self.sink = sink
        self.size = size
        self.count = 0
        self._parts: list[bytes] = []
        self._pending = 0

    def write(self, data: bytes) -> None:
        self.count += len(data)
        self._parts.append(data)
        self._pending += len(data)
        if self._pending >= self.size:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self.sink.write(b"".join(self._parts))
            self._parts, self._pending = [], 0
