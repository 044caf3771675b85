"""Real rclone remotes on loopback for tests and benchmarks (no mocks).

``rclone serve s3`` is the Drive-like remote (MD5 hashes, atomic uploads); ``rclone serve
webdav`` is the hostile one (no hashes, 1 s times, truncated files at the final name when an
upload is cut); a plain folder is the third.  Clients are configured only through
``RCLONE_CONFIG_*`` variables.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from waiting import PATIENCE, poll

from colab_magics.rclone.binary import find_rclone

KEY, SECRET = "cmtestkey", "cmtestsecret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_listening(proc: subprocess.Popen, port: int, what: str, log: Path, timeout: float = PATIENCE) -> None:
    """Poll until ``proc`` answers on 127.0.0.1:``port``; RuntimeError with its log if it exits or stays silent."""

    def answering() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    if not poll(answering, timeout):
        raise RuntimeError(f"{what} did not answer on port {port} within {timeout:.0f}s")


class Server:
    """One ``rclone serve`` child on 127.0.0.1, stoppable, killable and restartable."""

    live_pids: set[int] = set()  # every server running now: test infrastructure, not a leak

    def __init__(self, kind: str, folder: Path, name: str | None = None, extra: list[str] | None = None) -> None:
        assert kind in ("s3", "webdav")
        self.kind = kind
        self.folder = folder
        self.name = name or f"cm{kind}"
        self.port = free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.log = folder.parent / f"{self.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Client settings for the remote ``<name>:``."""
        p = f"RCLONE_CONFIG_{self.name.upper()}_"
        if self.kind == "s3":
            return {
                p + "TYPE": "s3", p + "PROVIDER": "Rclone", p + "ENDPOINT": self.url,
                p + "ACCESS_KEY_ID": KEY, p + "SECRET_ACCESS_KEY": SECRET, p + "FORCE_PATH_STYLE": "true",
            }  # fmt: skip
        return {p + "TYPE": "webdav", p + "URL": self.url, p + "VENDOR": "rclone", p + "PACER_MIN_SLEEP": "0"}

    def start(self) -> Server:
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [find_rclone(), "serve", self.kind, str(self.folder), "--addr", f"127.0.0.1:{self.port}"]
        if self.kind == "s3":
            argv += ["--auth-key", f"{KEY},{SECRET}"]
        env = dict(os.environ, RCLONE_CONFIG="/dev/null")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv + self.extra, stdout=log, stderr=log, env=env, start_new_session=True)
        Server.live_pids.add(self.proc.pid)
        wait_until_listening(self.proc, self.port, f"rclone serve {self.kind}", self.log)
        return self

    def kill(self) -> None:
        """Die as a crashed server would (SIGKILL)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc:
            Server.live_pids.discard(self.proc.pid)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            Server.live_pids.discard(self.proc.pid)
        self.proc = None
