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
import re
import tempfile
import threading

from .destination.safety import where
from .destination.space import check_room
from .errors import BadInput, RemoteNotFound, SourceChanged, VerificationError
from .events import Direction, EventBus
from .jobs import (
    Context,
    Result,
    abort_stale_uploads,
    copy_prefix,
    quietly,
    read_json,
    run_job,
    short_id,
    state_dir,
    sweep,
    verify_upload,
    write_json,
)
from .local import tree as localtree
from .local.tree import FileStat
from .packed.manifest import DEFAULT_PART_SIZE
from .packed.upload import PackedSync, SyncOptions
from .rclone import remotes
from .rclone.process import Rclone


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

    place = where(target, rclone)

    def work(ctx: Context) -> Result:
        if pack:
            if not os.path.isdir(src):
                raise BadInput(f"--pack takes a folder and {src} is a file; push it without --pack")
            options = SyncOptions(compression="zstd" if compress else "none", part_size=part_size)
            return PackedSync(ctx, src, target, options).run().result
        if os.path.isdir(src):
            return _push_folder(ctx, src, target)
        return _push_file(ctx, src, target)

    name = f"push {os.path.basename(src)}"
    return run_job(name, Direction.UP, f"{src} -> {target}", work, rclone, events, cancel, place, target)


