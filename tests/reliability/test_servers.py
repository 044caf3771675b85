"""Independent servers: WsgiDAV and Apache mod_dav (no hashes, no times), moto (S3), OpenSSH (SFTP).

The checks a server that keeps no hashes or times breaks first: a file rewritten with new bytes of
the same size must reach the remote in every mode (packed push, persist, plain push), a replace
that the server silently drops must never be reported as done, and nothing the previous version
needs may be removed before the new one is proven in place.  Every check reads the result back
through the remote itself (a stage), never from the server's disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from trees import ODD_NAMES, plant_leftovers, rewrite_same_size, snapshot
from waiting import wait_until

import colab_magics as cm
from colab_magics import errors
from colab_magics.events import Event, EventBus, Job, Kind
from colab_magics.jobs import Context
from colab_magics.packed.manifest import Manifest
from colab_magics.persist import Persister
from colab_magics.rclone import process as runner
from colab_magics.rclone import remotes
from colab_magics.rclone.process import Rclone


def _checkpoints(root: Path) -> Path:
    root.mkdir()
    (root / "model.ckpt").write_bytes(os.urandom(100_000))
    (root / "step.txt").write_text("step 0001\n")
    return root


def _manifest(remote: str) -> Manifest:
    ctx = Context(Rclone(), Job("check", "down"), None)
    raw = ctx.read_optional(remotes.join(remote, "manifest.json"))
    assert raw is not None
    return Manifest.from_json(raw, remote)


@pytest.mark.fault("same-size rewrite, packed push")
def test_packed_push_of_a_same_size_rewrite_reaches_the_remote(foreign, tmp_path, no_loss):
    src = _checkpoints(tmp_path / "run")
    cm.push(src, foreign.root, pack=True)
    first = _manifest(foreign.root)
    for step in range(2, 4):
        rewrite_same_size(src / "model.ckpt")
        (src / "step.txt").write_text(f"step {step:04d}\n")
        cm.push(src, foreign.root, pack=True)
        now = _manifest(foreign.root)
        assert now.to_json() != first.to_json() and len(now.to_json()) == len(first.to_json())  # the hard case
        check = tmp_path / f"check{step}"
        cm.stage(foreign.root, check)
        no_loss(snapshot(src), snapshot(check), f"{foreign.kind} after same-size rewrite {step}")


@pytest.mark.fault("same-size rewrite, persist")
def test_persist_syncs_same_size_rewrites_and_keeps_its_lock(foreign, tmp_path, no_loss):
    local = _checkpoints(tmp_path / "outputs")
    # no heartbeat of its own during the test (one every ttl / 3): a refresh in its thread at the moment
    # of the test's would replace the lock under the test's check, with the same owner and a later expiry
    p = Persister(local, foreign.root, every=3600, settle=0.0, lock_ttl=3600.0)
    p.start()
    try:
        ctx = Context(Rclone(), Job("check", "down"), None)
        for _ in range(3):
            rewrite_same_size(local / "model.ckpt")
            p.sync()
            before = json.loads(ctx.read_optional(p.lock.path) or b"{}")
            p.lock.refresh(ctx)  # a refresh the server dropped would let the lock expire under us
            after = json.loads(ctx.read_optional(p.lock.path) or b"{}")
            assert after["owner"] == p.lock.owner and after["expires"] > before["expires"]
    finally:
        p.stop()
    fresh = tmp_path / "fresh-runtime"
    Persister(fresh, foreign.root, every=3600).restore()
    no_loss(snapshot(local), snapshot(fresh), f"{foreign.kind} restore after same-size rewrites")


@pytest.mark.fault("same-size rewrite, plain push")
def test_plain_push_of_a_same_size_rewrite_and_an_unchanged_push(foreign, tmp_path, no_loss):
    src = _checkpoints(tmp_path / "run")
    (src / "sub").mkdir()
    (src / "sub" / "weights.bin").write_bytes(os.urandom(5000))
    cm.push(src, foreign.root)
    again = cm.push(src, foreign.root)
    assert again.up_to_date, again.summary()  # nothing to upload: said so, not "directory not found"
    rewrite_same_size(src / "model.ckpt")
    rewrite_same_size(src / "sub" / "weights.bin")
    pushed = cm.push(src, foreign.root)
    assert not pushed.up_to_date
    cm.stage(foreign.root, tmp_path / "check")
    no_loss(snapshot(src, modes=False, mtimes=False), snapshot(tmp_path / "check", modes=False, mtimes=False),
            f"{foreign.kind} plain push after same-size rewrites")  # fmt: skip
    single = tmp_path / "single.pt"  # one file: moved over its old version of the same size
    single.write_bytes(os.urandom(4096))
    cm.push(single, remotes.join(foreign.root, "single.pt"))
    rewrite_same_size(single)
    cm.push(single, remotes.join(foreign.root, "single.pt"))
    cm.stage(foreign.root, tmp_path / "check", force=True)
    assert (tmp_path / "check" / "single.pt").read_bytes() == single.read_bytes()


@pytest.mark.bad_input
def test_plain_push_of_odd_names(foreign, tmp_path, no_loss):
    """Names that URL handling gets wrong go up straight to their place (a server-side move would cut
    ``a;b`` to ``a`` on WsgiDAV, or fail on moto), and arrive exactly."""
    src = tmp_path / "odd"
    src.mkdir()
    for name in ODD_NAMES + ["hash#tag+plus.txt", ".hidden-dotfile", "per%20cent?.txt", "back\\slash.txt"]:
        (src / name).write_text(name)
    cm.push(src, foreign.root)
    (src / "semi;colon&amp|pipe.txt").write_text("changed: the second push replaces it")
    cm.push(src, foreign.root)
    cm.stage(foreign.root, tmp_path / "check")
    no_loss(snapshot(src, modes=False, mtimes=False), snapshot(tmp_path / "check", modes=False, mtimes=False),
            f"{foreign.kind} plain push of odd names")  # fmt: skip


@pytest.mark.bad_input
def test_plain_push_of_a_name_the_server_cannot_store_fails_in_one_line(foreign, tmp_path):
    src = tmp_path / "newline"
    src.mkdir()
    (src / "new\nline.txt").write_text("a newline in the name")
    (src / "plain.txt").write_text("fine")
    try:
        cm.push(src, foreign.root)
    except cm.ColabMagicsError as exc:  # never a silent drop: one line that points to --pack
        assert "\n" not in str(exc)
        assert "--pack" in str(exc) or "new" in str(exc)
    else:
        cm.stage(foreign.root, tmp_path / "check")
        assert (tmp_path / "check" / "new\nline.txt").read_text() == "a newline in the name"
    cm.push(src, remotes.join(foreign.root, "packed"), pack=True)  # packed keeps any name
    cm.stage(remotes.join(foreign.root, "packed"), tmp_path / "packed")
    assert (tmp_path / "packed" / "new\nline.txt").read_text() == "a newline in the name"


def test_stage_names_the_missing_part(foreign, tmp_path):
    src = _checkpoints(tmp_path / "run")
    cm.push(src, foreign.root, pack=True)
    part = _manifest(foreign.root).parts[0].name
    Rclone().run("deletefile", remotes.join(foreign.root, part))
    with pytest.raises(cm.ColabMagicsError, match=f"lists {part}, which is not on the remote"):
        cm.stage(foreign.root, tmp_path / "check")
    assert not (tmp_path / "check").exists()


def test_leftovers_of_killed_runs_are_swept_by_the_next_run(foreign, tmp_path):
    old, new = plant_leftovers(foreign.root, tmp_path)
    src = _checkpoints(tmp_path / "run")
    cm.push(src, remotes.join(foreign.root, "ds"), pack=True)
    cm.push(src, remotes.join(foreign.root, "plain"))
    listing = json.loads(Rclone().run("lsjson", "-R", "--files-only", foreign.root))
    names = {entry["Name"] for entry in listing}  # type: ignore[union-attr]
    assert not {n for n in names if old in n}, sorted(names)
    assert f"part-{new}-0000.tar" in names  # may belong to a push still running


def _unfinished_uploads(bucket: str) -> set[str]:
    """Keys of the multipart uploads S3 holds open in ``bucket``."""
    listing = json.loads(Rclone().run("backend", "list-multipart-uploads", bucket))
    return {u["Key"] for uploads in (listing or {}).values() for u in uploads or []}  # type: ignore[union-attr]


def _interrupt_an_upload(key: str, bucket: str) -> None:
    """What a killed rclone leaves on S3: a multipart upload with one part sent, never completed."""
    proc = subprocess.Popen([Rclone().binary, "rcat", "--s3-chunk-size", "5Mi", key],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert proc.stdin is not None
        proc.stdin.write(os.urandom(6 << 20))  # more than one chunk: the upload starts, and stays open
        proc.stdin.flush()

        def started() -> bool:
            assert proc.poll() is None, "rclone rcat ended before its upload started"
            return any(key.endswith(k) for k in _unfinished_uploads(bucket))

        wait_until(started, "the multipart upload's start", timeout=120, interval=0.2)
    finally:
        proc.kill()
        proc.wait()


def test_multipart_uploads_left_by_killed_runs_are_aborted_by_the_next_run(foreign, third_party_server, tmp_path):
    if third_party_server.kind != "s3":
        pytest.skip("only S3 keeps the unfinished uploads of a killed rclone (invisible, and billed)")
    bucket = foreign.root.split("/", 1)[0]
    stamp = f"{int(time.time()) - 7200:08x}abcdef"
    ours = [f"ds/parts/000/part-{stamp}-0000.tar", f"ds/.cm-upload-{stamp}/000/part-{stamp}-0000.tar",
            f".plain.cm-upload-{stamp}/model.ckpt", f"plain.cm-tmp-{stamp}"]  # fmt: skip
    neighbours = ["ds2/big.bin", "plain2.cm-tmp-x/big.bin"]  # another tool's uploads: never ours to abort
    for name in ours + neighbours:
        _interrupt_an_upload(remotes.join(foreign.root, name), bucket)
    src = _checkpoints(tmp_path / "run")
    cm.push(src, remotes.join(foreign.root, "ds"), pack=True)
    cm.push(src, remotes.join(foreign.root, "plain"))
    left = {k.split("/", 1)[1] for k in _unfinished_uploads(bucket) if k.startswith(foreign.root.split("/")[1] + "/")}
    assert left == set(neighbours)
    for name in neighbours:
        Rclone().run("backend", "cleanup", remotes.join(foreign.root, name), "-o", "max-age=0s")


def test_an_upload_that_cannot_fit_is_refused_where_the_server_reports_its_room(
    foreign, third_party_server, small_disk, tmp_path
):
    if third_party_server.kind != "sftp":
        pytest.skip("S3 and WebDAV servers here report no free space; the upload's own error stays loud there")
    src = _checkpoints(tmp_path / "run")
    (src / "big.bin").write_bytes(os.urandom(30 << 20))
    dest = f"{third_party_server.name}:{small_disk}/ds"
    with pytest.raises(errors.NoRoom) as info:
        cm.push(src, dest, pack=True)
    assert "needs at least 30.1 MiB" in str(info.value) and "\n" not in str(info.value)
    assert os.listdir(small_disk) == []


PATIENCE = 15.0  # seconds a remote may stay silent before a call gives up (60 by default)


@pytest.mark.fault("server stops answering")
def test_a_server_that_stops_answering_fails_in_bounded_time_and_ctrl_c_is_prompt(
    foreign, third_party_server, tmp_path, no_loss, monkeypatch
):
    """SIGSTOP: connections are accepted, then nothing.  rclone alone would wait its 5 minute I/O
    timeout per request, with retries on top; we give up once the remote has not answered for
    ``patience`` seconds, and a Ctrl-C (here: cancel) ends the call without waiting on the server."""
    src = _checkpoints(tmp_path / "run")
    cm.push(src, foreign.root, pack=True)
    rewrite_same_size(src / "model.ckpt")
    third_party_server.pause()
    try:
        t0 = time.monotonic()
        with pytest.raises(errors.RemoteUnreachable) as info:
            cm.push(src, foreign.root, pack=True, rclone=runner.Rclone(patience=PATIENCE))
        took = time.monotonic() - t0
        assert "\n" not in str(info.value) and "has not answered" in str(info.value)
    finally:
        third_party_server.resume()
    # Ctrl-C with the server gone mid-upload: the cancel stops rclone at once, and the clean-up of the
    # half-sent part gets one brief try (the next run sweeps what it leaves) instead of minutes of retries
    (src / "big.bin").write_bytes(os.urandom(6 << 20))
    spool = tmp_path / "tmp"  # where rclone spools what a server cannot take as a stream
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    slow = runner.Rclone(flags=["--bwlimit", "1M"])
    cancel = threading.Event()
    cancel_at: list[float] = []

    def hang_then_cancel(event: Event) -> None:  # once bytes move: the server hangs, then Ctrl-C
        if event.kind is Kind.PROGRESS and event.progress.done_bytes > 0 and not cancel.is_set():
            third_party_server.pause()
            cancel_at.append(time.monotonic())
            cancel.set()

    bus = EventBus()
    bus.subscribe(hang_then_cancel)
    try:
        with pytest.raises(errors.ColabMagicsError) as info:
            cm.push(src, foreign.root, pack=True, part_size=1 << 20, rclone=slow, events=bus, cancel=cancel)
        after_cancel = time.monotonic() - cancel_at[0]
    finally:
        bus.close()
        third_party_server.resume()
    assert isinstance(info.value, errors.TransferCancelled), info.value
    # no spooled copy of a part left behind: the rclone daemon's private folder holds its socket and log only
    left = {p.name: sorted(os.listdir(p)) if p.is_dir() else [] for p in spool.iterdir()}
    assert all(name.startswith("cm-rcd-") and held == ["rc.sock", "rclone.log"] for name, held in left.items()), left
    print(
        f"\n{foreign.kind}: unreachable after {took:.1f}s (patience {PATIENCE:.0f}s); cancel took {after_cancel:.1f}s"
    )
    assert took < PATIENCE + 45  # a probe every 10 s, each bounded: not rclone's minutes of retries
    assert after_cancel < 15  # target 5 s; generous for a busy machine
    assert not runner._live
    cm.stage(foreign.root, tmp_path / "check")  # the remote kept its previous complete version
    assert (tmp_path / "check" / "step.txt").read_text() == "step 0001\n"
    cm.push(src, foreign.root, pack=True)  # and the next try, with the server back, succeeds
    cm.stage(foreign.root, tmp_path / "check")
    no_loss(snapshot(src), snapshot(tmp_path / "check"), f"{foreign.kind} after the server came back")
