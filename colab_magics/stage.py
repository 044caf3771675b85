"""stage(): remote -> fast local disk, verified, atomic, resumable and idempotent.

The source may be a packed dataset (parts streamed and extracted while downloading, several at
once, every file checked against its manifest hash), a single archive (the seeds' ``.tar.gz``
workflow) or a plain folder (rclone file by file, with a hint to pack it).  Everything is built
in ``.<dest>.cm-stage/`` beside dest and swapped in at the end; an interrupted stage keeps the
parts it finished there and resumes from them.  A repeat of an unchanged stage costs one small
remote request plus a ``stat`` of the local tree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, cast

from .errors import BadInput, RemoteNotFound, UnsafeArchive, VerificationError
from .events import Direction, EventBus
from .jobs import (
    Context,
    HashingReader,
    Result,
    copies_in,
    drive_duplicates,
    read_json,
    run_job,
    short_id,
    state_dir,
    write_json,
)
from .local import tree as localtree
from .local.archives import Extractor, check_links_resolve_inside, check_symlink, extract_tar, extract_zip, safe_relpath
from .local.swap import replace_tree
from .packed.manifest import MANIFEST_NAME, FileEntry, Manifest, Segment
from .packed.tar_reader import TarStream
from .rclone import remotes
from .rclone.process import Rclone
from .streams import Readable

logger = logging.getLogger(__name__)

ARCHIVES = {
    ".tar": "tar", ".tar.gz": "tar", ".tgz": "tar", ".tar.bz2": "tar", ".tbz2": "tar",
    ".tar.xz": "tar", ".txz": "tar", ".tar.zst": "zst", ".tzst": "zst", ".zip": "zip",
}  # fmt: skip
FOLDER_HINT_FILES = 200


def archive_kind(name: str) -> str | None:
    lower = name.lower()
    for suffix, kind in ARCHIVES.items():
        if lower.endswith(suffix):
            return kind
    return None


def default_dest(source: str) -> Path:
    """``./<basename of SOURCE>``, without an archive suffix."""
    name = remotes.basename(source)
    for suffix in sorted(ARCHIVES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    if not name:
        raise BadInput(f"cannot derive a destination folder from {source!r}; give DEST")
    return Path(name)


RESUME_HINT = "stage interrupted; dest is unchanged, and what was fetched is kept: run the same stage again to resume"
MAX_WORKERS = 32  # beyond this, more requests at once only trip the remote's rate limits


def stage(
    source: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    workers: int = 4,
    root: str | None = None,
    rclone: Rclone | None = None,
    events: EventBus | None = None,
    cancel: threading.Event | None = None,
    name: str | None = None,
) -> Result:
    """Copy ``source`` (a remote path or a name under the default root) to the local folder ``dest``;
    ``name`` names the job for people (default "stage <folder>"; a persist's is "restore <folder>")."""
    if not 1 <= workers <= MAX_WORKERS:
        raise BadInput(f"workers must be between 1 and {MAX_WORKERS} (parts downloaded at once), not {workers}")
    src = remotes.resolve(source, root)
    target = Path(os.path.abspath(dest if dest is not None else default_dest(src)))
    _check_dest(src, target)

    def work(ctx: Context) -> Result:
        return _Stage(ctx, src, target, workers).run(force)

    name = name or f"stage {target.name}"
    return run_job(name, Direction.DOWN, f"{src} -> {target}", work, rclone, events, cancel, target=str(target))


def _check_dest(src: str, target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise BadInput(f"destination {target} is a file; give a folder path")
    local = remotes.local_path(src)
    if local and (localtree.inside(target, local) or localtree.inside(local, target)):
        raise BadInput(f"destination {target} overlaps the source {local}; choose a folder outside it")
    if target == Path(target.anchor):
        raise BadInput("refusing to stage onto a file system root; give a folder path")


class _Stage:
    def __init__(self, ctx: Context, src: str, dest: Path, workers: int) -> None:
        self.ctx = ctx
        self.src = src
        self.dest = dest
        self.workers = workers
        self.work = dest.parent / f".{dest.name}.cm-stage"
        self.tree = self.work / "tree"
        key = hashlib.sha256(os.fsencode(dest)).hexdigest()[:24]
        self.state_file = state_dir() / "staged" / f"{key}.json"
        self.t0 = time.monotonic()
        self.listed: dict[str, int] = {}  # a plain folder's files as the probe listed them, with sizes
        self.comparable = False  # can the remote tell a changed file by its listing (hashes or precise times)?
        self.hashed = False  # does it keep hashes (then a re-stage compares by them)?

    # -- what is the source, and is dest already it? ------------------------------------------
    def probe(self) -> tuple[str, dict, bytes | None, int]:
        """(kind, identity, manifest, size) of the source; a packed source's manifest as read (parsed
        only if it is fetched: an unchanged one is known by its digest), its size then 0."""
        final = remotes.join(self.src, MANIFEST_NAME)
        raw = self.ctx.read_replaced(final, Manifest.generation_of, repair=False, copies=False)
        if raw is not None:
            return "packed", {"manifest": hashlib.sha256(raw).hexdigest()}, raw, 0
        try:
            info = self.ctx.rc.stat(self.src, **self.ctx.watch)
        except RemoteNotFound:
            raise RemoteNotFound(f"{self.src} does not exist on the remote; check the name") from None
        if info.is_dir:
            remote = remotes.remote_info(self.ctx.rc, self.src)
            # a local folder (above all the Drive mount, where a read may be a download) hashes by reading
            # every file, while its times (to the nanosecond; the mount's to the millisecond) show a change
            hashed = remote.hashes[0] if remote.hashes and remote.type != "local" else ""
            listing = self.ctx.rc.lsjson(self.src, recurse=True, files_only=True, hash=hashed, **self.ctx.watch)
            if not listing:  # bucket remotes show any missing path as an empty folder
                raise RemoteNotFound(f"{self.src} is empty or does not exist on the remote; check the name")
            # a packed dataset whose manifest replace was cut: its copy, found in the listing a folder needs
            copies = copies_in(listing, MANIFEST_NAME)
            raw = self.ctx.best_copy(final, copies, Manifest.generation_of, repair=False) if copies else None
            if raw is not None:
                return "packed", {"manifest": hashlib.sha256(raw).hexdigest()}, raw, 0
            rows = sorted((e.path, e.size, e.mod_time, e.hashes) for e in listing)
            self.listed = {remotes.listed_name(row[0]): row[1] for row in rows}
            precise = remote.modtime_precision_s is not None and remote.modtime_precision_s <= 0.001
            self.hashed = bool(hashed)
            self.comparable = self.hashed or precise
            # where the remote keeps neither hashes nor precise times, no listing proves a folder unchanged
            # (a same-size rewrite within its time resolution lists the same): never "up to date" there
            digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest() if self.comparable else short_id()
            return "folder", {"listing": digest}, None, sum(r[1] for r in rows)
        kind = archive_kind(self.src)
        if kind is None:
            raise BadInput(
                f"{self.src} is a single file but not an archive ({', '.join(ARCHIVES)}); "
                "stage a folder or an archive"
            )
        return kind, {"size": info.size, "modtime": info.mod_time}, None, max(info.size, 0)

    def run(self, force: bool) -> Result:
        state = read_json(self.state_file)
        # the walk of what was staged here overlaps the remote's answer (which waits its turn under the
        # remote's request rate): a repeat of unchanged data costs about one round trip, not one plus a walk
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cm-stage-check")
        try:
            walked = pool.submit(localtree.fingerprint_of, self.dest) if "tree" in state and not force else None
            kind, identity, raw_manifest, size = self.probe()
        except BaseException:  # a Ctrl-C or a missing source does not wait for the walk of a large folder
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        identity = {"source": self.src, "kind": kind, **identity}
        if (
            not force
            and self.dest.is_dir()
            and state.get("identity", {}).get("source") != self.src
            and any(self.dest.iterdir())
        ):
            raise BadInput(
                f"{self.dest} already holds files that were not staged from {self.src}; "
                "choose an empty or new folder, or use --force to replace its contents"
            )
        if walked is not None and state.get("identity") == identity and self.dest.is_dir():
            tree = walked.result()
            if tree is not None and tree == state.get("tree"):
                logger.debug("stage %s -> %s: up to date (same source, local files as staged)", self.src, self.dest)
                return self.result(kind, len(tree), sum(v[0] for v in tree.values()), up_to_date=True)
            why = "the local files changed since they were staged"
        elif force or not state.get("identity"):
            why = "forced" if force else "not staged here before"
        else:
            why = "the source changed" if state.get("identity") != identity else "the local folder is gone"
        logger.debug("stage %s -> %s: fetching the %s source (%s)", self.src, self.dest, kind, why)
        manifest = None if raw_manifest is None else Manifest.from_json(raw_manifest, self.src)
        if manifest is not None:
            size = manifest.total_bytes
        progress_file = self.work / "progress.json"
        progress = read_json(progress_file)
        if progress.get("identity") != identity:
            shutil.rmtree(self.work, ignore_errors=True)
            progress = {"identity": identity, "done": []}
        elif progress["done"]:
            logger.debug("stage %s: resuming, %d part(s) already fetched", self.src, len(progress["done"]))
        self.tree.mkdir(parents=True, exist_ok=True)
        write_json(progress_file, progress)
        self.ctx.job.update(total_bytes=size)
        note = ""
        reused = 0
        try:
            if manifest is not None:  # a packed dataset
                reused = self.fill_packed(manifest, progress, progress_file)
            elif kind == "folder":
                note = self.fill_folder()
            else:
                self.fill_archive(kind)
            snapshot = localtree.scan(self.tree)
            check_links_resolve_inside(self.tree, snapshot.links, f"{kind} {self.src}")
        except BaseException as exc:
            # packed parts and folder files already fetched are kept for a resume; a single
            # archive restarts anyway, and nothing from a hostile archive is kept
            if isinstance(exc, UnsafeArchive) or kind not in ("packed", "folder"):
                shutil.rmtree(self.work, ignore_errors=True)
            raise
        replace_tree(self.tree, self.dest, self.work / "old")
        write_json(self.state_file, {"identity": identity, "tree": snapshot.fingerprint()})
        shutil.rmtree(self.work, ignore_errors=True)
        result = self.result(kind, len(snapshot.files), snapshot.total_bytes, note=note)
        result.reused_parts = reused
        return result

    def result(self, kind: str, files: int, size: int, up_to_date: bool = False, note: str = "") -> Result:
        return Result(
            "staged", self.src, str(self.dest), kind, files, size,
            time.monotonic() - self.t0, up_to_date=up_to_date, note=note,
        )  # fmt: skip

    # -- packed datasets ------------------------------------------------------------------------
    def fill_packed(self, manifest: Manifest, progress: dict, progress_file: Path) -> int:
        done = set(progress["done"])
        job = self.ctx.job
        job.update(total_bytes=manifest.total_bytes, total_files=len(manifest.files))
        ex = Extractor(self.tree, f"packed dataset {self.src}")
        for d in manifest.dirs:
            ex.add_dir(safe_relpath(d.path, ex.what), d.mode)
        members = manifest.members_by_part()
        already = [i for i in done if i < len(manifest.parts)]
        for i in already:
            expected = members[i]
            job.add(sum(seg.length for _, seg in expected.values()), sum(map(_ends_file, expected.values())))
        todo = [i for i in range(len(manifest.parts)) if i not in done]
        lock = threading.Lock()

        def one(index: int) -> None:
            self.extract_part(manifest, index, members[index], ex)
            with lock:
                progress["done"].append(index)
                write_json(progress_file, progress)

        pool = ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(todo))), thread_name_prefix="cm-stage")
        try:
            futures = [pool.submit(one, i) for i in todo]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in finished:
                failure = f.exception()
                if failure is not None:
                    self.ctx.stop_children()
                    raise failure
        except BaseException:
            self.ctx.stop_children()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self.finish_split_files(manifest)
        for link in manifest.links:
            ex.add_symlink(safe_relpath(link.path, ex.what), link.target)
        ex.finish()
        return len(already)

    def extract_part(
        self, manifest: Manifest, index: int, expected: dict[str, tuple[FileEntry, Segment]], ex: Extractor
    ) -> None:
        """Stream part ``index`` into ``ex``; ``expected`` are its members by path."""
        part = manifest.parts[index]
        superseded = set(part.skip) - set(expected)
        where = f"{self.src}/{part.name}"

        def consume(reader: HashingReader) -> None:
            stream: Readable = _zstd_reader(reader) if manifest.compression == "zstd" else reader
            tar = TarStream(stream, where)

            def count(n: int) -> None:
                self.ctx.job.add(done_bytes=n)

            for member in tar.members():
                rel = safe_relpath(member.name, ex.what)
                if rel in superseded:  # a later part holds its current version
                    superseded.discard(rel)
                    continue
                entry, seg = expected.pop(rel, (None, None))
                if entry is None or seg is None or not member.isreg() or member.size != seg.length:
                    raise VerificationError(
                        f"{where} holds {member.name!r}, which its manifest does not list there; "
                        "the dataset was tampered with or mixed up: re-push it"
                    )
                whole = len(entry.segments) == 1
                digest = ex.write_file(
                    rel, tar, seg.length, entry.mode, entry.mtime_ns if whole else None,
                    offset=None if whole else seg.offset, hashed=whole, on_bytes=count,
                )  # fmt: skip
                if whole and digest != entry.sha256:
                    raise VerificationError(f"{rel!r} in {where} does not match its manifest hash; re-push the dataset")
                self.ctx.job.add(done_files=_ends_file((entry, seg)))

        path = _as_drive_shows(remotes.join(self.src, part.name), part.size)
        try:
            _, reader = self.ctx.stream(path, consume)
        except (RemoteNotFound, VerificationError):
            if self._exists(path):  # (a bucket remote "cats" a missing object as nothing at all)
                raise
            raise VerificationError(
                f"{self.src}/manifest.json lists {part.name}, which is not on the remote: the dataset is damaged "
                "(a part was deleted or never arrived); push it again from a complete local copy"
            ) from None
        if expected:
            missing = next(iter(expected))
            raise VerificationError(
                f"{where} lacks {len(expected)} file(s) its manifest lists (e.g. {missing!r}); re-push it"
            )
        if reader.count != part.size or reader.md5.hexdigest() != part.md5:
            raise VerificationError(f"{where} does not match its manifest size or MD5; re-push the dataset")

    def _exists(self, path: str) -> bool:
        """Is there a file at ``path``?  (A bucket remote shows a missing object as an empty folder.)"""
        try:
            return not self.ctx.rc.stat(path, **self.ctx.watch).is_dir
        except RemoteNotFound:
            return False

    def finish_split_files(self, manifest: Manifest) -> None:
        """Files split across parts are hashed once all their segments are in."""
        for entry in manifest.files:
            if len(entry.segments) == 1:
                continue
            path = self.tree / entry.path
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            if os.path.getsize(path) != entry.size or digest.hexdigest() != entry.sha256:
                raise VerificationError(f"{entry.path!r} reassembled from parts does not match its manifest hash")
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))

    # -- single archives ------------------------------------------------------------------------
    def fill_archive(self, kind: str) -> None:
        job = self.ctx.job
        ex = Extractor(self.tree, f"archive {self.src}")
        shutil.rmtree(self.tree)
        self.tree.mkdir()

        def count_bytes(n: int) -> None:
            job.add(done_bytes=n)

        if kind == "zip":
            download = self.work / "download.zip"
            with open(download, "wb") as out:
                _, reader = self.ctx.stream(self.src, lambda r: shutil.copyfileobj(r, out, 1 << 20), count_bytes)
            files = extract_zip(download, ex)
            download.unlink()
        else:  # the compression is found by its magic bytes, and read to its end (extract_tar)
            files, reader = self.ctx.stream(self.src, lambda r: extract_tar(r, ex), count_bytes)
        job.update(done_files=files, total_files=files)
        self.verify_download(reader)

    def verify_download(self, reader: HashingReader) -> None:
        info = remotes.remote_info(self.ctx.rc, self.src)
        stat = self.ctx.rc.stat(self.src, hash="md5" if info.md5 else "", **self.ctx.watch)
        if stat.size not in (-1, reader.count):
            raise VerificationError(
                f"{self.src}: read {reader.count:,} bytes, the remote lists {stat.size:,}; stage again"
            )
        md5 = stat.hash("md5")
        if md5 and md5 != reader.md5.hexdigest():
            raise VerificationError(f"{self.src}: the downloaded bytes do not match the remote MD5; stage again")

    # -- plain folders --------------------------------------------------------------------------
    def fill_folder(self) -> str:
        # unchanged files come from the old copy, not the network: hard links of it are laid in the
        # work tree and rclone fetches only what differs (rclone replaces a file through a temporary
        # name, so an old copy is never written through its link).  Only where the remote can tell
        # a change: by size and coarse times, a same-size rewrite would pass for the old file.
        reuse = self.dest.is_dir() and self.comparable
        if reuse:
            _link_files(self.dest, self.tree)
        args = [
            "sync" if reuse else "copy",  # sync: old files the remote no longer has are dropped
            self.src,
            str(self.tree),
            "--transfers",
            "16",
            "--checkers",
            "16",
            "--create-empty-src-dirs",
            "--links",
            "--no-unicode-normalization",  # NFC and NFD twins are two files, as on the remote
            *(["--checksum"] if reuse and self.hashed else []),
        ]
        self.ctx.run(*args, stats=True)
        tree = localtree.scan(self.tree)
        for rel, target in tree.links:
            check_symlink(rel, target, f"folder {self.src}")
        got = {f.path: f.size for f in tree.files} | {rel + ".rclonelink": -1 for rel, _ in tree.links}
        missing = [p for p, size in self.listed.items() if got.get(p) not in (size, -1)]
        if missing:  # a server whose folder-by-folder listing hides files the full listing showed
            raise VerificationError(
                f"{len(missing):,} of the {len(self.listed):,} files listed under {self.src} did not arrive "
                f"(e.g. {missing[0]!r}); the server lists them inconsistently: stage again, or push them packed"
            )
        if len(tree.files) >= FOLDER_HINT_FILES:
            return (
                f"Tip: {len(tree.files):,} files were fetched one by one; pack them once with "
                f"`colab-magics push <local copy> {self.src}.packed --pack` and stage that for a single stream"
            )
        return ""


