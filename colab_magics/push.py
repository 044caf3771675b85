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
import threading

from . import localtree, remotes
from .errors import BadInput, SourceChanged, VerificationError
from .events import EventBus
from .localtree import FileStat
from .manifest import DEFAULT_PART_SIZE
from .packsync import PackedSync, SyncOptions
from .runner import Rclone
from .transfer import Context, Result, quietly, run_job, short_id, verify_upload


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

    def work(ctx: Context) -> Result:
        if pack:
            if not os.path.isdir(src):
                raise BadInput(f"--pack takes a folder and {src} is a file; push it without --pack")
            options = SyncOptions(compression="zstd" if compress else "none", part_size=part_size)
            return PackedSync(ctx, src, target, options).run().result
        if os.path.isdir(src):
            return _push_folder(ctx, src, target)
        return _push_file(ctx, src, target)

    return run_job(f"push {os.path.basename(src)}", "up", f"{src} -> {target}", work, rclone, events, cancel)


def md5_file(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _result(ctx: Context, src: str, dest: str, kind: str, files: int, size: int, **kw: object) -> Result:
    return Result("pushed", src, dest, kind, files, size, ctx.job.elapsed, **kw)  # type: ignore[arg-type]


# -- plain mode ------------------------------------------------------------------------------
def _beside(dest: str, suffix: str) -> str:
    """A hidden temporary name next to ``dest`` (never inside it: rclone refuses to move a folder
    into itself), also when ``dest`` sits at the top of a remote or of the file system."""
    head, sep, path = dest.partition(":") if remotes.is_remote(dest) else ("", "", dest)
    parent, _, name = path.rstrip("/").rpartition("/")
    return f"{head}{sep}{parent}/.{name}.{suffix}" if parent or path.startswith("/") else f"{head}{sep}.{name}.{suffix}"


def _check_complete(ctx: Context, dest: str, planned: dict[str, FileStat], links: set[str], skip: set[str]) -> None:
    """Every file meant to be there is at dest with its size: nothing dropped without a word."""
    listing = ctx.rc.json("lsjson", "-R", "--files-only", dest)
    there = {remotes.listed_name(e["Path"]): e["Size"] for e in listing or []}  # type: ignore[union-attr]
    missing = [p for p, f in planned.items() if p not in skip and p not in links and there.get(p) != f.size]
    if missing:
        raise VerificationError(
            f"{len(missing)} file(s) are not at {dest} after the upload (e.g. {missing[0]!r}); "
            "push with --pack, which keeps every name and file as it is"
        )


def _push_file(ctx: Context, src: str, dest: str) -> Result:
    before = os.stat(src)
    ctx.job.update(total_bytes=before.st_size, total_files=1)
    tmp = f"{dest}.cm-tmp-{short_id()}"
    try:
        ctx.run("copyto", src, tmp, stats=True)
        after = os.stat(src)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise SourceChanged(f"{src} changed while it was being uploaded; push again once it is written")
        md5 = md5_file(src) if remotes.remote_info(ctx.rc, dest).md5 else None
        verify_upload(ctx, tmp, before.st_size, md5)
        ctx.run("moveto", tmp, dest)
    except BaseException:
        quietly(ctx.rc, "deletefile", tmp)
        raise
    return _result(ctx, src, dest, "file", 1, before.st_size)


def _push_folder(ctx: Context, src: str, dest: str) -> Result:
    tree = localtree.scan(src)
    for path in [f.path for f in tree.files] + [d for d, _ in tree.dirs] + [p for p, _ in tree.links]:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # rclone and the remotes keep names as UTF-8: this one would be changed
            raise BadInput(
                f"{os.fsencode(path)!r} in {src} is not a UTF-8 name; a plain copy cannot keep it. "
                "Rename it, or push with --pack (packed datasets keep any name)"
            ) from None
    snapshot = {f.path: f for f in tree.files}
    links = {path for path, _ in tree.links}
    ctx.job.update(total_bytes=sum(f.size for f in snapshot.values()), total_files=len(snapshot))
    info = remotes.remote_info(ctx.rc, dest)
    tmp = _beside(dest, f"cm-upload-{short_id()}")
    # names as they are: without --no-unicode-normalization, NFC and NFD twins collide into one
    args = ["copy", src, tmp, "--create-empty-src-dirs", "--links", "--no-unicode-normalization"]
    args += ["--transfers", "8", "--checkers", "16"]
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
        listing = ctx.rc.json(
            "lsjson", "-R", "--files-only", tmp, *(["--hash", "--hash-type", "md5"] if info.md5 else [])
        )
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
                ok = md5_file(local) == remote_md5
            if not ok:
                changed += [] if rel in changed else [rel]
                ctx.run("deletefile", remotes.join(tmp, entry["Path"]))  # rclone reads its listed form back
            else:
                uploaded += 1
        ctx.run("move", tmp, dest, "--create-empty-src-dirs", "--links", "--no-unicode-normalization")
        _check_complete(ctx, dest, snapshot, links, set(changed))
    finally:
        quietly(ctx.rc, "purge", tmp)
    if changed:
        raise SourceChanged(
            f"{len(changed)} file(s) changed while they were being uploaded (e.g. {changed[0]!r}) and were not "
            "pushed; push again once they are written"
        )
    total = sum(f.size for f in snapshot.values())
    return _result(ctx, src, dest, "folder", uploaded or len(snapshot), total, up_to_date=not uploaded)
