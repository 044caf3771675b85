"""Safe extraction of tar streams and zip files into a folder of our own.

No entry may land outside the root: absolute paths, ``..``, symlinks or hard links that point
outside, and device or fifo entries are refused with :class:`UnsafeArchive`.  Links are created
only at the end, after every file is written, so no write can go through a link from the same
archive.  Each member's declared size is checked against free disk space first, so a
compression bomb or a full disk stops early with a plain message.
"""

from __future__ import annotations

import bz2
import calendar
import contextlib
import errno
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, cast

from ..errors import ColabMagicsError, UnsafeArchive, UnsupportedArchive, VerificationError
from ..streams import Readable

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

CHUNK = 1 << 20
_DISK_MARGIN = 64 << 20  # kept free (at most 5% of a small disk)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class DiskFull(ColabMagicsError):
    """Not enough local disk space for what is being extracted."""


def safe_relpath(name: str, what: str = "archive") -> str:
    """Normalized relative path of an entry, or :class:`UnsafeArchive`."""
    if "\x00" in name:
        raise UnsafeArchive(f"{what} entry {shown(name)} has a NUL byte in its name; refusing to extract")
    cleaned = name.replace("\\", "/") if os.sep == "\\" else name
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":" and os.name == "nt"):
        raise UnsafeArchive(f"{what} entry {shown(name)} is an absolute path; refusing to extract")
    parts = [p for p in cleaned.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what} entry {shown(name)} climbs out with '..'; refusing to extract")
    return "/".join(parts)


