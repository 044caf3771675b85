"""Colab, emulated honestly: the real magics and engine, a fake ``google.colab`` for Google's services only.

On Colab with nothing configured, the default must be Drive, never the VM's own disk: the magics
mount Drive (Colab's consent prompt), a refused mount stops with one line, and what lands on the
mount is shown as pending upload, not as safe.  Elsewhere the embedded local folder works, and it
is labelled as kept on this machine only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import colab_magics as cm


def test_colab_without_drive_mounts_it_and_says_the_upload_is_pending(colab, ip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ip.run_cell_magic("persist", "outputs --every 1h", "open('outputs/model.pt', 'wb').write(b'w' * 1000)")
    assert colab() == [{"call": "drive.mount", "mountpoint": str(tmp_path / "drive")}]
    on_drive = tmp_path / "drive" / "MyDrive" / "colab_magics" / "outputs" / "manifest.json"
    assert on_drive.exists() and not (tmp_path / "data-home").exists()  # never the VM's own disk
    out = capsys.readouterr()
    assert "on the Drive mount, upload pending" in out.out and "WARNING" not in out.err
    ip.run_line_magic("drive_status", "")
    status = capsys.readouterr().out
    assert status.startswith("colab_magics: synced \u2014 NOT safe to disconnect (on the Drive mount, upload pending")
    ip.run_cell_magic("persist", "outputs --every 1h", "pass")
    assert len(colab()) == 1  # mounted once: the second cell finds it


def test_a_refused_mount_stops_with_one_line_and_writes_nothing(colab, ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_COLAB_MOUNT", "refuse")
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("persist", "outputs", "open('outputs/model.pt', 'wb').write(b'w')")
    message = str(info.value)
    assert "\n" not in message and message.startswith("could not mount Google Drive (mount failed)")
    assert "COLAB_MAGICS_REMOTE" in message and "drive.mount('/content/drive')" in message
    assert len(colab()) == 1 and not (tmp_path / "data-home").exists() and not (tmp_path / "outputs").exists()


def test_the_cli_on_colab_without_drive_refuses_in_one_line(colab, tmp_path):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "model.pt").write_bytes(b"w")
    run = subprocess.run(
        [sys.executable, "-m", "colab_magics.cli", "push", "outputs"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )  # fmt: skip
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert "Google Drive is not mounted and no remote is set" in run.stderr
    assert not (tmp_path / "data-home").exists()


def test_elsewhere_the_embedded_folder_works_and_is_labelled_as_this_machine_only(ip, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("COLAB_MAGICS_REMOTE")
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"w" * 100)
    ip.run_line_magic("drive_push", "model.pt")
    ip.run_line_magic("drive_push", "model.pt again.pt")
    out = capsys.readouterr()
    assert out.err.count("WARNING") == 1 and "lost if the runtime is lost" in out.err  # once a session
    assert out.out.count("kept on this machine only: lost if the runtime is lost") == 2  # every summary
    assert (tmp_path / "data-home" / "colab_magics" / "remote" / "model.pt").exists()
    ip.run_line_magic("drive_status", "")
    assert "NOT safe to disconnect (kept on this machine only" in capsys.readouterr().out


def test_on_kaggle_the_warning_says_how_to_keep_data_there(ip, tmp_path, monkeypatch, capsys):
    """Kaggle has no Drive to mount: the embedded folder stays, and the one warning says what works there."""
    monkeypatch.delenv("COLAB_MAGICS_REMOTE")
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"w" * 100)
    ip.run_line_magic("drive_push", "model.pt")
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "lost if the runtime is lost" in err and len(err.strip().splitlines()) == 1
    assert "Kaggle secret" in err and "mount Drive" not in err


def _flushed_drive(tmp_path: Path) -> Path:
    """What the fake's flush uploaded: Drive itself, as the next mount would show it."""
    return tmp_path / "drive.drive"


