"""One long-lived ``rclone rcd`` per process, for the many small requests of a sync.

A persist used to start ten rclone processes to sync one small file, and five for every lock
heartbeat: each start costs about a quarter of a second, re-reads the config and, on Drive, builds
a new client whose folder cache is empty, so it spends requests finding paths again.  Here one
``rclone rcd`` serves them all (listings, stats, moves, deletes, small reads and writes) through
its remote-control API, each call one HTTP request of a millisecond or so, with the backends and
their folder caches kept warm between calls.  It also serves the stage's reads (``--rc-serve``: a
GET of an object streams its bytes), so parallel part streams share one rclone's memory instead of
one process each.  Uploads (a tar part, a tree copy) still run in a child of their own
(:class:`.process.RcloneProcess`), with their own stats and stop.

How it is kept safe and tidy:

- **Private.** It listens on a unix socket in a fresh 0700 folder, never on a port; only this user
  can reach it, so it runs with ``--rc-no-auth``.
- **It dies with us.** rclone has no "exit with my parent" option, so a ``sh`` watcher starts it
  and waits on a pipe from this process: when the pipe closes (we stopped it, or this process died,
  even by SIGKILL) the watcher stops rclone and removes the private folder.
- **Restarted if it dies.** Each call finds the daemon for this rclone binary, flags and rclone
  environment (``RCLONE_*``: a remote defined by environment variables), and starts a new one if
  the last has exited.  A call in flight when it died fails with one line; the next starts afresh.
- **Cancellable.** Calls run as rclone jobs (``_async``) that are polled; a cancel, a Ctrl-C or a
  remote that stopped answering ends the job with ``job/stop``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any, Callable

from .. import log
from ..errors import RcloneError

logger = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # rclone reads its config and opens the socket well within this, even on a busy machine
REQUEST_TIMEOUT = 30.0  # one HTTP exchange with the daemon (not the job: jobs are polled)
MAX_DAEMONS = 3  # daemons for other environments or flags; beyond this the least recently used idle one stops

# The watcher: rclone in the background, and beside it a reader of the pipe from the parent (on fd 3: an
# asynchronous list's own stdin is /dev/null).  The pipe closes when the parent stops the daemon or dies,
# even by SIGKILL: the reader then stops rclone, and the watcher removes the private folder ($1).  If
# rclone exits on its own instead, its log is left there for the parent to read (it removes the folder).
_WATCHER = """
dir=$1; shift
exec 3<&0
"$@" 3<&- &
child=$!
(read -r _ignored <&3; kill -TERM "$child" 2>/dev/null) &
reader=$!
exec 3<&-
wait "$child"; status=$?
kill "$reader" 2>/dev/null || rm -rf "$dir"
exit "$status"
"""


# what rclone puts before an error it logs as text, not JSON (a flag it does not know, before the log is set up)
_PREFIX = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \w+ ?: )?(Fatal error: |Error: )?")


class DaemonError(RcloneError):
    """The daemon could not be started or reached."""


def _timed_out() -> None:
    raise socket.timeout("the rclone daemon did not answer in time")


def _nothing() -> None:
    pass


def _connect(path: str, timeout: float | None) -> socket.socket:
    """A connection to the daemon's unix socket; reads and writes wait at most ``timeout`` each."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class Daemon:
    """One running ``rclone rcd`` on a private unix socket."""

    def __init__(self, binary: str, flags: Sequence[str], env: dict[str, str]) -> None:
        self.folder = tempfile.mkdtemp(prefix="cm-rcd-")  # mode 0700: the socket is this user's alone
        if len(self.folder) > 90:  # a unix socket's path must fit in 108 bytes: a long $TMPDIR would not do
            os.rmdir(self.folder)
            self.folder = tempfile.mkdtemp(prefix="cm-rcd-", dir="/tmp")
        self.socket = os.path.join(self.folder, "rc.sock")
        self._log_path = os.path.join(self.folder, "rclone.log")
        # --rc-serve: objects are read with a GET of /[remote:]path (a stage's streams)
        argv = [
            binary, "rcd", "--rc-addr", "unix://" + self.socket, "--rc-no-auth", "--rc-serve", "--use-json-log", *flags
        ]  # fmt: skip
        self.in_flight = 0  # calls now running (guarded by the registry's lock)
        self.last_used = t0 = time.monotonic()
        try:
            with open(self._log_path, "wb") as log_file:
                self.proc = subprocess.Popen(
                    ["sh", "-c", _WATCHER, "cm-rcd", self.folder, *argv],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                    # uploads a backend cannot stream are spooled here, removed with the folder
                    env={**env, "TMPDIR": self.folder},
                    start_new_session=True,  # the terminal's Ctrl-C reaches us; we stop it in order
                )
            self._wait_ready()
            self.started = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        if logger.isEnabledFor(logging.DEBUG):
            shown = [*argv[: -len(flags) or None], *log.redact(flags, hide_values=True)]
            logger.debug("rclone daemon[%d] started in %.3fs: %s", self.proc.pid, self.started, log.command_line(shown))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.002
        while True:
            status = self.proc.poll()
            if status is not None:
                said = self.said()
                why = said or "it exited at once"
                raise DaemonError(f"rclone rcd did not start: {why}", exit_code=status, stderr=said)
            if os.path.exists(self.socket):
                try:
                    self.request("rc/noop", {}, timeout=5.0)
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise DaemonError(f"rclone rcd did not answer within {START_TIMEOUT:.0f}s: {self.said()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)  # it answers within about 0.1 s: noticed then, not up to 0.1 s later

    def said(self) -> str:
        """The last thing the daemon wrote to its log, in one line."""
        try:
            with open(self._log_path, "rb") as fh:
                lines = fh.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            try:
                record = json.loads(line)
                line = str(record.get("msg", line)) if isinstance(record, dict) else line
            except ValueError:
                pass
            line = " ".join(_PREFIX.sub("", line).split())
            if line and not line.startswith("Usage:"):
                return line[:300]
        return ""

    def alive(self) -> bool:
        """The watcher runs, and so does rclone: the watcher exits with it."""
        return self.proc.poll() is None

    def request(self, path: str, params: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """POST ``params`` to ``path``; the answer's JSON object.  An rclone error raises
        :class:`CallFailed`; a daemon that cannot be reached raises :class:`OSError`."""
        data = json.dumps(params).encode()
        head = f"POST /{path} HTTP/1.0\r\nHost: rclone\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
        sock = _connect(self.socket, timeout)
        try:  # (HTTP/1.0 over the socket, as for a stream: http.client and its imports cost a CLI 20 ms)
            sock.sendall(head.encode() + b"\r\n\r\n" + data)
            body = Body(sock, _timed_out, _nothing)
            status, body.length = body.head()
            chunks = []
            while chunk := body.read1():
                chunks.append(chunk)
            if not body.complete:
                raise OSError(f"the rclone daemon's answer was cut off after {body.count} of {body.length} bytes")
            raw = b"".join(chunks)
        finally:
            sock.close()
        try:
            answer = json.loads(raw) if raw.strip() else {}
        except ValueError:
            answer = {"error": raw.decode("utf-8", "replace")[:300]}
        if not isinstance(answer, dict):
            answer = {"error": f"unexpected answer {answer!r:.100}"}
        if status != 200:
            raise CallFailed(str(answer.get("error") or f"HTTP {status}"), status)
        return answer

    def open(self, fs: str, remote: str, waiting: Callable[[], None], moved: Callable[[], None]) -> Body:
        """The object ``remote`` of the remote ``fs``, as a stream (a plain HTTP/1.0 GET: the body is
        the object's bytes, its length announced).  ``waiting`` is called whenever nothing arrived for
        a moment (it raises to give up: a cancel, a remote gone); ``moved`` whenever bytes arrived."""
        sock = _connect(self.socket, READ_WAIT)
        try:
            target = urllib.parse.quote(f"[{fs}]/{remote}", safe="/")
            sock.sendall(f"GET /{target} HTTP/1.0\r\nHost: rclone\r\n\r\n".encode())
            body = Body(sock, waiting, moved)
            status, length = body.head()
            if status != 200:
                said = body.read_all(1 << 16)
                try:
                    answer = json.loads(said)
                    message = str(answer.get("error")) if isinstance(answer, dict) else said.decode()
                except ValueError:
                    message = said.decode("utf-8", "replace")[:300] or f"HTTP {status}"
                raise CallFailed(message, status)
            body.length = length
            return body
        except BaseException:
            sock.close()
            raise

    def stop(self, grace: float = 2.0) -> None:
        """Close the pipe (the watcher then stops rclone and removes the folder); force it if need be."""
        proc = getattr(self, "proc", None)
        if proc is not None:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait(timeout=grace)
        shutil.rmtree(self.folder, ignore_errors=True)


READ_WAIT = 0.5  # seconds a stream's read waits before it checks for a cancel or a remote gone


class Body:
    """The bytes of one GET: read in blocks, with short waits, so a stream is never deaf to a cancel."""

    def __init__(self, sock: socket.socket, waiting: Callable[[], None], moved: Callable[[], None]) -> None:
        self._sock = sock
        self._waiting = waiting
        self._moved = moved
        self._pending = b""
        self.length: int | None = None  # as announced; None where it was not
        self.count = 0
        self.broken = False  # the connection ended before the announced length

    def _recv(self, n: int) -> bytes:
        while True:
            try:
                data = self._sock.recv(n)
            except socket.timeout:
                self._waiting()
                continue
            if data:
                self._moved()
            return data

    def head(self) -> tuple[int, int | None]:
        """The status and announced length; what came after the headers is kept for the first read."""
        raw = b""
        while b"\r\n\r\n" not in raw:
            data = self._recv(1 << 16)
            if not data:
                raise OSError("the rclone daemon closed the connection before it answered")
            raw += data
        head, self._pending = raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
            length = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
        except (IndexError, ValueError):  # as a cut connection: the call fails in one line, the daemon restarts
            raise OSError(f"the rclone daemon's answer is not HTTP: {head[:100]!r}") from None
        return status, length

    def read1(self, n: int = 1 << 20, /) -> bytes:
        left = n if self.length is None else min(n, self.length - self.count)
        if left <= 0:
            return b""
        if self._pending:
            data, self._pending = self._pending[:left], self._pending[left:]
        else:
            data = self._recv(left)
            self.broken = self.broken or (not data and self.length is not None)
        self.count += len(data)
        return data

    read = read1

    def read_all(self, limit: int) -> bytes:
        chunks = [self._pending]
        self._pending = b""
        while sum(map(len, chunks)) < limit:
            data = self._recv(limit)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)[:limit]

    @property
    def complete(self) -> bool:
        """Every announced byte arrived (the stream was not cut off)."""
        return self.length is None or self.count == self.length

    def close(self) -> None:
        self._sock.close()


class CallFailed(Exception):
    """rclone answered a call with an error (its message, and the HTTP status it chose)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


_daemons: dict[tuple[str, ...], Daemon] = {}
_lock = threading.Lock()


def _key(binary: str, flags: Sequence[str], env: dict[str, str]) -> tuple[str, ...]:
    """What a daemon was started with that changes what a call means: the binary, the flags, and
    rclone's own environment (remotes defined by ``RCLONE_CONFIG_*``, ``RCLONE_CONFIG`` itself)."""
    rclone_env = sorted(f"{k}={v}" for k, v in env.items() if k.startswith("RCLONE_"))
    return (binary, "\0".join(flags), *rclone_env)


class Lease:
    """A daemon, held for the length of one call (it is not stopped as idle meanwhile)."""

    def __init__(self, binary: str, flags: Sequence[str]) -> None:
        env = dict(os.environ)
        key = _key(binary, flags, env)
        with _lock:
            daemon = _daemons.get(key)
            if daemon is not None and not daemon.alive():
                logger.debug("rclone daemon[%d] has exited: %s; starting another", daemon.proc.pid, daemon.said())
                del _daemons[key]
                daemon.stop(grace=0.5)
                daemon = None
            if daemon is None:
                _evict_idle()
                daemon = Daemon(binary, flags, env)  # under the lock: two threads never start two
                _daemons[key] = daemon
            daemon.in_flight += 1
            daemon.last_used = time.monotonic()
        self.daemon = daemon

    def __enter__(self) -> Daemon:
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        with _lock:
            self.daemon.in_flight -= 1
            self.daemon.last_used = time.monotonic()


def _evict_idle() -> None:
    """Keep at most :data:`MAX_DAEMONS` (the caller holds the lock): stop the least recently used idle ones."""
    idle = sorted((d.last_used, key) for key, d in _daemons.items() if d.in_flight == 0)
    while len(_daemons) >= MAX_DAEMONS and idle:
        _, key = idle.pop(0)
        _daemons.pop(key).stop(grace=1.0)


def running() -> list[int]:
    """Process ids of the watchers of the daemons now running (for tests and the trace)."""
    with _lock:
        return [d.proc.pid for d in _daemons.values() if d.alive()]


def stop_all() -> None:
    """Stop every daemon (interpreter exit, extension unload)."""
    with _lock:
        daemons = list(_daemons.values())
        _daemons.clear()
    for daemon in daemons:
        daemon.stop()


atexit.register(stop_all)
