"""The debug trace: rclone calls and sync decisions when on, nothing when off, secrets never."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest
from servers import KEY, SECRET

import colab_magics as cm
from colab_magics import log
from colab_magics.rclone.process import Rclone

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (\S+) (colab_magics[.\w]*) (\w+): (.*)$")


@pytest.fixture
def trace(tmp_path):
    """The trace on, into a file; the lines it holds as (thread, logger, level, message)."""
    path = tmp_path / "trace.log"
    log.enable(str(path))

    def lines() -> list[tuple[str, ...]]:
        parsed = [LINE.match(line) for line in path.read_text().splitlines()]
        assert all(parsed), path.read_text()
        return [m.groups() for m in parsed if m]

    yield lines
    log.disable()


def _messages(lines: list[tuple[str, ...]], logger: str) -> list[str]:
    return [message for _, name, _, message in lines if name == logger]


def test_trace_shows_rclone_calls_and_sync_decisions(tmp_path, trace):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one")
    (src / "b.txt").write_text("two")
    remote = str(tmp_path / "remote" / "data")
    cm.push(src, remote, pack=True)
    (src / "a.txt").write_text("three")
    cm.push(src, remote, pack=True)
    cm.stage(remote, tmp_path / "here")
    cm.stage(remote, tmp_path / "here")

    lines = trace()
    calls = _messages(lines, "colab_magics.rclone.process")
    started = [m for m in calls if re.match(r"rclone\[\d+\] start: \S+ rcat \S+/data/parts/\d{3}/part-\S+\.tar ", m)]
    assert len(started) == 2 and all("--use-json-log" in m for m in started)
    assert any(re.match(r"rclone\[\d+\] rcat: exit 0 after \d+\.\d{3}s$", m) for m in calls)
    decisions = _messages(lines, "colab_magics.packed.upload")
    assert "upload a.txt: new" in decisions and "upload a.txt: changed" in decisions
    assert "skip b.txt: unchanged (size, mtime and mode as synced)" in decisions
    staging = _messages(lines, "colab_magics.stage")
    assert any("fetching the packed source (not staged here before)" in m for m in staging)
    assert any(m.endswith("up to date (same source, local files as staged)") for m in staging)
    assert any(thread.startswith("cm-stage") and "cat " in message for thread, _, _, message in lines)


def test_nothing_is_emitted_when_off(tmp_path, caplog, capfd):
    assert not log.enabled()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("one")
    cm.push(tmp_path / "src", str(tmp_path / "remote"), pack=True)
    cm.stage(str(tmp_path / "remote"), tmp_path / "here")
    assert [r for r in caplog.records if r.name.startswith("colab_magics")] == []
    assert capfd.readouterr().err == ""


def test_the_package_logger_is_silent_by_default():
    """A NullHandler: a warning of ours is not printed by Python's last-resort handler."""
    code = "import colab_magics, logging; logging.getLogger('colab_magics.rclone.process').warning('loud')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == ""


@pytest.mark.parametrize(
    "args, hide_values, shown",
    [
        (["--drive-token", '{"access_token":"t"}', "gdrive:x"], False, ["--drive-token", "REDACTED", "gdrive:x"]),
        (["--webdav-pass=hunter2"], False, ["--webdav-pass=REDACTED"]),
        (
            [":s3,provider=AWS,access_key_id=AK,secret_access_key='S,K':bucket/x"],
            False,
            [":s3,provider=AWS,access_key_id=REDACTED,secret_access_key=REDACTED:bucket/x"],
        ),
        (["cleanup", "s3:b", "-o", "session_token=T"], False, ["cleanup", "s3:b", "-o", "session_token=REDACTED"]),
        ([":http,url=https://user:pw@host/x:"], False, [":http,url=https://REDACTED@host/x:"]),
        (["lsjson", "gdrive:keys/token.txt", "--hash-type", "md5"], False, None),  # a path is no secret
        (["--tpslimit", "5", "-q", "--bwlimit=1M"], True, ["--tpslimit", "REDACTED", "-q", "--bwlimit=REDACTED"]),
    ],
)
def test_redact(args, hide_values, shown):
    assert log.redact(args, hide_values) == (args if shown is None else shown)


def test_secrets_stay_out_of_a_real_trace(servers, trace, monkeypatch):
    """Keys given in a remote's connection string, and flags from the environment, are hidden;
    the call still works with them (the server refuses a request without them)."""
    server = servers["s3"]
    for name, value in server.env().items():
        if not name.endswith(("ACCESS_KEY_ID", "SECRET_ACCESS_KEY")):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLAB_MAGICS_RCLONE_FLAGS", "--tpslimit 57")
    listing = Rclone().lsjson(f"{server.name},access_key_id={KEY},secret_access_key={SECRET}:bucket")
    assert isinstance(listing, list)
    text = "\n".join(message for *_, message in trace())
    assert f"operations/list {server.name},access_key_id=REDACTED,secret_access_key=REDACTED:bucket: ok" in text
    assert "--tpslimit REDACTED" in text
    assert KEY not in text and SECRET not in text and "--tpslimit 57" not in text


def test_config_debug_turns_the_trace_on_and_off(ip, tmp_path, capsys):
    magics = cm._loaded[id(ip)]
    assert magics.debug is False  # COLAB_MAGICS_DEBUG unset
    (tmp_path / "a.txt").write_text("x")
    ip.run_line_magic("config", "ColabMagics.debug = True")
    assert log.enabled() and logging.getLogger("colab_magics").isEnabledFor(logging.DEBUG)
    ip.run_line_magic("drive_push", f"{tmp_path / 'a.txt'} one/")
    assert re.search(r"colab_magics.rclone.process DEBUG: rclone\[\d+\] start: \S+ copyto ", capsys.readouterr().err)
    ip.run_line_magic("config", "ColabMagics.debug = False")
    assert not log.enabled() and not logging.getLogger("colab_magics").isEnabledFor(logging.DEBUG)
    ip.run_line_magic("drive_push", f"{tmp_path / 'a.txt'} two/")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("setting", ["1", "FILE", "/no/such/folder/trace.log", "0"])
def test_colab_magics_debug_is_read_at_import(tmp_path, setting):
    path = tmp_path / "trace.log"
    env = {**os.environ, "COLAB_MAGICS_DEBUG": str(path) if setting == "FILE" else setting}
    code = f"import colab_magics.rclone.process as p; p.Rclone().stat({str(tmp_path)!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    traced = path.read_text() if setting == "FILE" else run.stderr
    if setting == "0":
        assert traced == ""
        return
    started = r"MainThread colab_magics.rclone.daemon DEBUG: rclone daemon\[\d+\] started in \S+s: \S+ rcd "
    assert re.search(started, traced)
    assert f"MainThread colab_magics.rclone.process DEBUG: rclone rc operations/stat {tmp_path}: ok after" in traced
    assert ("cannot write the debug trace to /no/such/folder/trace.log" in traced) == setting.startswith("/no")