def check_symlink(rel: str, target: str, what: str) -> None:
    """Refuse a symlink at ``rel`` whose ``target`` is absolute or leads outside the root."""
    if target.startswith("/") or "\x00" in target:
        raise UnsafeArchive(f"{what} symlink {shown(rel)} points to an absolute path {shown(target)}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(f"{what} symlink {shown(rel)} -> {shown(target)} points outside the destination")


def check_links_resolve_inside(root: Path, links: list[tuple[str, str]], what: str) -> None:
    """Judge every symlink on the real tree: followed through the other links in it (``cur -> .``
    then ``par -> cur/..``), it must still land inside ``root``.  A textual check cannot see a chain."""
    real_root = os.path.realpath(root)
    for rel, target in links:
        resolved = os.path.realpath(os.path.join(root, rel))
        if resolved != real_root and not resolved.startswith(real_root + os.sep):
            raise UnsafeArchive(
                f"{what} symlink {shown(rel)} -> {shown(target)} leads outside the destination through the links "
                "beside it; refusing to extract"
            )


class Extractor:
    """Writes entries under ``root`` (a fresh folder of ours), deferring links to :meth:`finish`."""

    def __init__(self, root: Path, what: str = "archive") -> None:
        self.root = root
        self.what = what
        self._real_root = os.path.realpath(root)
        self._dirs: dict[str, int] = {}
        self._made: set[str] = {""}
        self._links: dict[str, str] = {}  # symlinks, made last, in archive order
        self._hardlinks: list[tuple[str, str]] = []  # hard links to symlinks, made after them
        self._budget = 0

    def _parent_ready(self, rel: str) -> str:
        parent = posixpath.dirname(rel)
        if parent not in self._made:
            full = os.path.join(self.root, parent)
            os.makedirs(full, exist_ok=True)
            real = os.path.realpath(full)
            if not (real + os.sep).startswith(self._real_root + os.sep):
                raise UnsafeArchive(f"{self.what} entry {shown(rel)} would be written outside the destination")
            self._made.add(parent)
        return os.path.join(self.root, rel)

    def check_space(self, size: int) -> None:
        """Refuse an entry that cannot fit; ``statvfs`` is asked again only when a budget runs out."""
        if size <= self._budget:
            self._budget -= size
            return
        usage = shutil.disk_usage(self.root)
        free, margin = usage.free, min(_DISK_MARGIN, usage.total // 20)
        if size + margin > free:
            raise DiskFull(
                f"not enough disk space in {self.root.parent}: an entry needs {size:,} bytes, "
                f"{free:,} are free; free some space or stage to a larger disk"
            )
        self._budget = (free - margin - size) // 4  # parallel writers share the disk

    def write_file(
        self,
        rel: str,
        data: Readable,
        size: int,
        mode: int,
        mtime_ns: int | None,
        *,
        offset: int | None = None,
        hashed: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> str:
        """Write ``size`` bytes of ``data`` to ``rel`` (at ``offset`` for a segment);
        returns the SHA-256 if ``hashed``."""
        self.check_space(size)
        digest = hashlib.sha256() if hashed else None
        with self._opened(rel, truncate=offset is None) as fd:
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
            self._copy(fd, data, size, rel, digest, on_bytes)
            os.fchmod(fd, mode & 0o777)
            if mtime_ns is not None and offset is None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        return digest.hexdigest() if digest is not None else ""

    def write_sparse(
        self,
        rel: str,
        data: IO[bytes],
        blocks: list[tuple[int, int]],
        size: int,
        mode: int,
        mtime_ns: int,
    ) -> None:
        """A sparse member (GNU or PAX 0.0, 0.1, 1.0): only its data blocks are written, at their
        offsets, and its holes stay holes, as GNU tar leaves them; the space check counts the data."""
        self.check_space(sum(length for _, length in blocks))
        with self._opened(rel, truncate=True) as fd:
            for offset, length in blocks:
                data.seek(offset)
                os.lseek(fd, offset, os.SEEK_SET)
                self._copy(fd, data, length, rel, None, None)
            os.ftruncate(fd, size)
            os.fchmod(fd, mode & 0o777)
            os.utime(fd, ns=(mtime_ns, mtime_ns))

    @contextlib.contextmanager
    def _opened(self, rel: str, truncate: bool) -> Iterator[int]:
        """``rel`` open for writing, never through a link; a full disk is said in one line."""
        path = self._parent_ready(rel)
        try:
            fd = os.open(path, _WRITE_FLAGS | (os.O_TRUNC if truncate else 0), 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeArchive(f"{self.what} entry {shown(rel)} would be written through a link") from exc
            raise
        try:
            yield fd
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull(f"the disk holding {self.root.parent} is full; free some space and stage again") from exc
            raise
        finally:
            os.close(fd)

    def _copy(
        self, fd: int, data: Readable, length: int, rel: str, digest: Any, on_bytes: Callable[[int], None] | None
    ) -> None:
        """``length`` bytes of ``data`` to ``fd`` at its position (hashed into ``digest`` if given)."""
        left = length
        while left > 0:
            chunk = data.read(min(CHUNK, left))
            if not chunk:
                raise EOFError(f"{self.what} entry {shown(rel)} is truncated")
            if digest is not None:
                digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            left -= len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))

    def add_dir(self, rel: str, mode: int) -> None:
        self._links.pop(rel, None)  # a later folder entry replaces an earlier symlink
        if rel:
            self._parent_ready(rel + "/x")
            self._dirs[rel] = mode & 0o777

    def add_symlink(self, rel: str, target: str) -> None:
        check_symlink(rel, target, self.what)
        self._links.pop(rel, None)
        self._links[rel] = target

    def claim(self, rel: str) -> None:
        """A later entry of an archive takes ``rel``: an earlier symlink there is dropped, and an earlier
        file is unlinked (hard links to it keep that version, as GNU tar gives them)."""
        self._links.pop(rel, None)
        path = os.path.join(self.root, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            raise UnsafeArchive(f"{self.what} has both a folder and a file at {shown(rel)}; refusing to extract")
        if os.path.lexists(path):
            os.unlink(path)

    def add_hardlink(self, rel: str, target: str) -> None:
        """A hard link binds to its target as the archive holds it at this point (a later rewrite of
        the target does not change it); a link to a symlink is made once the symlinks exist."""
        target = safe_relpath(target, self.what)
        if target in self._links:
            self._hardlinks.append((rel, target))
            return
        src = os.path.join(self.root, target)
        if not os.path.isfile(src) or os.path.islink(src):
            raise UnsafeArchive(f"{self.what} hard link {shown(rel)} -> {shown(target)} has no file to link to")
        self.claim(rel)
        os.link(src, self._parent_ready(rel))

    def finish(self) -> None:
        """Create the deferred links, then give folders their modes (last, in case one is read-only)."""
        for rel, target in self._links.items():
            dst = self._parent_ready(rel)
            if os.path.isdir(dst) and not os.path.islink(dst):
                raise UnsafeArchive(f"{self.what} has both a folder and a symlink at {shown(rel)}; refusing to extract")
            if os.path.lexists(dst):
                os.unlink(dst)
            os.symlink(target, dst)
        for rel, target in self._hardlinks:
            dst = self._parent_ready(rel)
            if os.path.lexists(dst):
                os.unlink(dst)
            os.link(os.path.join(self.root, target), dst, follow_symlinks=False)
        for rel, mode in sorted(self._dirs.items(), reverse=True):
            os.chmod(os.path.join(self.root, rel), mode | stat.S_IRWXU)


def extract_tar(stream: Readable, ex: Extractor) -> int:
    """Extract a whole tar stream (plain or compressed: gzip, bzip2, xz, zstd, found by their magic
    bytes) into ``ex``; returns the number of files written.  The compressed stream is read to its
    very end, every member, stream or frame of it, so an archive cut short is an error, not a
    shorter tree."""
    data = decompressed(stream, ex.what)
    try:
        with tarfile.open(fileobj=data, mode="r|", bufsize=CHUNK) as tf:
            files = _extract_members(tf, ex)
        while data.read(CHUNK):  # what follows the tar's end: padding, and the end markers to check
            pass
    except (EOFError, OSError, lzma.LZMAError, zlib.error, tarfile.TarError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the local disk, not the archive
        raise VerificationError(
            f"{ex.what} is cut short or damaged ({exc}); "
            "the file on the remote is incomplete, or not the kind of archive its name says"
        ) from exc
    ex.finish()
    return files


class _Prefixed(io.RawIOBase):
    """A stream with its first bytes read already (to find the compression) put back in front."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def decompressed(stream: Readable, what: str) -> IO[bytes]:
    """The bytes of ``stream`` decompressed, by its magic bytes (names lie), with every member read:
    Python's gzip, bz2 and lzma readers take multi-member files (pigz, pbzip2, ``cat a.gz b.gz``) and
    raise where the data stops before an end marker; zstd frames are checked by :class:`_ZstdFrames`."""
    head = b""
    while len(head) < 6:
        more = stream.read(6 - len(head))
        if not more:
            break
        head += more
    raw = io.BufferedReader(_Prefixed(head, stream), CHUNK)
    opened: io.IOBase = raw
    if head.startswith(b"\x1f\x8b"):
        opened = gzip.GzipFile(fileobj=raw, mode="rb")
    elif head.startswith(b"BZh"):
        opened = bz2.BZ2File(raw)
    elif head.startswith(b"\xfd7zXZ\x00"):
        opened = lzma.LZMAFile(raw)
    elif head.startswith(b"\x28\xb5\x2f\xfd"):
        opened = _ZstdFrames(raw, what)
    return cast(IO[bytes], opened)  # every one of them reads bytes, which is all tarfile asks


class _ZstdFrames(io.RawIOBase):
    """zstd-decompressed bytes of every frame, with memory bounded (zstandard's stream reader), and
    the frame structure followed alongside, block by block, because that reader takes the end of
    the input for the end of the data: a frame cut short raises :class:`EOFError`."""

    def __init__(self, raw: IO[bytes], what: str) -> None:
        import zstandard

        self._watch = _FrameWatch()
        self._raw = raw
        tee = cast(IO[bytes], _Tee(raw, self._watch.feed))  # zstandard reads it with read() alone
        self._reader = zstandard.ZstdDecompressor().stream_reader(tee, read_size=CHUNK, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        n = self._reader.readinto(buffer)
        if n == 0 and not self._watch.complete():
            raise EOFError("the zstd data ends inside a frame")
        return n


class _Tee:
    """Reads through to ``raw`` and shows every byte read to ``see``."""

    def __init__(self, raw: Readable, see: Callable[[bytes], None]) -> None:
        self._raw = raw
        self._see = see

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._see(data)
        return data


class _Field(Enum):
    """The field of a zstd frame the follower reads next."""

    MAGIC = "magic number"
    SKIPPABLE_SIZE = "skippable frame size"
    DESCRIPTOR = "frame header descriptor"
    HEADER = "rest of the frame header"  # its width is read from the descriptor
    BLOCK_HEADER = "block header"


_WIDTH = {_Field.MAGIC: 4, _Field.SKIPPABLE_SIZE: 4, _Field.DESCRIPTOR: 1, _Field.BLOCK_HEADER: 3}


class _FrameWatch:
    """Follows zstd's frame format (RFC 8878) over the compressed bytes: headers, block sizes,
    checksums and skippable frames, skipping the contents; complete only between two frames."""

    def __init__(self) -> None:
        self._need = 0  # bytes to skip before the next header
        self._header_size = 0
        self._buf = b""
        self._state = _Field.MAGIC
        self._checksum = False

    def complete(self) -> bool:
        return self._state is _Field.MAGIC and self._need == 0 and not self._buf

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._need:
                step = min(self._need, len(view))
                self._need -= step
                view = view[step:]
                continue
            want = self._header_size if self._state is _Field.HEADER else _WIDTH[self._state]
            take = min(want - len(self._buf), len(view))
            self._buf += bytes(view[:take])
            view = view[take:]
            if len(self._buf) == want:
                buf, self._buf = self._buf, b""
                self._advance(buf)

    def _advance(self, buf: bytes) -> None:
        if self._state is _Field.MAGIC:
            magic = int.from_bytes(buf, "little")
            if 0x184D2A50 <= magic <= 0x184D2A5F:
                self._state = _Field.SKIPPABLE_SIZE
            elif magic == 0xFD2FB528:
                self._state = _Field.DESCRIPTOR
            else:
                raise EOFError(f"not a zstd frame (magic {magic:#x})")
        elif self._state is _Field.SKIPPABLE_SIZE:
            self._need = int.from_bytes(buf, "little")
            self._state = _Field.MAGIC
        elif self._state is _Field.DESCRIPTOR:
            d = buf[0]
            fcs_flag, single, did_flag = d >> 6, (d >> 5) & 1, d & 3
            self._checksum = bool((d >> 2) & 1)
            fcs = (1 if single else 0, 2, 4, 8)[fcs_flag]
            self._header_size = (0 if single else 1) + (0, 1, 2, 4)[did_flag] + fcs
            self._state = _Field.HEADER if self._header_size else _Field.BLOCK_HEADER
        elif self._state is _Field.HEADER:
            self._state = _Field.BLOCK_HEADER
        elif self._state is _Field.BLOCK_HEADER:
            header = int.from_bytes(buf, "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            self._need = 1 if kind == 1 else size  # an RLE block holds one byte
            if last:
                self._need += 4 if self._checksum else 0
                self._state = _Field.MAGIC


_SKIPPED_TYPES = (b"V", b"A", b"M", b"N")  # volume label, Solaris ACL, multi-volume and old GNU names: metadata
_REFUSED_TYPES = (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)


def _extract_members(tf: tarfile.TarFile, ex: Extractor) -> int:
    """Every member in archive order: a later entry at a path replaces an earlier one, as GNU tar does."""
    files = 0
    for member in tf:
        rel = safe_relpath(member.name, ex.what)
        with _conflicts(ex, rel):
            if member.isdir() or member.type == b"D":  # D: a GNU dumpdir, a folder with its listing
                ex.add_dir(rel, member.mode)
            elif member.issym():
                ex.add_symlink(rel, member.linkname)
            elif member.islnk():
                ex.add_hardlink(rel, member.linkname)
            elif member.type in _SKIPPED_TYPES:
                continue
            elif member.type in _REFUSED_TYPES:
                raise UnsafeArchive(f"{ex.what} entry {shown(member.name)} is a device or fifo; refusing to extract")
            else:  # regular files, and unknown types, which GNU tar extracts as regular files
                if not rel:
                    raise UnsafeArchive(f"{ex.what} has a file entry with an empty name")
                ex.claim(rel)
                if member.sparse is not None:
                    # PAX 1.0 keeps the real size apart; a "size" record beside it is the data's size,
                    # which Python's tarfile would take for the file's
                    member.size = int(member.pax_headers.get("GNU.sparse.realsize", member.size))
                fileobj = tf.extractfile(member)
                assert fileobj is not None
                mtime = int(member.mtime * 1e9)
                if member.sparse is not None:  # its raw reader seeks over the holes, which a stream cannot
                    raw = cast(IO[bytes], getattr(fileobj, "raw"))  # tarfile's reader of the member's blocks
                    blocks = cast("list[tuple[int, int]]", member.sparse)  # (typeshed says bytes)
                    ex.write_sparse(rel, raw, blocks, member.size, member.mode, mtime)
                else:
                    ex.write_file(rel, fileobj, member.size, member.mode, mtime)
                files += 1
    return files


@contextlib.contextmanager
def _conflicts(ex: Extractor, rel: str) -> Iterator[None]:
    """An entry that meets a file where a folder must be (or the reverse), or whose name no file
    system takes, is refused in one line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise UnsafeArchive(
                f"{ex.what} has both a file and a folder at {shown(rel)} (or above it); refusing to extract"
            ) from exc
        if exc.errno == errno.ENAMETOOLONG:
            raise UnsupportedArchive(f"{ex.what} entry {shown(rel)} has a name too long for this file system") from exc
        raise


def shown(name: str, limit: int = 120) -> str:
    """A name as messages show it: quoted, and cut short (a 1 MiB name must not flood the output)."""
    return repr(name) if len(name) <= limit else repr(name[:limit]) + f"... ({len(name):,} characters)"


def extract_zip(path: Path, ex: Extractor) -> int:
    """Extract a zip file into ``ex`` in archive order; symlinks stored by Unix zip tools are honoured
    safely.  An entry Python's zipfile cannot read (encrypted, deflate64, a bad CRC) is refused in one
    line that names it."""
    files = 0
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise UnsupportedArchive(f"{ex.what} is not a readable zip file ({exc})") from exc
    with zf:
        ex.check_space(sum(i.file_size for i in zf.infolist()))
        for info in zf.infolist():
            name = _zip_name(info)
            rel = safe_relpath(name, ex.what)
            unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0
            kind = stat.S_IFMT(unix_mode)
            with _conflicts(ex, rel), _unreadable(ex, name):
                windows_folder = info.create_system in _WINDOWS_MAKERS and info.external_attr & 0x10
                if info.is_dir() or name.endswith("/") or windows_folder:
                    ex.add_dir(rel, stat.S_IMODE(unix_mode) or 0o755)
                elif kind == stat.S_IFLNK:
                    ex.add_symlink(rel, zf.read(info).decode("utf-8", "surrogateescape"))
                elif kind not in (0, stat.S_IFREG):
                    raise UnsafeArchive(f"{ex.what} entry {shown(name)} is a device or fifo; refusing to extract")
                else:
                    ex.claim(rel)
                    with zf.open(info) as fileobj:
                        mode = stat.S_IMODE(unix_mode) or 0o644
                        ex.write_file(rel, fileobj, info.file_size, mode, _zip_mtime(info))
                    files += 1
    ex.finish()
    return files


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The entry's name as its maker meant it: UTF-8 without the flag that says so (macOS's zip),
    and ``\\`` as the separator in a zip made on MS-DOS or Windows (as unzip reads them)."""
    name = info.filename
    if not info.flag_bits & 0x800:
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    if info.create_system in _WINDOWS_MAKERS:
        name = name.replace("\\", "/")
    return name


_WINDOWS_MAKERS = (0, 6, 11, 14)  # MS-DOS (FAT), OS/2 HPFS, NTFS, VFAT: "\\" separates, and 0x10 marks a folder


def _zip_mtime(info: zipfile.ZipInfo) -> int:
    """Modification time (ns): the UT extra field's Unix time where there is one (the MS-DOS time
    is the maker's local time), else the MS-DOS time read as UTC; a date of 0 is 1980-01-01."""
    extra = info.extra
    while len(extra) >= 4:
        kind, size = int.from_bytes(extra[:2], "little"), int.from_bytes(extra[2:4], "little")
        body = extra[4 : 4 + size]
        if kind == 0x5455 and len(body) >= 5 and body[0] & 1:
            return int.from_bytes(body[1:5], "little", signed=True) * 10**9
        extra = extra[4 + size :]
    year, month, day, hour, minute, second = info.date_time
    return calendar.timegm((year, max(month, 1), max(day, 1), hour, minute, second, 0, 0, -1)) * 10**9


@contextlib.contextmanager
def _unreadable(ex: Extractor, name: str) -> Iterator[None]:
    """What zipfile cannot read, said in one line that names the entry."""
    entry = f"{ex.what} entry {shown(name)}"
    try:
        yield
    except ColabMagicsError:
        raise
    except NotImplementedError as exc:  # a RuntimeError too: first
        raise UnsupportedArchive(
            f"{entry} uses a compression Python cannot read ({exc}); re-zip it with deflate"
        ) from exc
    except RuntimeError as exc:
        if "encrypted" in str(exc):
            raise UnsupportedArchive(f"{entry} is encrypted; stage a zip made without a password") from exc
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise VerificationError(f"{entry} is damaged ({exc}); the zip on the remote is broken") from exc
