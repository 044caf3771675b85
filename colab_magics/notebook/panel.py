"""The live sync-status panel (ipywidgets), and its text form for front-ends without widgets.

It renders a :class:`StatusBoard` and sends clicks to :class:`Controls`; it never runs a transfer
and never reads the disk.  Updates from background threads are throttled to a few
a second, and the magics also refresh it on the main thread after every cell, because Colab
drops widget updates made from threads (googlecolab/colabtools#3373).
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import humanize

from ..destination.safety import FLUSHED
from .controls import Controls
from .status import DONE, FAILED, RUNNING, Row, StatusBoard, age

ARROWS = {"down": "\u2193", "up": "\u2191"}
_COLORS = {
    "synced": "#1e8e3e",
    "idle": "#5f6368",
    "syncing": "#1a73e8",
    "pending changes": "#e37400",
    "error": "#d93025",
}


# the text form of a live panel in a saved notebook or a log: what it is, never a status that goes stale
PANEL_TEXT = "colab_magics live panel (it needs the running kernel; %drive_status prints the status)"


def _size(n: float) -> str:
    return humanize.naturalsize(n, binary=True)


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else humanize.naturaltime(seconds)


def describe(row: Row, now: float | None = None) -> str:
    """One line of plain words for a row: bytes, rate, ETA, last sync, pending, error."""
    p = row.progress
    bits = []
    if row.state == RUNNING:
        if p.total_bytes:
            bits.append(f"{_size(p.done_bytes)} of {_size(p.total_bytes)}")
        elif p.done_bytes:
            bits.append(_size(p.done_bytes))
        if p.rate_means_something:
            bits.append(f"{_size(p.rate)}/s")
        if p.eta is not None and p.total_bytes > p.done_bytes:
            bits.append(f"ETA {humanize.naturaldelta(p.eta)}")
        if p.total_files:
            bits.append(f"{p.done_files:,}/{p.total_files:,} files")
        if p.note:
            bits.append(p.note)
    elif row.state == DONE and row.result is not None:  # the row already says which job: no route
        bits.append(row.result.summary(route=False, caveat=FLUSHED if row.flushed else None))
    elif row.state == DONE and row.note:
        bits.append(row.note)
    bits.append(f"last success {_ago(age(row.last_success, now))}")
    if row.free_bytes is not None:
        trash = f" (Trash {_size(row.trash_bytes)})" if row.trash_bytes else ""
        bits.append(f"{_size(row.free_bytes)} free there{trash}")
    if row.pending_files:
        bits.append(f"pending {row.pending_files:,} file(s), {_size(row.pending_bytes)}")
        if row.held:
            bits.append(row.held)
    return " \u00b7 ".join(bits)


def render_text(board: StatusBoard, now: float | None = None) -> str:
    """The compact text form: a header line and one line per job."""
    overall = board.overall()
    safe = "safe to disconnect" if overall.safe_to_disconnect else "NOT safe to disconnect"
    left = overall.runtime_left(now)
    lines = [f"colab_magics: {overall.state} \u2014 {safe} ({overall.detail})" + (f" \u00b7 {left}" if left else "")]
    for row in board.rows():
        lines.append(f"  {ARROWS.get(row.direction, ' ')} {_title(row)}: {row.state}; {describe(row, now)}")
        if row.state == FAILED and row.error:
            lines.append(f"      error: {row.error}")
    return "\n".join(lines)


def header_html(board: StatusBoard, now: float) -> str:
    """The header: state, safe to disconnect or not, what decides it, and the runtime's time left."""
    overall = board.overall()
    safe = "safe to disconnect" if overall.safe_to_disconnect else "not safe to disconnect"
    color = _COLORS.get(overall.state, "#5f6368")
    out = (
        f"<div class='cm-state' style='font-weight:600'>"
        f"<span style='color:{color}'>\u25cf {html.escape(overall.state)}</span> \u2014 "
        f"<span class='cm-safe'>{safe}</span></div>"
        f"<div class='cm-overall-detail' style='color:#5f6368'>{html.escape(overall.detail)}</div>"
    )
    left = overall.runtime_left(now)
    if left:
        out += f"<div class='cm-runtime-left' style='color:#5f6368'>{html.escape(left)}</div>"
    return out


