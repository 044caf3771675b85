"""Rate limits and quotas (issue #5): a remote that answers 429/403 for a while, or for good.

The remote is ``rclone serve webdav`` behind :class:`ratelimit_proxy.RateLimitProxy`, which
refuses requests with Google Drive's statuses and error bodies.  What rclone's webdav backend
does with them, measured with this proxy (rclone v1.75):

- 429 is retried at the low level (each HTTP request, ``--low-level-retries``, default 10) by
  the pacer; ``Retry-After`` is ignored.  With the pacer's minimum sleep at rclone's default
  (10 ms) the retries back off exponentially, at most 2 s apart (tries at 0, 0.01, 0.03, 0.07,
  0.15, 0.31, 0.63, 1.27, 2.55, 4.56 s): a refusal shorter than ~4.5 s is absorbed, and that
  rclone process stays slow for a few seconds more while its pacer decays.  With
  ``pacer_min_sleep = 0`` (the suite's other remotes) there is nothing to double: the 10 tries
  take ~10 ms and any 429 that lasts fails the command.  A streamed upload (``rcat`` of a part)
  cannot be replayed, so a 429 on its PUT fails it; but its PROPFIND and MKCOL come first and
  are retried, so a window that opens before the upload starts is over before the PUT.
- 403 (Drive's ``userRateLimitExceeded`` or ``storageQuotaExceeded``) is never retried at the
  low level; copy-like commands repeat the whole command (``--retries``, no sleep), so the
  operation fails within a fraction of a second, whatever the body says.

So the engine must turn a lasting refusal into a :class:`~colab_magics.errors.QuotaError` that
says in plain words what happened and what to do, leave the previous remote version intact and
no temporary upload behind, and succeed on the next try.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from ratelimit_proxy import STORAGE_QUOTA, TOO_MANY_REQUESTS, USER_RATE_LIMIT, RateLimitProxy
from servers import Server
from trees import leftovers, make_tree, snapshot

import colab_magics as cm
from colab_magics import errors
from colab_magics.persist import Persister
from colab_magics.rclone import process as runner

# Where a test needs a lasting refusal to fail fast rather than after rclone's default
# 3 whole-command retries x 10 per-request retries: one try of the command (--retries 1) and
# at most 3 tries of each request (--low-level-retries 3, ~0.1 s with the suite's pacer at 0).
FAST_FAIL = ["--retries", "1", "--low-level-retries", "3"]
# Where rclone is meant to ride out a short 429 on its own: its defaults (10 low-level tries,
# 3 command tries), nothing from COLAB_MAGICS_RCLONE_FLAGS, and the pacer's default minimum
# sleep (10 ms) so that the retries back off (see the module docstring).
DEFAULTS: list[str] = []
WINDOW = 2.0  # seconds of 429: well inside the ~4.5 s that 10 backed-off tries span
PART = 64 << 10  # small parts: several requests per push and stage


@pytest.fixture
def limited(tmp_path, monkeypatch):
    """``cmlimited:``: a webdav remote (files in ``tmp_path/dav``) behind the refusing proxy."""
    server = Server("webdav", tmp_path / "dav").start()
    try:
        proxy = RateLimitProxy(server).start()
        try:
            for key, value in proxy.env().items():
                monkeypatch.setenv(key, value)
            yield proxy
        finally:
            proxy.stop()
    finally:
        server.stop()


def _backing_off(monkeypatch, proxy: RateLimitProxy) -> None:
    """Give the remote rclone's default pacer (10 ms minimum sleep), whose retries back off."""
    for key, value in proxy.env(pacer_min_sleep="10ms").items():
        monkeypatch.setenv(key, value)


def _plain(message: str, *words: str) -> str:
    """The one-line, plain-words message a user sees (the magics and the CLI print exactly this)."""
    assert "\n" not in message and len(message) < 400, message
    assert '"error"' not in message and "{" not in message, f"a raw error body in the message: {message}"
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def _pushed(tmp_path: Path, proxy: RateLimitProxy, tree: Path, name: str = "ds") -> Path:
    """Push ``tree`` packed through the proxy (nothing refused) and return its folder on disk."""
    cm.push(tree, f"{proxy.name}:{name}", pack=True, part_size=PART)
    return tmp_path / "dav" / name