def _as_drive_shows(path: str, size: int) -> str:
    """``path``, or where it is missing in a local folder (the Drive mount), the file of its size that
    DriveFS shows under a duplicate's name (``part-... (1).tar``: colabtools#6106); its MD5 is checked
    as any part's is."""
    local = remotes.local_path(path)
    if local is None or os.path.exists(local):
        return path
    for name in drive_duplicates(path):
        other = os.path.join(os.path.dirname(local), name)
        if os.path.isfile(other) and os.stat(other).st_size == size:
            logger.warning("%s is missing; the Drive mount shows it as %s", path, name)
            return other
    return path


def _link_files(old: Path, tree: Path) -> None:
    """Hard-link every regular file of ``old`` into ``tree`` where ``tree`` has nothing at its path yet
    (a resumed stage keeps what it fetched); a copy where links cannot be made."""
    for f in localtree.scan(old).files:
        target = tree / f.path
        if os.path.lexists(target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(old / f.path, target)
        except OSError:
            shutil.copy2(old / f.path, target)


def _ends_file(member: tuple) -> int:
    """1 when this segment completes its file (a split file counts once, at its last piece)."""
    entry, seg = member
    return int(seg.offset + seg.length == entry.size)


def _zstd_reader(raw: HashingReader) -> Readable:
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], raw), read_size=1 << 20, read_across_frames=True)
