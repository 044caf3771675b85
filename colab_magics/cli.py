"""``colab-magics``: the engine for scripts and terminals, with the magics' arguments and defaults.

Progress goes to stderr (one rewritten line on a terminal, a line every few seconds in logs);
the summary goes to stdout.  Expected failures exit 1 with one plain line, Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__
from .errors import ColabMagicsError
from .events import bus
from .manifest import DEFAULT_PART_SIZE
from .push import push
from .stage import stage
from .text import ProgressPrinter
from .units import parse_size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colab-magics", description="Stage datasets from, and push results to, any rclone remote."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stage", help="remote -> local: packed, verified, atomic, resumable")
    s.add_argument("source", help="remote path (gdrive:x, /path) or a name under the default remote root")
    s.add_argument("dest", nargs="?", help="local folder (default: ./<basename of SOURCE>)")
    s.add_argument("--force", action="store_true", help="stage again even if DEST is up to date")
    s.add_argument("--workers", type=int, default=4, help="parts downloaded at once (default 4)")

    p = sub.add_parser("push", help="local -> remote, verified, never half-written")
    p.add_argument("source", help="local file or folder")
    p.add_argument("dest", nargs="?", help="remote path (default: <remote root>/<basename of SOURCE>)")
    p.add_argument("--pack", action="store_true", help="store a folder as tar parts plus a manifest")
    p.add_argument("--compress", action="store_true", help="with --pack: zstd-compress the parts")
    p.add_argument("--part-size", default=DEFAULT_PART_SIZE, type=parse_size, help="with --pack: largest part (default 4G)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ColabMagicsError as exc:  # a --part-size that does not parse
        parser.error(str(exc))
    unsubscribe = bus.subscribe(ProgressPrinter(sys.stderr))
    try:
        if args.command == "stage":
            if args.workers < 1:
                raise ColabMagicsError("--workers must be at least 1")
            result = stage(args.source, args.dest, force=args.force, workers=args.workers)
        else:
            result = push(args.source, args.dest, pack=args.pack, compress=args.compress, part_size=args.part_size)
    except ColabMagicsError as exc:
        _quiet_stop(unsubscribe)
        print(f"colab-magics: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _quiet_stop(unsubscribe)
        print("colab-magics: cancelled", file=sys.stderr)
        return 130
    _quiet_stop(unsubscribe)
    print(result.summary())
    return 0


def _quiet_stop(unsubscribe: object) -> None:
    bus.flush()
    unsubscribe()  # type: ignore[operator]


if __name__ == "__main__":
    sys.exit(main())
