"""The panel as Colab shows it: a real kernel (ipykernel 6.17.1 in CI's Colab environment, where a widget
click would wait for the running cell), the panel's output rendered in Debian's chromium in a page that
defines ``google.colab.kernel.proxyPort`` as Colab does, mapped to the loopback port.

While a ``%%persist`` cell is still running: the status updates, "Sync now" sends a new file to the
remote, Pause stops the background syncs and Resume starts them again; after the cell ends the
status still updates (Colab drops widget updates made from threads then).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import queue
import threading
import time
from pathlib import Path

import kernels
import pytest
from browsers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, require_browser
from servers import Server
from waiting import wait_until

pytestmark = pytest.mark.browser

CELL = """%%persist outputs --every 3s
import os, time
open("outputs/first.txt", "w").write("written by the cell")
while not os.path.exists("release"):
    time.sleep(0.05)
"""

# what Colab's output frames offer (google.colab.kernel.proxyPort), here mapped straight to loopback
PROXY = (
    "<script>window.google = {colab: {kernel: {proxyPort: (port, options) => "
    "Promise.resolve('http://127.0.0.1:' + port + '/')}}};</script>"
)


def _paths(remote: Path) -> set[str]:
    manifest = remote / "outputs" / "manifest.json"
    return {f["path"] for f in json.loads(manifest.read_text())["files"]} if manifest.exists() else set()


@contextlib.contextmanager
def _served(folder: Path):
    """A static page server on loopback, stopped after."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_colab_panel_acts_while_the_persist_cell_runs_and_stays_live_after(tmp_path):
    require_browser("playwright")
    from playwright.sync_api import expect, sync_playwright

    s3 = Server("s3", tmp_path / "s3").start()
    (s3.folder / "bucket").mkdir()
    remote = s3.folder / "bucket"
    work = tmp_path / "work"
    work.mkdir()
    env = dict(kernels.kernel_env(tmp_path, remote), **s3.env(), COLAB_MAGICS_REMOTE=f"{s3.name}:bucket",
               COLAB_MAGICS_PANEL="web")  # fmt: skip
    km, kc = kernels.start(work, env)
    try:
        kernels.run(kc, "%load_ext colab_magics")
        msg_id = kc.execute(CELL)
        panel_html = None
        deadline = time.monotonic() + 120
        while panel_html is None:
            assert time.monotonic() < deadline, "the persist cell showed no panel"
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "display_data":
                panel_html = msg["content"]["data"].get("text/html")
        page_folder = tmp_path / "page"
        page_folder.mkdir()
        (page_folder / "index.html").write_text(f"<!doctype html><html><body>{PROXY}{panel_html}</body></html>")
        ARTIFACTS.mkdir(exist_ok=True)
        wait_until(lambda: "first.txt" in _paths(remote), "the first sync of the running cell")
        with _served(page_folder) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 500})
            try:
                page.goto(url)
                row = page.locator(".cm-row", has_text="persist outputs")
                expect(row).to_be_visible(timeout=60_000)
                pause = page.get_by_role("button", name="Pause")
                pause.click()
                # "Resume" shows once the persist rests paused: a sync running when Pause was clicked has ended
                expect(page.get_by_role("button", name="Resume")).to_be_visible(timeout=60_000)
                (work / "outputs" / "during-pause.txt").write_text("paused")
                time.sleep(10)  # a window to watch, not a wait: no background sync may take it in three intervals
                assert "during-pause.txt" not in _paths(remote)
                page.get_by_role("button", name="Sync now").click()  # a sync on request works while paused
                wait_until(lambda: "during-pause.txt" in _paths(remote), "Sync now while the cell runs")
                with pytest.raises(queue.Empty):  # all this while the cell is still running
                    kc.get_shell_msg(timeout=0.1)
                expect(page.locator(".cm-message")).to_contain_text("syncing 1 persist(s) now")
                page.get_by_role("button", name="Resume").click()
                expect(page.get_by_role("button", name="Pause")).to_be_visible(timeout=60_000)
                (work / "outputs" / "after-resume.txt").write_text("resumed")
                wait_until(lambda: "after-resume.txt" in _paths(remote), "a background sync after Resume")
                page.screenshot(path=str(ARTIFACTS / "colab_panel.png"))
                (work / "release").write_text("")
                reply = kc.get_shell_msg(timeout=120)
                assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok"
                # after the cell: the final sync shows, and the page keeps updating
                expect(page.locator(".cm-row[data-state='done']", has_text="persist outputs")).to_be_visible(
                    timeout=60_000
                )
                expect(page.locator(".cm-state")).to_contain_text("safe to disconnect", timeout=60_000)
                kernels.run(kc, "open('late.txt', 'w').write('after the cell')\n%drive_push late.txt")
                expect(page.locator(".cm-row", has_text="push late.txt")).to_be_visible(timeout=60_000)
                page.screenshot(path=str(ARTIFACTS / "colab_panel_after.png"))
            finally:
                browser.close()
    finally:
        kernels.shut_down(km, kc)
        s3.stop()
