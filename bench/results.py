"""The tail both benchmarks share: time taken, the machine they ran on, results written as JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def save(path: Path, started: float, config: dict, versions: dict, **sections: object) -> None:
    """Print how long the benchmark took and write ``config``, the environment (``versions``
    plus this machine) and ``sections`` to ``path``."""
    elapsed = time.monotonic() - started
    print(f"\n(benchmark took {elapsed:.0f} s)")
    environment = {**versions, "python": platform.python_version(), "cpus": os.cpu_count(),
                   "platform": platform.platform()}  # fmt: skip
    results = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": config, "environment": environment,
               **sections, "elapsed_s": elapsed}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {path}")