# -- a: a short 429 is absorbed by rclone's backoff ---------------------------------------------
@pytest.mark.fault("429 Too Many Requests for 2 s during a packed push")
def test_a_429_for_a_while_during_a_packed_push_is_ridden_out(limited, tmp_path, monkeypatch, no_loss):
    _backing_off(monkeypatch, limited)
    folder = _pushed(tmp_path, limited, make_tree(tmp_path / "v1", small=20))
    v2 = make_tree(tmp_path / "v2", small=30, big=300 << 10)
    limited.reset_counts()
    limited.refuse(TOO_MANY_REQUESTS, seconds=WINDOW, retry_after=1)
    result = cm.push(v2, f"{limited.name}:ds", pack=True, part_size=PART, rclone=runner.Rclone(flags=DEFAULTS))
    assert limited.refused >= 1, "the 429 window was never hit"
    assert limited.forwarded >= 1
    assert result.files == len([p for p in snapshot(v2).values() if p[0] == "file"])
    assert not leftovers(folder)
    cm.stage(f"{limited.name}:ds", tmp_path / "check")
    no_loss(snapshot(v2), snapshot(tmp_path / "check"), "remote after a push through a 429 window")


@pytest.mark.fault("429 Too Many Requests for 2 s during a packed stage")
def test_a_429_for_a_while_during_a_packed_stage_is_ridden_out(limited, tmp_path, monkeypatch, no_loss):
    _backing_off(monkeypatch, limited)
    tree = make_tree(tmp_path / "tree", small=30, big=300 << 10)
    _pushed(tmp_path, limited, tree)
    limited.reset_counts()
    limited.refuse(TOO_MANY_REQUESTS, seconds=WINDOW, retry_after=1)
    result = cm.stage(f"{limited.name}:ds", tmp_path / "dest", workers=2, rclone=runner.Rclone(flags=DEFAULTS))
    assert limited.refused >= 1, "the 429 window was never hit"
    assert result.kind == "packed" and not result.up_to_date
    no_loss(snapshot(tree), snapshot(tmp_path / "dest"), "dest after a stage through a 429 window")


# -- b: Drive's 403 userRateLimitExceeded for a while ------------------------------------------
@pytest.mark.fault("403 userRateLimitExceeded for a while during a packed push")
@pytest.mark.parametrize("where", ["from the start", "at the manifest"])
def test_b_403_user_rate_limit_is_a_clear_quota_error_then_a_retry_succeeds(limited, tmp_path, where, no_loss):
    v1 = make_tree(tmp_path / "v1", small=10)
    folder = _pushed(tmp_path, limited, v1)
    v2 = make_tree(tmp_path / "v2", small=25, big=200 << 10)
    limited.reset_counts()
    if where == "from the start":  # for the next 2 s, every request
        limited.refuse(USER_RATE_LIMIT, seconds=2)
    else:  # the parts go up, then the next 3 uploads of the manifest (the commit) are refused
        limited.refuse(USER_RATE_LIMIT, count=3, methods={"PUT"}, paths=("manifest.json",))
    try:
        cm.push(v2, f"{limited.name}:ds", pack=True, part_size=PART, rclone=runner.Rclone(flags=FAST_FAIL))
    except errors.QuotaError as exc:  # what rclone's webdav backend does today: no retry of a 403
        _plain(str(exc), "rate-limiting", "wait", "userRateLimitExceeded")
        assert limited.refused >= 1
        assert not leftovers(folder)  # cleaning up needs no upload, so it was not refused
        if where == "at the manifest":
            assert limited.refused_by_method["PUT"] == limited.refused  # only the commit was refused
            limited.clear()  # the rate limit has passed
        limited.wait_over()
        cm.stage(f"{limited.name}:ds", tmp_path / "check")
        no_loss(snapshot(v1), snapshot(tmp_path / "check"), "remote after the refused push")  # previous version
    else:  # a backend that backs off on 403 would get here: then the push must be complete
        assert limited.refused >= 1
    limited.wait_over()
    cm.push(v2, f"{limited.name}:ds", pack=True, part_size=PART)  # after the window: succeeds
    assert not leftovers(folder)
    cm.stage(f"{limited.name}:ds", tmp_path / "check", force=True)
    no_loss(snapshot(v2), snapshot(tmp_path / "check"), "remote after the retry")


