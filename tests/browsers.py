"""Debian's chromium driven by Playwright, for the panel's browser tests (never ``playwright install``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def require_browser(*packages: str) -> None:
    """Skip with the reason when something is missing; fail instead under REQUIRE_BROWSER_TESTS=1."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install -y --no-install-recommends chromium fonts-dejavu-core)")
    for package in packages:
        if importlib.util.find_spec(package) is None:
            missing.append(f"the {package} package (pip install '.[browser]')")
    if not missing:
        return
    reason = "the browser test needs " + " and ".join(missing)
    if os.environ.get("REQUIRE_BROWSER_TESTS") == "1":
        pytest.fail(f"{reason}; REQUIRE_BROWSER_TESTS=1 forbids skipping it")
    pytest.skip(reason)
