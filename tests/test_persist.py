"""%%persist and the Persister: restore, background sync, final flush, lock, copy semantics."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from IPython.core.error import UsageError
from trees import snapshot
from waiting import PATIENCE, ManualClock, wait_until

import colab_magics as cm
from colab_magics import errors
from colab_magics.packed.manifest import Manifest
from colab_magics.persist import Persister


def _remote_files(folder) -> dict[str, int]:
    manifest = Manifest.from_json((folder / "manifest.json").read_bytes(), "t")
    return {f.path: f.size for f in manifest.files}


def _remote_files_if_any(folder) -> dict[str, int]:
    """As :func:`_remote_files`, but empty until a first manifest has landed whole (read from the
    server's folder while the server writes it, it may be incomplete)."""
    try:
        return _remote_files(folder)
    except (FileNotFoundError, errors.ManifestError):
        return {}


def test_cell_outputs_end_flushed_and_verified(ip, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ip.run_cell_magic("persist", "outputs --every 1h", "import os\nos.makedirs('outputs/ckpt', exist_ok=True)\n"
                      "open('outputs/ckpt/model.pt','wb').write(b'x'*5000)\n"
                      "open('outputs/log.txt','w').write('done')")  # fmt: skip
    out = capsys.readouterr().out
    assert "final sync at" in out and "pushed" in out
    remote = tmp_path / "default-remote" / "outputs"
    assert _remote_files(remote) == {"ckpt/model.pt": 5000, "log.txt": 4}
    assert not (remote / ".cm-lock.json").exists()  # released


@pytest.mark.parametrize("error", ["ValueError('boom')", "SystemExit(3)"])
def test_final_sync_happens_on_error_and_error_is_unchanged(ip, tmp_path, monkeypatch, error):
    monkeypatch.chdir(tmp_path)
    cell = f"open('outputs/partial.txt','w').write('saved')\nraise {error}"
    with pytest.raises((ValueError, SystemExit)) as info:
        ip.run_cell_magic("persist", "outputs", cell)
    assert type(info.value).__name__ == error.split("(")[0]
    assert _remote_files(tmp_path / "default-remote" / "outputs") == {"partial.txt": 5}


def test_the_cell_says_where_it_persists_and_its_last_expression_is_its_value(ip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    value = ip.run_cell_magic("persist", "outputs --every 90s", "x = 41\nx + 1")
    assert value == 42  # displayed as the cell's result, as for any cell
    first = capsys.readouterr().out.splitlines()[0]
    assert (
        first
        == f"persisting {tmp_path / 'outputs'} to {tmp_path / 'default-remote' / 'outputs'} (this machine) every 1m30s"
    )


def test_the_body_may_await_at_its_top_level(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = (
        "import asyncio\nawait asyncio.sleep(0)\nopen('outputs/a.txt', 'w').write('a')\n"
        "await asyncio.sleep(0, 'done')"
    )
    assert ip.run_cell_magic("persist", "outputs", body) == "done"
    assert ip.run_cell_magic("persist", "outputs", "x = 1\nx;") is None  # a trailing ";" hides the value
    assert _remote_files(tmp_path / "default-remote" / "outputs") == {"a.txt": 1}


def test_an_interrupt_ends_with_one_line_that_says_what_is_safe(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as info:  # IPython shows a UsageError as its one line, no traceback
        ip.run_cell_magic("persist", "outputs", "open('outputs/a.txt','w').write('a')\nraise KeyboardInterrupt")
    assert str(info.value) == f"interrupted; final sync done: 1 file on {tmp_path / 'default-remote' / 'outputs'}"
    assert _remote_files(tmp_path / "default-remote" / "outputs") == {"a.txt": 1}


def test_rerun_after_lost_runtime_restores(ip, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ip.run_cell_magic("persist", "outputs", "open('outputs/epoch.txt','w').write('7')")
    import shutil

    shutil.rmtree(tmp_path / "outputs")  # the runtime died with its disk
    capsys.readouterr()
    ip.run_cell_magic("persist", "outputs", "restored_epoch = open('outputs/epoch.txt').read()")
    assert ip.user_ns["restored_epoch"] == "7"
    assert "restored:" in capsys.readouterr().out
    ip.run_cell_magic("persist", "outputs --no-restore", "pass")  # nothing to restore, nothing breaks


def test_restore_brings_back_only_missing_or_older_files(tmp_path):
    local = tmp_path / "out"
    local.mkdir()
    (local / "a.txt").write_text("remote a")
    (local / "b.txt").write_text("remote b")
    p = Persister(local, every=3600)
    p.start()
    p.stop()
    os.unlink(local / "a.txt")
    (local / "b.txt").write_text("newer local b")
    restored = Persister(local, every=3600).restore()
    assert restored is not None and restored.files == 1
    assert (local / "a.txt").read_text() == "remote a" and (local / "b.txt").read_text() == "newer local b"


def test_background_sync_while_the_cell_runs(remote, tmp_path, monkeypatch):
    local = tmp_path / "outputs"
    local.mkdir()
    p = Persister(local, remote.root + "/run", every=0.3, settle=0.05)
    p.start()
    try:
        (local / "ckpt-1.pt").write_bytes(os.urandom(30_000))
        wait_until(lambda: "ckpt-1.pt" in _remote_files_if_any(remote.folder / "run"), "a background sync")
        (local / "ckpt-2.pt").write_bytes(os.urandom(1000))
        outcome = p.trigger().result(timeout=PATIENCE)  # the panel's "Sync now": a sync that starts after it
        assert "ckpt-2.pt" in _remote_files(remote.folder / "run") and outcome.result.files == 2
        assert p.status().syncs >= 2 and p.status().last_sync is not None
    finally:
        p.stop()
    cm.stage(remote.root + "/run", tmp_path / "back")
    assert snapshot(tmp_path / "back") == snapshot(local)


def test_copy_semantics_keep_deleted_files_unless_mirror(tmp_path):
    local = tmp_path / "out"
    local.mkdir()
    (local / "keep.txt").write_text("k")
    (local / "gone.txt").write_text("g")
    p = Persister(local, "copy", every=3600)
    p.start()
    p.stop()
    os.unlink(local / "gone.txt")
    p = Persister(local, "copy", every=3600)
    p.start()
    p.stop()
    assert set(_remote_files(tmp_path / "default-remote" / "copy")) == {"keep.txt", "gone.txt"}
    p = Persister(local, "copy", every=3600, mirror=True)
    p.start()
    p.stop()
    assert set(_remote_files(tmp_path / "default-remote" / "copy")) == {"keep.txt"}
    assert len(list((tmp_path / "default-remote" / "copy" / "parts").rglob("*.tar"))) == 1


def test_second_writer_gets_a_clear_error_then_can_steal(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    other = Persister(tmp_path / "outputs", every=3600)  # another kernel's persist
    other.start()
    try:
        with pytest.raises(UsageError, match="being persisted by .* --steal-lock"):
            ip.run_cell_magic("persist", "outputs", "pass")
        ip.run_cell_magic("persist", "outputs --steal-lock", "open('outputs/x','w').write('x')")
    finally:
        other.stop(final=False)


def test_expired_lock_of_a_dead_kernel_does_not_block(tmp_path):
    dest = tmp_path / "default-remote" / "out"
    dest.mkdir(parents=True)
    (dest / ".cm-lock.json").write_text(json.dumps({"owner": "dead kernel", "expires": time.time() - 1}))
    p = Persister(tmp_path / "out", every=3600)
    p.start()
    p.stop()


def test_lock_left_by_a_persist_of_this_process_expires(tmp_path):
    clock = ManualClock(time.time())
    abandoned = Persister(tmp_path / "out", every=3600, lock_ttl=60, clock=clock)
    abandoned.start()
    abandoned._stop.set()  # its thread ends without a final sync or a release, as if it were forgotten
    abandoned._wake.set()
    abandoned._thread.join(PATIENCE)
    clock.now += 59  # however long the rclone calls above took, the lock has 1 s left on this clock
    with pytest.raises(errors.LockHeld, match=r"lock expires in [12]s"):
        Persister(tmp_path / "out", every=3600, clock=clock).start()
    clock.now += 2
    p = Persister(tmp_path / "out", every=3600, clock=clock)
    p.start()  # same process, same pid: its expiry decides, not its liveness
    p.stop()


def _appending(path, stop, block=2048):
    """Append to ``path`` until ``stop``, paced like a training log (the sleep paces; it waits for nothing)."""
    with open(path, "ab") as fh:
        while not stop.is_set():
            fh.write(os.urandom(block))
            fh.flush()
            time.sleep(0.001)


def test_file_changing_while_read_keeps_previous_version(tmp_path):
    local = tmp_path / "out"
    local.mkdir()
    big = local / "growing.bin"
    first = os.urandom(48 << 20)
    big.write_bytes(first)
    p = Persister(local, every=3600, settle=0.0)
    p.start()
    p.sync()
    stop = threading.Event()
    writer = threading.Thread(target=_appending, args=(big, stop, 256 << 10))
    writer.start()
    try:
        wait_until(lambda: big.stat().st_size > len(first), "the writer's first append")
        outcome = p.sync()  # tolerant: no error; the file changed while read is left for later
    finally:
        stop.set()
        writer.join()
    assert "growing.bin" in outcome.deferred
    cm.stage(str(tmp_path / "default-remote" / "out"), tmp_path / "check")
    assert (tmp_path / "check" / "growing.bin").read_bytes() == first  # the previous complete version
    final = p.stop()
    assert final.deferred == []
    cm.stage(str(tmp_path / "default-remote" / "out"), tmp_path / "check")
    assert (tmp_path / "check" / "growing.bin").read_bytes() == big.read_bytes()


def test_a_log_appended_every_millisecond_is_still_synced(tmp_path):
    local = tmp_path / "out"
    local.mkdir()
    log = local / "train.log"
    log.write_bytes(b"start\n")
    p = Persister(local, every=3600, settle=0.0)
    p.start()
    stop = threading.Event()
    writer = threading.Thread(target=_appending, args=(log, stop))
    writer.start()
    try:
        wait_until(lambda: log.stat().st_size > len(b"start\n"), "the writer's first append")
        synced = [p.sync() for _ in range(3)]
    finally:
        stop.set()
        writer.join()
        p.stop(final=False)
    assert any("train.log" not in o.deferred for o in synced)  # taken as it was when opened
    cm.stage(str(tmp_path / "default-remote" / "out"), tmp_path / "check")
    remote_log = (tmp_path / "check" / "train.log").read_bytes()
    assert len(remote_log) > 6 and log.read_bytes().startswith(remote_log)  # a true earlier state


@pytest.mark.parametrize(
    "line, match",
    [("outputs --every abc", "cannot read 'abc'"), ("outputs --every 0", "positive"), ("", "required|arguments"),
     ("outputs --to nosuch:x", "unknown remote")],
)  # fmt: skip
def test_bad_persist_flags(ip, tmp_path, monkeypatch, line, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=match):
        ip.run_cell_magic("persist", line, "raise AssertionError('the cell must not run')")


def test_cli_persist_syncs_and_passes_the_exit_status_on(tmp_path):
    import subprocess
    import sys

    script = "import os,sys; os.makedirs('out', exist_ok=True); open('out/result.txt','w').write('42'); sys.exit(3)"
    run = subprocess.run(
        [sys.executable, "-m", "colab_magics.cli", "persist", "out", "--every", "1h", "--",
         sys.executable, "-c", script],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 3, run.stderr
    assert "final sync" in run.stderr and "Traceback" not in run.stderr
    assert _remote_files(tmp_path / "default-remote" / "out") == {"result.txt": 2}
    (tmp_path / "out" / "result.txt").unlink()
    again = subprocess.run(
        [sys.executable, "-m", "colab_magics.cli", "persist", "out", "--", sys.executable, "-c",
         "print(open('out/result.txt').read())"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and again.stdout.strip() == "42" and "restored" in again.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "colab_magics.cli", "persist", "out", "--", "no-such-command-xyz"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 127 and "command not found" in missing.stderr


def test_a_sync_that_failed_after_its_commit_is_not_built_on_upon(tmp_path, monkeypatch):
    """The old parts' deletion comes after the manifest is committed.  When it fails half-way, the
    next sync must start from the committed manifest, not from the one before it, whose parts may
    be gone: a manifest naming a deleted part would lose the files in it.  Here the file that made
    the part stale is put back as it was (its bytes and time, as ``cp -p`` or ``rsync -a`` do), so
    that, judged against the older manifest, the deleted part looks current again."""
    from colab_magics.packed.upload import PackedSync

    local = tmp_path / "out"
    local.mkdir()
    (local / "big.bin").write_bytes(os.urandom(1 << 20))
    (local / "small.txt").write_text("kept as it is")  # shares big.bin's part, which is repacked below
    p = Persister(local, every=3600, settle=0.0)
    p.start()
    try:
        p.sync()
        first, first_ns = (local / "big.bin").read_bytes(), os.stat(local / "big.bin").st_mtime_ns
        (local / "big.bin").write_bytes(os.urandom(1 << 20))  # most of the part is stale now: repacked
        real = PackedSync._delete_parts

        def deleted_then_failed(self, names, quiet=False):  # type: ignore[no-untyped-def]
            real(self, names, quiet)
            raise errors.RcloneError("rclone delete failed (exit 1): the connection dropped after the delete")

        monkeypatch.setattr(PackedSync, "_delete_parts", deleted_then_failed)
        with pytest.raises(errors.RcloneError):
            p.sync()
        monkeypatch.setattr(PackedSync, "_delete_parts", real)
        (local / "big.bin").write_bytes(first)
        os.utime(local / "big.bin", ns=(first_ns, first_ns))
        p.sync()
    finally:
        p.stop()
    cm.stage(p.dest, tmp_path / "back")  # every part the manifest names is there
    assert snapshot(tmp_path / "back") == snapshot(local)
