"""What stage and push share: the per-call context, streamed reads, results and state files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, TypeVar

import humanize
import platformdirs

from .destination.safety import Where
from .errors import ColabMagicsError, RcloneError, RemoteNotFound, TransferCancelled, VerificationError
from .events import MEANINGFUL_BYTES, Direction, EventBus, Job, Progress
from .rclone import remotes
from .rclone.daemon import Body
from .rclone.output import Entry
from .rclone.process import Rclone, RcloneProcess
from .rclone.remotes import remote_info
from .streams import Readable

T = TypeVar("T")
logger = logging.getLogger(__name__)


class HashingReader:
    """A read-only stream that hashes (MD5) and counts what passes, and honours cancellation.

    It reads the pipe in large blocks of whatever has arrived (``read1``) and serves the many
    small reads of a tar parser from memory: fewer blocking calls, fewer GIL hand-offs
    between parallel part streams.
    """

    BLOCK = 1 << 20

    def __init__(self, raw: Readable, cancel: threading.Event, on_bytes: Callable[[int], None] | None = None) -> None:
        self.raw = raw
        self.md5 = hashlib.md5()
        self.count = 0
        self._cancel = cancel
        self._on_bytes = on_bytes
        self._buf = b""
        self._pos = 0

    def _fill(self) -> bool:
        if self._cancel.is_set():
            raise TransferCancelled("transfer cancelled")
        read1 = getattr(self.raw, "read1", self.raw.read)
        data = read1(self.BLOCK)
        if not data:
            return False
        self.md5.update(data)
        self.count += len(data)
        if self._on_bytes is not None:
            self._on_bytes(len(data))
        self._buf, self._pos = data, 0
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            chunks = [self._buf[self._pos :]]
            self._buf, self._pos = b"", 0
            while self._fill():
                chunks.append(self._buf)
                self._buf = b""
            return b"".join(chunks)
        if self._pos >= len(self._buf) and not self._fill():
            return b""
        end = self._pos + n
        data = self._buf[self._pos : end]
        self._pos = min(end, len(self._buf))
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        self._buf, self._pos = b"", 0
        while self._fill():
            pass


class Context:
    """One stage or push call: its rclone, job, cancellation and the children it must stop."""

    def __init__(self, rclone: Rclone | None, job: Job, cancel: threading.Event | None) -> None:
        self.rc = rclone or Rclone()
        self.job = job
        self.cancel = cancel or threading.Event()
        self._procs: list[RcloneProcess] = []
        self._lock = threading.Lock()

    def on_stats(self, p: Progress) -> None:
        self.job.update(
            done_bytes=p.done_bytes, total_bytes=p.total_bytes, rate=p.rate, eta=p.eta,
            done_files=p.done_files, total_files=p.total_files,
        )  # fmt: skip

    def on_note(self, note: str) -> None:
        self.job.update(note=note)

    @property
    def watch(self) -> dict[str, Any]:
        """What a daemon call of this job takes (``**ctx.watch``): its cancel, and where its notes go."""
        return {"cancel": self.cancel, "on_note": self.on_note}

    def start(self, *args: str, stdin: int | None = None) -> RcloneProcess:
        p = self.rc.start(*args, stdin=stdin, on_note=self.on_note)
        with self._lock:
            self._procs.append(p)
        return p

    def run(self, *args: str, stats: bool = False) -> bytes:
        return self.rc.run(*args, on_stats=self.on_stats if stats else None, on_note=self.on_note, cancel=self.cancel)

    def read_optional(self, path: str) -> bytes | None:
        """Content of the small remote file ``path``, or None where it does not exist (one daemon call)."""
        with tempfile.TemporaryDirectory(prefix="cm-read-") as tmp:
            target = os.path.join(tmp, "file")
            try:
                self.rc.copyfile(path, target, **self.watch)
            except RemoteNotFound:
                return None
            try:
                with open(target, "rb") as fh:
                    return fh.read()
            except FileNotFoundError:  # a bucket remote: a missing object copies nothing
                return None

    def read_replaced(
        self, final: str, rank: Callable[[bytes], float | None], repair: bool, copies: bool = True
    ) -> bytes | None:
        """Content of ``final``, a small file written by :meth:`replace`; where it is missing, of its
        temporary copy that ``rank`` ranks highest (None: not a whole copy).  rclone's move deletes the
        old file before it moves the new one in, so a replace cut between the two (a refused request, a
        kill) leaves that copy as the only version, complete and verified.  ``repair`` (a writer): also
        move it into place and drop the other copies; without it nothing is written (a stage only reads).
        ``copies=False``: the caller looks for copies itself (:meth:`best_copy`), from a listing it needs.

        In a local folder (above all Colab's Drive mount) files of ``final``'s name that Drive holds
        twice show as ``name (1).ext`` (DriveFS's names for Drive's duplicates; after the first is gone,
        the other may keep that name: colabtools#6106).  Those are weighed with ``final`` by ``rank``, so
        a reader never takes an older version for the last one, nor a writer sweep parts it needs."""
        raw = self.read_optional(final)
        duplicates = drive_duplicates(final)
        if duplicates:
            why = "Drive holds files of this name"
            return self.best_copy(final, duplicates, rank, repair, current=raw, why=why)
        if raw is not None or not copies:
            return raw
        return self.best_copy(final, self._copies(final)[1], rank, repair)

    def best_copy(
        self,
        final: str,
        copies: list[str],
        rank: Callable[[bytes], float | None],
        repair: bool,
        current: bytes | None = None,
        why: str = "it was missing: a replace was cut short",
    ) -> bytes | None:
        """Of ``current`` (``final``'s content, if any) and ``copies`` (names beside it), the content that
        ``rank`` ranks highest (whole ones only); with ``repair`` it is moved into place and the copies are
        dropped (see :meth:`read_replaced`)."""
        folder, name = remotes.parent(final)
        ranked = []
        for candidate in ([name] if current is not None else []) + copies:
            data = current if candidate == name else self.read_optional(remotes.join(folder, candidate))
            order = None if data is None else rank(data)
            if order is not None:
                ranked.append((order, candidate, data))
        if not ranked:
            return None
        _, best, raw = max(ranked)
        if best != name or len(ranked) > 1:
            logger.warning("%s: %s; %s is used%s", final, why, best, " and kept alone" if repair else "")
        if repair:
            if best != name:
                self.rc.moveto(remotes.join(folder, best), final, **self.watch)
            self._drop(folder, [other for other in copies if other != best])
        return raw

    def _copies(self, final: str) -> tuple[str, list[str]]:
        """The folder of ``final``, and the names of the temporary copies of it there."""
        folder, name = remotes.parent(final)
        try:
            listing = self.rc.lsjson(folder, files_only=True, **self.watch)
        except RemoteNotFound:
            return folder, []
        return folder, copies_in(listing, name)

    def drop_copies(self, final: str) -> None:
        """Delete the temporary copies of ``final`` that cut replaces left, with rclone's usual retries
        (a copy left behind is read as ``final`` once that is gone): for a writer that knows them to be
        its own or superseded.  Never fails: the stale sweep removes what is left."""
        try:
            folder, copies = self._copies(final)
        except ColabMagicsError as exc:
            logger.debug("copies of %s left to the stale sweep: %s", final, exc)
            return
        self._drop(folder, copies)

    def _drop(self, folder: str, names: list[str]) -> None:
        """Delete ``names`` in ``folder``, with rclone's usual retries; never fails (see :meth:`drop_copies`)."""
        try:
            for name in names:
                self.rc.deletefile(remotes.join(folder, name), **self.watch)
        except ColabMagicsError as exc:
            logger.debug("%s in %s left to the stale sweep: %s", names, folder, exc)

    def move_over(self, tmp: str, final: str) -> None:
        """Move the verified ``tmp`` over ``final``.  rclone's move deletes ``final`` first; if the
        move then fails, ``tmp`` may be the only version left, so it stays unless ``final`` is there
        (for a manifest or a lock, :meth:`read_replaced` then reads it)."""
        try:
            self.rc.moveto(tmp, final, **self.watch)
        except BaseException:
            try:
                self.rc.stat(final, brief=True, within=CLEANUP_SECONDS)
            except Exception:  # gone, or unknown: keep the new version
                logger.debug("%s: the move over it failed; %s is kept", final, tmp)
            else:
                quietly(self.rc.deletefile, tmp)
            raise

    def replace(self, final: str, data: bytes) -> None:
        """Put the small file ``data`` at ``final`` and prove it is there.

        The final name holds the old or the new content, never a half (or, if the move is cut after
        rclone deleted the old one, nothing, with the new content whole beside it: see
        :meth:`move_over`): ``data`` goes up under a temporary name, is checked, and is moved over
        ``final`` whatever that holds (see
        :meth:`~.rclone.process.Rclone.moveto`: generic WebDAV servers keep neither hashes nor
        times, and a plain move would keep the old file of equal size).  Whatever the backend claims, the
        final name is then read back (its MD5 where the remote keeps one, else its bytes) and
        compared with ``data``; callers remove nothing the old content needed until this returns.
        """
        tmp = copy_prefix(final) + short_id()
        md5 = hashlib.md5(data).hexdigest()
        try:
            with tempfile.TemporaryDirectory(prefix="cm-write-") as folder:
                source = os.path.join(folder, "file")
                with open(source, "wb") as fh:
                    fh.write(data)
                self.rc.copyfile(source, tmp, **self.watch)
            verify_upload(self, tmp, len(data), md5)
        except BaseException:
            quietly(self.rc.deletefile, tmp)
            raise
        self.move_over(tmp, final)
        if remote_info(self.rc, final).md5:
            got = self.rc.stat(final, hash="md5", **self.watch)
            same = got.size == len(data)
            remote_md5 = got.hash("md5")
            if same:  # an object stored without an MD5 is compared by its bytes
                same = remote_md5 == md5 if remote_md5 else self.read_optional(final) == data
        else:
            same = self.read_optional(final) == data
        if not same:
            raise VerificationError(
                f"{final} does not hold what was just written to it (the server kept other content, or another "
                "writer replaced it); nothing that its previous version needs was removed: try again"
            )

    def stop_children(self) -> None:
        """Cancel: stop every child so that readers blocked on a pipe wake up."""
        self.cancel.set()
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            p.stop(grace=1.0)

    def stream(
        self, path: str, consume: Callable[[HashingReader], T], on_bytes: Callable[[int], None] | None = None
    ) -> tuple[T, HashingReader]:
        """The file ``path`` fed to ``consume``; a stream cut short is told apart from corrupt data (a
        consumer that refuses what it read before the end has not seen a cut: the rest is unread)."""
        with self.rc.open(path, **self.watch) as body:
            reader = HashingReader(body, self.cancel, on_bytes)
            try:
                result = consume(reader)
                reader.drain()
            except (EOFError, tarfile.TarError, VerificationError, ValueError) as exc:
                if body.broken:
                    raise _cut_short(path, body) from exc
                if isinstance(exc, VerificationError):
                    raise
                raise VerificationError(f"{path} is truncated or corrupt ({exc}); re-push it") from exc
            if not body.complete:
                raise _cut_short(path, body)
        return result, reader


def _cut_short(path: str, body: Body) -> RcloneError:
    got, length = f"{body.count:,}", f"{body.length or 0:,}"
    return RcloneError(f"the remote's stream of {path} broke off after {got} of {length} bytes; run it again")


def run_job(
    name: str,
    direction: Direction,
    detail: str,
    work: Callable[[Context], Result],
    rclone: Rclone | None = None,
    events: EventBus | None = None,
    cancel: threading.Event | None = None,
    where: str = "",
    target: str = "",
) -> Result:
    """Run ``work`` as one job: started, then finished with its summary or failed with its error.

    On any failure (Ctrl-C included) every rclone child of the job is stopped first.
    """
    job = Job(name, direction, events, where, target)
    ctx = Context(rclone, job, cancel)
    job.start(detail)
    try:
        result = work(ctx)
    except BaseException as exc:
        ctx.stop_children()
        job.fail(str(exc) or type(exc).__name__)
        raise
    job.finish(result)
    return result


@dataclass
class Result:
    """What a stage or push did, with the one-line summary the magics and CLI print."""

    action: str  # "staged" or "pushed"
    source: str
    dest: str
    kind: str  # packed, archive, folder, file
    files: int
    bytes: int
    seconds: float
    up_to_date: bool = False
    reused_parts: int = 0
    note: str = ""
    moved_files: int | None = None  # what actually crossed the network, when less than everything
    moved_bytes: int | None = None
    where: str = ""  # pushes: where the data now really lives (a :class:`Where` value)

    def summary(self, route: bool = True, caveat: str | None = None) -> str:
        """The one line people read.  ``route`` names source and destination (a status row already
        does); ``caveat`` replaces where the data lives (e.g. once Drive's mount was flushed)."""
        size = humanize.naturalsize(self.bytes, binary=True)
        if self.up_to_date:
            what = f"is already up to date with {self.source}" if route else "already up to date"
            line = f"{self.dest if route else ''} {what} ({self.files:,} {_files(self.files)}, {size})".lstrip()
        else:
            moved = self.bytes if self.moved_bytes is None else self.moved_bytes
            rate = humanize.naturalsize(moved / max(self.seconds, 1e-3), binary=True)
            what = f"{self.files:,} {_files(self.files)} ({size})"
            if self.moved_files is not None and self.moved_files != self.files:
                what = (
                    f"{self.moved_files:,} changed of {self.files:,} files "
                    f"({humanize.naturalsize(moved, binary=True)} of {size})"
                )
            # a rate means nothing for a sync of a second or a few bytes ("0 Bytes/s")
            how = f"{rate}/s, {self.kind}" if self.seconds >= 1.0 and moved >= MEANINGFUL_BYTES else self.kind
            path = f" from {self.source} to {self.dest}" if route else ""
            line = f"{self.action} {what}{path} in {self.seconds:.1f}s ({how})"
            if self.reused_parts:
                line += f"; {self.reused_parts} part(s) already there"
        if caveat or self.where:
            line += f"; {caveat or Where(self.where).caveat()}"
        return line + (f". {self.note}" if self.note else "")


CLEANUP_SECONDS = 1.5  # per clean-up call: a Ctrl-C must end in seconds even with the server gone


def quietly(action: Callable[..., None], *args: str, within: float = CLEANUP_SECONDS) -> None:
    """Clean up our own temporary files with one brief try (``action`` is one of :class:`Rclone`'s
    calls, such as ``rc.deletefile``): its failure must not hide the real error, and a dead server must
    not hold up a Ctrl-C.  What it leaves, the next run sweeps away."""
    try:
        action(*args, brief=True, within=within)
    except Exception as exc:
        logger.debug("clean-up %s %s left to the next run: %s", getattr(action, "__name__", action), args, exc)


def verify_upload(ctx: Context, remote: str, size: int, md5: str | None) -> None:
    """Sizes always, MD5 where the remote keeps it."""
    has_md5 = remote_info(ctx.rc, remote).md5
    got = ctx.rc.stat(remote, hash="md5" if has_md5 else "", **ctx.watch)
    if got.size != size:
        raise VerificationError(f"{remote}: uploaded {size:,} bytes but the remote holds {got.size:,}; push again")
    remote_md5 = got.hash("md5")
    if md5 and remote_md5 and remote_md5 != md5:
        raise VerificationError(f"{remote}: the uploaded bytes do not match their MD5; push again")


def _files(n: int) -> str:
    return "file" if n == 1 else "files"


def state_dir() -> Path:
    """Where small bookkeeping files live (``COLAB_MAGICS_STATE_DIR`` overrides)."""
    configured = os.environ.get("COLAB_MAGICS_STATE_DIR")
    return Path(configured) if configured else Path(platformdirs.user_cache_dir("colab_magics"))


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict) -> None:
    """Write atomically (temp file + rename), so a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def drive_duplicates(final: str) -> list[str]:
    """Names beside the local file ``final`` that DriveFS gives files of the same title:
    ``manifest (1).json`` for ``manifest.json`` (none for a remote path: one listing of a local folder)."""
    local = remotes.local_path(final)
    if local is None:
        return []
    folder, name = os.path.split(local)
    try:
        return sorted(n for n in os.listdir(folder) if n != name and drive_title(n) == name)
    except OSError:
        return []


def drive_title(name: str) -> str:
    """The name a file shown by the Drive mount as ``name`` has on Drive: ``part-1 (2).tar`` -> ``part-1.tar``."""
    stem, ext = os.path.splitext(name)
    return re.sub(r" \(\d+\)$", "", stem) + ext


def copy_prefix(name: str) -> str:
    """What the temporary copies of ``name`` (a path or a bare name) start with while they go up."""
    return f"{name}.cm-tmp-"


def copies_in(listing: list[Entry], name: str) -> list[str]:
    """The temporary copies of the file ``name`` among the entries of a listing of its folder."""
    return [e.path for e in listing if not e.is_dir and e.path.startswith(copy_prefix(name))]


def short_id() -> str:
    """A unique name part that also says when it was made (8 hex digits of Unix time, 6 random)."""
    return f"{int(time.time()):08x}{os.urandom(3).hex()}"


STALE_SECONDS = 3600.0  # a temporary file of ours older than this was left by a killed or cut-off run
_STAMPED = re.compile(r"(?:cm-upload-|cm-tmp-|part-)([0-9a-f]{8})[0-9a-f]{6}")


def age(name: str, modtime: str | None, now: float) -> float:
    """How old a file of ours is: from the time in its name (:func:`short_id`), else its listed
    modification time (a bucket remote lists any folder as made just now; 0 when unknown)."""
    stamped = _STAMPED.search(name)
    if stamped:
        return now - int(stamped.group(1), 16)
    try:
        return now - datetime.fromisoformat((modtime or "").replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


_ABORTED: set[str] = set()  # key prefixes whose stale multipart uploads this process has aborted
_ABORTED_LOCK = threading.Lock()


def abort_stale_uploads(ctx: Context, prefixes: list[str]) -> None:
    """S3 keeps (and bills) the parts of a multipart upload whose rclone was killed, invisible to any
    listing, until someone aborts it.  Abort those under our own temporary names that are older than
    :data:`STALE_SECONDS`, once per process and prefix: leftovers come from runs that are gone.
    ``rclone backend cleanup`` matches the raw key prefix, so a neighbour's uploads are never touched."""
    if remote_info(ctx.rc, prefixes[0]).type != "s3":
        return
    with _ABORTED_LOCK:
        todo = [p for p in prefixes if p not in _ABORTED]
        _ABORTED.update(todo)
    logger.debug("multipart sweep: %d prefix(es) to do, %d done before", len(todo), len(prefixes) - len(todo))
    for prefix in todo:
        try:
            ctx.rc.backend("cleanup", prefix, {"max-age": f"{int(STALE_SECONDS)}s"})
        except ColabMagicsError as exc:  # the sweep never fails the work it follows; the next process tries again
            logger.debug("multipart sweep of %s skipped: %s", prefix, exc)


def sweep(ctx: Context, folder: str, prefixes: tuple[str, ...]) -> None:
    """Remove what killed runs left in ``folder``: our temporary files and folders (names that start
    with one of ``prefixes``) older than :data:`STALE_SECONDS`, in one listing and one brief try each."""
    try:
        listing = ctx.rc.lsjson(folder, **ctx.watch)
    except ColabMagicsError as exc:  # the sweep never fails the work it follows
        logger.debug("stale sweep of %s skipped: %s", folder, exc)
        return
    now = time.time()
    stale = [e for e in listing if e.path.startswith(prefixes) and age(e.path, e.mod_time, now) > STALE_SECONDS]
    logger.debug("stale sweep of %s: %d of %d entries are leftovers of killed runs", folder, len(stale), len(listing))
    for entry in stale:
        quietly(ctx.rc.purge if entry.is_dir else ctx.rc.deletefile, remotes.join(folder, entry.path))
