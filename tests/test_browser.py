"""The panel in a real browser: JupyterLab on loopback, Debian's chromium driven by Playwright.

A person runs a ``%%persist`` cell, sees the panel, adds a file to ``outputs/`` and clicks
"Sync now" while the cell is still running; the file reaches the remote and the panel says so.

Needs ``/usr/bin/chromium`` (``apt-get install chromium fonts-dejavu-core``) and the packages
``playwright`` and ``jupyterlab`` (``pip install '.[browser]'``); never ``playwright install``.
Without them the test is skipped, unless ``REQUIRE_BROWSER_TESTS=1`` (CI), where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from browsers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, require_browser
from servers import Server
from waiting import PATIENCE, poll

pytestmark = pytest.mark.browser

IDLE = "Python 3 (ipykernel) | Idle"
FRESH = re.compile(r"last success (now|a second ago|\d+ seconds ago)")

CELL = """%%persist outputs --every 1h
import os, time
with open("outputs/first.txt", "w") as f:
    f.write("written by the cell")
print("training until the release file appears")
deadline = time.time() + 90
while not os.path.exists("release") and time.time() < deadline:
    time.sleep(0.05)
print("released" if os.path.exists("release") else "timed out waiting for the release file")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(*sources: str) -> dict:
    cells = [
        {"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "execution_count": None, "outputs": [], "source": src}
        for i, src in enumerate(sources)
    ]
    return {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    remote: Path
    log: Path

    def request(self, path: str, method: str = "GET", timeout: float = 5) -> bytes:
        req = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read()


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 with a token and every folder temporary; the kernel inherits the remote."""
    require_browser("playwright", "jupyterlab")
    import ipykernel

    if int(ipykernel.__version__.split(".")[0]) < 7:
        pytest.skip("clicks during a running cell need kernel subshells (ipykernel 7+)")
    root, settings = tmp_path / "root", tmp_path / "settings"
    for folder in (root, settings, tmp_path / "workspaces", tmp_path / "config", tmp_path / "runtime"):
        folder.mkdir()
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    for path, value in (
        (notification, {"fetchNews": "false", "checkForUpdates": False}),  # no news pop-up over the outputs
        (tracker, {"windowingMode": "none", "autoStartDefaultKernel": True}),  # every cell in the page; no dialog
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    # a real remote (rclone serve s3 on loopback): only there may the panel say "safe to disconnect"
    s3 = Server("s3", tmp_path / "s3").start()
    (s3.folder / "bucket").mkdir()
    remote = s3.folder / "bucket"
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        **s3.env(),
        COLAB_MAGICS_REMOTE=f"{s3.name}:bucket",  # the kernel inherits it from the server
        COLAB_MAGICS_STATE_DIR=str(tmp_path / "state"),
        RCLONE_CONFIG="/dev/null",
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),  # the environment's own share/jupyter (widgets) still counts
        IPYTHONDIR=str(tmp_path / "ipython"),
    )
    log = tmp_path / "jupyterlab.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=root,
            start_new_session=True,
        )  # fmt: skip
    server = Lab(f"http://127.0.0.1:{port}", token, root, remote, log)
    def answering() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            server.request("/api/status")
            return True
        except (urllib.error.URLError, OSError):
            return False

    try:
        if not poll(answering, 2 * PATIENCE):
            pytest.fail(f"JupyterLab did not answer in {2 * PATIENCE:.0f}s:\n{log.read_text()[-3000:]}")
        yield server
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # a server already gone: the group goes below
            server.request("/api/shutdown", method="POST")
            proc.wait(timeout=15)
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # anything left in its group: kernels, children
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        s3.stop()


def _manifest_paths(remote: Path) -> set[str] | None:
    manifest = remote / "outputs" / "manifest.json"
    if not manifest.exists():
        return None
    return {f["path"] for f in json.loads(manifest.read_text())["files"]}


def test_sync_now_in_jupyterlab_while_the_persist_cell_runs(lab):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright

    (lab.root / "panel.ipynb").write_text(json.dumps(_notebook("%load_ext colab_magics", CELL)))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(f"{lab.url}/lab/tree/panel.ipynb?token={lab.token}")
            # The toolbar says idle before the kernel exists: wait for the status bar's kernel text.
            expect(page.get_by_text(IDLE)).to_be_visible(timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

            outputs = page.locator(".jp-OutputArea-output")  # not the cells' source, which holds the same words
            panel = page.locator(".cm-panel")
            prompt = page.locator(".jp-CodeCell").nth(1).locator(".jp-InputArea-prompt")
            expect(panel).to_be_visible(timeout=60_000)
            expect(outputs.get_by_text("training until the release file appears")).to_be_visible(timeout=60_000)
            assert (lab.root / "outputs" / "first.txt").exists()
            assert _manifest_paths(lab.remote) is None, "synced before the click: the interval is an hour"

            (lab.root / "outputs" / "new.txt").write_text("written by the test, after the cell started")
            page.locator("button.cm-sync-now, .cm-sync-now button").click()
            deadline = time.monotonic() + PATIENCE  # the page's own wait: Playwright's events go on meanwhile
            while _manifest_paths(lab.remote) != {"first.txt", "new.txt"} and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            assert _manifest_paths(lab.remote) == {"first.txt", "new.txt"}, (
                "Sync now was not handled while the cell was running"
            )

            row = panel.locator(".cm-row", has_text="persist outputs")
            expect(row.locator(".cm-detail")).to_contain_text(FRESH, timeout=60_000)
            expect(panel.locator(".cm-header .cm-state")).to_contain_text("synced", timeout=60_000)
            expect(panel.locator(".cm-header .cm-safe")).to_have_text("safe to disconnect")
            # The cell is still running.  (Not read from the status bar: the click's busy/idle pair,
            # sent from the kernel subshell that handled it, leaves it saying "Idle" meanwhile.)
            expect(prompt).to_have_text("[*]:")
            panel.screenshot(path=str(ARTIFACTS / "panel.png"))

            (lab.root / "release").write_text("")
            expect(prompt).to_have_text("[2]:", timeout=60_000)
            expect(outputs.get_by_text(re.compile(r"final sync at "))).to_be_visible(timeout=60_000)
            expect(page.get_by_text(IDLE)).to_be_visible(timeout=60_000)
            expect(outputs.get_by_text(re.compile(r"^released$", re.MULTILINE))).to_have_count(1)
            assert _manifest_paths(lab.remote) == {"first.txt", "new.txt"}
        except BaseException:
            with contextlib.suppress(PlaywrightError):  # the page may be gone; the original error matters
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
            print(lab.log.read_text()[-5000:], file=sys.stderr)
            raise
        finally:
            browser.close()
