"""colab_magics: keep notebook data safe on any rclone remote, and stage it fast.

The engine (``stage``, ``push``) never imports IPython; the notebook magics are loaded only by
``%load_ext colab_magics``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import log
from .errors import ColabMagicsError
from .events import Event, EventBus, Progress, bus
from .jobs import Result
from .push import push
from .stage import stage

if TYPE_CHECKING:  # for the types only: the engine never imports IPython
    from IPython.core.interactiveshell import InteractiveShell

    from .notebook.magics import ColabMagics

__all__ = ["ColabMagicsError", "Event", "EventBus", "Progress", "Result", "bus", "push", "stage"]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())  # silent unless the application or the trace says
log.from_env()  # COLAB_MAGICS_DEBUG: the debug trace (see colab_magics.log)

_loaded: dict[int, ColabMagics] = {}


def load_ipython_extension(ip: InteractiveShell) -> None:
    """``%load_ext colab_magics``: one stateful magics instance per shell."""
    from .notebook.magics import ColabMagics  # IPython is imported only here, never by the engine

    if id(ip) in _loaded:
        return
    magics = ColabMagics(shell=ip)
    ip.register_magics(magics)
    ip.events.register("post_run_cell", magics.after_cell)
    _loaded[id(ip)] = magics


def unload_ipython_extension(ip: InteractiveShell) -> None:
    """``%unload_ext colab_magics``: stop workers and children, remove the magics."""
    magics = _loaded.pop(id(ip), None)
    if magics is None:
        return
    ip.events.unregister("post_run_cell", magics.after_cell)
    magics.close()
    table = ip.magics_manager.magics
    for kind, names in magics.magics.items():
        for name in names:
            table[kind].pop(name, None)
