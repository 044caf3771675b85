"""``google.colab.runtime.unassign``: recorded; a real Colab ends the VM here."""

from __future__ import annotations

from google.colab import _record


def unassign() -> None:
    _record("runtime.unassign")
