"""colab_magics: keep notebook data safe on any rclone remote, and stage it fast.

The engine (``stage``, ``push``) never imports IPython; the notebook magics are loaded only by
``%load_ext colab_magics``.
"""

from __future__ import annotations

from .errors import ColabMagicsError
from .events import Event, EventBus, Progress, bus
from .jobs import Result
from .push import push
from .stage import stage

__all__ = ["ColabMagicsError", "Event", "EventBus", "Progress", "Result", "bus", "push", "stage"]
__version__ = "0.1.0"

_loaded: dict[int, object] = {}


def load_ipython_extension(ip: object) -> None:
    """``%load_ext colab_magics``: one stateful magics instance per shell."""
    from .notebook.magics import ColabMagics  # IPython is imported only here, never by the engine

    if id(ip) in _loaded:
        return
    magics = ColabMagics(shell=ip)
    ip.register_magics(magics)  # type: ignore[attr-defined]
    ip.events.register("post_run_cell", magics.after_cell)  # type: ignore[attr-defined]
    _loaded[id(ip)] = magics


def unload_ipython_extension(ip: object) -> None:
    """``%unload_ext colab_magics``: stop workers and children, remove the magics."""
    magics = _loaded.pop(id(ip), None)
    if magics is None:
        return
    ip.events.unregister("post_run_cell", magics.after_cell)  # type: ignore[attr-defined]
    magics.close()  # type: ignore[attr-defined]
    table = ip.magics_manager.magics  # type: ignore[attr-defined]
    for kind, names in magics.magics.items():  # type: ignore[attr-defined]
        for name in names:
            table[kind].pop(name, None)
