"""The status board, fed engine events one by one: its rows, and the one verdict people act on
(is it safe to disconnect?).  No transfer, no thread: events are delivered as they are published.

Safe means everything uploaded is verified on a remote: not while an upload runs, failed or has
local changes pending, and never while the data sits on this machine or in the Drive mount's
cache (until Drive's flush).  A download that runs or fails puts nothing of the user's at risk.
"""

from __future__ import annotations

from typing import Callable

import pytest

from colab_magics.destination.safety import FLUSHED, Where
from colab_magics.events import Direction, Event, Kind, Listener, Progress
from colab_magics.notebook.status import DONE, RUNNING, WAITING, Overall, OverallState, StatusBoard

UP, DOWN = Direction.UP, Direction.DOWN
T0 = 1_800_000_000.0


class DirectBus:
    """What the board needs of an event bus, delivering each event at once in the caller's thread."""

    def __init__(self) -> None:
        self.listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def publish(self, event: Event) -> None:
        for listener in list(self.listeners):
            listener(event)


class Feed:
    """A board and a bus, with the events jobs publish, in a few words each."""

    def __init__(self) -> None:
        self.bus = DirectBus()
        self.board = StatusBoard(self.bus)  # type: ignore[arg-type]  # the bus's subscribe is all it uses

    def send(self, name: str, kind: Kind, direction: Direction = UP, **fields: object) -> None:
        fields.setdefault("target", name.split()[-1])
        fields.setdefault("at", T0)
        self.bus.publish(Event(1, name, direction, kind, **fields))  # type: ignore[arg-type]

    def rows(self) -> list[tuple[str, str, str]]:
        return [(r.key, r.name, r.state) for r in self.board.rows()]

    def verdict(self) -> tuple[OverallState, bool, str]:
        o = self.board.overall()
        return o.state, o.safe_to_disconnect, o.detail


@pytest.fixture
def feed() -> Feed:
    return Feed()


def test_nothing_run_is_idle_and_safe(feed):
    assert feed.verdict() == (OverallState.IDLE, True, "nothing has run yet")
    assert feed.rows() == []


def test_an_upload_is_unsafe_until_it_finished_on_a_remote(feed):
    feed.send("push model", Kind.STARTED, where=Where.REMOTE.value)
    feed.send("push model", Kind.PROGRESS, progress=Progress(done_bytes=10, total_bytes=100))
    assert feed.verdict() == (OverallState.SYNCING, False, "push model")
    assert feed.board.rows()[0].progress.done_bytes == 10
    feed.send("push model", Kind.FINISHED, progress=Progress(100, 100), at=T0 + 5)
    assert feed.verdict() == (OverallState.SYNCED, True, "everything is on the remote")
    row = feed.board.rows()[0]
    assert (row.state, row.last_success, row.where) == (DONE, T0 + 5, Where.REMOTE.value)


def test_a_download_running_or_failed_puts_nothing_at_risk(feed):
    feed.send("stage flowers", Kind.PROGRESS, DOWN)
    assert feed.verdict() == (OverallState.SYNCING, True, "stage flowers")
    feed.send("stage flowers", Kind.FAILED, DOWN, message="datasets/flowers does not exist")
    assert feed.verdict() == (OverallState.ERROR, True, "stage flowers: datasets/flowers does not exist")


def test_a_failed_upload_is_an_error_and_not_safe(feed):
    feed.send("push model", Kind.FAILED, where=Where.REMOTE.value, message="the remote is out of storage quota")
    assert feed.verdict() == (OverallState.ERROR, False, "push model: the remote is out of storage quota")


@pytest.mark.parametrize("where", [Where.THIS_MACHINE, Where.MOUNT])
def test_an_upload_that_stayed_on_this_machine_or_in_the_mount_is_synced_but_not_safe(feed, where):
    feed.send("push model", Kind.FINISHED, where=where.value)
    assert feed.verdict() == (OverallState.SYNCED, False, where.caveat())