def test_drive_flush_uploads_the_mount_and_only_then_says_safe(colab, ip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ip.run_cell_magic("persist", "outputs --every 1h", "open('outputs/model.pt', 'wb').write(b'w' * 1000)")
    capsys.readouterr()
    ip.run_line_magic("drive_flush", "")
    out = capsys.readouterr().out
    assert out.startswith("flushed to Drive at ") and out.rstrip().endswith("safe to disconnect"), out
    assert [c["call"] for c in colab()] == ["drive.mount", "drive.flush_and_unmount"]
    assert (_flushed_drive(tmp_path) / "colab_magics" / "outputs" / "manifest.json").exists()
    assert os.listdir(tmp_path / "drive") == []  # unmounted: the empty mount point of the VM
    ip.run_line_magic("drive_status", "")
    status = capsys.readouterr().out
    assert status.startswith("colab_magics: synced \u2014 safe to disconnect"), status
    assert "upload pending" not in status and "flushed to Drive" in status
    ip.run_cell_magic("persist", "outputs --every 1h", "pass")  # the next cell mounts Drive again
    assert [c["call"] for c in colab()][-1] == "drive.mount"
    assert (tmp_path / "drive" / "MyDrive" / "colab_magics" / "outputs" / "manifest.json").exists()


def test_drive_flush_disconnect_ends_the_runtime_after_the_flush(colab, ip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ip.run_cell_magic("persist", "outputs --every 1h", "open('outputs/model.pt', 'wb').write(b'w')")
    ip.run_line_magic("drive_flush", "--disconnect")
    assert [c["call"] for c in colab()] == ["drive.mount", "drive.flush_and_unmount", "runtime.unassign"]
    assert "ending the runtime now; safe to disconnect" in capsys.readouterr().out


def test_drive_flush_will_not_end_a_runtime_that_still_holds_unsafe_data(colab, ip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ip.run_cell_magic("persist", "outputs --every 1h", "open('outputs/model.pt', 'wb').write(b'w')")
    (tmp_path / "log.txt").write_text("kept here")
    ip.run_line_magic("drive_push", f"log.txt {tmp_path / 'elsewhere' / 'log.txt'}")  # this machine only
    capsys.readouterr()
    ip.run_line_magic("drive_flush", "--disconnect")
    out = capsys.readouterr().out
    assert "NOT safe to disconnect yet: kept on this machine only" in out and "not ending the runtime" in out
    assert "runtime.unassign" not in [c["call"] for c in colab()]


def test_a_failed_flush_says_so_in_one_line_and_stays_not_safe(colab, ip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ip.run_cell_magic("persist", "outputs --every 1h", "open('outputs/model.pt', 'wb').write(b'w')")
    monkeypatch.setenv("FAKE_COLAB_FLUSH", "fail")
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("drive_flush", "--disconnect")
    message = str(info.value)
    assert "\n" not in message and message.startswith("Google Drive's flush failed (flush_and_unmount failed)")
    assert "runtime.unassign" not in [c["call"] for c in colab()]  # never end a runtime whose data is not out
    capsys.readouterr()
    ip.run_line_magic("drive_status", "")
    status = capsys.readouterr().out
    assert status.startswith(
        "colab_magics: error \u2014 NOT safe to disconnect (Drive mount: Google Drive's flush failed"
    )
    assert "on the Drive mount, upload pending" in status


def test_flush_ends_persists_to_the_mount_syncs_the_others_and_nothing_writes_into_the_empty_mount(colab, tmp_path):
    from colab_magics.errors import BadInput
    from colab_magics.flush import flush
    from colab_magics.host import colab as host
    from colab_magics.persist import Persister

    host.mount_drive()
    on_mount = Persister(tmp_path / "a", os.path.join(host.drive_root(), "a"), every=3600)
    elsewhere = Persister(tmp_path / "b", str(tmp_path / "elsewhere" / "b"), every=3600)
    for persister in (on_mount, elsewhere):
        persister.start()
        (Path(persister.local) / "model.pt").write_bytes(b"latest")
    try:
        report = flush([on_mount, elsewhere])
        assert report.ended == [on_mount.name] and report.synced == [elsewhere.name]
        assert on_mount.status().state == "stopped" and elsewhere.status().state != "stopped"
        for manifest in (_flushed_drive(tmp_path) / "a", tmp_path / "elsewhere" / "b"):
            assert "model.pt" in (manifest / "manifest.json").read_text()
        with pytest.raises(BadInput) as info:
            on_mount.sync()
        assert "which is not mounted" in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(BadInput):
            cm.push(tmp_path / "a" / "model.pt", os.path.join(host.drive_root(), "model.pt"))
        assert os.listdir(tmp_path / "drive") == []
    finally:
        elsewhere.stop()


def test_flush_off_colab_says_there_is_nothing_to_flush(ip, monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    with pytest.raises(UsageError, match="^nothing to flush: the Google Drive mount is a Colab service"):
        ip.run_line_magic("drive_flush", "")


def test_the_cli_flush_runs_colabs_flush(colab, tmp_path):
    from colab_magics.host import colab as host

    host.mount_drive()
    (Path(host.drive_root()) / "notes.txt").write_text("written through the mount")
    run = subprocess.run(
        [sys.executable, "-m", "colab_magics.cli", "flush"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("flushed to Drive at ")
    assert (_flushed_drive(tmp_path) / "notes.txt").read_text() == "written through the mount"
    assert [c["call"] for c in colab()] == ["drive.mount", "drive.flush_and_unmount"]