# -- c: the storage quota is full ---------------------------------------------------------------
@pytest.mark.fault("403 storageQuotaExceeded on upload")
@pytest.mark.parametrize("where", ["first part", "manifest"])
def test_c_storage_quota_exceeded_names_the_quota_and_leaves_nothing_behind(limited, tmp_path, where, no_loss):
    v1 = make_tree(tmp_path / "v1", small=10)
    folder = _pushed(tmp_path, limited, v1)
    on_disk = snapshot(folder)
    v2 = make_tree(tmp_path / "v2", small=25, big=200 << 10)
    limited.reset_counts()
    paths = ("manifest.json",) if where == "manifest" else None
    limited.refuse(STORAGE_QUOTA, methods={"PUT"}, paths=paths)  # until cleared: Drive is full
    with pytest.raises(errors.QuotaError) as caught:
        cm.push(v2, f"{limited.name}:ds", pack=True, part_size=PART, rclone=runner.Rclone(flags=FAST_FAIL))
    message = _plain(str(caught.value), "storage quota", "storageQuotaExceeded", "space")
    assert "wait a few minutes" not in message  # waiting does not empty a full Drive
    assert limited.refused >= 1 and limited.refused_by_method["PUT"] == limited.refused
    assert not runner._live
    assert not leftovers(folder)
    # the folder on the server's disk is exactly as before: no temporary upload, no new part
    no_loss(on_disk, snapshot(folder), "remote folder after the refused push")
    cm.stage(f"{limited.name}:ds", tmp_path / "check")  # reads still work on a full Drive
    no_loss(snapshot(v1), snapshot(tmp_path / "check"), "remote after the refused push")
    limited.clear()  # space was freed
    cm.push(v2, f"{limited.name}:ds", pack=True, part_size=PART)
    cm.stage(f"{limited.name}:ds", tmp_path / "check", force=True)
    no_loss(snapshot(v2), snapshot(tmp_path / "check"), "remote after the push once space was freed")


# -- d: a persist whose background sync keeps being refused -------------------------------------
@pytest.mark.fault("persist sync refused by a lasting rate limit")
@pytest.mark.parametrize("fault", [TOO_MANY_REQUESTS, USER_RATE_LIMIT], ids=["429", "403"])
def test_d_persist_sync_refused_reports_error_then_recovers(limited, tmp_path, fault, no_loss):
    local = tmp_path / "outputs"
    local.mkdir()
    (local / "epoch-1.txt").write_text("one")
    dest = f"{limited.name}:run"
    p = Persister(local, dest, every=3600, settle=0.0, part_size=PART, rclone=runner.Rclone(flags=FAST_FAIL))
    p.start()
    try:
        p.trigger().result(timeout=60)
        (local / "epoch-2.bin").write_bytes(os.urandom(150 << 10))
        (local / "logs").mkdir()
        (local / "logs" / "train.log").write_text("step 1\nstep 2\n")
        limited.reset_counts()
        limited.refuse(fault)  # until cleared
        with pytest.raises(errors.QuotaError):
            p.trigger().result(timeout=60)
        status = p.status()
        assert status.state == "error", status
        _plain(status.last_error, "rate-limiting", "wait")
        assert limited.refused >= 1
        limited.clear()
        t0 = time.monotonic()
        outcome = p.trigger().result(timeout=60)  # the next sync succeeds
        assert time.monotonic() - t0 < 30
        assert p.status().state == "idle" and not p.status().last_error
        assert {f.path for f in outcome.manifest.files} == {"epoch-1.txt", "epoch-2.bin", "logs/train.log"}
    finally:
        limited.clear()
        p.stop()
    assert not leftovers(tmp_path / "dav" / "run")
    cm.stage(dest, tmp_path / "check")
    no_loss(snapshot(local), snapshot(tmp_path / "check"), "remote after the persist recovered")


