"""The panel over HTTP, for Colab: clicks that act while a cell runs, and a status that stays live.

On Colab's ipykernel 6 a widget click is an ordinary shell message, handled only when the running
cell ends, and widget updates made from threads after a cell ends are dropped
(googlecolab/colabtools#3373).  So the panel's output carries a little JavaScript that talks to a
small HTTP server on a thread of the kernel instead: loopback only, a random token per session,
reached through ``google.colab.kernel.proxyPort(port)`` as TensorBoard is.  It polls a status JSON
and posts the buttons' actions; the kernel's shell queue is never involved.

The server only renders what the board holds and calls the actions it was given; it never runs a
transfer on its own thread (a sync is triggered, a flush runs on a thread of its own).
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlparse

from .panel import PANEL_TEXT

State = Callable[[], dict]  # what the page shows: {"html": ..., "paused": bool}
Action = Callable[[str], str]  # a button's effect, given the row it is about ("" if none): one line back


class WebPanel:
    """A loopback HTTP server with ``GET /state`` and ``POST /action?do=NAME[&key=ROW]``, behind a token."""

    POLL_MS = 1000

    def __init__(self, state: State, actions: Mapping[str, Action]) -> None:
        self.token = secrets.token_urlsafe(24)
        self._state = state
        self._actions = dict(actions)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name="colab_magics-webpanel", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    # -- what the notebook shows ------------------------------------------------------------------
    def bundle(self) -> dict:
        """The output to display: the panel (HTML and its script) and a text form that never goes stale."""
        element = f"cm-webpanel-{secrets.token_hex(4)}"
        script = (
            _SCRIPT.replace("__ELEMENT__", json.dumps(element))
            .replace("__PORT__", str(self.port))
            .replace("__TOKEN__", json.dumps(self.token))
            .replace("__POLL_MS__", str(self.POLL_MS))
        )
        buttons = "".join(
            f"<button data-do='{name}' style='margin-right:6px'>{label}</button>"
            for name, label in (("sync", "Sync now"), ("pause", "Pause"), ("flush", "Flush Drive"))
            if name in self._actions
        )
        body = (
            f"<div id='{element}' class='cm-webpanel' style='font-family:sans-serif;font-size:13px'>"
            "<div class='cm-body' style='margin-bottom:6px'>connecting to the kernel\u2026</div>"
            f"<div class='cm-buttons'>{buttons}<span class='cm-message' style='color:#5f6368'></span></div>"
            f"</div><script>{script}</script>"
        )
        return {
            "text/html": body,
            "text/plain": PANEL_TEXT,
        }

    # -- HTTP ---------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        panel = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # no request log in the notebook
                pass

            def _reply(self, status: int, data: dict) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Access-Control-Allow-Origin", "*")  # the proxy's origin; the token guards
                self.end_headers()
                self.wfile.write(body)

            def _query(self) -> tuple[str, dict[str, list[str]]] | None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if not hmac.compare_digest(query.get("token", [""])[0], panel.token):
                    self._reply(403, {"error": "wrong token"})
                    return None
                return url.path.rstrip("/").rsplit("/", 1)[-1], query

            def do_OPTIONS(self) -> None:  # a preflight, should a proxy add one
                self.send_response(204)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Methods", "GET, POST")
                self.end_headers()

            def do_GET(self) -> None:
                asked = self._query()
                if asked is None:
                    return
                if asked[0] != "state":
                    self._reply(404, {"error": "unknown path"})
                    return
                self._reply(200, panel._state())

            def do_POST(self) -> None:
                asked = self._query()
                if asked is None:
                    return
                name = asked[1].get("do", [""])[0]
                action = panel._actions.get(name) if asked[0] == "action" else None
                if action is None:
                    self._reply(404, {"error": f"unknown action {name!r}"})
                    return
                try:
                    message = action(asked[1].get("key", [""])[0])
                except Exception as exc:  # one line on the page, never a traceback in the kernel's log
                    self._reply(200, {"ok": False, "message": str(exc) or type(exc).__name__})
                    return
                self._reply(200, {"ok": True, "message": message})

        return Handler


# Runs in the output's frame.  On Colab, google.colab.kernel.proxyPort maps the kernel's port to a URL
# the browser can reach; elsewhere (a local Jupyter asked for this panel) the loopback address is tried.
_SCRIPT = """
(async () => {
  const root = document.getElementById(__ELEMENT__);
  const body = root.querySelector(".cm-body"), message = root.querySelector(".cm-message");
  const pause = root.querySelector("button[data-do='pause']");
  let base = "http://127.0.0.1:__PORT__/";
  try {
    if (window.google && google.colab && google.colab.kernel && google.colab.kernel.proxyPort) {
      base = await google.colab.kernel.proxyPort(__PORT__, {cache: false});
    }
  } catch (e) { message.textContent = "no proxy for the panel: " + e; }
  if (!base.endsWith("/")) base += "/";
  const token = encodeURIComponent(__TOKEN__);
  let paused = false, failures = 0;
  async function poll() {
    if (!document.body.contains(root)) return;  // the output was cleared
    try {
      const r = await fetch(base + "state?token=" + token, {cache: "no-store"});
      const state = await r.json();
      body.innerHTML = state.html;
      paused = state.paused;
      if (pause) pause.textContent = paused ? "Resume" : "Pause";
      failures = 0;
    } catch (e) {
      failures += 1;
      if (failures > 2) body.textContent = "the kernel is not answering (runtime disconnected or restarted?)";
    }
    setTimeout(poll, __POLL_MS__);
  }
  async function act(what, key) {
    message.textContent = "\\u2026";
    const query = "action?token=" + token + "&do=" + what + (key ? "&key=" + encodeURIComponent(key) : "");
    try {
      const r = await fetch(base + query, {method: "POST", cache: "no-store"});
      message.textContent = (await r.json()).message || "";
    } catch (e) {
      message.textContent = "the kernel is not answering: " + e;
    }
  }
  root.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.classList.contains("cm-dismiss")) { act("dismiss", button.dataset.key); return; }
    let what = button.dataset.do;
    if (what === "pause" && paused) what = "resume";
    act(what, "");
  });
  poll();
})();
"""
