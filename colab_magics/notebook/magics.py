"""The notebook face of the engine: thin magics that parse, call the engine and render.

One stateful :class:`ColabMagics` instance per shell owns the settings (traitlets, so
``%config ColabMagics.remote = "gdrive:colab"`` works) and everything that runs in the
background; ``%unload_ext colab_magics`` stops it all.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import shlex
import sys
import threading
import time
from concurrent import futures
from typing import Any, Callable, Coroutine, TypeVar, cast

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Int, Unicode, default, observe

from .. import log
from ..destination.safety import Where
from ..errors import ColabMagicsError
from ..events import Direction, Event, Kind, bus
from ..flush import FlushReport, flush
from ..host import colab as host
from ..host import deadline, kaggle
from ..host.deadline import DeadlineWatch
from ..jobs import Result
from ..options import (
    FLUSH,
    MOUNT_TRASH,
    PART_SIZE,
    PERSIST,
    PUSH,
    REMOTE,
    STAGE,
    SYNC_INTERVAL,
    WORKERS,
    Option,
    resolve,
)
from ..persist import Ending, Final, Persister, PersistState
from ..push import push
from ..rclone import process as runner
from ..rclone import remotes
from ..stage import RESUME_HINT, stage
from ..units import format_duration
from .controls import Controls
from .panel import render_html, render_text
from .status import StatusBoard
from .text import ProgressPrinter
from .webpanel import WebPanel

_LAST_VALUE = "_colab_magics_last_value"  # where a %%persist body's last expression is kept a moment


def _run_coroutine(coro: Coroutine[Any, Any, object]) -> object:
    """Run a cell body that awaits.  In a terminal IPython no loop runs here: a private one does.  In a
    kernel the kernel's own loop runs this thread and waits for this cell, so the body runs on a
    private loop of a worker thread while this thread waits (and still takes Ctrl-C, which cancels it)."""
    __tracebackhide__ = True
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    loop = asyncio.new_event_loop()
    worker = threading.Thread(target=loop.run_forever, name="colab_magics-await", daemon=True)
    worker.start()
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        while True:
            try:
                return future.result(timeout=0.2)
            except futures.TimeoutError:
                continue
    except KeyboardInterrupt:
        future.cancel()
        raise
    finally:
        loop.call_soon_threadsafe(loop.stop)
        worker.join(5)
        if not worker.is_alive():
            loop.close()


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


T = TypeVar("T")
Magic = TypeVar("Magic", bound=Callable[..., Any])


def _arguments(command: tuple[Option, ...]) -> Callable[[Magic], Magic]:
    """A magic's arguments, from the table the CLI builds its own from (:mod:`colab_magics.options`)."""

    def declare(magic: Magic) -> Magic:
        for option in reversed(command):  # magic_arguments adds them in reverse order of decoration
            flags, spec = option.argument()
            magic = argument(*flags, **spec)(magic)
        magic.options = command  # type: ignore[attr-defined]
        return cast(Magic, magic_arguments()(magic))

    return declare


def _setting(option: Option) -> Any:
    """A ``%config ColabMagics.<name>`` setting from the table; unset, the environment or the default decide."""
    if option.setting is int:
        return Int(None, allow_none=True, help=option.help_text()).tag(config=True)
    return Unicode(help=option.help_text()).tag(config=True)


