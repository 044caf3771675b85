"""colab_magics: keep notebook data safe on any rclone remote, and stage it fast.

The engine (``stage``, ``push``) never imports IPython; the notebook magics are loaded only by
``%load_ext colab_magics``.
"""

from __future__ import annotations

from .errors import ColabMagicsError
from .events import Event, EventBus, Progress, bus
from .push import push
from .stage import stage
from .transfer import Result

__all__ = ["ColabMagicsError", "Event", "EventBus", "Progress", "Result", "bus", "push", "stage"]
__version__ = "0.1.0"
