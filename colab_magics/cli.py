"""``colab-magics``: the engine for scripts and terminals, with the magics' arguments and defaults.

Progress goes to stderr (one rewritten line on a terminal, a line every few seconds in logs);
the summary goes to stdout.  Expected failures exit 1 with one plain line, Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ColabMagicsError
from .events import bus
from .flush import flush
from .notebook.text import ProgressPrinter
from .packed.manifest import DEFAULT_PART_SIZE
from .persist import MIN_EVERY, Persister
from .push import push
from .stage import RESUME_HINT, stage
from .units import parse_duration, parse_size


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
    p.add_argument(
        "--part-size", default=DEFAULT_PART_SIZE, type=parse_size, help="with --pack: largest part (default 4G)"
    )

    f = sub.add_parser(
        "flush",
        help="Colab: upload what the Drive mount still holds, then unmount it",
        description="Run Colab's only flush of the Drive mount (google.colab.drive.flush_and_unmount), "
        "which uploads what DriveFS holds in the VM's cache. Persists running in a notebook are not "
        "reached from here: use %%drive_flush there.",
    )
    f.add_argument("--disconnect", action="store_true", help="then end this runtime")

    k = sub.add_parser(
        "persist",
        help="run a command while DIR is kept safe on the remote",
        description="Restore DIR, run COMMAND while syncing DIR in the background, sync a last time "
        "whatever the exit status, and exit with COMMAND's status.",
    )
    k.add_argument("dir", help="local folder to keep safe")
    k.add_argument("--to", dest="dest", help="remote path (default: <remote root>/<basename of DIR>)")
    k.add_argument(
        "--every", default="5m", type=lambda t: parse_duration(t, minimum=MIN_EVERY), help="sync interval: 30s, 5m, 1h"
    )
    k.add_argument("--no-restore", action="store_true", help="do not bring back an earlier sync first")
    k.add_argument("--mirror", action="store_true", help="also delete on the remote what is deleted locally")
    k.add_argument("--steal-lock", action="store_true", help="take over from another writer")
    k.usage = "colab-magics persist DIR [options] -- COMMAND [ARGS...]"
    return parser


def _persist(args: argparse.Namespace) -> int:
    """Restore, start syncing, run the command, final sync whatever happens, pass its status on."""
    command = args.run
    if not command:
        raise ColabMagicsError("give the command to run after --, e.g. colab-magics persist outputs -- python train.py")
    persister = Persister(args.dir, args.dest, every=args.every, mirror=args.mirror)
    restored = persister.start(steal_lock=args.steal_lock, restore=not args.no_restore)
    if restored is not None:
        print(f"colab-magics: restored: {restored.summary()}", file=sys.stderr)
    child: subprocess.Popen | None = None
    previous = signal.getsignal(signal.SIGTERM)
    try:
        child = subprocess.Popen(command)
        signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))  # type: ignore[union-attr]
        while True:
            try:
                rc = child.wait()
                break
            except KeyboardInterrupt:  # the terminal interrupted the child too; let it finish
                continue
    except FileNotFoundError:
        print(f"colab-magics: error: command not found: {command[0]}", file=sys.stderr)
        rc = 127
    finally:
        signal.signal(signal.SIGTERM, previous)
        outcome = persister.stop(final=True)
        print(f"colab-magics: final sync: {outcome.result.summary()}", file=sys.stderr)  # type: ignore[union-attr]
    return 128 - rc if rc < 0 else rc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    run: list[str] = []
    if argv[:1] == ["persist"] and "--" in argv:  # everything after -- is the command, options included
        cut = argv.index("--")
        argv, run = argv[:cut], argv[cut + 1 :]
    try:
        args = parser.parse_args(argv)
        args.run = run
    except ColabMagicsError as exc:  # a size or duration that does not parse
        parser.error(str(exc))
    unsubscribe = bus.subscribe(ProgressPrinter(sys.stderr))
    try:
        if args.command == "persist":
            status = _persist(args)
            _quiet_stop(unsubscribe)
            return status
        if args.command == "flush":
            result = flush((), disconnect=args.disconnect)  # a terminal knows nothing else of the runtime
        elif args.command == "stage":
            result = stage(args.source, args.dest, force=args.force, workers=args.workers)
        else:
            result = push(args.source, args.dest, pack=args.pack, compress=args.compress, part_size=args.part_size)
    except ColabMagicsError as exc:
        _quiet_stop(unsubscribe)
        print(f"colab-magics: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _quiet_stop(unsubscribe)
        print(f"colab-magics: {RESUME_HINT if args.command == 'stage' else 'cancelled'}", file=sys.stderr)
        return 130
    _quiet_stop(unsubscribe)
    print(result.summary())
    return 0


def _quiet_stop(unsubscribe: object) -> None:
    bus.flush()
    unsubscribe()  # type: ignore[operator]


if __name__ == "__main__":
    sys.exit(main())