@magics_class
class ColabMagics(Magics):
    """``%drive_stage`` and ``%drive_push``."""

    remote = _setting(REMOTE)
    part_size = _setting(PART_SIZE)
    workers = _setting(WORKERS)
    sync_interval = _setting(SYNC_INTERVAL)
    mount_trash = _setting(MOUNT_TRASH)
    debug = Bool(
        help="The debug trace: every rclone call (secrets hidden) and sync decision, with times and threads, to "
        "stderr or to the file COLAB_MAGICS_DEBUG names (default: on when COLAB_MAGICS_DEBUG is set)."
    ).tag(config=True)

    @default("debug")
    def _debug_default(self) -> bool:
        return log.enabled()

    @observe("debug")
    def _debug_changed(self, change: dict) -> None:
        if change["new"]:
            log.turn_on()
        else:
            log.disable()

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._persisters: set[Persister] = set()
        self.board = StatusBoard()
        self.controls = Controls(self.board, lambda: list(self._persisters), self._flush)
        self._panel: Any = None
        self._panel_shown = False  # once a session; %drive_status shows it again
        self._warned = False  # the "this machine only" warning is said once a session
        self._deadline = self._watch_deadline()

    def _watch_deadline(self) -> DeadlineWatch | None:
        """On Colab (or with COLAB_MAGICS_RUNTIME_LIMIT set): show the runtime's end, sync before it."""
        try:
            end = deadline.runtime_end()
            if end is None:
                return None
            return DeadlineWatch(end, self._before_the_end, deadline.margin()).start()
        except ColabMagicsError as exc:  # a setting that does not parse: said once, nothing else stops
            print(f"colab_magics: WARNING: no runtime deadline: {exc}", file=sys.stderr)
            return None

    def _flush(self) -> FlushReport:
        """Every running persist syncs, then Drive's flush; the persists it ended are let go of."""
        running = list(self._persisters)
        try:
            return flush(running)
        finally:
            self._persisters.difference_update(p for p in running if p.status().state == PersistState.STOPPED)

    def _before_the_end(self) -> None:
        """The margin before the runtime's estimated end: every persist syncs now, and what is on the
        Drive mount is flushed (which ends the persists to the mount).  Runs on the watch's thread;
        what fails shows on the board, never as a traceback."""
        running = list(self._persisters)
        on_mount = any(p.where is Where.MOUNT for p in running) or any(
            r.where == Where.MOUNT and r.direction == "up" for r in self.board.rows()
        )
        try:
            if on_mount and host.drive_mounted():
                self._flush()
            else:
                futures.wait([persister.trigger() for persister in running])
        except ColabMagicsError:
            pass  # published by the sync or the flush that failed
        except Exception as exc:  # never a thread traceback in the notebook
            failed = Event(0, deadline.DEADLINE_JOB, Direction.UP, Kind.FAILED, message=str(exc) or type(exc).__name__)
            bus.publish(failed)

    # -- shared plumbing --------------------------------------------------------------------
    def _root(self) -> str | None:
        """The configured root; on Colab with nothing configured, Drive is mounted first (Colab's own
        consent prompt) so that the default is Drive, never the VM's disk."""
        if self.remote:
            return self.remote
        if not remotes.configured_root() and host.on_colab() and not host.drive_mounted():
            try:
                host.mount_drive()
            except Exception as exc:  # refused consent, Colab Enterprise, no google.colab: all one answer
                raise UsageError(
                    f"could not mount Google Drive ({str(exc).strip() or type(exc).__name__}): mount it with "
                    "`from google.colab import drive; drive.mount('/content/drive')`, or set COLAB_MAGICS_REMOTE "
                    "to an rclone remote such as gdrive:colab"
                ) from None
        return None

    def _warn_if_only_here(self, where: str, dest: str) -> None:
        """One loud line, once a session, the first time data is kept only on this machine."""
        if where == Where.THIS_MACHINE and not self._warned:
            self._warned = True
            how = kaggle.HINT if kaggle.on_kaggle() else (
                "Set COLAB_MAGICS_REMOTE (or %config ColabMagics.remote) to a remote, or mount Drive on Colab."
            )
            print(f"colab_magics: WARNING: {dest} is a folder on this machine, lost if the runtime is lost. {how}",
                  file=sys.stderr)  # fmt: skip

    def _panel_kind(self) -> str:
        """"web" on Colab (its clicks act while a cell runs; see webpanel), "widgets" in other kernels
        with ipywidgets, "text" elsewhere; ``COLAB_MAGICS_PANEL`` chooses among them."""
        try:
            from ipykernel.zmqshell import ZMQInteractiveShell
        except ImportError:
            return "text"
        if not isinstance(self.shell, ZMQInteractiveShell):
            return "text"
        chosen = _env("COLAB_MAGICS_PANEL").strip().lower()
        if chosen in ("web", "text"):
            return chosen
        if chosen != "widgets" and host.on_colab():
            return "web"
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return "text"
        return "widgets"

    def _show_panel(self, again: bool = False) -> bool:
        """Show the live panel once a session (``again``: once more, for %drive_status); False where
        there is none (a terminal IPython: text instead)."""
        from IPython.display import display

        kind = self._panel_kind()
        if kind == "text":
            return False
        if self._panel is None:
            if kind == "web":
                self._panel = WebPanel(self._web_state, self.controls.web_actions())
            else:
                from .panel import Panel

                self._panel = Panel(self.board, self.controls)
        if again or not self._panel_shown:
            self._panel_shown = True
            if isinstance(self._panel, WebPanel):
                display(self._panel.bundle(), raw=True)
            else:
                self._panel.show()
        self._refresh_panel()
        return True

    def _refresh_panel(self) -> None:
        if self._panel is not None and not isinstance(self._panel, WebPanel):  # the web panel polls
            self._panel.refresh()

    def _web_state(self) -> dict:
        """What the web panel shows (its server's thread): the board as HTML; no disk is touched."""
        return {"html": render_html(self.board), "paused": self.controls.paused()}

    def _call(self, work: Callable[[], T]) -> T:
        """Run engine work with progress shown; expected failures become one UsageError line.

        The panel is shown in the first cell that runs something; later cells print their own
        progress on one line that rewrites itself."""
        shown_here = not self._panel_shown and self._show_panel()
        unsubscribe = (lambda: None) if shown_here else bus.subscribe(
            ProgressPrinter(sys.stdout, interval=0.5, rewrite=True, delay=2.0)
        )
        try:
            return work()
        except ColabMagicsError as exc:
            raise UsageError(str(exc)) from exc
        finally:
            bus.flush()
            unsubscribe()
            self._refresh_panel()

    def after_cell(self, result: object = None) -> None:
        """``post_run_cell``: refresh the panel from the main thread (Colab drops thread updates)."""
        self._refresh_panel()

    def _parse(self, name: str, line: str) -> Any:
        """Arguments with shell quoting (``"my folder"``), which ``parse_argstring`` keeps as is; what
        was not given comes from the settings, the environment or the defaults."""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot read the arguments ({exc}); check the quotes") from None
        magic = getattr(type(self), name)  # the decorated magic: its parser and its options
        args = magic.parser.parse_args(argv)
        try:
            return resolve(magic.options, args, self)
        except ColabMagicsError as exc:
            raise UsageError(str(exc)) from None

    def close(self) -> None:
        """Stop everything this instance started (``%unload_ext``): persists flush, children stop."""
        for persister in list(self._persisters):
            try:
                persister.stop(final=True)
            except ColabMagicsError as exc:
                print(f"colab_magics: final sync of {persister.local} failed: {exc}", file=sys.stderr)
        self._persisters.clear()
        if self._deadline is not None:
            self._deadline.stop()
        runner.stop_all()
        if self._panel is not None:
            self._panel.close()
        self.board.close()

    # -- magics -----------------------------------------------------------------------------
    @line_magic
    def drive_status(self, line: str) -> None:
        """Show what is synced, what is pending, how fast, what failed, and whether it is safe to disconnect."""
        if line.strip():
            raise UsageError("%drive_status takes no arguments")
        for p in self._persisters:  # asked for now: measured now, not at the next look
            p.publish_pending()
        bus.flush()
        if not self._show_panel(again=True):
            print(render_text(self.board))

    @_arguments(FLUSH)
    @line_magic
    def drive_flush(self, line: str) -> None:
        """Make what is on Colab's Drive mount safe: every persist syncs once more, then Drive's cache is
        uploaded and Drive unmounted (the only flush Colab has). Persists to the mount end here; mount
        Drive again to go on."""
        args = self._parse("drive_flush", line)
        report = self._call(self._flush)  # the board has the flush now
        overall = self.board.overall()
        if not overall.safe_to_disconnect:
            why = "; not ending the runtime" if args.disconnect else ""
            print(f"{report.summary()}; NOT safe to disconnect yet: {overall.detail}{why}")
            return
        report.disconnecting = args.disconnect
        print(f"{report.summary()}; safe to disconnect")
        if args.disconnect:
            host.end_runtime()

    @_arguments(STAGE)
    @line_magic
    def drive_stage(self, line: str) -> None:
        """Copy a dataset from the remote to fast local disk: packed, verified, atomic, resumable.

        A packed dataset streams and extracts while it downloads; a single archive (.tar, compressed
        with gzip, bzip2, xz or zstd, or .zip) or a plain folder works too. Staging unchanged data
        again returns at once.
        """
        args = self._parse("drive_stage", line)
        try:
            result = self._call(
                lambda: stage(args.source, args.dest, force=args.force, workers=args.workers, root=self._root())
            )
        except KeyboardInterrupt:
            print(f"colab_magics: {RESUME_HINT}", file=sys.stderr)
            raise
        print(result.summary())

    @_arguments(PUSH)
    @line_magic
    def drive_push(self, line: str) -> None:
        """Upload a local file or folder to the remote, verified; never a half-written file there."""
        args = self._parse("drive_push", line)

        def work() -> object:
            return push(
                args.source, args.dest, pack=args.pack, compress=args.compress, part_size=args.part_size,
                root=self._root(),
            )  # fmt: skip

        result: Any = self._call(work)
        self._warn_if_only_here(result.where, result.dest)
        print(result.summary())

    @_arguments(PERSIST)
    @cell_magic
    def persist(self, line: str, cell: str) -> object:
        """Keep DIR safe on the remote while the cell runs.

        Before the cell: restore an earlier sync if DIR is missing or older. While it runs: sync
        changed files in the background every INTERVAL. When it ends (success, error or Ctrl-C):
        a final verified sync, then the cell's exception is raised unchanged. Re-running the
        cell after a lost runtime picks up where the last sync left off.
        """
        args = self._parse("persist", line)
        __tracebackhide__ = True  # a traceback of the cell's own error shows the cell's lines, not ours
        try:
            persister = Persister(
                args.dir, args.dest, every=args.sync_interval, mirror=args.mirror, part_size=args.part_size,
                mount_trash=args.mount_trash, root=self._root(), restore=not args.no_restore,
                steal_lock=args.steal_lock, report=_CellReport(self),
            )  # fmt: skip
        except ColabMagicsError as exc:  # a destination that does not resolve: nothing started
            raise UsageError(str(exc)) from None
        with persister:
            try:
                return self._run_body(cell)
            finally:
                self._persisters.discard(persister)  # its final sync is this cell's: no button or flush reaches it

    def _run_body(self, cell: str) -> object:
        """The cell's body as IPython runs a cell: its own lines in tracebacks (the source is cached
        for them), the value of a last expression returned for display, top-level ``await``."""
        __tracebackhide__ = True
        shell = cast(InteractiveShell, self.shell)  # a magic runs in the shell it is registered with
        source = shell.transform_cell(cell)
        filename = shell.compile.cache(source, shell.execution_count, raw_code=cell)
        tree = shell.transform_ast(ast.parse(source, filename))
        shown = not source.rstrip().endswith(";")  # a trailing ";" hides the value, as in any cell
        last = tree.body[-1] if shown and tree.body and isinstance(tree.body[-1], ast.Expr) else None
        if last is not None:  # kept, so that the value survives an await in the expression itself
            keep = ast.Assign(targets=[ast.Name(id=_LAST_VALUE, ctx=ast.Store())], value=last.value)
            tree.body[-1] = ast.fix_missing_locations(ast.copy_location(keep, last))
        code = compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        outcome = eval(code, shell.user_global_ns, shell.user_ns)
        if inspect.iscoroutine(outcome):  # the body awaits at its top level
            _run_coroutine(outcome)
        return shell.user_ns.pop(_LAST_VALUE, None)


