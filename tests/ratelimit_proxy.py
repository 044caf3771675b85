"""A real HTTP reverse proxy on 127.0.0.1 that refuses requests the way Google Drive does when
it rate-limits or runs out of quota (no mocks: rclone talks HTTP to it, it talks HTTP upstream).

It sits in front of an ``rclone serve webdav`` (:class:`servers.Server`) and forwards every
request, streaming bodies both ways in chunks (Content-Length and chunked request bodies,
keep-alive).  During an injection window it answers instead with an error: a status (429 or
403), an optional ``Retry-After`` header and a body like Drive's.  A window is "the next N
requests", "for T seconds" or "until cleared", optionally only for some methods (``PUT`` for
uploads) or paths (``manifest.json``); the proxy counts what it refused and forwarded, so a test
can assert that the fault was really hit.

    proxy = RateLimitProxy(server).start()
    proxy.refuse(TOO_MANY_REQUESTS, seconds=3, retry_after=1)
    ...
    assert proxy.refused > 0
    proxy.stop()
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from waiting import PATIENCE, poll

CHUNK = 64 * 1024
# not passed on as they are (Host is: WebDAV's MOVE and COPY name a Destination on the host the client saw)
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "expect", "content-length",
}  # fmt: skip


def _google_error(code: int, reason: str, message: str) -> bytes:
    """An error body as Google's APIs send it (pretty-printed JSON, several lines)."""
    error = {"errors": [{"domain": "usageLimits", "reason": reason, "message": message}], "code": code}
    return (json.dumps({"error": {**error, "message": message}}, indent=2) + "\n").encode()


@dataclass(frozen=True)
class Fault:
    """One kind of refusal: the status line and the body that come instead of the server's answer."""

    status: int
    reason: str  # the HTTP reason phrase
    body: bytes
    content_type: str = "application/json; charset=UTF-8"


TOO_MANY_REQUESTS = Fault(429, "Too Many Requests", _google_error(429, "rateLimitExceeded", "Too Many Requests"))
USER_RATE_LIMIT = Fault(403, "Forbidden", _google_error(403, "userRateLimitExceeded", "User Rate Limit Exceeded"))
STORAGE_QUOTA = Fault(
    403, "Forbidden", _google_error(403, "storageQuotaExceeded", "The user's Drive storage quota has been exceeded.")
)


@dataclass
class _Window:
    fault: Fault
    remaining: int | None  # refuse this many more requests (None: no count limit)
    until: float | None  # monotonic deadline (None: no time limit)
    retry_after: float | None
    methods: frozenset[str] | None  # only these methods (None: all)
    paths: tuple[str, ...] | None  # only paths that contain one of these (None: all)

    def applies(self, method: str, path: str, now: float) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.paths is not None and not any(p in path for p in self.paths):
            return False
        if self.until is not None and now >= self.until:
            return False
        return self.remaining is None or self.remaining > 0


