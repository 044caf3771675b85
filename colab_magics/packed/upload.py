"""Incremental upload of a folder as a packed dataset: ``push --pack`` and every persist sync.

Log-structured: parts already on the remote are kept as long as they hold enough current data;
only changed or new files go up, packed together into new parts, and the manifest (written
last, under a temporary name, then moved) maps each file to the part that holds its latest
version.  A kept part's members that are no longer current are listed in its ``skip`` list.
A part is repacked when less than half of it is still current, so waste stays bounded.

Two policies on top: ``keep_deleted`` (copy semantics: a file deleted locally stays on the
remote) and ``tolerant`` (a file that is still being written, or changes while it is read, is
left for the next sync and keeps its previous remote version, instead of failing the sync).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, cast

from ..destination.space import check_room
from ..destination.trash import TrashBudget
from ..errors import BadInput, ColabMagicsError, RemoteNotFound, SourceChanged, TransferCancelled, VerificationError
from ..jobs import (
    CLEANUP_SECONDS,
    STALE_SECONDS,
    Context,
    Result,
    abort_stale_uploads,
    age,
    copies_in,
    copy_prefix,
    drive_title,
    quietly,
    short_id,
    sweep,
)
from ..local import tree as localtree
from ..local.archives import check_symlink
from ..local.tree import FileStat
from ..lock import LOCK_NAME
from ..rclone import remotes
from ..rclone.process import RcloneProcess, with_option
from .manifest import (
    DEFAULT_PART_SIZE,
    MANIFEST_NAME,
    PARTS_PER_FOLDER,
    DirEntry,
    FileEntry,
    LinkEntry,
    Manifest,
    PartEntry,
    Segment,
)
from .tar_writer import Piece, plan, write_part

logger = logging.getLogger(__name__)

_OURS = ("parts", MANIFEST_NAME, LOCK_NAME)
# what a killed run leaves beside its parts (".cm-upload-" folders: where earlier versions staged parts)
_TEMPORARY = (".cm-upload-", copy_prefix(MANIFEST_NAME), copy_prefix(LOCK_NAME))


@dataclass
class SyncOptions:
    compression: str = "none"
    part_size: int = DEFAULT_PART_SIZE
    keep_deleted: bool = False
    tolerant: bool = False
    settle: float = 0.0  # wait (up to 3x this) until no file was modified for this long


@dataclass
class SyncOutcome:
    result: Result
    manifest: Manifest
    deferred: list[str] = field(default_factory=list)  # changed while read: previous version kept, next sync retries
    held: list[str] = field(default_factory=list)  # their upload would pass the Trash budget: previous version kept
    trashed: int = 0  # bytes this sync deleted at the destination (on a mount: into Drive's Trash)


class PackedSync:
    """One incremental packed upload of ``src`` to ``dest``."""

    def __init__(self, ctx: Context, src: str, dest: str, options: SyncOptions) -> None:
        self.ctx = ctx
        self.src = src
        self.dest = dest
        self.opt = options
        self.push_id = short_id()
        self.info = remotes.remote_info(ctx.rc, dest)
        self.nothing_left = False  # known to hold nothing a killed run could have left: no sweep needed

    def load_old(self) -> Manifest | None:
        """The manifest on the remote (or the copy a cut replace left, see :meth:`Context.read_replaced`),
        None for a new dataset; refuses a folder of other files.  One listing, only where there is no
        manifest: it also tells whether anything can be left there for the sweep to find."""
        final = remotes.join(self.dest, MANIFEST_NAME)
        raw = self.ctx.read_replaced(final, Manifest.generation_of, repair=True, copies=False)
        if raw is None:
            try:
                existing = self.ctx.rc.lsjson(self.dest, **self.ctx.watch)
            except RemoteNotFound:
                self.nothing_left = True
                return None
            raw = self.ctx.best_copy(final, copies_in(existing, MANIFEST_NAME), Manifest.generation_of, repair=True)
        if raw is not None:
            return Manifest.from_json(raw, self.dest)
        foreign = [e for e in existing if e.path not in _OURS and not e.path.startswith(_TEMPORARY)]
        if foreign:  # leftovers of our own interrupted upload are fine
            raise BadInput(f"{self.dest} already holds files that are not a packed dataset; push to another name")
        self.nothing_left = not existing
        return None

    def scan(self) -> localtree.Tree:
        tree = localtree.scan(self.src)
        if tree.special:
            raise BadInput(
                f"{self.src} holds a socket, fifo or device ({tree.special[0]!r}); remove it or push a subfolder"
            )
        for rel, target in tree.links:
            try:
                check_symlink(rel, target, self.src)
            except Exception:
                raise BadInput(
                    f"symlink {rel!r} -> {target!r} points outside {self.src}; replace it with a copy"
                ) from None
        return tree

    # -- the algorithm --------------------------------------------------------------------------
    def settled_scan(self) -> localtree.Tree:
        """A scan taken once the folder has been quiet for ``settle`` seconds, or after waiting that long.

        A file caught mid-write is still detected later (its ``stat`` changes while it is read);
        waiting first makes that rare for checkpoints written in bursts.
        """
        tree = self.scan()
        settle = self.opt.settle
        deadline = time.monotonic() + settle
        while settle and time.monotonic() < deadline:
            newest = max((f.mtime_ns for f in tree.files), default=0) / 1e9
            if time.time() - newest >= settle:
                break
            if self.ctx.cancel.wait(min(0.1, settle)):
                raise TransferCancelled("sync cancelled")
            tree = self.scan()
        return tree

    def run(
        self,
        old: Manifest | None = None,
        *,
        fetch_old: bool = True,
        before_commit: Callable[[], None] | None = None,
        sweep: bool = True,
        trash: TrashBudget | None = None,
        timed: bool = False,
    ) -> SyncOutcome:
        """Upload what changed; ``before_commit`` may veto (raise) just before the manifest is replaced.
        ``sweep``: also look for what killed or failed runs left (two listings); a caller that knows
        nothing can be left there (its own previous sync ended cleanly, and its lock keeps others
        out) skips them.  ``trash``: what the deletes may cost in Drive's Trash (a destination on the
        mount), spent here; a ``timed`` sync holds back the changes that would pass it."""
        tree = self.settled_scan()
        if fetch_old:
            old = self.load_old()
        if old is not None and old.compression != self.opt.compression:
            if self.opt.keep_deleted:
                self.opt.compression = old.compression  # one dataset, one compression
            else:
                old = None  # a full re-upload in the new compression
        current = {f.path: f for f in tree.files}
        old_files = {f.path: f for f in old.files} if old else {}
        unchanged = {
            p
            for p, f in current.items()
            if p in old_files and old_files[p].stat_key() == (p, f.size, f.mtime_ns, f.mode)
        }
        must_keep = set(old_files) - set(current) if self.opt.keep_deleted else set()
        allowance = trash.allowance(sum(f.size for f in current.values()), timed) if trash else None
        served, held = served_from_old(old, old_files, unchanged | must_keep, must_keep, allowance)
        to_upload = sorted(p for p in current if p not in served)
        total = sum(current[p].size for p in to_upload)
        if logger.isEnabledFor(logging.DEBUG):
            self._trace_plan(current, old_files, unchanged, must_keep, to_upload, total)
        self.ctx.job.update(total_bytes=total, total_files=len(to_upload))
        if self.opt.compression == "none":  # tar parts are at least as large as what they hold
            check_room(self.ctx, self.dest, total)

        new_parts: list[tuple[PartEntry, list[Piece]]] = []
        torn: set[str] = set()
        digests: dict[str, hashlib._Hash] = {}
        taken: dict[str, FileStat] = {}  # each file as it was when read
        started: set[str] = set()  # the parts this sync began to upload, whole or not
        written: bytes | None = None  # the new manifest, once it goes up
        try:
            for pieces in plan([current[p] for p in to_upload], self.opt.part_size) if to_upload else []:
                entry, changed = self._upload_part(pieces, digests, old, len(new_parts), taken, started)
                torn |= set(changed)
                new_parts.append((entry, pieces))
            if new_parts:
                self._verify_parts([entry for entry, _ in new_parts])
            if torn:
                logger.debug("%d file(s) changed while read, left for the next sync: %s", len(torn), sorted(torn)[:20])
            manifest, final = self._build(tree, old, old_files, served, new_parts, torn, digests, taken)
            if old is not None and not new_parts and manifest == old:
                logger.debug("%s is up to date: its manifest stays as it is", self.dest)
                return SyncOutcome(self._result(final, up_to_date=not held), old, sorted(torn), sorted(held))
            if before_commit is not None:
                before_commit()
            manifest.generation = old.generation + 1 if old is not None else 0
            written = manifest.to_json()
            self._put_manifest(manifest, written)
            replaced = 0 if old is None else old.stored_size or len(written)  # on a mount: in the Trash
        except BaseException:
            if started and not self._may_name_new_parts(written):  # named by no manifest: ours to delete
                self._delete_parts(started, quiet=True)
            raise  # parts kept and never named after all are a later sync's stale parts
        trashed = replaced + self._remove_unreferenced(manifest, old, sweep and not self.nothing_left)
        if sweep:  # even where a listing found nothing left: S3's unfinished uploads are invisible to it
            prefixes = (".cm-", "parts/", copy_prefix(MANIFEST_NAME))  # parts go up to their final names
            abort_stale_uploads(self.ctx, [remotes.join(self.dest, p) for p in prefixes])
        if trash is not None:
            trash.spend(trashed)
        moved = sum(taken[p].size for p in to_upload if p in taken and p not in torn)
        result = self._result(final, moved_files=len([p for p in to_upload if p not in torn]), moved_bytes=moved)
        result.reused_parts = len(manifest.parts) - len(new_parts)
        return SyncOutcome(result, manifest, sorted(torn), sorted(held), trashed)

    def _trace_plan(
        self, current: dict, old_files: dict, unchanged: set[str], must_keep: set[str], to_upload: list[str], total: int
    ) -> None:
        """The sync's decisions for the trace: a summary, then each file's (DEBUG only: one line a file)."""
        dropped = set(old_files) - set(current) - must_keep
        logger.debug(
            "sync %s -> %s: %d file(s) here, %d unchanged, %d to upload (%d bytes), %d deleted here and kept "
            "(copy semantics), %d deleted here and dropped (mirror)",
            self.src, self.dest, len(current), len(unchanged), len(to_upload), total, len(must_keep), len(dropped),
        )  # fmt: skip
        for path in to_upload:
            why = "new" if path not in old_files else "its part is repacked" if path in unchanged else "changed"
            logger.debug("upload %s: %s", path, why)
        for path in sorted(unchanged - set(to_upload)):
            logger.debug("skip %s: unchanged (size, mtime and mode as synced)", path)
        for path in sorted(must_keep):
            logger.debug("keep %s: deleted here, kept on the remote", path)
        for path in sorted(dropped):
            logger.debug("drop %s: deleted here", path)

    def _build(
        self,
        tree: localtree.Tree,
        old: Manifest | None,
        old_files: dict[str, FileEntry],
        served: set[str],
        new_parts: list[tuple[PartEntry, list[Piece]]],
        torn: set[str],
        digests: dict,
        taken: dict[str, FileStat],
    ) -> tuple[Manifest, dict[str, FileEntry]]:
        keep_old = set(served)
        keep_old |= {p for p in torn if p in old_files}  # a torn file keeps its previous version
        referenced = sorted({seg.part for p in keep_old for seg in old_files[p].segments})
        remap = {old_index: new_index for new_index, old_index in enumerate(referenced)}
        final: dict[str, FileEntry] = {}
        for p in keep_old:
            e = old_files[p]
            segs = tuple(Segment(remap[s.part], s.offset, s.length) for s in e.segments)
            final[p] = FileEntry(e.path, e.size, e.mode, e.mtime_ns, e.sha256, segs)
        parts: list[PartEntry] = []
        old_parts = old.parts if old is not None else []  # ``referenced`` is empty without an old manifest
        in_part: dict[int, set[str]] = {}  # old part -> files it holds: one pass, not one per part
        for p, e in old_files.items():
            for s in e.segments:
                in_part.setdefault(s.part, set()).add(p)
        for old_index in referenced:
            part = old_parts[old_index]
            members = set(part.skip) | in_part.get(old_index, set())
            here = {p for p in members if p in final and any(s.part == remap[old_index] for s in final[p].segments)}
            skip = tuple(sorted(members - here))
            parts.append(PartEntry(part.name, part.size, part.md5, part.members, part.data_bytes, skip))
        new_segments: dict[str, list[Segment]] = {}
        for entry, pieces in new_parts:
            index = len(parts)
            skip = tuple(sorted({pc.file.path for pc in pieces if pc.file.path in torn}))
            parts.append(PartEntry(entry.name, entry.size, entry.md5, entry.members, entry.data_bytes, skip))
            for piece in pieces:
                path = piece.file.path
                if path not in torn:
                    length = taken[path].size if piece.whole else piece.length
                    new_segments.setdefault(path, []).append(Segment(index, piece.offset, length))
        stats = {f.path: f for f in tree.files}
        stats.update(taken)
        for p, file_segments in new_segments.items():
            f = stats[p]
            final[p] = FileEntry(p, f.size, f.mode, f.mtime_ns, digests[p].hexdigest(), tuple(file_segments))
        manifest = Manifest(self.opt.compression)
        manifest.files = [final[p] for p in sorted(final)]
        dirs = dict(tree.dirs)
        links = dict(tree.links)
        if self.opt.keep_deleted and old is not None:
            dirs = {**{d.path: d.mode for d in old.dirs}, **dirs}
            links = {**{link.path: link.target for link in old.links}, **links}
        manifest.dirs = [DirEntry(p, m) for p, m in sorted(dirs.items())]
        manifest.links = [LinkEntry(p, t) for p, t in sorted(links.items()) if p not in final]
        manifest.parts = parts
        return manifest, final

    def _result(
        self, final: dict[str, FileEntry], up_to_date: bool = False, moved_files: int | None = None,
        moved_bytes: int | None = None,
    ) -> Result:
        size = sum(e.size for e in final.values())
        job = self.ctx.job
        return Result("pushed", self.src, self.dest, "packed", len(final), size, job.elapsed, up_to_date,
                      moved_files=moved_files, moved_bytes=moved_bytes, where=job.where)  # fmt: skip

    # -- remote operations ----------------------------------------------------------------------
    def _part_name(self, old: Manifest | None, serial: int) -> str:
        """A unique name, in the first ``parts/NNN/`` folders that have room for it."""
        counts = Counter(part.name.rsplit("/", 1)[0] for part in (old.parts if old else []))
        folder, rest = 0, serial
        while rest >= PARTS_PER_FOLDER - counts[f"parts/{folder:03d}"]:
            rest -= max(0, PARTS_PER_FOLDER - counts[f"parts/{folder:03d}"])
            folder += 1
        suffix = ".tar.zst" if self.opt.compression == "zstd" else ".tar"
        return f"parts/{folder:03d}/part-{self.push_id}-{serial:04d}{suffix}"

    def _upload_part(
        self,
        pieces: list[Piece],
        digests: dict,
        old: Manifest | None,
        serial: int,
        taken: dict[str, FileStat],
        started: set[str],
    ) -> tuple[PartEntry, list[str]]:
        """Stream one part to its final name (added to ``started`` first).  No manifest names it until
        :meth:`_verify_parts` has checked it, so a part cut short is never read: it is deleted after a
        failure, or as a stale part once its run is gone (a temporary name and a move would cost a
        request or more per part, and as many of Drive's quota, for no safety gained)."""
        name = self._part_name(old, serial)
        started.add(name)
        # where the remote keeps MD5s, _verify_parts checks ours against the remote's: rclone's own
        # check of the same hash would hash every byte twice more (half of rclone's CPU for a big file)
        once = ["--ignore-checksum"] if self.info.md5 else []
        with self.ctx.start("rcat", remotes.join(self.dest, name), *once, stdin=subprocess.PIPE) as proc:
            sink = _Sink(proc, self.ctx.cancel)
            try:
                if self.opt.compression == "zstd":
                    import zstandard

                    with zstandard.ZstdCompressor(level=3).stream_writer(cast(IO[bytes], sink), closefd=False) as zw:
                        changed = write_part(pieces, self.src, zw, digests, self._count, self.opt.tolerant, taken)
                else:
                    changed = write_part(pieces, self.src, sink, digests, self._count, self.opt.tolerant, taken)
                proc.stdin.close()
            except BrokenPipeError:
                raise proc.error(proc.wait(self.ctx.cancel) or 1) from None
            except BaseException:
                proc.stop()
                raise
            proc.check(self.ctx.cancel)
        if changed and not self.opt.tolerant:
            raise SourceChanged(
                f"{len(changed)} file(s) changed while they were being packed (e.g. {changed[0]!r}); "
                "push again once they are written",
                changed,
            )
        self.ctx.job.add(done_files=len(pieces))
        data = sum(taken[p.file.path].size if p.whole and p.file.path in taken else p.length for p in pieces)
        logger.debug("part %s: %d piece(s), %d bytes of data, %d bytes sent", name, len(pieces), data, sink.count)
        return PartEntry(name, sink.count, sink.md5.hexdigest(), len(pieces), data), changed

    def _verify_parts(self, parts: list[PartEntry]) -> None:
        """Verify the new parts with one listing of each folder that holds them (sizes always, MD5 where
        the remote keeps it): only then may a manifest name them."""
        hashed = "md5" if self.info.md5 else ""
        found = {}
        mine = f"part-{self.push_id}-*"  # only this sync's: older parts would be read again to hash them locally
        for folder in sorted(_folders({part.name for part in parts})):
            where = remotes.join(self.dest, folder)
            listing = self.ctx.rc.lsjson(where, files_only=True, hash=hashed, include=mine, **self.ctx.watch)
            found.update({f"{folder}/{remotes.listed_name(e.path)}": e for e in listing})
        for part in parts:
            got = found.get(part.name)
            if got is None or got.size != part.size:
                raise VerificationError(
                    f"{self.dest}/{part.name}: the upload is missing or has the wrong size; push again"
                )
            remote_md5 = got.hash("md5")
            if remote_md5 and remote_md5 != part.md5:
                raise VerificationError(
                    f"{self.dest}/{part.name}: the uploaded bytes do not match their MD5; push again"
                )

    def _count(self, n: int) -> None:
        self.ctx.job.add(done_bytes=n)

    def _put_manifest(self, manifest: Manifest, data: bytes) -> None:
        """Replace the manifest with ``data`` (``manifest`` encoded), proven: the parts the old one needs
        are removed only after this."""
        self.ctx.replace(remotes.join(self.dest, MANIFEST_NAME), data)
        manifest.stored_size = len(data)

    def _may_name_new_parts(self, written: bytes | None) -> bool:
        """After a failure: may a manifest on the remote name this sync's new parts?  Yes if the new one
        (``written``) landed, or if none is there (rclone deletes the old one before it moves the new
        one in: a copy of the new one then stands in, see :meth:`Context.read_replaced`), or if that
        cannot be told.  No if the old one is still there, or nothing was written."""
        if written is None:
            return False
        final = remotes.join(self.dest, MANIFEST_NAME)
        try:
            there = self.ctx.rc.stat(final, brief=True, within=CLEANUP_SECONDS)
            return there.size == len(written) and self.ctx.read_optional(final) == written
        except ColabMagicsError:  # not there, or not known
            return True

    def _remove_unreferenced(self, manifest: Manifest, old: Manifest | None, stale: bool) -> int:
        """Delete our own parts the new manifest no longer needs (through rclone's Drive backend for good;
        through the Drive mount, into Drive's Trash); ``stale``: also what killed runs left (found by
        listing).  Returns the bytes deleted."""
        keep = {p.name for p in manifest.parts}
        doomed = {p.name: p.size for p in old.parts if p.name not in keep} if old else {}
        unreferenced = len(doomed)
        if stale:
            doomed |= self._stale_parts(keep)
            sweep(self.ctx, self.dest, _TEMPORARY)
        logger.debug(
            "%s: %d part(s) no longer referenced, %d stale part(s) of killed runs to delete%s",
            self.dest, unreferenced, len(doomed) - unreferenced, "" if stale else " (not looked for)",
        )  # fmt: skip
        if doomed:
            self._delete_parts(set(doomed))
            if _folders(set(doomed)) - _folders(keep):  # a folder that may now be empty (one with a kept part cannot)
                quietly(functools.partial(self.ctx.rc.rmdirs, leave_root=True), remotes.join(self.dest, "parts"))
        return sum(doomed.values())

    def _stale_parts(self, keep: set[str]) -> dict[str, int]:
        """Parts no manifest names that are old enough to be a killed run's, not a live push's; their sizes."""
        try:
            parts = remotes.join(self.dest, "parts")
            listing = self.ctx.rc.lsjson(parts, recurse=True, files_only=True, **self.ctx.watch)
        except RemoteNotFound:
            return {}
        now = time.time()
        stale = {}
        for entry in listing:
            name = "parts/" + remotes.listed_name(entry.path)
            # a kept part the Drive mount shows as "part-... (1).tar" is that part (colabtools#6106), not stale
            if name not in keep and drive_title(name) not in keep and age(name, entry.mod_time, now) > STALE_SECONDS:
                stale[name] = entry.size
        return stale

    def _delete_parts(self, names: set[str], quiet: bool = False) -> None:
        """Delete our own parts in one call (for good, not to Drive's Trash); ``quiet``: one brief try
        that never raises, for the clean-up after a failure."""
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listfile:
            listfile.write("".join(n + "\n" for n in sorted(names)))
        # on Drive, deleted for good: in its Trash they would go on counting against the quota
        folder = with_option(self.dest, "use_trash", "false") if self.info.type == "drive" else self.dest
        try:
            if quiet:
                quietly(self.ctx.rc.delete_listed, folder, listfile.name)
            else:
                self.ctx.rc.delete_listed(folder, listfile.name, **self.ctx.watch)
        finally:
            Path(listfile.name).unlink(missing_ok=True)


def served_from_old(
    old: Manifest | None, old_files: dict[str, FileEntry], live: set[str], must_keep: set[str],
    allowance: int | None = None,
) -> tuple[set[str], set[str]]:
    """The files whose version stays in the old parts, and of them those held back at their previous
    version so that the parts deleted fit in ``allowance`` bytes (None: no bound).  ``live``: the
    files unchanged here, and ``must_keep``, deleted here but kept (copy semantics)."""
    dissolve = _dissolving(old, old_files, live, must_keep)
    held: set[str] = set()
    if old is not None and allowance is not None:
        held = _held_back(old, old_files, dissolve, allowance, live)
        dissolve &= _dissolving(old, old_files, live | held, must_keep | held)
    served = {p for p in live | held if not any(seg.part in dissolve for seg in old_files[p].segments)}
    return served | must_keep | held, held


def _dissolving(old: Manifest | None, old_files: dict[str, FileEntry], live: set[str], pinned: set[str]) -> set[int]:
    """The old parts to repack: less than half of what they hold is still current (``live``), and none
    holds a file that must stay as it is (``pinned``)."""
    if old is None:
        return set()
    live_bytes = [0] * len(old.parts)
    for p in live:
        for seg in old_files[p].segments:
            live_bytes[seg.part] += seg.length
    kept = {seg.part for p in pinned for seg in old_files[p].segments}
    return {i for i, part in enumerate(old.parts) if i not in kept and live_bytes[i] * 2 < part.data_bytes}


def _held_back(
    old: Manifest, old_files: dict[str, FileEntry], dissolve: set[int], allowance: int, live: set[str]
) -> set[str]:
    """The changed (or deleted) files to leave at their previous version so that the parts this sync
    deletes fit in ``allowance`` bytes: the smallest parts are let go first, and a file with a segment
    in a part that must stay is held."""
    let_go, spent = set(), 0
    for i in sorted(dissolve, key=lambda i: (old.parts[i].size, i)):
        if spent + old.parts[i].size <= allowance:
            let_go.add(i)
            spent += old.parts[i].size
    staying = dissolve - let_go
    if not staying:
        return set()
    return {p for p, e in old_files.items() if p not in live and any(seg.part in staying for seg in e.segments)}


def _folders(parts: set[str]) -> set[str]:
    """The ``parts/NNN`` folders that hold these parts."""
    return {name.rsplit("/", 1)[0] for name in parts}


class _Sink:
    """Write end of ``rclone rcat``: counts and hashes (MD5) the part as it goes up."""

    def __init__(self, proc: RcloneProcess, cancel: threading.Event) -> None:
        self.proc = proc
        self.cancel = cancel
        self.md5 = hashlib.md5()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.md5.update(data)
        self.count += len(data)
        self.proc.feed(data, self.cancel)
        return len(data)

    def flush(self) -> None:
        pass
