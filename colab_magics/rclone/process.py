"""The one owner of rclone child processes.

Why our own runner rather than ``rclone_python``'s transfer functions: those build a command
*string* and run it with ``shell=True`` (a file named ``model$v1.pt`` is expanded by the
shell, names with quotes or newlines break) and ignore a configured rclone binary.  Here every
child gets an argv list, no shell.  What rclone prints (its JSON log on stderr, the JSON of
``lsjson`` and the like) is read into typed values by :mod:`.output`.  Its stats parser
(``extract_rclone_progress``) served here until the log lines were read whole for errors too: it
parses each line a second time, reports nothing before rclone knows a byte total, and raises
``KeyError`` on a stats line without ``bytes`` or ``speed``; so ``rclone-python`` is no longer a
dependency.

Every child is tracked so that Ctrl-C, ``cancel`` or interpreter exit stops it in stages
(interrupt, terminate, kill); stderr is read on its own thread so that a slow listener can
never stall rclone.  The debug trace (:mod:`colab_magics.log`) shows each child's argv, secrets
hidden, and its exit status and duration.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import IO, Any, Callable, TypeVar

from .. import log
from ..errors import (
    ColabMagicsError,
    QuotaError,
    RcloneError,
    RcloneOutputError,
    RemoteNotFound,
    RemoteUnreachable,
    SourceChanged,
    TransferCancelled,
    UnknownRemote,
)
from ..events import Progress, plausible_eta
from . import output
from .binary import find_rclone

logger = logging.getLogger(__name__)
Parsed = TypeVar("Parsed")

StatsCallback = Callable[[Progress], None]
NoteCallback = Callable[[str], None]  # what holds a child up now ("" once it moves again)

_live: set[RcloneProcess] = set()
_live_lock = threading.Lock()

_QUOTA = re.compile(
    r"rateLimitExceeded|userRateLimitExceeded|quotaExceeded|storageQuotaExceeded|"
    r"downloadQuotaExceeded|teamDriveFileLimitExceeded|Too ?Many ?Requests|\b429\b|"
    r"SlowDown|quota",
    re.IGNORECASE,
)
# a quota that waiting does not restore: only freeing space (or another destination) helps
_STORAGE_QUOTA = re.compile(
    r"storageQuotaExceeded|teamDriveFileLimitExceeded|storage quota|Insufficient ?Storage", re.IGNORECASE
)
_DOWNLOAD_QUOTA = re.compile(r"downloadQuotaExceeded", re.IGNORECASE)
# what a refusal says about itself: "429 Too Many Requests", Drive's reason and message
_HTTP_STATUS = re.compile(r"\b([45]\d\d) ((?:[A-Z][a-z]+)(?: [A-Z][a-z]+)*)")
_REASON = re.compile(
    r"\b(userRateLimitExceeded|rateLimitExceeded|storageQuotaExceeded|downloadQuotaExceeded|"
    r"teamDriveFileLimitExceeded|dailyLimitExceeded|quotaExceeded|SlowDown)\b"
)
_API_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.){1,200})"')
_NO_SECTION = re.compile(r"didn't find section in config file \(\"?([^\")]*)\"?\)")
_UPDATING = "source file is being updated"
_FATAL = "Fatal error received - not attempting retries"
_ATTEMPT = re.compile(r"Attempt \d+/\d+ failed with \d+ errors? and: ")  # each retry repeats the same cause
_NOT_FOUND = re.compile(r"directory not found|object not found|file not found|not found", re.IGNORECASE)


def _refusal(stderr: str, text: str) -> str:
    """A refusal in a few words: "HTTP 403 Forbidden, userRateLimitExceeded: User Rate Limit Exceeded",
    rather than the server's whole (often multi-line JSON) error body; ``text`` when none of it is there."""
    status = _HTTP_STATUS.search(stderr)
    reason = _REASON.search(stderr)
    message = _API_MESSAGE.search(stderr)
    words = ", ".join(
        part
        for part in (f"HTTP {status.group(1)} {status.group(2)}" if status else "", reason and reason.group(1))
        if part
    )
    if message and (not reason or message.group(1) != reason.group(1)):
        words = f"{words}: {message.group(1)}" if words else message.group(1)
    words = " ".join(words.split())
    return words or (text if len(text) < 200 else text[:200] + "...")


