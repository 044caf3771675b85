"""Plain-text renderings of job progress, for terminals and front-ends without widgets."""

from __future__ import annotations

import humanize

from .events import Progress


def progress_line(name: str, p: Progress) -> str:
    """``push outputs  42% 1.2 GiB/2.9 GiB  35.1 MiB/s  ETA 48s  120/300 files``."""
    size = lambda n: humanize.naturalsize(n, binary=True)  # noqa: E731
    parts = [name]
    if p.total_bytes > 0:
        pct = min(100, int(100 * p.done_bytes / p.total_bytes))
        parts.append(f"{pct:3d}% {size(p.done_bytes)}/{size(p.total_bytes)}")
    else:
        parts.append(size(p.done_bytes))
    if p.rate > 0:
        parts.append(f"{size(p.rate)}/s")
    if p.eta is not None and p.total_bytes > 0 and p.done_bytes < p.total_bytes:
        parts.append("ETA " + humanize.naturaldelta(p.eta))
    if p.total_files:
        parts.append(f"{p.done_files:,}/{p.total_files:,} files")
    return "  ".join(parts)
