"""``colab-magics``: the engine for scripts and terminals, with the magics' options (:mod:`.options`).

Progress goes to stderr (one rewritten line on a terminal, a line every few seconds in logs);
the summary goes to stdout.  Expected failures exit 1 with one plain line, Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

from . import __version__, options
from .errors import ColabMagicsError
from .events import bus
from .flush import FlushReport, flush
from .jobs import Result
from .notebook.text import ProgressPrinter
from .persist import Final, Persister
from .push import push
from .stage import RESUME_HINT, stage

T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    """The commands, each with its options from the table the magics are built from too."""
    parser = argparse.ArgumentParser(
        prog="colab-magics", description="Stage datasets from, and push results to, any rclone remote."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[tuple[options.Option, ...], dict[str, Any]]] = {
        "stage": (options.STAGE, {"help": "remote -> local: packed, verified, atomic, resumable"}),
        "push": (options.PUSH, {"help": "local -> remote, verified, never half-written"}),
        "flush": (options.FLUSH, {
            "help": "Colab: upload what the Drive mount still holds, then unmount it",
            "description": "Run Colab's only flush of the Drive mount (google.colab.drive.flush_and_unmount), "
            "which uploads what DriveFS holds in the VM's cache. Persists running in a notebook are not "
            "reached from here: use %%drive_flush there.",
        }),
        "persist": (options.PERSIST, {
            "help": "run a command while DIR is kept safe on the remote",
            "description": "Restore DIR, run COMMAND while syncing DIR in the background, sync a last time "
            "whatever the exit status, and exit with COMMAND's status.",
            "usage": "colab-magics persist DIR [options] -- COMMAND [ARGS...]",
        }),
    }  # fmt: skip
    for name, (declared, texts) in commands.items():
        command = sub.add_parser(name, **texts)
        for option in declared:
            flags, spec = option.argument()
            command.add_argument(*flags, **spec)
        command.set_defaults(options=declared)
    return parser


class _StderrReport:
    """How the CLI shows a persist: the restore and the final sync, a line each on stderr."""

    def step(self, work: Callable[[], T]) -> T:
        return work()

    def started(self, persister: Persister, restored: Result | None) -> None:
        if restored is not None:
            print(f"colab-magics: restored: {restored.summary()}", file=sys.stderr)

    def ended(self, persister: Persister, final: Final) -> None:
        if final.outcome is not None:
            print(f"colab-magics: final sync: {final.outcome.result.summary()}", file=sys.stderr)
        elif final.error is not None:  # the command could not even run: its error goes on
            print(f"colab-magics: final sync failed: {final.error}", file=sys.stderr)


def _persist(args: argparse.Namespace) -> int:
    """Run the command while DIR is persisted (restored first, synced a last time whatever happens);
    its exit status, as a shell gives it (128 + N for a signal)."""
    if not args.run:
        raise ColabMagicsError("give the command to run after --, e.g. colab-magics persist outputs -- python train.py")
    persister = Persister(
        args.dir, args.dest, every=args.sync_interval, mirror=args.mirror, part_size=args.part_size,
        mount_trash=args.mount_trash, restore=not args.no_restore, steal_lock=args.steal_lock, report=_StderrReport(),
    )  # fmt: skip
    with persister:
        status = _run(args.run)
    return 128 - status if status < 0 else status


def _run(command: list[str]) -> int:
    """Run ``command`` to its end.  Ctrl-C at a terminal reaches it, which decides: we only wait (a
    KeyboardInterrupt here could land between the child's exit and the reading of its status, which is
    then lost: exit 0 instead of 130).  A SIGTERM sent to us is passed on."""
    try:
        child = subprocess.Popen(command)
    except FileNotFoundError:
        print(f"colab-magics: error: command not found: {command[0]}", file=sys.stderr)
        return 127
    except OSError as exc:  # not executable, ...
        print(f"colab-magics: error: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 126
    on_term = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    on_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    run: list[str] = []
    if argv[:1] == ["persist"] and "--" in argv:  # everything after -- is the command, options included
        cut = argv.index("--")
        argv, run = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.run = run
    unsubscribe = bus.subscribe(ProgressPrinter(sys.stderr, delay=1.0))  # a quick job (up to date) just ends
    try:
        options.resolve(args.options, args)  # what was not given: COLAB_MAGICS_* or the defaults, as in the magics
        if args.command == "persist":
            status = _persist(args)
            _quiet_stop(unsubscribe)
            return status
        result: FlushReport | Result
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


def _quiet_stop(unsubscribe: Callable[[], None]) -> None:
    bus.flush()
    unsubscribe()


if __name__ == "__main__":
    sys.exit(main())