def extra_flags() -> list[str]:
    """Flags every rclone call gets from ``COLAB_MAGICS_RCLONE_FLAGS`` (e.g. ``--tpslimit 10``)."""
    return shlex.split(os.environ.get("COLAB_MAGICS_RCLONE_FLAGS", ""))


UNREACHABLE_TIMEOUT = 60.0


def unreachable_timeout() -> float:
    """Seconds a remote may stay unreachable before a call gives up (``COLAB_MAGICS_UNREACHABLE_TIMEOUT``)."""
    raw = os.environ.get("COLAB_MAGICS_UNREACHABLE_TIMEOUT", "")
    try:
        value = float(raw) if raw.strip() else UNREACHABLE_TIMEOUT
    except ValueError:
        return UNREACHABLE_TIMEOUT
    return value if value > 0 else UNREACHABLE_TIMEOUT


# answers that mean the server is gone, not that it refused this request
_NETWORK = re.compile(
    r"connection refused|no such host|i/o timeout|connection reset|network is unreachable|no route to host|"
    r"context deadline exceeded|timeout|timed out|unexpected EOF|server misbehaving|broken pipe",
    re.IGNORECASE,
)
# one brief try (a probe, a clean-up): a short connect and I/O timeout, no retries (the S3 backend's
# AWS SDK takes its attempts from --low-level-retries, so this also ends its 10 tries in each of rclone's)
FAIL_FAST = ["--contimeout", "5s", "--timeout", "10s", "--low-level-retries", "1", "--retries", "1"]


