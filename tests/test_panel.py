"""The status board and the panel, checked by their values (ipywidgets 8 builds widgets outside a kernel)."""

from __future__ import annotations

import threading
import time

import pytest
from IPython.core.error import UsageError
from trees import make_tree
from waiting import PATIENCE, delivered, wait_until

import colab_magics as cm
from colab_magics import errors
from colab_magics.events import EventBus, Job
from colab_magics.notebook.controls import Controls
from colab_magics.notebook.panel import Panel, render_text
from colab_magics.notebook.status import StatusBoard
from colab_magics.persist import Persister

widgets = pytest.importorskip("ipywidgets")


@pytest.fixture
def board():
    bus = EventBus()
    b = StatusBoard(bus)
    yield bus, b
    b.close()
    bus.close()


def _classes(widget) -> set:
    return set(widget._dom_classes)


def test_finished_jobs_show_as_synced_and_safe_only_on_a_real_remote(board, tmp_path, servers, monkeypatch):
    bus, b = board
    for key, value in servers["s3"].env().items():
        monkeypatch.setenv(key, value)
    src = make_tree(tmp_path / "data", small=5, odd=False)
    cm.push(src, "cms3:bucket/panel/ds", pack=True, events=bus)
    cm.stage("cms3:bucket/panel/ds", tmp_path / "back", events=bus)
    delivered(bus)
    panel = Panel(b, Controls(b, list, list))
    assert {"cm-panel"} <= _classes(panel.widget)
    assert "synced" in panel.header.value and "safe to disconnect" in panel.header.value
    assert "not safe" not in panel.header.value and "everything is on the remote" in panel.header.value
    rows = panel.rows_box.children
    assert len(rows) == 2 and all("cm-row" in _classes(r) for r in rows)
    bar = panel._rows[str(tmp_path / "back")]["bar"]  # rows are keyed by where the job writes
    assert bar.value == 1.0 and bar.bar_style == "success" and "cm-bar" in _classes(bar)
    detail = panel._rows["cms3:bucket/panel/ds"]["detail"].value
    assert "pushed" in detail and "last success" in detail and "verified on the remote" in detail
    text = render_text(b)
    assert text.startswith("colab_magics: synced \u2014 safe to disconnect")
    assert "\u2191 push data (to cms3:bucket/panel/ds): done" in text and "\u2193 stage back (into " in text
    # the same push to a folder on this machine (the embedded default): synced, but never "safe"
    cm.push(src, "ds", pack=True, events=bus)
    delivered(bus)
    panel.refresh()
    assert "not safe to disconnect" in panel.header.value and "kept on this machine only" in panel.header.value
    assert render_text(b).startswith(
        "colab_magics: synced \u2014 NOT safe to disconnect (kept on this machine only: lost if the runtime is lost)"
    )
    panel.close()


def test_a_failure_is_shown_in_plain_words(board, tmp_path):
    bus, b = board
    with pytest.raises(errors.RemoteNotFound):
        cm.stage("no/such/dataset", tmp_path / "x", events=bus)
    delivered(bus)
    panel = Panel(b, Controls(b, list, list))
    # a failed download is an error to see, but puts nothing of the user's at risk
    assert "error" in panel.header.value and "not safe" not in panel.header.value
    row = panel._rows[str(tmp_path / "x")]
    assert row["bar"].bar_style == "danger" and "does not exist" in row["error"].value
    assert row["problem"].layout.display is None  # the error, with its Dismiss button
    assert "error: " in render_text(b)
    Job("push model.pt", "up", bus, where="remote").fail("the remote is out of storage quota")  # an upload is not
    delivered(bus)
    panel.refresh()
    assert "error" in panel.header.value and "not safe" in panel.header.value
    row["dismiss"].click()  # seen: the stage's row goes, the upload's error stays
    delivered(bus)
    panel.refresh()
    assert str(tmp_path / "x") not in panel._rows  # its widgets are gone too
    assert "out of storage quota" in render_text(b) and "does not exist" not in render_text(b)
    panel.close()