def _fraction(row: Row) -> float:
    if row.state == DONE:
        return 1.0
    p = row.progress
    return min(1.0, p.done_bytes / p.total_bytes) if p.total_bytes else 0.0


def _title(row: Row) -> str:
    """The job's name and where it writes: two persists of "outputs" are told apart."""
    return f"{row.name} ({'to' if row.direction == 'up' else 'into'} {row.target})" if row.target else row.name


def _title_html(row: Row) -> str:
    where = ""
    if row.target:
        where = f" <span class='cm-target' style='color:#5f6368'>{'to' if row.direction == 'up' else 'into'} "
        where += f"{html.escape(row.target)}</span>"
    return f"<b>{ARROWS.get(row.direction, '')} {html.escape(row.name)}</b>{where}"


def render_html(board: StatusBoard, now: float | None = None) -> str:
    """The whole panel as one piece of HTML (the web panel's body): header, then a line per job."""
    now = time.time() if now is None else now
    lines = [header_html(board, now)]
    for row in board.rows():
        color = {"done": "#1e8e3e", "failed": "#d93025"}.get(row.state, "#1a73e8")
        error = ""
        if row.state == FAILED:
            error = (
                f"<div class='cm-error' style='color:#d93025'>error: {html.escape(row.error)} "
                f"<button class='cm-dismiss' data-key='{html.escape(row.key, quote=True)}'>Dismiss</button></div>"
            )
        lines.append(
            f"<div class='cm-row' data-state='{row.state}' style='margin-top:4px'>"
            f"{_title_html(row)} "
            f"<span class='cm-row-state' style='color:{color}'>{row.state}</span> "
            f"<progress max='1' value='{_fraction(row):.3f}' style='width:8em;vertical-align:middle'></progress> "
            f"<span class='cm-detail'>{html.escape(describe(row, now))}</span>{error}</div>"
        )
    return "".join(lines)


_subshell: list = []  # the kernel subshell that handles the panel's clicks, made once


def _route_clicks_off_the_main_thread(buttons: Sequence[Any]) -> bool:
    """Let the buttons act while a cell is running; False where they cannot (they then say so).

    A kernel handles widget messages on its main thread, which a running cell keeps busy, so a
    click would wait for the cell to end.  ipykernel 7.4+ runs kernel subshells on threads of
    their own and routes each comm's messages by its ``_reply_subshell_for``; the buttons' comms
    are routed to one subshell of ours.  Older kernels (Colab's 6.17, whose panel is the web one)
    handle clicks when the cell ends, as for any widget.
    """
    try:
        import ipykernel
        from ipykernel.kernelbase import Kernel

        if not Kernel.initialized():
            return True  # no kernel, no busy cell: a click acts at once
        kernel = Kernel.instance()
        major, minor = (int(x) for x in ipykernel.__version__.split(".")[:2])
        if not getattr(kernel, "_supports_kernel_subshells", False) or (major, minor) < (7, 4):
            return False
        if not _subshell:
            channel = kernel.shell_channel_thread
            made: Future[str] = Future()

            def create() -> None:
                try:
                    made.set_result(channel.manager._create_subshell())
                except Exception as exc:  # an ipykernel without this private API
                    made.set_exception(exc)

            channel.io_loop.add_callback(create)
            _subshell.append(made.result(timeout=5))
        subshell_id = _subshell[0]
        for button in buttons:
            button.comm._reply_subshell_for = lambda data, default, _id=subshell_id: _id
        return True
    except Exception:  # the panel works without it; clicks then wait for the cell to end
        return False


WAITS_FOR_THE_CELL = (
    "clicks act when the running cell ends: this kernel has no subshells (ipykernel 7.4+ has); "
    "a %%persist keeps syncing on its own meanwhile"
)


