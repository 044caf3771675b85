"""The runtime's deadline: shown in the header, and a margin before it everything is made safe.

Colab ends a runtime at a hard limit with no warning; the clock here is injected, so nothing
waits for real time to pass.
"""

from __future__ import annotations

import time
from pathlib import Path

from waiting import ManualClock, delivered

import colab_magics
from colab_magics.events import EventBus
from colab_magics.host.deadline import DeadlineWatch, runtime_end
from colab_magics.notebook.status import StatusBoard


def test_the_margin_fires_once_and_the_header_shows_the_time_left():
    clock, calls, events = ManualClock(), [], EventBus()
    board = StatusBoard(events)
    watch = DeadlineWatch(clock.now + 3600, lambda: calls.append(clock.now), margin=900, events=events, clock=clock)
    try:
        watch.start()
        delivered(events)
        assert board.overall().runtime_left(clock.now) == "runtime ends in about an hour"
        clock.now += 2600
        assert not watch.check() and calls == []
        clock.now += 100  # 15 minutes left
        assert watch.check() and watch.check() and len(calls) == 1
        assert board.overall().runtime_left(clock.now + 1000) == "runtime past its estimated end"
    finally:
        watch.stop()
        board.close()
        events.close()


def test_the_end_is_the_start_plus_the_limit_on_colab_and_unknown_elsewhere(monkeypatch):
    monkeypatch.setenv("COLAB_MAGICS_RUNTIME_START", "1000")
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv("COLAB_MAGICS_RUNTIME_LIMIT", raising=False)
    if not Path("/var/colab/hostname").exists():
        assert runtime_end() is None
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-fake")
    assert runtime_end() == 1000 + 12 * 3600
    monkeypatch.setenv("COLAB_MAGICS_RUNTIME_LIMIT", "24h")
    assert runtime_end() == 1000 + 24 * 3600
    monkeypatch.setenv("COLAB_MAGICS_RUNTIME_LIMIT", "0")
    assert runtime_end() is None


def test_drive_status_on_colab_says_when_the_runtime_ends(colab, monkeypatch, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("COLAB_MAGICS_RUNTIME_START", str(time.time() - 10 * 3600))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "colab_magics")
    try:
        shell.run_line_magic("drive_status", "")
        assert "runtime ends in about 2 hours" in capsys.readouterr().out
    finally:
        shell.run_line_magic("unload_ext", "colab_magics")
        InteractiveShell.clear_instance()


def _watch_on_a_fake_clock(ip) -> None:
    """Replace the shell's deadline watch by one 1 h from the end, on a clock the cell moves."""
    magics = colab_magics._loaded[id(ip)]
    now = [time.time()]
    magics._deadline.stop()
    magics._deadline = DeadlineWatch(now[0] + 3600, magics._before_the_end, margin=900, clock=lambda: now[0])
    ip.user_ns.update(watch=magics._deadline, now=now)


def test_at_the_margin_a_persist_to_the_drive_mount_syncs_and_drive_is_flushed(colab, ip, tmp_path, monkeypatch, capsys):  # noqa: E501
    monkeypatch.chdir(tmp_path)
    _watch_on_a_fake_clock(ip)
    ip.run_cell_magic("persist", "outputs --every 1h", (
        "open('outputs/model.pt', 'wb').write(b'before the end')\n"
        "now[0] += 2760\n"  # 14 minutes left
        "assert watch.check()\n"
        "open('outputs/late.pt', 'wb').write(b'after the flush')\n"
    ))  # fmt: skip
    assert [c["call"] for c in colab()] == ["drive.mount", "drive.flush_and_unmount"]
    manifest = (tmp_path / "drive.drive" / "colab_magics" / "outputs" / "manifest.json").read_text()
    assert "model.pt" in manifest and "late.pt" not in manifest
    err = capsys.readouterr().err
    assert "ended when the Drive mount was flushed" in err and "only on this machine" in err
    ip.run_line_magic("drive_status", "")
    assert "NOT safe to disconnect (1 changed file(s) not on the remote yet)" in capsys.readouterr().out


def test_at_the_margin_a_persist_to_a_remote_syncs_and_goes_on(colab, ip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLAB_MAGICS_REMOTE", str(tmp_path / "remote"))
    _watch_on_a_fake_clock(ip)
    ip.run_cell_magic("persist", "outputs --every 1h", (
        "open('outputs/model.pt', 'wb').write(b'before the end')\n"
        "now[0] += 2760\n"
        "assert watch.check()\n"
        "synced = open('" + str(tmp_path / "remote" / "outputs" / "manifest.json") + "').read()\n"
    ))  # fmt: skip
    assert "model.pt" in ip.user_ns["synced"]  # synced at the margin, before the cell ended
    assert colab() == []  # nothing asked of Drive