def md5_file(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _result(ctx: Context, src: str, dest: str, kind: str, files: int, size: int, up_to_date: bool = False) -> Result:
    return Result("pushed", src, dest, kind, files, size, ctx.job.elapsed, up_to_date, where=ctx.job.where)


# -- plain mode ------------------------------------------------------------------------------
def _beside(dest: str, suffix: str) -> str:
    """A hidden temporary name next to ``dest`` (never inside it: rclone refuses to move a folder
    into itself)."""
    parent, name = remotes.parent(dest)
    return remotes.join(parent, f".{name}.{suffix}")


def _sweep_beside(ctx: Context, dest: str) -> None:
    """Remove what killed plain pushes to ``dest`` left beside it (``.NAME.cm-upload-*``, ``NAME.cm-tmp-*``)."""
    parent, name = remotes.parent(dest)
    ours = (f".{name}.cm-upload-", copy_prefix(name))
    sweep(ctx, parent, ours)
    abort_stale_uploads(ctx, [remotes.join(parent, p) for p in ours])


def _check_complete(ctx: Context, dest: str, planned: dict[str, FileStat], links: set[str], skip: set[str]) -> None:
    """Every file meant to be there is at dest with its size: nothing dropped without a word."""
    listing = ctx.rc.lsjson(dest, recurse=True, files_only=True, **ctx.watch)
    there = {remotes.listed_name(e.path): e.size for e in listing}
    missing = [p for p, f in planned.items() if p not in skip and p not in links and there.get(p) != f.size]
    if missing:
        raise VerificationError(
            f"{len(missing)} file(s) are not at {dest} after the upload (e.g. {missing[0]!r}); "
            "push with --pack, which keeps every name and file as it is"
        )


def _push_file(ctx: Context, src: str, dest: str) -> Result:
    before = os.stat(src)
    ctx.job.update(total_bytes=before.st_size, total_files=1)
    tmp = copy_prefix(dest) + short_id()
    check_room(ctx, dest, before.st_size)  # the new copy goes up beside the old one
    try:
        ctx.run("copyto", src, tmp, stats=True)
        after = os.stat(src)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise SourceChanged(f"{src} changed while it was being uploaded; push again once it is written")
        md5 = md5_file(src) if remotes.remote_info(ctx.rc, dest).md5 else None
        verify_upload(ctx, tmp, before.st_size, md5)
    except BaseException:
        quietly(ctx.rc.deletefile, tmp)
        raise
    ctx.move_over(tmp, dest)
    verify_upload(ctx, dest, before.st_size, md5)
    _sweep_beside(ctx, dest)
    return _result(ctx, src, dest, "file", 1, before.st_size)


class _PushJournal:
    """What this machine last pushed to a plain folder: each entry's local state when it went up.

    rclone decides "unchanged" by size and time, or hash; a remote with neither hashes nor
    usable times (generic WebDAV) would make every same-size change look unchanged.  Where the
    remote cannot tell, an entry whose local state differs from this record is sent anyway.
    """

    def __init__(self, dest: str) -> None:
        key = hashlib.sha256(dest.encode()).hexdigest()[:24]
        self.path = state_dir() / "pushed" / f"{key}.json"
        self.dest = dest
        data = read_json(self.path)
        entries = data.get("entries") if data.get("dest") == dest else None
        self.entries: dict[str, list] = entries if isinstance(entries, dict) else {}

    def save(self, states: dict[str, list]) -> None:
        write_json(self.path, {"dest": self.dest, "entries": states})


def _local_states(tree: localtree.Tree) -> dict[str, list]:
    """Each file's and symlink's state, by its name on the remote (links are stored as ``.rclonelink``)."""
    states: dict[str, list] = {f.path: [f.size, f.mtime_ns] for f in tree.files}
    states.update({path + ".rclonelink": ["link", target] for path, target in tree.links})
    return states


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
    states = _local_states(tree)
    journal = _PushJournal(dest)
    ctx.job.update(total_bytes=sum(f.size for f in snapshot.values()), total_files=len(snapshot))
    info = remotes.remote_info(ctx.rc, dest)
    tmp = _beside(dest, f"cm-upload-{short_id()}")
    # names as they are: without --no-unicode-normalization, NFC and NFD twins collide into one
    keep_names = ["--links", "--no-unicode-normalization"]
    # a remote with hashes compares by them (sizes and 1 s times miss a same-size rewrite)
    args = ["copy", src, tmp, "--create-empty-src-dirs", *keep_names, "--transfers", "8", "--checkers", "16"]
    args += ["--checksum"] if info.hashes else []
    try:
        there = _listing(ctx, dest, info.hashes[:1])
        # at least the files that are new or changed size go up (same-size changes may add more)
        grown = [_remote_size(s) for n, s in states.items() if there.get(n, (-1,))[0] != _remote_size(s)]
        check_room(ctx, dest, sum(grown))
        ctx.run("mkdir", dest)
        changed = _copy(ctx, *args, "--compare-dest", dest)
        # what --compare-dest took for unchanged without being able to compare: same size and no hash
        blind = [
            name
            for name, state in states.items()
            if name in there and there[name] == (_remote_size(state), "") and journal.entries.get(name) != state
        ]
        if blind:
            changed += _copy_listed(ctx, src, tmp, blind, keep_names)
        staged, uploaded, direct = _check_staged(ctx, src, tmp, snapshot, links, info.md5, changed)
        if staged:  # files, or only new empty folders
            # --ignore-times: the staged files replace the old ones even where rclone cannot tell them apart
            ctx.run("move", tmp, dest, "--create-empty-src-dirs", "--ignore-times", *keep_names)
        if direct:  # names a server-side move may mangle go up straight to their place, then are checked
            changed += _copy_listed(ctx, src, dest, direct, [*keep_names, "--ignore-times"])
        uploaded += len(direct)
        _check_complete(ctx, dest, snapshot, links, set(changed))
    finally:
        quietly(ctx.rc.purge, tmp)
    _sweep_beside(ctx, dest)
    journal.save({name: state for name, state in states.items() if name.removesuffix(".rclonelink") not in changed})
    if changed:
        raise SourceChanged(
            f"{len(changed)} file(s) changed while they were being uploaded (e.g. {changed[0]!r}) and were not "
            "pushed; push again once they are written"
        )
    total = sum(f.size for f in snapshot.values())
    return _result(ctx, src, dest, "folder", uploaded or len(snapshot), total, up_to_date=not uploaded)


# characters that URL and header handling on real servers gets wrong in a server-side move or copy
_MOVE_UNSAFE = re.compile(r"[;#?%+&\\]")


def _remote_size(state: list) -> int:
    """The size an entry has on the remote: a symlink is stored as a file holding its target."""
    return len(os.fsencode(state[1])) if state[0] == "link" else state[0]


def _listing(ctx: Context, dest: str, hash_types: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    """The files at ``dest`` by name: (size, hash); the hash is "" where the remote has none for it."""
    try:
        hashed = hash_types[0] if hash_types else ""
        listing = ctx.rc.lsjson(dest, recurse=True, files_only=True, hash=hashed, **ctx.watch)
    except RemoteNotFound:
        return {}
    return {remotes.listed_name(e.path): (e.size, e.hash(hash_types[0]) if hash_types else "") for e in listing}


def _copy(ctx: Context, *args: str) -> list[str]:
    """Run an upload; files that rclone saw change are returned (and skipped), the rest went up."""
    try:
        ctx.run(*args, stats=True)
    except SourceChanged as exc:
        return [remotes.listed_name(p) for p in exc.paths]
    return []


def _copy_listed(ctx: Context, src: str, dest: str, names: list[str], flags: list[str]) -> list[str]:
    """Upload exactly ``names`` (as the remote names them) from ``src`` into ``dest``: one call for
    all, and one each for the rare name with a line break, which a list of names cannot hold."""
    listed = [n for n in names if "\n" not in n and "\r" not in n]
    changed = []
    for name in sorted(set(names) - set(listed)):
        changed += _copy(ctx, "copyto", os.path.join(src, name), remotes.join(dest, name), *flags)
    if not listed:
        return changed
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as listfile:
        listfile.write(b"".join(os.fsencode(name) + b"\n" for name in listed))
    try:
        return changed + _copy(ctx, "copy", src, dest, "--files-from-raw", listfile.name, "--no-traverse", *flags)
    finally:
        os.unlink(listfile.name)


def _check_staged(
    ctx: Context, src: str, tmp: str, snapshot: dict[str, FileStat], links: set[str], md5: bool, changed: list[str]
) -> tuple[bool, int, list[str]]:
    """Check every staged file against the local one as it is now (size, time, MD5 where the remote
    keeps it); drop and add to ``changed`` those that differ.

    Returns whether anything was staged at all, how many files are good to move, and the names to
    upload straight to dest instead: those a
    server-side move is known to mangle (WsgiDAV's MOVE cuts a name at ``;``, moto's CopyObject
    answers 404 for it, s3rver's for ``#`` and ``+``), which are dropped from ``tmp``.
    """
    try:
        listing = ctx.rc.lsjson(tmp, recurse=True, files_only=True, hash="md5" if md5 else "", **ctx.watch)
    except RemoteNotFound:  # nothing needed uploading: the staging folder was never made
        return False, 0, []
    uploaded = 0
    direct: list[str] = []
    for entry in listing:
        rel = remotes.listed_name(entry.path)
        if _MOVE_UNSAFE.search(rel):
            direct.append(rel)
            ctx.rc.deletefile(remotes.join(tmp, entry.path), **ctx.watch)
            continue
        if rel.removesuffix(".rclonelink") in links:  # a symlink, stored as its target's text
            uploaded += 1
            continue
        planned = snapshot.get(rel)
        local = os.path.join(src, rel)
        ok = False
        if planned is not None and entry.size == planned.size:
            st = os.stat(local)
            ok = (st.st_size, st.st_mtime_ns) == (planned.size, planned.mtime_ns)
        remote_md5 = entry.hash("md5")
        if ok and remote_md5:
            ok = md5_file(local) == remote_md5
        if not ok:
            changed += [] if rel in changed else [rel]
            ctx.rc.deletefile(remotes.join(tmp, entry.path), **ctx.watch)  # rclone reads its listed form back
        else:
            uploaded += 1
    return True, uploaded, direct
