"""push(): local -> remote, verified, never a half-written file at a final remote name.

Packed mode streams tar parts straight into ``rclone rcat`` (no local temporary copy), keeps
the parts whose files did not change, and writes the manifest last, so the remote always holds
a complete earlier version until the new one is.  Plain mode copies files into a temporary
folder beside the destination and moves them into place once checked: on backends such as
WebDAV an interrupted upload would otherwise leave a truncated file at the final name.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

from . import localtree, remotes
from .errors import BadInput, RemoteNotFound, SourceChanged, VerificationError
from .events import EventBus, Job
from .extract import check_symlink
from .manifest import DEFAULT_PART_SIZE, MANIFEST_NAME, DirEntry, FileEntry, LinkEntry, Manifest, PartEntry, Segment, part_name
from .pack import Piece, plan, write_part
from .runner import Rclone
from .transfer import Context, Result, short_id

STALE_SECONDS = 3600  # an unreferenced part older than this is a leftover of a killed push


def default_remote_dest(source: str, root: str | None = None) -> str:
    return remotes.join(root or remotes.default_root(), os.path.basename(os.path.abspath(source)))


def push(
    source: str | os.PathLike[str],
    dest: str | None = None,
    *,
    pack: bool = False,
    compress: bool = False,
    part_size: int = DEFAULT_PART_SIZE,
    root: str | None = None,
    rclone: Rclone | None = None,
    events: EventBus | None = None,
    cancel: threading.Event | None = None,
) -> Result:
    """Upload the local file or folder ``source`` to ``dest`` (default: under the default root).

    A ``dest`` ending in ``/`` is a folder that receives ``source`` under its own name.
    """
    src = os.path.abspath(os.fspath(source))
    if not os.path.exists(src):
        raise BadInput(f"{src} does not exist; give a local file or folder to push")
    target = remotes.resolve(dest, root) if dest else default_remote_dest(src, root)
    if dest and (dest.endswith("/") or target.endswith(":")):
        target = remotes.join(target, os.path.basename(src))
    local_target = remotes.local_path(target)
    if local_target and (localtree.inside(local_target, src) or localtree.inside(src, local_target)):
        raise BadInput(f"destination {local_target} overlaps the source {src}; choose a folder outside it")
    job = Job(f"push {os.path.basename(src)}", "up", events)
    ctx = Context(rclone, job, cancel)
    job.start(f"{src} -> {target}")
    try:
        if pack:
            if not os.path.isdir(src):
                raise BadInput(f"--pack takes a folder and {src} is a file; push it without --pack")
            result = _PackedPush(ctx, src, target, compress, part_size).run()
        elif os.path.isdir(src):
            result = _push_folder(ctx, src, target)
        else:
            result = _push_file(ctx, src, target)
    except BaseException as exc:
        ctx.stop_children()
        job.fail(str(exc) or type(exc).__name__)
        raise
    job.finish(result.summary())
    return result


def _md5_file(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stat(ctx: Context, path: str, md5: bool) -> dict:
    args = ["lsjson", "--stat", path] + (["--hash", "--hash-type", "md5"] if md5 else [])
    data = ctx.rc.json(*args)
    assert isinstance(data, dict)
    return data


def _verify_upload(ctx: Context, remote: str, size: int, md5: str | None) -> None:
    """Sizes always, MD5 where the remote keeps it."""
    info = remotes.remote_info(ctx.rc, remote)
    got = _stat(ctx, remote, info.md5)
    if got.get("Size") != size:
        raise VerificationError(f"{remote}: uploaded {size:,} bytes but the remote holds {got.get('Size')}; push again")
    remote_md5 = (got.get("Hashes") or {}).get("md5")
    if md5 and remote_md5 and remote_md5 != md5:
        raise VerificationError(f"{remote}: the uploaded bytes do not match their MD5; push again")


def _result(ctx: Context, src: str, dest: str, kind: str, files: int, size: int, **kw: object) -> Result:
    return Result("pushed", src, dest, kind, files, size, ctx.job.elapsed, **kw)  # type: ignore[arg-type]


# -- plain mode ------------------------------------------------------------------------------
def _push_file(ctx: Context, src: str, dest: str) -> Result:
    before = os.stat(src)
    ctx.job.update(total_bytes=before.st_size, total_files=1)
    tmp = f"{dest}.cm-tmp-{short_id()}"
    try:
        ctx.run("copyto", src, tmp, stats=True)
        after = os.stat(src)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise SourceChanged(f"{src} changed while it was being uploaded; push again once it is written")
        md5 = _md5_file(src) if remotes.remote_info(ctx.rc, dest).md5 else None
        _verify_upload(ctx, tmp, before.st_size, md5)
        ctx.run("moveto", tmp, dest)
    except BaseException:
        _quietly(ctx.rc, "deletefile", tmp)
        raise
    return _result(ctx, src, dest, "file", 1, before.st_size)


def _push_folder(ctx: Context, src: str, dest: str) -> Result:
    tree = localtree.scan(src)
    snapshot = {f.path: f for f in tree.files}
    links = {path for path, _ in tree.links}
    ctx.job.update(total_bytes=sum(f.size for f in snapshot.values()), total_files=len(snapshot))
    info = remotes.remote_info(ctx.rc, dest)
    parent, name = dest.rsplit("/", 1) if "/" in dest.split(":", 1)[-1] else (None, None)
    tmp = f"{parent}/.{name}.cm-upload-{short_id()}" if parent else remotes.join(dest, f".cm-upload-{short_id()}")
    args = ["copy", src, tmp, "--create-empty-src-dirs", "--links", "--transfers", "8", "--checkers", "16"]
    try:
        ctx.run("mkdir", dest)
        args += ["--compare-dest", dest]
        if info.modtime_precision_s is None and not info.hashes:
            args.append("--ignore-times")  # the remote can tell neither times nor hashes: upload all
        try:
            ctx.run(*args, stats=True)
            changed = []
        except SourceChanged as exc:  # rclone saw them change and skipped them; the rest is uploaded
            changed = [remotes.listed_name(p) for p in exc.paths]
        listing = ctx.rc.json("lsjson", "-R", "--files-only", tmp, *(["--hash", "--hash-type", "md5"] if info.md5 else []))
        uploaded = 0
        for entry in listing or []:  # type: ignore[union-attr]
            rel = remotes.listed_name(entry["Path"])
            if rel.removesuffix(".rclonelink") in links:  # a symlink, stored as its target's text
                continue
            planned = snapshot.get(rel)
            local = os.path.join(src, rel)
            ok = planned is not None and entry["Size"] == planned.size
            if ok:
                st = os.stat(local)
                ok = (st.st_size, st.st_mtime_ns) == (planned.size, planned.mtime_ns)
            remote_md5 = (entry.get("Hashes") or {}).get("md5")
            if ok and remote_md5:
                ok = _md5_file(local) == remote_md5
            if not ok:
                changed += [] if rel in changed else [rel]
                ctx.run("deletefile", remotes.join(tmp, entry["Path"]))  # rclone reads its listed form back
            else:
                uploaded += 1
        ctx.run("move", tmp, dest, "--create-empty-src-dirs", "--links")
    finally:
        _quietly(ctx.rc, "purge", tmp)
    if changed:
        raise SourceChanged(
            f"{len(changed)} file(s) changed while they were being uploaded (e.g. {changed[0]!r}) and were not "
            "pushed; push again once they are written"
        )
    total = sum(f.size for f in snapshot.values())
    return _result(ctx, src, dest, "folder", uploaded or len(snapshot), total, up_to_date=not uploaded)


def _quietly(rclone: Rclone, *args: str) -> None:
    try:
        rclone.run(*args)
    except Exception:  # cleanup of our own temporary files; the original error matters more
        pass


# -- packed mode -----------------------------------------------------------------------------
class _PackedPush:
    def __init__(self, ctx: Context, src: str, dest: str, compress: bool, part_size: int) -> None:
        self.ctx = ctx
        self.src = src
        self.dest = dest
        self.compression = "zstd" if compress else "none"
        self.part_size = part_size
        self.push_id = short_id()
        self.info = remotes.remote_info(ctx.rc, dest)

    def old_manifest(self) -> Manifest | None:
        raw = self.ctx.read_optional(remotes.join(self.dest, MANIFEST_NAME))
        if raw is None:
            try:
                existing = self.ctx.rc.json("lsjson", "--max-depth", "1", self.dest)
            except RemoteNotFound:
                return None
            foreign = [e for e in existing or [] if e["Path"] != "parts" and ".cm-tmp" not in e["Path"]]  # type: ignore[union-attr]
            if foreign:  # leftovers of our own interrupted push are fine
                raise BadInput(
                    f"{self.dest} already holds files that are not a packed dataset; push to another name"
                ) from None
            return None
        return Manifest.from_json(raw, self.dest)

    def run(self) -> Result:
        tree = localtree.scan(self.src)
        if tree.special:
            raise BadInput(f"{self.src} holds a socket, fifo or device ({tree.special[0]!r}); remove it or push a subfolder")
        for rel, target in tree.links:
            try:
                check_symlink(rel, target, self.src)
            except Exception:
                raise BadInput(f"symlink {rel!r} -> {target!r} points outside {self.src}; replace it with a copy") from None
        old = self.old_manifest()
        reusable = {}
        if old is not None and old.compression == self.compression:
            by_path = {f.path: f for f in old.files}
            for index, part in enumerate(old.parts):
                members = old.files_in_part(index)
                key = tuple(sorted((e.stat_key(), s.offset, s.length) for e, s in members.values()))
                if key:
                    reusable[key] = (part, [by_path[p] for p in members])
        pieces_by_part = plan(tree.files, self.part_size)
        self.ctx.job.update(total_bytes=tree.total_bytes, total_files=len(tree.files))
        manifest = Manifest(self.compression)
        manifest.dirs = [DirEntry(p, m) for p, m in tree.dirs]
        manifest.links = [LinkEntry(p, t) for p, t in tree.links]
        hashes: dict[str, str] = {}
        segments: dict[str, list[Segment]] = {}
        digests: dict[str, "hashlib._Hash"] = {}
        keys = [_part_key(pieces) for pieces in pieces_by_part]
        reuse = _consistent_reuse(pieces_by_part, {i for i, k in enumerate(keys) if k in reusable})
        uploaded: list[str] = []
        try:
            for index, pieces in enumerate(pieces_by_part):
                if index in reuse:
                    part, entries = reusable[keys[index]]
                    hashes.update({e.path: e.sha256 for e in entries})
                    self.ctx.job.add(sum(p.length for p in pieces), len(pieces))
                else:
                    part = self.upload_part(index, pieces, digests)
                    uploaded.append(part.name)
                manifest.parts.append(part)
                for p in pieces:
                    segments.setdefault(p.file.path, []).append(Segment(index, p.offset, p.length))
            hashes.update({path: d.hexdigest() for path, d in digests.items()})
            manifest.files = [
                FileEntry(f.path, f.size, f.mode, f.mtime_ns, hashes[f.path], tuple(segments[f.path])) for f in tree.files
            ]
            if old is not None and manifest.to_json() == old.to_json():
                return _result(self.ctx, self.src, self.dest, "packed", len(tree.files), tree.total_bytes, up_to_date=True)
            self.put_manifest(manifest)
        except BaseException:
            for name in uploaded:
                _quietly(self.ctx.rc, "deletefile", remotes.join(self.dest, name))
            raise
        self.remove_superseded(manifest, old)
        return _result(
            self.ctx, self.src, self.dest, "packed", len(tree.files), tree.total_bytes, reused_parts=len(reuse)
        )

    def upload_part(self, index: int, pieces: list[Piece], digests: dict) -> PartEntry:
        name = part_name(index, self.push_id, self.compression)
        final = remotes.join(self.dest, name)
        tmp = final + ".cm-tmp"
        sink = _Sink()
        with self.ctx.start("rcat", tmp, stdin=subprocess.PIPE) as proc:
            sink.pipe = proc.stdin
            try:
                if self.compression == "zstd":
                    import zstandard

                    with zstandard.ZstdCompressor(level=3).stream_writer(sink, closefd=False) as zw:
                        changed = write_part(pieces, self.src, zw, digests, self.count)  # type: ignore[arg-type]
                else:
                    changed = write_part(pieces, self.src, sink, digests, self.count)  # type: ignore[arg-type]
                proc.stdin.close()
            except BrokenPipeError:
                raise proc.error(proc.wait(self.ctx.cancel) or 1) from None
            except BaseException:
                proc.stop()
                _quietly(self.ctx.rc, "deletefile", tmp)
                raise
            proc.check(self.ctx.cancel)
        if changed:
            _quietly(self.ctx.rc, "deletefile", tmp)
            raise SourceChanged(
                f"{len(changed)} file(s) changed while they were being packed (e.g. {changed[0]!r}); "
                "push again once they are written"
            )
        md5 = sink.md5.hexdigest()
        _verify_upload(self.ctx, tmp, sink.count, md5)
        self.ctx.run("moveto", tmp, final)
        self.ctx.job.add(done_files=len(pieces))
        return PartEntry(name, sink.count, md5, len(pieces))

    def count(self, n: int) -> None:
        self.ctx.job.add(done_bytes=n)

    def put_manifest(self, manifest: Manifest) -> None:
        raw = manifest.to_json()
        final = remotes.join(self.dest, MANIFEST_NAME)
        tmp = final + f".cm-tmp-{self.push_id}"
        self.ctx.rc.run("rcat", tmp, input=raw)
        _verify_upload(self.ctx, tmp, len(raw), hashlib.md5(raw).hexdigest())
        self.ctx.run("moveto", tmp, final)

    def remove_superseded(self, manifest: Manifest, old: Manifest | None) -> None:
        """Delete our own parts the new manifest no longer needs (for good, not to Drive's Trash)."""
        keep = {p.name for p in manifest.parts}
        superseded = {p.name for p in old.parts} - keep if old else set()
        try:
            listing = self.ctx.rc.json("lsjson", "-R", "--files-only", remotes.join(self.dest, "parts"))
        except RemoteNotFound:
            listing = []
        now = datetime.now(timezone.utc)
        for entry in listing or []:  # type: ignore[union-attr]
            name = "parts/" + remotes.listed_name(entry["Path"])
            if name in keep:
                continue
            stale = name.endswith(".cm-tmp") or _age(entry.get("ModTime"), now) > STALE_SECONDS
            if name in superseded or stale:
                superseded.add(name)
        if not superseded:
            return
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listfile:
            listfile.write("".join(n + "\n" for n in sorted(superseded)))
        try:
            args = ["delete", self.dest, "--files-from-raw", listfile.name]
            if self.info.type == "drive":
                args.append("--drive-use-trash=false")
            self.ctx.run(*args)
            _quietly(self.ctx.rc, "rmdirs", remotes.join(self.dest, "parts"), "--leave-root")
        finally:
            Path(listfile.name).unlink(missing_ok=True)


def _part_key(pieces: list[Piece]) -> tuple:
    """What makes two parts byte-identical: the same files, states and byte ranges."""
    return tuple(sorted(((p.file.path, p.file.size, p.file.mtime_ns, p.file.mode), p.offset, p.length) for p in pieces))


def _consistent_reuse(pieces_by_part: list[list[Piece]], reuse: set[int]) -> set[int]:
    """Keep a part only if every part holding a piece of the same split file is kept too.

    A split file's hash is computed while its pieces stream up, so its pieces are either all
    reused (hash from the old manifest) or all uploaded.
    """
    parts_of: dict[str, set[int]] = {}
    for index, pieces in enumerate(pieces_by_part):
        for p in pieces:
            if not p.whole:
                parts_of.setdefault(p.file.path, set()).add(index)
    changed = True
    while changed:
        changed = False
        for indices in parts_of.values():
            if indices & reuse and not indices <= reuse:
                reuse -= indices
                changed = True
    return reuse


def _age(modtime: str | None, now: datetime) -> float:
    if not modtime:
        return 0.0
    try:
        stamp = datetime.fromisoformat(modtime.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (now - stamp).total_seconds()


class _Sink:
    """Write end of ``rclone rcat``: counts and hashes (MD5) the part as it goes up."""

    def __init__(self) -> None:
        self.pipe = None
        self.md5 = hashlib.md5()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.md5.update(data)
        self.count += len(data)
        self.pipe.write(data)  # type: ignore[union-attr]
        return len(data)

    def flush(self) -> None:
        pass

