"""Colab, emulated honestly: the real magics and engine, a fake ``google.colab`` for Google's services only.

On Colab with nothing configured, the default must be Drive, never the VM's own disk: the magics
mount Drive (Colab's consent prompt), a refused mount stops with one line, and what lands on the
mount is shown as pending upload, not as safe.  Elsewhere the embedded local folder works, and it
is labelled as kept on this machine only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError

FAKE = str(Path(__file__).parent / "fake_colab")


@pytest.fixture
def colab(tmp_path, monkeypatch):
    """A Colab runtime with nothing configured and Drive not mounted yet; returns the calls made to Colab."""
    monkeypatch.delenv("COLAB_MAGICS_REMOTE")
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-fake")
    monkeypatch.setenv("COLAB_MAGICS_DRIVE_MOUNT", str(tmp_path / "drive"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))  # where the embedded folder would go
    monkeypatch.setenv("FAKE_COLAB_LOG", str(tmp_path / "colab-calls.jsonl"))
    monkeypatch.syspath_prepend(FAKE)
    for name in [m for m in sys.modules if m == "google.colab" or m.startswith("google.colab.")]:
        monkeypatch.delitem(sys.modules, name)

    def calls() -> list[dict]:
        log = tmp_path / "colab-calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


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
