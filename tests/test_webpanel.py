"""The web panel's server on its own: loopback, a token, the board's state, the buttons' actions."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from waiting import delivered

from colab_magics.events import Direction, EventBus, Job
from colab_magics.jobs import Result
from colab_magics.notebook.panel import render_html
from colab_magics.notebook.status import StatusBoard
from colab_magics.notebook.webpanel import WebPanel


@pytest.fixture
def served():
    events = EventBus()
    board = StatusBoard(events)
    clicks: list[str] = []

    def boom(_: str) -> str:
        raise RuntimeError("the flush went wrong")

    panel = WebPanel(lambda: {"html": render_html(board), "paused": False},
                     {"sync": lambda _: clicks.append("sync") or "syncing 1 persist(s) now", "flush": boom,
                      "dismiss": lambda key: ("dismissed" if board.dismiss(key)
                                              else "nothing to dismiss there")})  # fmt: skip
    yield panel, events, clicks, board
    panel.close()
    board.close()
    events.close()


def _ask(panel: WebPanel, path: str, method: str = "GET", token: str | None = None) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{panel.port}/{path}{'&' if '?' in path else '?'}token={token or panel.token}"
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_state_and_actions_behind_a_token(served):
    panel, events, clicks, _ = served
    pushed = Result("pushed", "model.pt", "r:m", "file", 1, 9, 0.1)
    Job("push model.pt", Direction.UP, events, where="remote").finish(pushed)
    delivered(events)
    status, state = _ask(panel, "state")
    assert status == 200 and "push model.pt" in state["html"] and "safe to disconnect" in state["html"]
    assert _ask(panel, "action?do=sync", "POST") == (200, {"ok": True, "message": "syncing 1 persist(s) now"})
    assert clicks == ["sync"]
    assert _ask(panel, "action?do=flush", "POST") == (200, {"ok": False, "message": "the flush went wrong"})
    assert _ask(panel, "action?do=rm", "POST")[0] == 404
    assert _ask(panel, "state", token="guess")[0] == 403
    assert _ask(panel, "action?do=sync", "POST", token="guess")[0] == 403 and clicks == ["sync"]


def test_the_output_carries_the_port_and_token_and_a_text_form_that_never_goes_stale(served):
    panel, _, _, _ = served
    bundle = panel.bundle()
    assert f"proxyPort({panel.port}" in bundle["text/html"] and json.dumps(panel.token) in bundle["text/html"]
    assert "Sync now" in bundle["text/html"] and "Flush Drive" in bundle["text/html"]
    assert "idle" not in bundle["text/plain"] and "%drive_status" in bundle["text/plain"]


def test_a_failed_row_can_be_dismissed_and_a_later_success_on_its_target_clears_it(served):
    panel, events, _, board = served
    Job("stage flowerz", "down", events, target="/content/data").fail("datasets/flowerz does not exist")
    delivered(events)
    html = _ask(panel, "state")[1]["html"]
    assert "datasets/flowerz does not exist" in html and "data-key='/content/data'" in html
    assert _ask(panel, "action?do=dismiss&key=%2Fcontent%2Fdata", "POST")[1]["message"] == "dismissed"
    assert "flowerz" not in _ask(panel, "state")[1]["html"]
    Job("stage flowerz", "down", events, target="/content/data").fail("datasets/flowerz does not exist")
    Job("stage flowers", Direction.DOWN, events, target="/content/data").finish(
        Result("staged", "r:flowers", "/content/data", "packed", 3, 30, 0.5)
    )
    delivered(events)
    rows = board.rows()
    assert [(r.name, r.state, r.error) for r in rows] == [("stage flowers", "done", "")]
