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
import contextlib
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
from collections.abc import Iterator, Sequence
from typing import IO, Any, Callable

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
from . import daemon, output
from .binary import find_rclone

logger = logging.getLogger(__name__)

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
_NOT_FOUND = re.compile(r"not found|not a directory|no such file or directory", re.IGNORECASE)


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


# one brief try (a probe, a clean-up): a short connect and I/O timeout, no retries (the S3 backend's
# AWS SDK takes its attempts from --low-level-retries, so this also ends its 10 tries in each of rclone's)
FAIL_FAST = ["--contimeout", "5s", "--timeout", "10s", "--low-level-retries", "1", "--retries", "1"]

# answers that mean the server is gone, not that it refused this request
_NETWORK = re.compile(
    r"connection refused|no such host|i/o timeout|connection reset|network is unreachable|no route to host|"
    r"context deadline exceeded|timeout|timed out|unexpected EOF|server misbehaving|broken pipe",
    re.IGNORECASE,
)


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


def classify(command: str, errors: Sequence[str], tail: Sequence[str], rc: int) -> ColabMagicsError:
    """The exception that rclone's exit code and own messages amount to (a child's, or a daemon
    call's: a failed call counts as exit 1)."""
    # "Fatal error received" says nothing: rclone gives the cause in a "Failed to <command>: ..." notice
    real = [m for m in errors if m != _FATAL]
    messages = real or [t for t in tail if t.startswith("Failed to ")] or errors or list(tail)
    updating = [m.split(": ", 1)[0] for m in errors if ": Failed to copy: " in m and _UPDATING in m]
    if updating and all(_UPDATING in m for m in errors):
        paths = list(dict.fromkeys(updating))
        return SourceChanged(
            f"{paths[0]} changed while it was being uploaded; push again once it is written", paths
        )
    said = list(dict.fromkeys(_ATTEMPT.sub("", m) for m in messages if m))
    said = [m for m in said if not any(o != m and o.endswith(": " + m) for o in said)]  # said once, with context
    text = "; ".join(said) or f"exit status {rc}"
    text = " ".join(text.split())  # one line, whatever a server put in its error body
    text = text if len(text) < 400 else text[:400] + "..."
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
        return classify(self.command, self.errors, list(self._tail), rc)

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
        found"), else its network error in a few words.

        A child of its own, not the daemon: a probe must open new connections, as a stuck child had
        to.  The daemon's pooled ones may still work where new ones hang (an SSH server that stopped
        accepting keeps serving the connections it has), and the probe runs only after 10 quiet seconds.
        """
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

    # -- calls to the daemon ----------------------------------------------------------------------
    def call(
        self,
        method: str,
        params: dict[str, Any],
        *,
        command: str,
        path: str,
        cancel: threading.Event | None = None,
        on_note: NoteCallback | None = None,
        brief: bool = False,
        within: float | None = None,
    ) -> dict[str, Any]:
        """One call to this process's rclone daemon (:mod:`.daemon`), run as an rclone job and polled.

        ``command`` is the rclone command it stands for, in errors (``lsjson``, ``moveto``); ``path``
        the remote path it works on, probed if the call shows no sign of life for a while (as a
        child's remote is).  ``brief``: one short try (short timeouts, no retries), for clean-ups.
        ``within``: seconds before the job is stopped and :class:`Late` raised.  A cancel or Ctrl-C
        stops the job too.
        """
        if brief:
            params = {**params, "_config": {**params.get("_config", {}), **BRIEF_CONFIG}}
        reach = None if brief else Reachability(lambda: self.probe(path), self.patience, on_note)
        t0 = time.monotonic()
        with self._lease(command) as rcd:
            try:
                job = rcd.request(method, {**params, "_async": True})["jobid"]
            except daemon.CallFailed as exc:
                raise classify(command, [str(exc)], [], 1) from None
            except (OSError, KeyError) as exc:
                raise _gone(rcd, exc) from None
            delay = 0.001
            try:
                while True:
                    status = rcd.request("job/status", {"jobid": job})
                    if status.get("finished"):
                        break
                    if cancel is not None and cancel.is_set():
                        raise TransferCancelled("transfer cancelled")
                    if within is not None and time.monotonic() - t0 > within:
                        raise Late(f"rclone {command} {log.command_line([path])} got no answer within {within:.0f}s")
                    if reach is not None:
                        reach.check()
                    time.sleep(delay)
                    # a call's answer is awaited at most 10 ms late in its first second (most calls are
                    # one or two requests: each waits its turn under --tpslimit), then 50 ms late
                    delay = min(delay * 2, 0.01 if time.monotonic() - t0 < 1 else 0.05)
            except (OSError, daemon.CallFailed) as exc:
                raise _gone(rcd, exc) from None
            except BaseException:
                try:
                    rcd.request("job/stop", {"jobid": job}, timeout=5.0)
                except (OSError, daemon.CallFailed):
                    pass
                raise
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "rclone rc %s %s: %s after %.3fs", method, log.command_line([path]),
                "ok" if status.get("success") else f"error {str(status.get('error'))[:200]}", time.monotonic() - t0,
            )  # fmt: skip
        if not status.get("success"):
            raise classify(command, [str(status.get("error") or "failed")], [], 1)
        out = status.get("output")
        return out if isinstance(out, dict) else {}

    @contextlib.contextmanager
    def open(
        self, path: str, *, cancel: threading.Event | None = None, on_note: NoteCallback | None = None
    ) -> Iterator[daemon.Body]:
        """The file ``path`` as a stream (``rclone cat``), served by the daemon: no process per stream,
        one rclone's memory for all of them.  A cancel, a Ctrl-C or a remote that stops answering
        (probed as a child's is) ends it between reads; a stream cut short shows in ``complete``."""
        reach = Reachability(lambda: self.probe(path), self.patience, on_note)

        def waiting() -> None:
            if cancel is not None and cancel.is_set():
                raise TransferCancelled("transfer cancelled")
            reach.check()

        fs, remote = split_root(path)
        with self._lease("cat") as rcd:
            try:
                body = rcd.open(fs, remote, waiting, reach.alive)
            except daemon.CallFailed as exc:
                raise classify("cat", [str(exc)], [], 1) from None
            except OSError as exc:
                raise _gone(rcd, exc) from None
            t0 = time.monotonic()
            try:
                yield body
            except OSError as exc:  # the connection broke: the daemon died mid-stream
                raise _gone(rcd, exc) from None
            finally:
                body.close()
                logger.debug(
                    "rclone cat %s (daemon): %d of %s bytes after %.3fs",
                    log.command_line([path]), body.count, body.length, time.monotonic() - t0,
                )  # fmt: skip

    def _lease(self, command: str) -> daemon.Lease:
        try:
            return daemon.Lease(self.binary, self.flags)
        except daemon.DaemonError as exc:  # it would not start: a flag it does not know, say
            raise classify(command, [exc.stderr or str(exc)], [], exc.exit_code or 1) from None

    def lsjson(
        self, folder: str, *, recurse: bool = False, files_only: bool = False, hash: str = "", include: str = "",
        **kw: Any,
    ) -> list[output.Entry]:
        """The entries of ``folder`` (``rclone lsjson``), every one checked; paths relative to ``folder``.
        ``hash``: a hash type to list where the remote keeps it (``md5``); ``include``: only the names
        that match this rclone filter pattern (``--include``: a backend that hashes by reading, as a
        local folder or the Drive mount does, then reads only those)."""
        opt: dict[str, Any] = {"recurse": recurse, "filesOnly": files_only, "noMimeType": True}
        if hash:
            opt.update(showHash=True, hashTypes=[hash])
        params: dict[str, Any] = {**_at(folder), "opt": opt}
        if include:
            params["_filter"] = {"IncludeRule": [include]}
        out = self.call("operations/list", params, command="lsjson", path=folder, **kw)
        entries = output.listing(out.get("list"), f"lsjson {log.command_line([folder])}")
        remote = params["remote"]
        depth = remote.count("/") + 1 if remote else 0  # rclone lists paths from the root: drop the folder's part
        return [e._replace(path=e.path.split("/", depth)[-1]) for e in entries] if depth else entries

    def stat(self, path: str, *, hash: str = "", **kw: Any) -> output.Entry:
        """The one entry at ``path`` (``rclone lsjson --stat``); :class:`RemoteNotFound` where there is none."""
        opt = {"noMimeType": True, **({"showHash": True, "hashTypes": [hash]} if hash else {})}
        out = self.call("operations/stat", {**_at(path), "opt": opt}, command="lsjson", path=path, **kw)
        if out.get("item") is None:
            raise RemoteNotFound(f"not found on the remote: {path}", exit_code=3)
        entry = output.entry(out["item"], f"lsjson --stat {log.command_line([path])}")
        return entry._replace(path=entry.path.rsplit("/", 1)[-1])  # its name, as lsjson --stat gives it

    def features(self, root: str) -> output.Features:
        out = self.call("operations/fsinfo", {"fs": root}, command="backend features", path=root)
        return output.features(out, f"backend features {log.command_line([root])}")

    def about(self, path: str) -> output.About:
        out = self.call("operations/about", {"fs": path}, command="about", path=path)
        return output.about(out, f"about {log.command_line([path])}")

    def remote_type(self, name: str) -> str:
        """The backend type of the configured remote ``name`` ("" if there is none): its
        ``RCLONE_CONFIG_<NAME>_TYPE`` variable (which rclone reads before the config file), else its
        config file section, through the daemon (one call, not a ``listremotes`` child)."""
        from_env = os.environ.get(f"RCLONE_CONFIG_{name.upper()}_TYPE", "").strip()
        if from_env:
            return from_env.lower()
        out = self.call("config/get", {"name": name}, command="config get", path=f"{name}:")
        return output.remote_type(out, f"config get {log.command_line([name])}")

    def copyfile(self, src: str, dst: str, **kw: Any) -> None:
        """Copy the file ``src`` to the file ``dst`` (``rclone copyto``)."""
        self.call("operations/copyfile", _pair(src, dst), command="copyto", path=dst if is_remote(dst) else src, **kw)

    def moveto(self, src: str, dst: str, **kw: Any) -> None:
        """Move the file ``src`` over ``dst``, whatever ``dst`` holds (``rclone moveto --ignore-times``:
        without it, a backend that keeps neither hashes nor times takes equal sizes for equal files,
        deletes the new one and keeps the old)."""
        params = {**_pair(src, dst), "_config": {"IgnoreTimes": True}}
        self.call("operations/movefile", params, command="moveto", path=dst, **kw)

    def deletefile(self, path: str, **kw: Any) -> None:
        self.call("operations/deletefile", _at(path), command="deletefile", path=path, **kw)

    def purge(self, path: str, **kw: Any) -> None:
        """Remove the folder ``path`` and all it holds."""
        self.call("operations/purge", _at(path), command="purge", path=path, **kw)

    def rmdirs(self, path: str, leave_root: bool = False, **kw: Any) -> None:
        """Remove the empty folders in ``path`` (and ``path`` itself unless ``leave_root``)."""
        params = {**_at(path), "leaveRoot": leave_root}
        self.call("operations/rmdirs", params, command="rmdirs", path=path, **kw)

    def delete_listed(self, folder: str, listfile: str, **kw: Any) -> None:
        """Delete the files of ``folder`` named in ``listfile``, one path per line (``--files-from-raw``)."""
        params = {"fs": folder, "_filter": {"FilesFromRaw": [listfile]}}
        self.call("operations/delete", params, command="delete", path=folder, **kw)

    def backend(self, name: str, path: str, options: dict[str, str], **kw: Any) -> dict[str, Any]:
        """A backend's own command (``rclone backend name path -o key=value``)."""
        params = {"command": name, "fs": path, "opt": options}
        return self.call("backend/command", params, command=f"backend {name}", path=path, **kw)


# FAIL_FAST for a daemon call (a clean-up's one brief try): durations in nanoseconds, as rclone's options are
BRIEF_CONFIG = {"ConnectTimeout": 5 * 10**9, "Timeout": 10 * 10**9, "LowLevelRetries": 1}


class Late(RcloneError):
    """A daemon call given ``within`` seconds had no answer by then (it was stopped)."""


def _gone(rcd: daemon.Daemon, exc: BaseException) -> RcloneError:
    """A call the daemon could not answer: it died or hung (the next call starts another)."""
    return daemon.DaemonError(
        f"the rclone daemon stopped answering ({exc or type(exc).__name__}); run again "
        f"(it is restarted): {rcd.said() or 'no message'}"
    )


def _at(path: str) -> dict[str, Any]:
    """The parameters that name ``path`` in a daemon call: its remote's root and the path below it."""
    fs, remote = split_root(path)
    return {"fs": fs, "remote": remote}


def _pair(src: str, dst: str) -> dict[str, str]:
    src_fs, src_remote = split_root(src)
    dst_fs, dst_remote = split_root(dst)
    return {"srcFs": src_fs, "srcRemote": src_remote, "dstFs": dst_fs, "dstRemote": dst_remote}


def is_remote(path: str) -> bool:
    """True for ``name:...`` and ``:backend:...`` paths, False for local paths (which rclone also accepts)."""
    if path.startswith("/") or ":" not in path:
        return False
    head = path.split(":", 1)[0]
    return "/" not in head and (len(head) != 1 or os.name != "nt")  # C:/x is a Windows path


def split_root(path: str) -> tuple[str, str]:
    """(the root of the remote that holds ``path``, the path below it): ``gdrive:a/b`` gives
    (``gdrive:``, ``a/b``), ``/x/y`` gives (``/``, ``x/y``).  Calls name files from the remote's root,
    so one backend (its client, Drive's folder cache) serves every call to that remote."""
    if not is_remote(path):
        return "/", os.path.abspath(path).lstrip("/")
    # the remote's part ends at the first colon outside a quoted option value: :webdav,url='http://h:1':x
    quote, i = "", 1 if path.startswith(":") else 0
    while i < len(path):
        c = path[i]
        if quote:
            if c == quote:
                if path[i + 1 : i + 2] == quote:  # a doubled quote is the quote itself
                    i += 1
                else:
                    quote = ""
        elif c in "'\"" and path[i - 1 : i] == "=":
            quote = c
        elif c == ":":
            break
        i += 1
    head, rest = path[: i + 1], path[i + 1 :]
    if rest.startswith("/"):  # sftp's absolute paths; elsewhere the same as without
        head, rest = head + "/", rest.lstrip("/")
    return head, rest.strip("/")


def with_option(path: str, key: str, value: str) -> str:
    """``path`` with a backend option of its own (``gdrive:x`` gives ``gdrive,key=value:x``); a local
    path has no backend to give it to and is returned as it is."""
    if not is_remote(path):
        return path
    head, rest = split_root(path)
    name, colon, slash = head.rpartition(":")
    return f"{name},{key}={value}{colon}{slash}{rest}"


def _pipe(pipe: IO[bytes] | None, name: str) -> IO[bytes]:
    if pipe is None:
        raise ValueError(f"this rclone child was started without a {name} pipe")
    return pipe


def _remote_in(args: Sequence[str]) -> str | None:
    """The first remote path among a command's arguments (``name:...`` or ``:backend:...``), if any."""
    return next((arg for arg in args[1:] if not arg.startswith("-") and is_remote(arg)), None)


def stop_all() -> None:
    """Stop every rclone child still running, and the daemon (interpreter exit, extension unload)."""
    with _live_lock:
        live = list(_live)
    for p in live:
        p.stop(grace=1.0)
    daemon.stop_all()


atexit.register(stop_all)
