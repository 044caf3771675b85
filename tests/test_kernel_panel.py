"""The panel in a real kernel: shown by the magics, and "Sync now" clicked while a cell runs.

The click is sent exactly as a front-end sends it (a ``comm_msg`` with a ``click`` event to
the button's comm), while a ``%%persist`` cell is still running.
"""

from __future__ import annotations

import json
import queue
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client", reason="jupyter_client is a test dependency")
pytest.importorskip("ipykernel", reason="ipykernel is a test dependency")
pytest.importorskip("ipywidgets")

from kernels import kernel_env, running  # noqa: E402
from waiting import wait_until  # noqa: E402

from colab_magics.notebook.panel import PANEL_TEXT, WAITS_FOR_THE_CELL  # noqa: E402

pytestmark = pytest.mark.kernel

CELL = """%%persist outputs --every 1h
import os, time
with open("outputs/first.txt", "w") as f:
    f.write("written before the click")
open("ready", "w").close()
deadline = time.time() + 60
while not os.path.exists("release") and time.time() < deadline:
    time.sleep(0.05)
"""


def _messages(kc, until, timeout=60):
    """Yield iopub messages until ``until(msg)`` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            continue
        yield msg
        if until(msg):
            return
    raise AssertionError("the kernel did not answer in time")


def test_sync_now_works_while_the_persist_cell_runs(tmp_path):
    """With ipykernel 7.4+ the click acts during the cell; an older kernel's panel says it will not."""
    import ipykernel

    subshells = tuple(int(x) for x in ipykernel.__version__.split(".")[:2]) >= (7, 4)
    workdir = tmp_path / "work"
    workdir.mkdir()
    remote = tmp_path / "remote"
    with running(workdir, kernel_env(tmp_path, remote)) as (_, kc):
        kc.execute(CELL)
        buttons: dict[str, str] = {}
        views, texts = [], []
        for msg in _messages(kc, lambda m: "Sync now" in buttons and views):
            content = msg["content"]
            if msg["msg_type"] == "comm_open":
                state = content["data"].get("state", {})
                if state.get("_model_name") == "ButtonModel":
                    buttons[state.get("description")] = content["comm_id"]
                if state.get("_model_name") == "HTMLModel":
                    texts.append(state.get("value", ""))
            if msg["msg_type"] == "display_data" and "application/vnd.jupyter.widget-view+json" in content["data"]:
                views.append(content["data"])
        assert views[0]["text/plain"] == PANEL_TEXT  # the text form travels with the view, and never goes stale
        says_it_waits = any(WAITS_FOR_THE_CELL in t for t in texts)
        if not subshells:  # Jupyter on an older ipykernel: no transport acts during the cell, and the panel says so
            assert says_it_waits, texts
            (workdir / "release").write_text("")
            return
        assert not says_it_waits
        manifest = remote / "outputs" / "manifest.json"
        assert not manifest.exists()  # nothing synced yet: interval is an hour
        wait_until((workdir / "ready").exists, "the cell's first file")  # the click comes once it is written
        click = kc.session.msg(
            "comm_msg", {"comm_id": buttons["Sync now"], "data": {"method": "custom", "content": {"event": "click"}}}
        )
        kc.shell_channel.send(click)
        wait_until(manifest.exists, "Sync now handled while the cell was running")
        files = {f["path"] for f in json.loads(manifest.read_text())["files"]}
        assert files == {"first.txt"}, manifest.read_text()
        (workdir / "release").write_text("")
        reply = kc.get_shell_msg(timeout=60)
        while reply["msg_type"] != "execute_reply":
            reply = kc.get_shell_msg(timeout=60)
        assert reply["content"]["status"] == "ok"