class Panel:
    """Header, one row per job, and the Sync now / Pause / Refresh buttons."""

    MIN_INTERVAL = 0.25  # seconds between two renders triggered from background threads

    def __init__(self, board: StatusBoard, controls: Controls) -> None:
        import ipywidgets as w

        self._w = w
        self.board = board
        self.controls = controls
        self.header = w.HTML().add_class("cm-header")
        self.rows_box = w.VBox().add_class("cm-rows")
        self.sync_now = w.Button(description="Sync now", tooltip="Sync every running %%persist now").add_class(
            "cm-sync-now"
        )
        self.pause = w.Button(description="Pause", tooltip="Pause or resume background syncs").add_class("cm-pause")
        self.refresh_button = w.Button(description="Refresh").add_class("cm-refresh")
        acting = _route_clicks_off_the_main_thread([self.sync_now, self.pause, self.refresh_button])
        self.sync_now.on_click(lambda _: self.trigger())
        self.pause.on_click(lambda _: self.toggle_pause())
        self.refresh_button.on_click(lambda _: self.refresh())
        note = w.HTML("" if acting else f"<span style='color:#5f6368'>{WAITS_FOR_THE_CELL}</span>")
        buttons = w.HBox([self.sync_now, self.pause, self.refresh_button, note.add_class("cm-clicks")])
        buttons.add_class("cm-buttons")
        self.widget = w.VBox([self.header, self.rows_box, buttons]).add_class("cm-panel")
        self._rows: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._last = 0.0
        self._timer: threading.Timer | None = None
        board.on_change(self.schedule)
        self.refresh()

    # -- actions ------------------------------------------------------------------------------
    def trigger(self) -> list:
        """Ask every running persist to sync now; returns their futures."""
        futures = self.controls.sync()
        self.refresh()
        return futures

    def toggle_pause(self) -> None:
        self.controls.set_paused(not self.controls.paused())
        self.refresh()

    # -- rendering ----------------------------------------------------------------------------
    def schedule(self) -> None:
        """Called from event threads: render now, or once a little later, never more often."""
        with self._lock:
            wait = self.MIN_INTERVAL - (time.monotonic() - self._last)
            if wait <= 0:
                due = True
            else:
                due = False
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._timer_fired)
                    self._timer.daemon = True
                    self._timer.start()
        if due:
            self.refresh()

    def _timer_fired(self) -> None:
        with self._lock:
            self._timer = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read every row into the widgets (safe from any thread); never touches the disk."""
        with self._lock:
            self._last = time.monotonic()
        now = time.time()
        self.header.value = header_html(self.board, now)
        self.pause.description = "Resume" if self.controls.paused() else "Pause"
        rows = self.board.rows()
        children = []
        for row in rows:
            parts = self._rows.get(row.key) or self._new_row(row.key)
            self._rows[row.key] = parts
            self._fill(parts, row, now)
            children.append(parts["box"])
        if tuple(children) != tuple(self.rows_box.children):
            self.rows_box.children = tuple(children)
        for key in set(self._rows) - {row.key for row in rows}:  # dismissed
            for part in self._rows.pop(key).values():
                part.close()

    def _new_row(self, key: str) -> dict:
        w = self._w
        parts = {
            "name": w.HTML(layout=w.Layout(min_width="14em")).add_class("cm-name"),
            "bar": w.FloatProgress(min=0.0, max=1.0).add_class("cm-bar"),
            "detail": w.HTML().add_class("cm-detail"),
            "error": w.HTML().add_class("cm-error"),
            "dismiss": w.Button(description="Dismiss", tooltip="Hide this error").add_class("cm-dismiss"),
        }
        parts["dismiss"].on_click(lambda _: self.board.dismiss(key))
        parts["problem"] = w.HBox([parts["error"], parts["dismiss"]]).add_class("cm-problem")
        parts["box"] = w.VBox(
            [w.HBox([parts["name"], parts["bar"], parts["detail"]]).add_class("cm-row-main"), parts["problem"]]
        ).add_class("cm-row")
        return parts

    def _fill(self, parts: dict, row: Row, now: float) -> None:
        parts["name"].value = f"{_title_html(row)} <span class='cm-row-state'>{row.state}</span>"
        parts["bar"].value = _fraction(row)
        parts["bar"].bar_style = {DONE: "success", FAILED: "danger"}.get(row.state, "info")
        parts["detail"].value = f"<span>{html.escape(describe(row, now))}</span>"
        failed = row.state == FAILED
        parts["error"].value = f"<span style='color:#d93025'>error: {html.escape(row.error)}</span>" if failed else ""
        parts["problem"].layout.display = None if failed else "none"

    def show(self) -> None:
        """Display the widget; its text form names it and never goes stale in a saved notebook."""
        from IPython.display import display

        view = {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id}
        display({"application/vnd.jupyter.widget-view+json": view, "text/plain": PANEL_TEXT}, raw=True)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.widget.close()
