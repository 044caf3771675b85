"""Parsing the sizes and durations users type (``4G``, ``512MiB``, ``30s``, ``5m``, ``1h``)."""

from __future__ import annotations

import re

from .errors import BadInput

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_size(text: str | int) -> int:
    """Bytes from ``4G``/``4GiB``/``4096M``/``123`` (binary multiples, as rclone reads them)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise BadInput(f"cannot read {text!r} as a size; write it like 4G, 512M or 1048576")
        value = int(float(m.group(1)) * 1024 ** _POWERS[m.group(2).lower()])
    if value <= 0:
        raise BadInput(f"size {text!r} must be positive")
    return value


def parse_duration(text: str | float, minimum: float = 0.0) -> float:
    """Seconds from ``30s``/``5m``/``1h``/``90`` (plain numbers are seconds), at least ``minimum``."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise BadInput(f"cannot read {text!r} as a duration; write it like 30s, 5m or 1h")
        value = float(m.group(1)) * _SECONDS[m.group(2).lower() if m.group(2) else None]
    if not value > 0:  # also NaN
        raise BadInput(f"duration {text!r} must be positive")
    if value < minimum:
        raise BadInput(f"duration {text!r} is too short: at least {minimum:g}s")
    return value


def format_duration(seconds: float) -> str:
    """``30s``, ``5m``, ``1h``, ``1h30m``: a duration as a person types it (see :func:`parse_duration`)."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{seconds:g}s" if seconds < 10 and whole != seconds else f"{whole}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes else []
    parts += [f"{secs}s"] if secs else []
    return "".join(parts)