def test_sync_now_and_pause_drive_the_persist(board, tmp_path):
    bus, b = board
    local = tmp_path / "outputs"
    local.mkdir()
    p = Persister(local, every=3600, events=bus)
    p.start()
    try:
        panel = Panel(b, Controls(b, lambda: [p], list))
        (local / "ckpt.pt").write_bytes(b"x" * 1000)

        def header_after_a_look() -> str:
            """The header once the persist looked again (as it does every few seconds), now: a look of its own
            thread, begun before the change, may land after this one; the next one is right again."""
            p.publish_pending()
            delivered(bus)
            panel.refresh()
            return panel.header.value

        wait_until(lambda: "pending changes" in header_after_a_look(), "the pending change in the header")
        assert "not safe" in panel.header.value
        futures = panel.trigger()  # what the "Sync now" button does
        futures[0].result(timeout=PATIENCE)
        delivered(bus)
        panel.refresh()
        assert "synced" in panel.header.value
        assert "last success" in panel._rows[p.dest]["detail"].value
        (local / "more.txt").write_text("new")
        wait_until(lambda: "1 changed file" in header_after_a_look(), "the new pending change in the header")
        assert "pending changes" in panel.header.value
        panel.pause.click()
        assert p.status().state == "paused" and panel.pause.description == "Resume"
        panel.pause.click()
        assert p.status().state == "idle" and panel.pause.description == "Pause"
        panel.sync_now.click()
        wait_until(lambda: p.pending() == (0, 0), "the sync that Sync now asked for")
        panel.close()
    finally:
        p.stop()


def test_updates_from_threads_are_throttled(board):
    bus, b = board

    class Counting(Panel):
        renders = 0

        def refresh(self) -> None:
            Counting.renders += 1
            super().refresh()

    panel = Counting(b, Controls(b, list, list))
    Counting.renders = 0
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda: [panel.schedule() for _ in range(200)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the panel rendered when it was built: the burst right after is rendered a little later, not lost
    wait_until(lambda: Counting.renders >= 1, "the render of the scheduled updates")
    elapsed = time.monotonic() - t0
    assert Counting.renders <= 2 + elapsed / Panel.MIN_INTERVAL
    panel.close()


def test_terminal_shell_gets_the_text_form(ip, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ip.run_line_magic("drive_status", "")
    assert "colab_magics: idle" in capsys.readouterr().out
    make_tree(tmp_path / "data", small=2, odd=False)
    ip.run_line_magic("drive_push", "data --pack")
    capsys.readouterr()
    ip.run_line_magic("drive_status", "")
    out = capsys.readouterr().out
    assert "synced" in out and "push data" in out and len(out.splitlines()) <= 5
    with pytest.raises(UsageError):
        ip.run_line_magic("drive_status", "extra")


def test_a_persist_reports_its_pending_changes_by_itself(board, tmp_path):
    """The views never walk the folder: the persist looks every few seconds and publishes what it saw."""
    bus, b = board
    local = tmp_path / "outputs"
    local.mkdir()
    seen = threading.Event()
    bus.subscribe(lambda e: seen.set() if e.kind == "pending" and e.progress.total_files == 2 else None)
    p = Persister(local, every=3600, events=bus)
    p.start()
    try:
        (local / "a.pt").write_bytes(b"a")
        (local / "b.pt").write_bytes(b"b")
        assert seen.wait(60), "no look at the folder within a minute"
        delivered(bus)
        assert "2 changed file(s) not on the remote yet" in render_text(b)
    finally:
        p.stop()


def test_two_persists_of_folders_with_the_same_name_keep_a_row_each(ip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        ip.run_cell_magic(
            "persist",
            f"{run}/outputs --to runs/{run}/outputs --every 1h",
            f"open('{run}/outputs/m.pt', 'w').write('{run}')",
        )
    capsys.readouterr()
    ip.run_line_magic("drive_status", "")
    rows = [line for line in capsys.readouterr().out.splitlines() if "persist outputs" in line]
    assert len(rows) == 2 and "runs/a/outputs" in rows[0] and "runs/b/outputs" in rows[1], rows
