"""The shapes of byte streams the engine hands around: what gives bytes, and what takes them.

rclone's pipes, the hashing reader over them, a tar stream's current member and the zstd
readers and writers are all used through these two methods only, so any of them fits.
"""

from __future__ import annotations

from typing import Protocol


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...
