"""The notebook face of the engine: thin magics that parse, call the engine and render.

One stateful :class:`ColabMagics` instance per shell owns the settings (traitlets, so
``%config ColabMagics.remote = "gdrive:colab"`` works) and everything that runs in the
background; ``%unload_ext colab_magics`` stops it all.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Int, Unicode

from . import runner
from .errors import ColabMagicsError
from .events import bus
from .manifest import DEFAULT_PART_SIZE
from .push import push
from .stage import stage
from .text import ProgressPrinter
from .units import parse_size


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


@magics_class
class ColabMagics(Magics):
    """``%drive_stage`` and ``%drive_push``."""

    remote = Unicode(
        help="Default remote root for names without ':' (default: COLAB_MAGICS_REMOTE, Drive on Colab, "
        "else a local folder)."
    ).tag(config=True)
    part_size = Unicode(
        _env("COLAB_MAGICS_PART_SIZE", "4G"), help="Largest tar part of a packed dataset (4G, 512M, ...)."
    ).tag(config=True)
    workers = Int(int(_env("COLAB_MAGICS_WORKERS", "4")), help="Parts staged at once.").tag(config=True)

    def __init__(self, shell: object = None, **kwargs: object) -> None:
        super().__init__(shell=shell, **kwargs)
        self._unsubscribe: Callable[[], None] | None = None

    # -- shared plumbing --------------------------------------------------------------------
    def _root(self) -> str | None:
        return self.remote or None

    def _call(self, work: Callable[[], object]) -> object:
        """Run engine work with progress shown; expected failures become one UsageError line."""
        unsubscribe = bus.subscribe(ProgressPrinter(sys.stdout))
        try:
            return work()
        except ColabMagicsError as exc:
            raise UsageError(str(exc)) from exc
        finally:
            bus.flush()
            unsubscribe()

    @staticmethod
    def _parse(magic: Callable[..., object], line: str) -> object:
        """Arguments with shell quoting (``"my folder"``), which ``parse_argstring`` keeps as is."""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot read the arguments ({exc}); check the quotes") from None
        return magic.parser.parse_args(argv)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Stop everything this instance started (``%unload_ext``)."""
        runner.stop_all()

    # -- magics -----------------------------------------------------------------------------
    @magic_arguments()
    @argument("source", help="remote path (gdrive:x, /path) or a name under the default remote root")
    @argument("dest", nargs="?", help="local folder (default: ./<basename of SOURCE>)")
    @argument("-f", "--force", action="store_true", help="stage again even if DEST is up to date, "
              "or replace a DEST that holds other files")  # fmt: skip
    @argument("-w", "--workers", type=int, default=None, help="parts downloaded at once (default: ColabMagics.workers)")
    @line_magic
    def drive_stage(self, line: str) -> None:
        """Copy a dataset from the remote to fast local disk: packed, verified, atomic, resumable.

        A packed dataset streams and extracts while it downloads; a single archive (.tar, .tar.gz,
        .tar.zst, .zip) or a plain folder works too. Staging unchanged data again returns at once.
        """
        args: Any = self._parse(self.drive_stage, line)
        workers = self.workers if args.workers is None else args.workers
        if workers < 1:
            raise UsageError("--workers must be at least 1")
        result = self._call(
            lambda: stage(args.source, args.dest, force=args.force, workers=workers, root=self._root())
        )
        print(result.summary())  # type: ignore[attr-defined]

    @magic_arguments()
    @argument("source", help="local file or folder")
    @argument("dest", nargs="?", help="remote path; ending in / means 'into this folder' "
              "(default: <remote root>/<basename of SOURCE>)")  # fmt: skip
    @argument("-p", "--pack", action="store_true", help="store a folder as tar parts plus a manifest (fast to stage)")
    @argument("-z", "--compress", action="store_true", help="with --pack: zstd-compress the parts")
    @argument("--part-size", default=None, help="with --pack: largest part, e.g. 4G (default: ColabMagics.part_size)")
    @line_magic
    def drive_push(self, line: str) -> None:
        """Upload a local file or folder to the remote, verified; never a half-written file there."""
        args: Any = self._parse(self.drive_push, line)

        def work() -> object:
            part_size = parse_size(args.part_size or self.part_size or DEFAULT_PART_SIZE)
            return push(
                args.source, args.dest, pack=args.pack, compress=args.compress, part_size=part_size, root=self._root()
            )

        result = self._call(work)
        print(result.summary())  # type: ignore[attr-defined]