class Reachability:
    """Tells a remote that is slow from one that is gone, for one running child.

    rclone retries a dead server for minutes (a packed push against a killed S3 endpoint took 893 s
    to fail, from the AWS SDK's retries inside rclone's), and a slow one (a big listing on Drive)
    shows no progress for as long.  So a child that shows no sign of life for ``quiet`` seconds gets
    its remote probed with one short request; a remote that answers anything (even "not found") is
    alive and the child goes on; one that has shown no life for ``limit`` seconds while every probe
    failed to reach it ends the child with :class:`RemoteUnreachable`.
    """

    QUIET = 10.0
    PROBE_EVERY = 10.0

    def __init__(
        self,
        probe: Callable[[], str | None],
        limit: float,
        on_note: NoteCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe  # None when the remote answered, else the network error in a few words
        self.limit = limit
        self._on_note = on_note
        self._clock = clock
        self._last_life = clock()
        self._next_probe = 0.0
        self.failures = 0

    def alive(self) -> None:
        """The child moved (bytes or files): the remote is there."""
        self._last_life = self._clock()

    def check(self) -> None:
        """Probe when due; raise :class:`RemoteUnreachable` once the remote has been gone too long."""
        now = self._clock()
        if now - self._last_life < self.QUIET or now < self._next_probe:
            return
        reason = self._probe()
        self._next_probe = self._clock() + self.PROBE_EVERY
        if reason is None:
            self._last_life = self._clock()
            if self.failures:
                self.failures = 0
                self._note("")
            return
        self.failures += 1
        self._note(f"remote unreachable, retrying ({self.failures})")
        if self._clock() - self._last_life >= self.limit:
            raise RemoteUnreachable(
                f"the remote has not answered for {int(self.limit)}s ({reason}); check the server or the network "
                "and run again: what is on the remote was left as it was (the wait is "
                "COLAB_MAGICS_UNREACHABLE_TIMEOUT)"
            )

    def _note(self, text: str) -> None:
        if self._on_note is not None:
            self._on_note(text)


class RcloneProcess:
    """One running rclone child: argv, stats thread, staged stop, typed errors."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
        on_stats: StatsCallback | None = None,
        env: dict[str, str] | None = None,
        reach: Reachability | None = None,
        shown: Sequence[str] | None = None,
    ) -> None:
        """``shown``: ``argv`` as the trace shows it (default: ``argv`` with its secrets hidden)."""
        self.argv = list(argv)
        self._on_stats = on_stats
        self.reach = reach
        self._t0 = time.monotonic()
        self._ended = False
        self._bad_stats = False  # a stats line of an unexpected shape was reported once
        # a temporary folder of its own, removed when it ends: where a backend cannot stream an upload
        # (WebDAV servers without PutStream), rclone spools it whole to $TMPDIR, and a killed rclone
        # would leave that copy behind
        self._spool = tempfile.mkdtemp(prefix="cm-rclone-")
        env = {**(env if env is not None else os.environ), "TMPDIR": self._spool}
        self._moved = (0, 0, 0)  # bytes, transfers, checks in the last stats line: signs of life
        self.errors: list[str] = []
        self._tail: deque[str] = deque(maxlen=20)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=env,
                # its own session: the terminal's Ctrl-C reaches us, and we stop the child in order
                start_new_session=True,
            )
        except BaseException:
            shutil.rmtree(self._spool, ignore_errors=True)
            raise
        try:  # Linux 5.3+: a descriptor that becomes readable when the child exits
            self._pidfd: int | None = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        with _live_lock:
            _live.add(self)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("rclone[%d] start: %s", self.proc.pid, log.command_line(shown or self.argv))
        self._reader = threading.Thread(target=self._read_stderr, name="rclone-stderr", daemon=True)
        self._reader.start()

    @property
    def stdin(self) -> IO[bytes]:
        return _pipe(self.proc.stdin, "stdin")

    def feed(self, data: bytes, cancel: threading.Event | None = None) -> None:
        """Write ``data`` to the child's stdin without ever blocking for good.

        A child that stops reading (its server hung mid-upload) would block a plain write forever,
        deaf to a cancel and to the watchdog; here each wait for room is short, and between waits
        the cancel event and the remote's reachability are checked.  Data taken is a sign of life.
        """
        fd = self.stdin.fileno()
        if os.get_blocking(fd):
            os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            try:
                taken = os.write(fd, view)
            except BlockingIOError:
                taken = 0
            if taken:
                view = view[taken:]
                if self.reach is not None:
                    self.reach.alive()
                continue
            select.select([], [fd], [], 0.1)
            if cancel is not None and cancel.is_set():
                raise TransferCancelled("transfer cancelled")
            if self.reach is not None:
                self.reach.check()

    @property
    def stdout(self) -> IO[bytes]:
        return _pipe(self.proc.stdout, "stdout")

    def _read_stderr(self) -> None:
        for raw in _pipe(self.proc.stderr, "stderr"):
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            record = output.log_record(line)
            if record is None:
                if line.startswith("Error: "):  # its usage error, before a usage text that fills the tail
                    self.errors.append(line.removeprefix("Error: "))
                self._tail.append(line)
                continue
            level = record.get("level")
            if level == "info" and "stats" in record:
                self._stats(record["stats"])
            elif level in ("error", "critical"):
                obj = str(record.get("object") or "")
                msg = str(record.get("msg", "")).strip()
                self.errors.append(f"{obj}: {msg}" if obj else msg)
            else:
                self._tail.append(str(record.get("msg", line)))

    def _stats(self, data: object) -> None:
        """One stats line: any movement is a sign of life; progress goes to the listener once rclone
        knows the total.  A line of another shape only costs the progress display (said once)."""
        try:
            s = output.stats(data, self.command)
        except RcloneOutputError as exc:
            if not self._bad_stats:
                self._bad_stats = True
                logger.warning("no progress shown for this transfer: %s", exc)
            return
        moved = (s.bytes, s.transfers, s.checks)
        if moved != self._moved and self.reach is not None:
            self.reach.alive()
        self._moved = moved
        if self._on_stats is not None and s.total_bytes > 0:
            self._on_stats(
                Progress(
                    done_bytes=s.bytes,
                    total_bytes=s.total_bytes,
                    rate=s.speed,
                    eta=plausible_eta(s.eta, s.speed),
                    done_files=s.transfers,
                    total_files=s.total_transfers,
                )
            )

    def exited_within(self, timeout: float) -> bool:
        """Block until the child exits or ``timeout`` passes; wakes at once on exit (pidfd)."""
        pidfd = self._pidfd
        if pidfd is not None:
            try:
                ready, _, _ = select.select([pidfd], [], [], timeout)
                return bool(ready)
            except (OSError, ValueError):  # closed by a concurrent stop()
                return self.proc.poll() is not None
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def wait(self, cancel: threading.Event | None = None) -> int:
        """Wait for exit; Ctrl-C or ``cancel`` stops the child and raises."""
        try:
            while not self.exited_within(0.1):
                if cancel is not None and cancel.is_set():
                    self.stop()
                    raise TransferCancelled("transfer cancelled")
                if self.reach is not None:
                    self.reach.check()  # raises (and so stops the child) once the remote is gone too long
            rc = self.proc.wait()
        except BaseException:
            self.stop()
            raise
        self._reader.join(5)
        self._forget()
        return rc

    def check(self, cancel: threading.Event | None = None) -> None:
        """Wait, then raise the typed error for a non-zero exit."""
        rc = self.wait(cancel)
        if rc != 0:
            raise self.error(rc)

    def error(self, rc: int) -> ColabMagicsError:
        """The exception that rclone's exit code and own messages amount to."""
        # "Fatal error received" says nothing: rclone gives the cause in a "Failed to <command>: ..." notice
        real = [m for m in self.errors if m != _FATAL]
        messages = real or [t for t in self._tail if t.startswith("Failed to ")] or self.errors or list(self._tail)
        updating = [m.split(": ", 1)[0] for m in self.errors if ": Failed to copy: " in m and _UPDATING in m]
        if updating and all(_UPDATING in m for m in self.errors):
            paths = list(dict.fromkeys(updating))
            return SourceChanged(
                f"{paths[0]} changed while it was being uploaded; push again once it is written", paths
            )
        said = list(dict.fromkeys(_ATTEMPT.sub("", m) for m in messages if m))
        said = [m for m in said if not any(o != m and o.endswith(": " + m) for o in said)]  # said once, with context
        text = "; ".join(said) or f"exit status {rc}"
        text = " ".join(text.split())  # one line, whatever a server put in its error body
        text = text if len(text) < 400 else text[:400] + "..."
        command = self.command
        stderr = "\n".join(messages)
        m = _NO_SECTION.search(stderr)
        if m:
            name = m.group(1)
            env = "RCLONE_CONFIG_" + re.sub(r"\W", "_", name).upper() + "_TYPE"
            return UnknownRemote(
                f"unknown remote '{name}:': configure it with `rclone config` or set {env}=...",
                exit_code=rc,
                stderr=stderr,
            )
        if _STORAGE_QUOTA.search(stderr):
            return QuotaError(
                f"the remote is out of storage quota ({_refusal(stderr, text)}); nothing more can be uploaded "
                "there until space is freed (empty its trash too) or the quota is raised, or push to another remote",
                exit_code=rc,
                stderr=stderr,
            )
        if _DOWNLOAD_QUOTA.search(stderr):
            return QuotaError(
                f"the remote's download quota for this data is used up ({_refusal(stderr, text)}); "
                "wait until it resets (Drive: up to 24 hours) and stage again",
                exit_code=rc,
                stderr=stderr,
            )
        if rc == 2:
            flags = " (check COLAB_MAGICS_RCLONE_FLAGS)" if extra_flags() else ""
            return RcloneError(f"rclone {command} refused its arguments{flags}: {text}", exit_code=rc, stderr=stderr)
        if rc == 8:
            return RcloneError(
                f"rclone {command} stopped at its --max-transfer limit ({text}); raise or remove the limit "
                "(COLAB_MAGICS_RCLONE_FLAGS) and run again: what is on the remote is complete",
                exit_code=rc,
                stderr=stderr,
            )
        if _QUOTA.search(stderr):
            return QuotaError(
                f"the remote is rate-limiting requests ({_refusal(stderr, text)}); wait a few minutes and retry, "
                "or lower the request rate with COLAB_MAGICS_RCLONE_FLAGS='--tpslimit 5'",
                exit_code=rc,
                stderr=stderr,
            )
        if rc in (3, 4) or (rc == 1 and _NOT_FOUND.search(stderr)):
            return RemoteNotFound(f"not found on the remote: {text}", exit_code=rc, stderr=stderr)
        return RcloneError(f"rclone {command} failed (exit {rc}): {text}", exit_code=rc, stderr=stderr)

    def stop(self, grace: float = 1.0) -> None:
        """Stop the child in stages: interrupt, terminate, kill; close its pipes.  ``grace`` per stage:
        enough for rclone to abort an upload on a live server, short enough that a Ctrl-C with the
        server gone ends in seconds."""
        if self.proc.poll() is None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    self.proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._close_pipes(self.proc.stdin, self.proc.stdout)
        self._reader.join(2)
        self._forget()

    def _forget(self) -> None:
        """Drop the child from the live set and close its descriptors now, not at garbage collection."""
        if not self._ended:
            self._ended = True
            if logger.isEnabledFor(logging.DEBUG):
                rc = self.proc.poll()
                why = f": {self.errors[0][:200]}" if rc and self.errors else ""
                took = time.monotonic() - self._t0
                logger.debug("rclone[%d] %s: exit %s after %.3fs%s", self.proc.pid, self.command, rc, took, why)
        shutil.rmtree(self._spool, ignore_errors=True)
        with _live_lock:
            _live.discard(self)
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        if not self._reader.is_alive():
            self._close_pipes(self.proc.stderr)

    @staticmethod
    def _close_pipes(*pipes: IO[bytes] | None) -> None:
        for pipe in pipes:
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    @property
    def command(self) -> str:
        """rclone's command (``lsjson``, ``rcat``, ...)."""
        return self.argv[1] if len(self.argv) > 1 else "rclone"

    def __enter__(self) -> RcloneProcess:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None or self.proc.poll() is None:
            self.stop()  # closes the pipes too
        else:
            self._forget()
            self._close_pipes(self.proc.stdin, self.proc.stdout)


class Rclone:
    """Builds argv for one rclone binary and starts or runs children with it."""

    def __init__(
        self, binary: str | None = None, flags: Sequence[str] | None = None, patience: float | None = None
    ) -> None:
        self.binary = binary or find_rclone()
        self.flags = list(flags) if flags is not None else extra_flags()
        self.patience = patience if patience is not None else unreachable_timeout()

    def argv(self, args: Sequence[str], stats: bool = False, *, shown: bool = False) -> list[str]:
        """The child's argv; ``shown``: as the trace shows it, with the secrets hidden, and the values
        of the flags that came from the environment (``COLAB_MAGICS_RCLONE_FLAGS``)."""
        flags = log.redact(self.flags, hide_values=True) if shown else self.flags
        base = [self.binary, *(log.redact(args) if shown else args), "--use-json-log", *flags]
        if stats:
            base += ["-v", "--stats", "500ms", "--stats-log-level", "INFO"]
        return base

    def _process(self, args: Sequence[str], stats: bool = False, **kw: Any) -> RcloneProcess:
        shown = self.argv(args, stats, shown=True) if logger.isEnabledFor(logging.DEBUG) else None
        return RcloneProcess(self.argv(args, stats), shown=shown, **kw)

    def start(
        self,
        *args: str,
        stdin: int | None = None,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
        on_stats: StatsCallback | None = None,
        on_note: NoteCallback | None = None,
    ) -> RcloneProcess:
        """Start ``rclone args...``; the caller owns the returned process.  A child that works on a
        remote is watched: if that remote stops answering for ``patience`` seconds, it is stopped."""
        remote = _remote_in(args)
        reach = None
        if remote is not None:
            reach = Reachability(lambda: self.probe(remote), self.patience, on_note)
        return self._process(args, on_stats is not None, stdin=stdin, stdout=stdout, on_stats=on_stats, reach=reach)

    def probe(self, path: str) -> str | None:
        """One short request to the remote that holds ``path``: None if it answered at all (even "not
        found"), else its network error in a few words."""
        with self._process(["lsjson", "--stat", path, *FAIL_FAST]) as p:
            if not p.exited_within(15):  # the flags bound most backends; a hung S3 endpoint needs this
                p.stop(grace=1.0)
                return "no answer within 15s"
            rc = p.wait()
            if rc == 0:
                return None
            stderr = " ".join(p.errors + list(p._tail))
            found = _NETWORK.search(stderr)
            return found.group(0).lower() if found else None

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        on_stats: StatsCallback | None = None,
        on_note: NoteCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> bytes:
        """Run to completion and return stdout; raise the typed error on failure."""
        out = bytearray()
        stdin = subprocess.PIPE if input is not None else None
        with self.start(*args, stdin=stdin, on_stats=on_stats, on_note=on_note) as p:
            collector = threading.Thread(target=lambda: out.extend(p.stdout.read()), daemon=True)
            collector.start()
            if input is not None:
                try:
                    p.feed(input, cancel)
                    p.stdin.close()
                except BrokenPipeError:
                    pass
            p.check(cancel)
            collector.join()
        return bytes(out)

    def json(self, *args: str) -> object:
        """Run a command that prints JSON; its value, not checked yet (see the typed calls below)."""
        return self._parsed(lambda value, _: value, *args)

    def _parsed(self, parse: Callable[[object, str], Parsed], *args: str) -> Parsed:
        """Run a command that prints JSON and read it with ``parse``; both name the command in their errors."""
        command = log.command_line(args)
        return parse(output.decode(self.run(*args), command), command)

    def lsjson(self, *args: str) -> list[output.Entry]:
        """``rclone lsjson args...`` of a folder, every entry checked."""
        return self._parsed(output.listing, "lsjson", *args)

    def stat(self, path: str, *flags: str) -> output.Entry:
        """``rclone lsjson --stat path flags...``: the one entry at ``path``."""
        return self._parsed(output.entry, "lsjson", "--stat", path, *flags)

    def features(self, root: str) -> output.Features:
        return self._parsed(output.features, "backend", "features", root)

    def about(self, path: str) -> output.About:
        return self._parsed(output.about, "about", "--json", path)

    def remote_types(self) -> dict[str, str]:
        """Each configured remote's backend type, by name."""
        return self._parsed(output.remote_types, "listremotes", "--json")


def _pipe(pipe: IO[bytes] | None, name: str) -> IO[bytes]:
    if pipe is None:
        raise ValueError(f"this rclone child was started without a {name} pipe")
    return pipe


def _remote_in(args: Sequence[str]) -> str | None:
    """The first remote path among a command's arguments (``name:...`` or ``:backend:...``), if any."""
    for arg in args[1:]:
        if arg.startswith("-") or arg.startswith("/") or ":" not in arg:
            continue
        head = arg.split(":", 1)[0]
        if "/" not in head:
            return arg
    return None


def stop_all() -> None:
    """Stop every rclone child still running (interpreter exit, extension unload)."""
    with _live_lock:
        live = list(_live)
    for p in live:
        p.stop(grace=1.0)


atexit.register(stop_all)
