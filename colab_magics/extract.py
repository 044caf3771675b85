"""Safe extraction of tar streams and zip files into a folder of our own.

No entry may land outside the root: absolute paths, ``..``, symlinks or hard links that point
outside, and device or fifo entries are refused with :class:`UnsafeArchive`.  Links are created
only at the end, after every file is written, so no write can go through a link from the same
archive.  Each member's declared size is checked against free disk space first, so a
compression bomb or a full disk stops early with a plain message.
"""

from __future__ import annotations

import calendar
import errno
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Callable

from .errors import ColabMagicsError, UnsafeArchive

CHUNK = 1 << 20
_DISK_MARGIN = 64 << 20  # kept free (at most 5% of a small disk)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class DiskFull(ColabMagicsError):
    """Not enough local disk space for what is being extracted."""


def safe_relpath(name: str, what: str = "archive") -> str:
    """Normalized relative path of an entry, or :class:`UnsafeArchive`."""
    if "\x00" in name:
        raise UnsafeArchive(f"{what} entry {name!r} has a NUL byte in its name; refusing to extract")
    cleaned = name.replace("\\", "/") if os.sep == "\\" else name
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":" and os.name == "nt"):
        raise UnsafeArchive(f"{what} entry {name!r} is an absolute path; refusing to extract")
    parts = [p for p in cleaned.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what} entry {name!r} climbs out with '..'; refusing to extract")
    return "/".join(parts)


def check_symlink(rel: str, target: str, what: str) -> None:
    """Refuse a symlink at ``rel`` whose ``target`` is absolute or leads outside the root."""
    if target.startswith("/") or "\x00" in target:
        raise UnsafeArchive(f"{what} symlink {rel!r} points to an absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(f"{what} symlink {rel!r} -> {target!r} points outside the destination")


class Extractor:
    """Writes entries under ``root`` (a fresh folder of ours), deferring links to :meth:`finish`."""

    def __init__(self, root: Path, what: str = "archive") -> None:
        self.root = root
        self.what = what
        self._real_root = os.path.realpath(root)
        self._dirs: dict[str, int] = {}
        self._made: set[str] = {""}
        self._links: list[tuple[str, str]] = []
        self._hardlinks: list[tuple[str, str]] = []
        self._budget = 0

    def _parent_ready(self, rel: str) -> str:
        parent = posixpath.dirname(rel)
        if parent not in self._made:
            full = os.path.join(self.root, parent)
            os.makedirs(full, exist_ok=True)
            real = os.path.realpath(full)
            if not (real + os.sep).startswith(self._real_root + os.sep):
                raise UnsafeArchive(f"{self.what} entry {rel!r} would be written outside the destination")
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
        data: IO[bytes],
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
        path = self._parent_ready(rel)
        digest = hashlib.sha256() if hashed else None
        flags = _WRITE_FLAGS | (0 if offset is not None else os.O_TRUNC)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeArchive(f"{self.what} entry {rel!r} would be written through a link") from exc
            raise
        try:
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
            left = size
            while left > 0:
                chunk = data.read(min(CHUNK, left))
                if not chunk:
                    raise EOFError(f"{self.what} entry {rel!r} is truncated")
                if digest is not None:
                    digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                left -= len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
            os.fchmod(fd, mode & 0o777)
            if mtime_ns is not None and offset is None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull(f"the disk holding {self.root.parent} is full; free some space and stage again") from exc
            raise
        finally:
            os.close(fd)
        return digest.hexdigest() if digest is not None else ""

    def add_dir(self, rel: str, mode: int) -> None:
        if rel:
            self._parent_ready(rel + "/x")
            self._dirs[rel] = mode & 0o777

    def add_symlink(self, rel: str, target: str) -> None:
        check_symlink(rel, target, self.what)
        self._links.append((rel, target))

    def add_hardlink(self, rel: str, target: str) -> None:
        self._hardlinks.append((rel, safe_relpath(target, self.what)))

    def finish(self) -> None:
        """Create the deferred links, then give folders their modes (last, in case one is read-only)."""
        for rel, target in self._hardlinks:
            src = os.path.join(self.root, target)
            if not os.path.isfile(src) or os.path.islink(src):
                raise UnsafeArchive(f"{self.what} hard link {rel!r} -> {target!r} has no file to link to")
            dst = self._parent_ready(rel)
            if os.path.lexists(dst):
                os.unlink(dst)
            os.link(src, dst)
        for rel, target in self._links:
            dst = self._parent_ready(rel)
            if os.path.lexists(dst):
                os.unlink(dst)
            os.symlink(target, dst)
        for rel, mode in sorted(self._dirs.items(), reverse=True):
            os.chmod(os.path.join(self.root, rel), mode | stat.S_IRWXU)


def extract_tar(stream: IO[bytes], ex: Extractor, on_bytes: Callable[[int], None] | None = None) -> int:
    """Extract a whole tar stream into ``ex``; returns the number of files written."""
    files = 0
    with tarfile.open(fileobj=stream, mode="r|*", bufsize=CHUNK) as tf:
        files = _extract_members(tf, ex, on_bytes)
    ex.finish()
    return files


def _extract_members(tf: tarfile.TarFile, ex: Extractor, on_bytes: Callable[[int], None] | None) -> int:
    files = 0
    for member in tf:
        rel = safe_relpath(member.name, ex.what)
        if member.isdir():
            ex.add_dir(rel, member.mode)
        elif member.isreg():
            if not rel:
                raise UnsafeArchive(f"{ex.what} has a file entry with an empty name")
            fileobj = tf.extractfile(member)
            assert fileobj is not None
            mtime = int(member.mtime * 1e9)
            ex.write_file(rel, fileobj, member.size, member.mode, mtime, on_bytes=on_bytes)
            files += 1
        elif member.issym():
            ex.add_symlink(rel, member.linkname)
        elif member.islnk():
            ex.add_hardlink(rel, member.linkname)
        else:
            raise UnsafeArchive(f"{ex.what} entry {member.name!r} is a device or special file; refusing to extract")
    return files


def extract_zip(path: Path, ex: Extractor, on_bytes: Callable[[int], None] | None = None) -> int:
    """Extract a zip file into ``ex``; symlinks stored by Unix zip tools are honoured safely."""
    files = 0
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise UnsafeArchive(f"{ex.what} is not a readable zip file ({exc})") from exc
    with zf:
        total = sum(i.file_size for i in zf.infolist())
        ex.check_space(total)
        for info in zf.infolist():
            rel = safe_relpath(info.filename, ex.what)
            unix_mode = info.external_attr >> 16
            kind = stat.S_IFMT(unix_mode)
            if info.is_dir():
                ex.add_dir(rel, stat.S_IMODE(unix_mode) or 0o755)
            elif kind == stat.S_IFLNK:
                ex.add_symlink(rel, zf.read(info).decode("utf-8", "surrogateescape"))
            elif kind not in (0, stat.S_IFREG):
                raise UnsafeArchive(f"{ex.what} entry {info.filename!r} is a device or special file")
            else:
                mtime = calendar.timegm(info.date_time + (0, 0, -1)) * 10**9
                with zf.open(info) as fileobj:
                    ex.write_file(
                        rel, fileobj, info.file_size, stat.S_IMODE(unix_mode) or 0o644, mtime, on_bytes=on_bytes
                    )
                files += 1
    ex.finish()
    return files