def test_drives_flush_makes_what_reached_the_mount_before_it_safe(feed):
    feed.send("push early", Kind.FINISHED, where=Where.MOUNT.value, at=T0)
    feed.send("drive flush", Kind.FLUSHED, at=T0 + 10)
    assert feed.verdict() == (OverallState.SYNCED, True, "everything is on the remote")
    early = next(r for r in feed.board.rows() if r.name == "push early")
    assert early.flushed and early.where == Where.REMOTE.value
    flush = next(r for r in feed.board.rows() if r.name == "drive flush")
    assert (flush.state, flush.note, flush.last_success) == (DONE, FLUSHED, T0 + 10)
    feed.send("push late", Kind.FINISHED, where=Where.MOUNT.value, at=T0 + 30)
    feed.send("drive flush", Kind.FLUSHED, at=T0 + 20)  # told late, but it flushed before "push late" ended
    late = next(r for r in feed.board.rows() if r.name == "push late")
    assert not late.flushed and feed.verdict() == (OverallState.SYNCED, False, Where.MOUNT.caveat())


def test_a_later_success_on_the_same_target_clears_the_error(feed):
    feed.send("stage flowerz", Kind.FAILED, DOWN, target="/content/data", message="does not exist")
    feed.send("stage flowers", Kind.FINISHED, DOWN, target="/content/data")
    assert feed.rows() == [("/content/data", "stage flowers", DONE)]
    assert feed.board.rows()[0].error == ""


def test_rows_are_one_per_target_whatever_the_name(feed):
    for sync in range(3):  # the successive syncs of one persist update one row
        feed.send("persist outputs", Kind.FINISHED, target="r:runs/a/outputs", at=T0 + sync)
    feed.send("persist outputs", Kind.PROGRESS, target="r:runs/b/outputs")  # same folder name, another target
    feed.send("flush", Kind.FINISHED, target="")  # a job without a target: keyed by its name
    assert feed.rows() == [("flush", "flush", DONE), ("r:runs/a/outputs", "persist outputs", DONE),
                           ("r:runs/b/outputs", "persist outputs", RUNNING)]  # fmt: skip
    assert feed.board.rows()[1].last_success == T0 + 2


def test_pending_changes_of_a_persist_are_not_safe_until_synced(feed):
    feed.send("persist outputs", Kind.PENDING, progress=Progress(total_bytes=2048, total_files=2))
    assert feed.rows() == [("outputs", "persist outputs", WAITING)]  # nothing synced yet
    assert feed.verdict() == (OverallState.PENDING, False, "2 changed file(s) not on the remote yet")
    feed.send("persist outputs", Kind.FINISHED, where=Where.REMOTE.value)
    feed.send("persist outputs", Kind.PENDING, progress=Progress())
    assert feed.verdict() == (OverallState.SYNCED, True, "everything is on the remote")
    assert feed.rows() == [("outputs", "persist outputs", DONE)]


def test_an_error_outranks_a_running_job_which_outranks_pending_changes(feed):
    feed.send("persist outputs", Kind.PENDING, progress=Progress(total_files=1))
    feed.send("push model", Kind.PROGRESS)
    assert feed.verdict()[0] is OverallState.SYNCING and feed.verdict()[1] is False
    feed.send("push data", Kind.FAILED, message="boom")
    assert feed.verdict() == (OverallState.ERROR, False, "push data: boom")


def test_only_a_failed_row_can_be_dismissed_and_listeners_hear_every_change(feed):
    heard: list[int] = []
    feed.board.on_change(lambda: heard.append(len(feed.board.rows())))
    feed.send("stage x", Kind.FAILED, DOWN, message="gone")
    feed.send("push y", Kind.FINISHED)
    assert not feed.board.dismiss("y") and not feed.board.dismiss("no such row")
    assert feed.board.dismiss("x") and feed.rows() == [("y", "push y", DONE)]
    assert heard == [1, 2, 1]


def test_room_and_the_runtimes_end_are_kept(feed):
    feed.send("push model", Kind.PROGRESS, free_bytes=5 << 30, trash_bytes=1 << 30)
    feed.send("push model", Kind.FINISHED)  # later events without figures keep the last ones
    row = feed.board.rows()[0]
    assert (row.free_bytes, row.trash_bytes) == (5 << 30, 1 << 30)
    feed.send("runtime", Kind.DEADLINE, Direction.NONE, at=T0 + 3600, target="")
    assert feed.board.overall().ends_at == T0 + 3600 and len(feed.board.rows()) == 1  # no row for it
    assert Overall(OverallState.SYNCED, True, "", T0 + 3600).runtime_left(T0) == "runtime ends in about an hour"


def test_a_closed_board_hears_nothing_more(feed):
    feed.board.close()
    feed.send("push model", Kind.FAILED, message="boom")
    assert feed.rows() == [] and feed.bus.listeners == []
