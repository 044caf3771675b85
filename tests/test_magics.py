"""The magics in a real IPython InteractiveShell."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from IPython.core.error import UsageError
from trees import make_tree, snapshot


def test_push_then_stage_with_summaries(ip, tmp_path, capsys, monkeypatch):
    src = make_tree(tmp_path / "outputs", small=10)
    monkeypatch.chdir(tmp_path)
    ip.run_line_magic("drive_push", f"'{src}' --pack --part-size 64K")
    out = capsys.readouterr().out
    assert "pushed" in out and "packed" in out
    ip.run_line_magic("drive_stage", "outputs staged")
    assert "staged" in capsys.readouterr().out
    assert snapshot(tmp_path / "staged") == snapshot(src)
    ip.run_line_magic("drive_stage", "outputs staged")
    assert "already up to date" in capsys.readouterr().out


def test_push_file_into_remote_folder(ip, tmp_path, capsys):
    f = tmp_path / "model.pt"
    f.write_bytes(os.urandom(1000))
    ip.run_line_magic("drive_push", f"{f} models/")
    assert (tmp_path / "default-remote" / "models" / "model.pt").read_bytes() == f.read_bytes()


def test_config_sets_the_remote(ip, tmp_path, capsys):
    other = tmp_path / "other-root"
    ip.run_line_magic("config", f"ColabMagics.remote = '{other}'")
    src = make_tree(tmp_path / "data", small=2, odd=False)
    ip.run_line_magic("drive_push", f"{src}")
    assert (other / "data" / "a" / "small-000.bin").exists()


@pytest.mark.parametrize(
    "magic, line, match",
    [
        ("drive_stage", "nothing/here", "does not exist"),
        ("drive_stage", "nosuch:x", "unknown remote"),
        ("drive_stage", "", "arguments are required|the following arguments"),
        ("drive_stage", "x --workers zero", "invalid int"),
        ("drive_stage", "x --workers 0", "between 1 and 32"),
        ("drive_push", "/no/such/path", "does not exist"),
        ("drive_push", "{tmp} --pack --part-size 12x", "cannot read '12x'"),
        ("drive_push", "{tmp} --bogus", "unrecognized"),
    ],
)
def test_bad_input_is_one_usage_error_line(ip, tmp_path, magic, line, match):
    with pytest.raises(UsageError, match=match) as info:
        ip.run_line_magic(magic, line.format(tmp=tmp_path))
    assert "\n" not in str(info.value).strip()


def test_help_comes_from_magic_arguments(ip):
    doc = ip.find_line_magic("drive_stage").__doc__
    assert "--force" in doc and "packed" in doc


def test_unload_removes_the_magics(ip):
    ip.run_line_magic("unload_ext", "colab_magics")
    assert ip.find_line_magic("drive_stage") is None
    ip.run_line_magic("load_ext", "colab_magics")
    assert ip.find_line_magic("drive_stage") is not None


def test_engine_never_imports_ipython():
    code = "import sys, colab_magics, colab_magics.cli; print('IPython' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
