"""What the panels' buttons do: commands to the running persists, answered at once.

Both panels (widgets and web) send their clicks here and render only the status board; nothing
here waits for a transfer or reads the disk, so a click never holds up a render or a cell.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable

from ..errors import ColabMagicsError
from ..persist import Persister, PersistState
from .status import StatusBoard

NONE_RUNNING = "no %%persist is running"


class Controls:
    """Sync now, pause, resume, flush and dismiss, over the persists the magics keep running."""

    def __init__(self, board: StatusBoard, persisters: Callable[[], list[Persister]], flush: Callable[[], object]):
        self.board = board
        self._persisters = persisters
        self._flush = flush

    def sync(self) -> list[Future]:
        """Every running persist syncs now; their futures, for whoever wants to wait.  It is the person's
        Sync now, which a persist held back by Drive's Trash asks for once the Trash is emptied."""
        return [p.trigger(trash_emptied=True) for p in self._persisters()]

    def paused(self) -> bool:
        return any(p.status().state == PersistState.PAUSED for p in self._persisters())

    def set_paused(self, paused: bool) -> str:
        running = self._persisters()
        for persister in running:
            persister.pause() if paused else persister.resume()
        if not running:
            return NONE_RUNNING
        return "background syncs paused" if paused else "background syncs resumed"

    def flush_in_background(self) -> str:
        """Drive's flush takes minutes: it runs on a thread of its own and the board shows its end."""

        def work() -> None:
            try:
                self._flush()
            except ColabMagicsError:
                pass  # on the board, which the panels show

        threading.Thread(target=work, name="colab_magics-flush", daemon=True).start()
        return "flushing the Drive mount: the status says when it is done"

    def dismiss(self, key: str) -> str:
        return "dismissed" if self.board.dismiss(key) else "nothing to dismiss there"

    def web_actions(self) -> dict[str, Callable[[str], str]]:
        """The web panel's ``POST /action?do=NAME[&key=ROW]`` names."""

        def sync(_: str) -> str:
            n = len(self.sync())
            return f"syncing {n} persist(s) now" if n else NONE_RUNNING

        def pause(_: str) -> str:
            return self.set_paused(True)

        def resume(_: str) -> str:
            return self.set_paused(False)

        def flush(_: str) -> str:
            return self.flush_in_background()

        return {"sync": sync, "pause": pause, "resume": resume, "flush": flush, "dismiss": self.dismiss}