class RateLimitProxy:
    """Forwards to ``upstream`` (a :class:`servers.Server` or an ``http://host:port`` URL), refusing on demand."""

    def __init__(self, upstream: object, name: str = "cmlimited") -> None:
        url = upstream if isinstance(upstream, str) else upstream.url  # type: ignore[attr-defined]
        parts = urlsplit(url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.name = name
        self._lock = threading.Lock()
        self._window: _Window | None = None
        self.refused = 0
        self.forwarded = 0
        self.refused_by_method: Counter[str] = Counter()
        self.log: list[tuple[float, str, str, int]] = []  # (monotonic time, method, path, status answered)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # -- control --------------------------------------------------------------------------------
    def refuse(
        self,
        fault: Fault,
        *,
        count: int | None = None,
        seconds: float | None = None,
        retry_after: float | None = None,
        methods: set[str] | frozenset[str] | tuple[str, ...] | None = None,
        paths: tuple[str, ...] | None = None,
    ) -> RateLimitProxy:
        """Answer ``fault`` instead of forwarding: the next ``count`` requests, for ``seconds`` from now,
        or (neither given) until :meth:`clear`.  ``methods`` limits it to those HTTP methods (``{"PUT"}``:
        uploads), ``paths`` to URL paths (decoded) that contain one of the given strings."""
        until = time.monotonic() + seconds if seconds is not None else None
        chosen = frozenset(m.upper() for m in methods) if methods else None
        with self._lock:
            self._window = _Window(fault, count, until, retry_after, chosen, tuple(paths) if paths else None)
        return self

    def clear(self) -> None:
        """Forward everything again."""
        with self._lock:
            self._window = None

    @property
    def refusing(self) -> bool:
        with self._lock:
            w = self._window
            if w is None:
                return False
            return (w.until is None or time.monotonic() < w.until) and (w.remaining is None or w.remaining > 0)

    def wait_over(self, timeout: float = PATIENCE) -> None:
        """Block until a timed or counted window has ended."""
        if not poll(lambda: not self.refusing, timeout):
            raise TimeoutError(f"the injection window is still open after {timeout:.0f}s")

    def reset_counts(self) -> None:
        with self._lock:
            self.refused = self.forwarded = 0
            self.refused_by_method.clear()
            self.log.clear()

    def _verdict(self, method: str, path: str) -> tuple[Fault, float | None] | None:
        """Refuse this request? Counts it either way."""
        now = time.monotonic()
        with self._lock:
            w = self._window
            if w is not None and w.applies(method, unquote(path), now):
                if w.remaining is not None:
                    w.remaining -= 1
                self.refused += 1
                self.refused_by_method[method] += 1
                self.log.append((now, method, path, w.fault.status))
                return w.fault, w.retry_after
            self.forwarded += 1
            self.log.append((now, method, path, 0))
            return None

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self, pacer_min_sleep: str = "0") -> dict[str, str]:
        """Client settings for the webdav remote ``<name>:`` that goes through this proxy."""
        p = f"RCLONE_CONFIG_{self.name.upper()}_"
        return {
            p + "TYPE": "webdav",
            p + "URL": self.url,
            p + "VENDOR": "rclone",
            p + "PACER_MIN_SLEEP": pacer_min_sleep,
        }

    def start(self) -> RateLimitProxy:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="ratelimit-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, and join every thread of the proxy."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        assert self._thread is not None
        self._thread.join(10)
        with self._lock:
            open_now = list(self._connections)
        for conn in open_now:  # handlers blocked reading a kept-alive connection wake up and end
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()  # closes the listening socket and joins the handler threads

    def __enter__(self) -> RateLimitProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True  # server_close() joins the handler threads
    proxy: RateLimitProxy

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is no news
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go in separate writes: no 40 ms delayed-ACK stall
    timeout = 60  # a client that stalls mid-request cannot hold a thread for ever
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, True)
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, False)
            if self._upstream is not None:
                self._upstream.close()

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read the counters
        pass

    # every method rclone's webdav client uses, and any other
    def __getattr__(self, name: str):
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    # -- request body -----------------------------------------------------------------------------
    def _body_chunks(self):
        """The request body as it arrives, in chunks (Content-Length or chunked encoding)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed mid-body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    if not data:
                        raise ConnectionError("client closed mid-chunk")
                    left -= len(data)
                    yield data
                self.rfile.readline(3)  # the CRLF after the chunk
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, CHUNK))
                if not data:
                    raise ConnectionError("client closed mid-body")
                left -= len(data)
                yield data

    def _has_body(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower() or bool(
            int(self.headers.get("Content-Length") or 0)
        )

    # -- the work ---------------------------------------------------------------------------------
    def _handle(self) -> None:
        verdict = self.server.proxy._verdict(self.command, self.path)
        if verdict is not None:
            self._refuse(*verdict)
        else:
            self._forward()

    def _refuse(self, fault: Fault, retry_after: float | None) -> None:
        for _ in self._body_chunks():  # read (and drop) the upload, as a server does before answering
            pass
        self.send_response(fault.status, fault.reason)
        self.send_header("Content-Type", fault.content_type)
        self.send_header("Content-Length", str(len(fault.body)))
        if retry_after is not None:
            self.send_header("Retry-After", f"{retry_after:g}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(fault.body)

    def _connect(self) -> http.client.HTTPConnection:
        if self._upstream is None:
            host, port = self.server.proxy.upstream
            self._upstream = http.client.HTTPConnection(host, port, timeout=60)
        return self._upstream

    def _send_upstream(self, chunked: bool) -> http.client.HTTPResponse:
        conn = self._connect()
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for key, value in self.headers.items():
            if key.lower() not in HOP_BY_HOP:
                conn.putheader(key, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif self.headers.get("Content-Length") is not None:
            conn.putheader("Content-Length", self.headers["Content-Length"])
        conn.endheaders()
        for data in self._body_chunks():
            conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            conn.send(b"0\r\n\r\n")
        return conn.getresponse()

    def _forward(self) -> None:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        try:
            try:
                resp = self._send_upstream(chunked)
            except (OSError, http.client.HTTPException):
                if self._has_body():
                    raise
                self._upstream.close()  # a kept-alive upstream connection gone stale: once more, afresh
                self._upstream = None
                resp = self._send_upstream(chunked)
        except (OSError, http.client.HTTPException) as exc:
            if self._upstream is not None:
                self._upstream.close()
                self._upstream = None
            if self._has_body():  # the body is partly consumed: this connection cannot be reused
                self.close_connection = True
            body = f"upstream failed: {exc}\n".encode()
            self.send_response(502, "Bad Gateway")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        length = resp.getheader("Content-Length")
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        if no_body:
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            resp.read()
        elif length is not None and not resp.chunked:
            self.send_header("Content-Length", length)
            self.end_headers()
            self._copy(resp, chunked=False)
        else:  # chunked or read-until-close upstream: chunked to the client
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._copy(resp, chunked=True)
            self.wfile.write(b"0\r\n\r\n")
        if resp.will_close:
            self._upstream.close()  # type: ignore[union-attr]
            self._upstream = None
        self.wfile.flush()

    def _copy(self, resp: http.client.HTTPResponse, chunked: bool) -> None:
        while True:
            data = resp.read(CHUNK)
            if not data:
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
