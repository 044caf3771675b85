"""A lean, strict reader of tar streams, for the parts of our own packed datasets.

``tarfile`` in stream mode costs a few hundred microseconds of Python per member, which for
thousands of small files is most of a stage.  This reader handles what our writer produces
(ustar headers, PAX extended headers, GNU long names) with a few slices per member, checks
every header's checksum, and refuses anything else.  Archives from elsewhere still go through
``tarfile``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import VerificationError
from ..streams import Readable

BLOCK = 512
_ZERO = bytes(BLOCK)


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    type: bytes  # b"0" regular file, b"5" folder, b"2" symlink, b"1" hard link, ...
    linkname: str

    def isreg(self) -> bool:
        return self.type in (b"0", b"\x00", b"7")


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256, for sizes of 8 GiB and more
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    text = field.split(b"\x00", 1)[0].strip()
    return int(text, 8) if text else 0


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _pax(payload: bytes) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(payload):
        space = payload.index(b" ", pos)
        length = int(payload[pos:space])
        key, _, value = payload[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("ascii", "replace")] = value
        pos += length
    return records


class TarStream:
    """Iterate members with :meth:`members`; read the current member's data with :meth:`read`."""

    def __init__(self, raw: Readable, where: str) -> None:
        self.raw = raw
        self.where = where
        self._left = 0
        self._pad = 0

    def _exact(self, n: int) -> bytes:
        data = self.raw.read(n)
        while len(data) < n:
            more = self.raw.read(n - len(data))
            if not more:
                raise EOFError(f"{self.where} ends in the middle of a tar entry")
            data += more
        return data

    def read(self, n: int = -1) -> bytes:
        """Data of the current member (at most ``n`` bytes)."""
        n = self._left if n < 0 else min(n, self._left)
        if n <= 0:
            return b""
        data = self._exact(n)
        self._left -= n
        return data

    def _skip(self) -> None:
        while self._left:
            self.read(min(self._left, 1 << 20))
        if self._pad:
            self._exact(self._pad)
            self._pad = 0

    def members(self) -> Iterator[Member]:
        try:
            while True:
                self._skip()
                member = self._next()
                if member is None:
                    return
                yield member
        except (ValueError, IndexError) as exc:
            raise VerificationError(f"{self.where} is not a valid tar stream ({exc}); re-push it") from exc

    def _next(self) -> Member | None:
        pax: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            header = self._exact(BLOCK)
            if header == _ZERO:
                return None
            stored = _number(header[148:156])
            if stored != sum(header[:148]) + 256 + sum(header[156:]):
                raise VerificationError(f"{self.where} has a damaged tar header; re-push it")
            size = _number(header[124:136])
            kind = header[156:157]
            if kind in (b"x", b"g", b"L", b"K"):
                payload = self._exact(-(-size // BLOCK) * BLOCK)[:size]
                if kind == b"x":
                    pax = _pax(payload)
                elif kind == b"L":
                    long_name = payload.rstrip(b"\x00")
                elif kind == b"K":
                    long_link = payload.rstrip(b"\x00")
                continue
            if "path" in pax:
                name = pax["path"].decode("utf-8", "surrogateescape")
            elif long_name is not None:
                name = long_name.decode("utf-8", "surrogateescape")
            else:
                prefix = _text(header[345:500]) if header[257:263] == b"ustar\x00" else ""
                name = f"{prefix}/{_text(header[:100])}" if prefix else _text(header[:100])
            if "linkpath" in pax:
                link = pax["linkpath"].decode("utf-8", "surrogateescape")
            else:
                link = long_link.decode("utf-8", "surrogateescape") if long_link is not None else _text(header[157:257])
            if "size" in pax:
                size = int(pax["size"])
            has_data = kind in (b"0", b"\x00", b"7")
            self._left = size if has_data else 0
            self._pad = (-size % BLOCK) if has_data else 0
            return Member(name, size, kind, link)
