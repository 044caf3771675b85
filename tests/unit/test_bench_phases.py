"""``bench/persist.py`` times a sync's phases by wrapping ``PackedSync``'s methods by name: a renamed
method must fail here, not at the benchmark's start (it did once: ``_publish_parts``)."""

from __future__ import annotations

import ast
from pathlib import Path

from colab_magics.packed.upload import PackedSync

BENCH = Path(__file__).resolve().parents[2] / "bench" / "persist.py"


def test_every_phase_the_persist_benchmark_times_is_a_method_of_a_sync():
    tree = ast.parse(BENCH.read_text())
    phases = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["PHASES"]
    )
    assert phases and all(callable(getattr(PackedSync, name, None)) for name in phases), phases