# -- e: rclone's move deletes the old file first; a move refused after that delete --------------
def _cut_copies(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.cm-tmp-*"))


@pytest.mark.fault("the manifest's move refused after rclone deleted the old manifest")
def test_e_a_manifest_move_cut_after_the_delete_loses_nothing(limited, tmp_path, no_loss):
    """rclone replaces a file by deleting it, then moving the new one in.  Refused between the two, a
    replace leaves no manifest.json: its verified copy must stay, be read by a stage (which writes
    nothing), and be moved into place by the next writer; the new parts it names must stay too."""
    folder = _pushed(tmp_path, limited, make_tree(tmp_path / "v1", small=20))
    v2 = make_tree(tmp_path / "v2", small=30, big=300 << 10)
    limited.reset_counts()
    limited.refuse(TOO_MANY_REQUESTS, methods={"MOVE"}, paths=("manifest.json",))
    with pytest.raises(errors.ColabMagicsError):
        cm.push(v2, f"{limited.name}:ds", pack=True, part_size=PART, rclone=runner.Rclone(flags=FAST_FAIL))
    assert limited.refused >= 1, "the move was never refused"
    assert not (folder / "manifest.json").exists(), "rclone no longer deletes first: this test tests nothing"
    assert len(_cut_copies(folder, "manifest.json")) == 1
    limited.clear()
    cm.stage(f"{limited.name}:ds", tmp_path / "staged")
    no_loss(snapshot(v2), snapshot(tmp_path / "staged"), "a stage of a dataset whose manifest's move was cut")
    assert not (folder / "manifest.json").exists()  # a stage writes nothing
    result = cm.push(v2, f"{limited.name}:ds", pack=True, part_size=PART)
    assert result.up_to_date and (folder / "manifest.json").exists() and not _cut_copies(folder, "manifest.json")
    cm.stage(f"{limited.name}:ds", tmp_path / "again")
    no_loss(snapshot(v2), snapshot(tmp_path / "again"), "a stage after the next writer finished the move")


@pytest.mark.fault("a persist's manifest move refused after the delete, then the kernel lost")
def test_e_a_new_runtime_restores_what_a_cut_manifest_move_synced(limited, tmp_path, no_loss):
    local = tmp_path / "outputs"
    local.mkdir()
    (local / "model.pt").write_bytes(os.urandom(100_000))
    rclone = runner.Rclone(flags=FAST_FAIL)
    p = Persister(local, f"{limited.name}:run", every=3600, rclone=rclone, settle=0.0)
    p.start()
    try:
        p.sync()
        (local / "model.pt").write_bytes(os.urandom(120_000))
        expected = snapshot(local)
        limited.refuse(TOO_MANY_REQUESTS, methods={"MOVE"}, paths=("manifest.json",))
        with pytest.raises(errors.ColabMagicsError):
            p.sync()
        assert not (tmp_path / "dav" / "run" / "manifest.json").exists()
        limited.clear()
        p.lock.check(p._context())  # the lock is still this kernel's
    finally:
        p.stop(final=False)  # the kernel is lost: no final sync
    fresh = tmp_path / "new-runtime" / "outputs"
    with Persister(fresh, f"{limited.name}:run", every=3600, restore=True):
        pass
    no_loss(expected, snapshot(fresh), "a new runtime's restore after a cut manifest move")


def _persist_with_a_cut_refresh(limited: RateLimitProxy, local: Path) -> Persister:
    """A running persist of ``local`` whose lock refresh was cut after rclone deleted the lock (the
    move refused, and still refused on return)."""
    local.mkdir()
    p = Persister(local, f"{limited.name}:run", every=3600, rclone=runner.Rclone(flags=FAST_FAIL))
    p.start()
    try:
        limited.refuse(TOO_MANY_REQUESTS, methods={"MOVE"}, paths=(".cm-lock.json",))
        with pytest.raises(errors.ColabMagicsError):
            p.lock.refresh(p._context())
    except BaseException:
        p.stop(final=False)
        raise
    return p


@pytest.mark.fault("the lock's move refused after rclone deleted the old lock")
def test_e_a_lock_refresh_cut_after_the_delete_is_not_a_takeover(limited, tmp_path):
    local = tmp_path / "outputs"
    p = _persist_with_a_cut_refresh(limited, local)
    try:
        assert not (tmp_path / "dav" / "run" / ".cm-lock.json").exists()
        limited.clear()
        p.lock.check(p._context())  # its own lock, cut short: not "taken over by another kernel"
        (local / "a.txt").write_text("a")
        assert p.sync().result.files == 1
    finally:
        p.stop()


@pytest.mark.fault("a file push's move refused after rclone deleted the old file")
def test_e_a_file_push_cut_after_the_delete_keeps_the_new_version(limited, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"old" * 1000)
    cm.push(model, f"{limited.name}:models/model.pt")
    model.write_bytes(b"new" * 2000)
    limited.refuse(TOO_MANY_REQUESTS, methods={"MOVE"}, paths=("model.pt",))
    with pytest.raises(errors.ColabMagicsError):
        cm.push(model, f"{limited.name}:models/model.pt", rclone=runner.Rclone(flags=FAST_FAIL))
    folder = tmp_path / "dav" / "models"
    assert not (folder / "model.pt").exists(), "rclone no longer deletes first: this test tests nothing"
    [kept] = _cut_copies(folder, "model.pt")
    assert kept.read_bytes() == model.read_bytes()  # the new version, whole, under its temporary name
    limited.clear()
    cm.push(model, f"{limited.name}:models/model.pt")
    assert (folder / "model.pt").read_bytes() == model.read_bytes()


@pytest.mark.fault("a lock refresh cut after the delete, then the persist ended")
def test_e_a_released_lock_leaves_no_copy_that_holds_the_next_writer_back(limited, tmp_path):
    local = tmp_path / "outputs"
    p = _persist_with_a_cut_refresh(limited, local)
    limited.refuse(TOO_MANY_REQUESTS, methods={"DELETE"}, paths=(".cm-lock.json",))  # the release is refused too
    p.stop()
    limited.clear()
    assert _cut_copies(tmp_path / "dav" / "run", ".cm-lock.json")  # left behind: a copy of a released lock
    with Persister(local, f"{limited.name}:run", every=3600):  # the next writer, in this same process
        pass  # not held back by that copy (the hourly stale sweep removes it)


@pytest.mark.fault("the delete before the manifest's move refused: the old manifest stays")
def test_e_new_parts_named_by_no_manifest_are_removed_at_once(limited, tmp_path, no_loss):
    """A replace refused before rclone deleted the old manifest leaves it in place: the new parts it
    does not name go at once (a lasting 429 must not pile up a part per retry until the hourly sweep)."""
    v1 = make_tree(tmp_path / "v1", small=10)
    folder = _pushed(tmp_path, limited, v1)
    on_disk = snapshot(folder)
    limited.refuse(TOO_MANY_REQUESTS, methods={"DELETE"}, paths=("manifest.json",))
    with pytest.raises(errors.ColabMagicsError):
        cm.push(make_tree(tmp_path / "v2", small=25), f"{limited.name}:ds", pack=True, part_size=PART,
                rclone=runner.Rclone(flags=FAST_FAIL))  # fmt: skip
    limited.clear()
    assert limited.refused >= 1
    # the refusal also keeps the new manifest's copy (its DELETE names manifest.json): the stale sweep's
    parts = {name: v for name, v in snapshot(folder).items() if b".cm-tmp-" not in name}
    no_loss(on_disk, parts, "remote folder after a replace refused before the delete")


@pytest.mark.fault("two cut copies of the manifest, the older one stamped later (a writer whose clock ran fast)")
def test_e_of_two_cut_copies_the_later_manifest_wins_whatever_their_names_say(limited, tmp_path, no_loss):
    folder = _pushed(tmp_path, limited, make_tree(tmp_path / "v1", small=10))
    older = (folder / "manifest.json").read_bytes()
    v2 = make_tree(tmp_path / "v2", small=20)
    limited.refuse(TOO_MANY_REQUESTS, methods={"MOVE"}, paths=("manifest.json",))
    with pytest.raises(errors.ColabMagicsError):
        cm.push(v2, f"{limited.name}:ds", pack=True, part_size=PART, rclone=runner.Rclone(flags=FAST_FAIL))
    limited.clear()
    ahead = f"{int(time.time()) + 600:08x}abcdef"  # stamped ten minutes ahead; through the server, which caches
    (tmp_path / "older.json").write_bytes(older)
    runner.Rclone().copyfile(str(tmp_path / "older.json"), f"{limited.name}:ds/manifest.json.cm-tmp-{ahead}")
    assert len(_cut_copies(folder, "manifest.json")) == 2
    cm.stage(f"{limited.name}:ds", tmp_path / "staged")
    no_loss(snapshot(v2), snapshot(tmp_path / "staged"), "a stage choosing between two cut copies")
    cm.push(v2, f"{limited.name}:ds", pack=True, part_size=PART)  # the next writer repairs
    assert not _cut_copies(folder, "manifest.json")
    cm.stage(f"{limited.name}:ds", tmp_path / "again")
    no_loss(snapshot(v2), snapshot(tmp_path / "again"), "a stage after the repair")
