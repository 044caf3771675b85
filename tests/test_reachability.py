"""Telling a slow remote from a gone one: the watchdog's decisions, on an injected clock."""

from __future__ import annotations

import pytest
from waiting import ManualClock

from colab_magics.errors import RemoteUnreachable
from colab_magics.events import plausible_eta
from colab_magics.rclone.process import Reachability, _remote_in


def _watch(answers: list[str | None], limit: float = 60.0):
    clock, notes, probes = ManualClock(1000.0), [], []

    def probe() -> str | None:
        probes.append(clock.now)
        return answers.pop(0) if answers else None

    return Reachability(probe, limit, notes.append, clock), clock, notes, probes


def test_a_child_that_moves_is_never_probed():
    watch, clock, _, probes = _watch(["connection refused"] * 100)
    for _ in range(100):
        clock.now += 5
        watch.alive()
        watch.check()
    assert probes == []


def test_a_silent_child_on_a_live_remote_goes_on():
    watch, clock, notes, probes = _watch([None] * 100)  # a long listing: silent, but the remote answers
    for _ in range(600):
        clock.now += 1
        watch.check()
    assert 55 <= len(probes) <= 60 and notes == []  # one short request every 10 s of silence


def test_a_gone_remote_ends_the_child_once_silent_for_the_limit():
    watch, clock, notes, probes = _watch(["connection refused"] * 100)
    with pytest.raises(RemoteUnreachable, match=r"has not answered for 60s \(connection refused\)") as info:
        for _ in range(1000):
            clock.now += 1
            watch.check()
    assert "\n" not in str(info.value)
    assert 60 <= clock.now - 1000 <= 70  # the first probe at 10 s of silence, then every 10 s
    assert notes[0] == "remote unreachable, retrying (1)" and notes[-1].endswith(f"({len(probes)})")


def test_a_remote_that_comes_back_clears_the_note_and_the_count():
    watch, clock, notes, _ = _watch(["i/o timeout", "i/o timeout", None])
    for _ in range(40):
        clock.now += 1
        watch.check()
    assert notes == ["remote unreachable, retrying (1)", "remote unreachable, retrying (2)", ""]
    assert watch.failures == 0


def test_the_remote_a_command_works_on():
    assert _remote_in(["copyto", "/local/file", "gdrive:a/b.txt", "--retries", "1"]) == "gdrive:a/b.txt"
    assert _remote_in(["lsjson", ":s3,provider=Other:bucket/x"]) == ":s3,provider=Other:bucket/x"
    assert _remote_in(["copy", "/a", "/b", "--files-from-raw", "/tmp/list"]) is None
    assert _remote_in(["copy", "relative/dir:with/colon", "/b"]) is None


@pytest.mark.parametrize(
    ("eta", "rate", "shown"),
    [(48, 1e6, 48.0), (None, 1e6, None), (30, 0.0, None), (292 * 365 * 86400, 1.0, None), (-1, 1.0, None)],
)
def test_an_eta_is_shown_only_when_it_means_something(eta, rate, shown):
    assert plausible_eta(eta, rate) == shown