class _CellReport:
    """How a ``%%persist`` cell shows its persist (a :class:`~colab_magics.persist.PersistReport`)."""

    def __init__(self, magics: ColabMagics) -> None:
        self.magics = magics

    def step(self, work: Callable[[], T]) -> T:
        return self.magics._call(work)

    def started(self, persister: Persister, restored: Result | None) -> None:
        if restored is not None:
            print(f"restored: {restored.summary()}")
        self.magics._persisters.add(persister)  # the panel's buttons reach it from now on
        self.magics._warn_if_only_here(persister.where, persister.dest)
        print(
            f"persisting {persister.local} to {persister.dest} ({Where(persister.where).value}) "
            f"every {format_duration(persister.every)}"
        )

    def ended(self, persister: Persister, final: Final) -> None:
        """The final sync's line; after Ctrl-C, the one line the cell ends with (no traceback)."""
        __tracebackhide__ = True
        if final.interrupted:
            raise UsageError(_interrupted(persister, final)) from None
        if final.ending is Ending.FLUSHED:
            bus.flush()
            print(
                f"colab_magics: the persist of {persister.local} ended when the Drive mount was flushed; "
                "changes since then are only on this machine: mount Drive and push them",
                file=sys.stderr,
            )
        elif final.outcome is None:
            print(f"colab_magics: final sync failed: {final.error}", file=sys.stderr)
        else:
            pending = final.outcome.deferred
            note = f"; {len(pending)} file(s) still changing were left at their previous version" if pending else ""
            print(f"final sync at {time.strftime('%H:%M:%S')}: {final.outcome.result.summary()}{note}")


def _interrupted(persister: Persister, final: Final) -> str:
    """What is safe after Ctrl-C, in one line."""
    if final.ending is Ending.FLUSHED:
        return "interrupted; this persist had ended when the Drive mount was flushed: later changes are only here"
    if final.outcome is None:
        return f"interrupted; the final sync failed: {final.error}"
    files = len(final.outcome.manifest.files)
    what = "1 file" if files == 1 else f"{files:,} files"
    changing = len(final.outcome.deferred)
    left = f"; {changing} file(s) still changing kept their previous version" if changing else ""
    return f"interrupted; final sync done: {what} on {persister.dest}{left}"
