"""rclone's JSON read into typed values: malformed answers fail in one line naming the command and
what was unexpected (also under ``python -O``), and what the real binary prints parses."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys

import pytest

from colab_magics.errors import ColabMagicsError, RcloneError, RcloneOutputError
from colab_magics.events import Progress
from colab_magics.rclone import output
from colab_magics.rclone.process import Rclone, RcloneProcess

GOOD = {"Path": "a.bin", "Name": "a.bin", "Size": 3, "ModTime": "2024-01-01T00:00:00Z", "IsDir": False}


def _without(key: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    "parse, data, unexpected",
    [
        (output.entry, [GOOD], "an entry that is not a JSON object"),
        (output.entry, _without("Path"), 'an entry without a text "Path"'),
        (output.entry, {**GOOD, "Size": "3"}, 'an entry without an integer "Size"'),
        (output.entry, {**GOOD, "Size": True}, 'an entry without an integer "Size"'),
        (output.entry, _without("IsDir"), 'an entry without a true or false "IsDir"'),
        (output.entry, {**GOOD, "ModTime": 17}, '"ModTime" is not text'),
        (output.entry, {**GOOD, "Hashes": {"md5": 5}}, '"Hashes" is not an object of texts'),
        (output.listing, GOOD, "a listing that is not a JSON list"),
        (output.listing, [GOOD, None], "an entry that is not a JSON object"),
        (output.features, [], "backend features that is not a JSON object"),
        (output.features, {"Precision": "1ns"}, '"Precision" is not an integer'),
        (output.features, {"Precision": 1, "Hashes": "md5"}, '"Hashes" is not a list of names'),
        (output.features, {"Precision": 1, "Features": {"About": "yes"}}, '"Features" is not an object of true'),
        (output.about, {"free": "lots"}, 'quota figures whose "free" is not a number'),
        (output.remote_type, {"type": 7}, 'a remote whose "type" is not text'),
        (output.stats, {"bytes": 1.5}, 'stats whose "bytes" is not an integer'),
        (output.stats, {"bytes": 1, "speed": "fast"}, 'stats whose "speed" is not a number'),
    ],
)
def test_malformed_output_is_one_line_naming_the_command(parse, data, unexpected):
    with pytest.raises(RcloneOutputError) as info:
        parse(data, "lsjson --stat gdrive:data")
    message = str(info.value)
    assert isinstance(info.value, ColabMagicsError)
    assert message.startswith("rclone lsjson --stat gdrive:data printed ")
    assert unexpected in message
    assert "\n" not in message and "rclone version" in message


def test_optional_fields_have_their_defaults():
    entry = output.entry({"Path": "d", "Size": -1, "IsDir": True}, "lsjson x")
    assert entry == output.Entry("d", -1, "", True, {}) and entry.hash("md5") == ""
    assert output.about({}, "about --json x") == output.About(None, None)
    assert output.about({"free": 2.0e9, "trashed": 5}, "about --json x") == output.About(2_000_000_000, 5)
    assert output.features({"Precision": 1, "Hashes": None}, "backend features x") == output.Features((), 1, {})
    stats = output.stats({"bytes": 5, "totalBytes": 9, "speed": 0, "eta": None}, "copy")
    assert stats == output.Stats(5, 9, 0.0, None, 0, 0, 0)


def test_malformed_output_fails_under_python_O():
    """No ``assert`` stands between rclone's output and the engine: ``-O`` removes none of the checks."""
    code = "from colab_magics.rclone import output; output.listing([{'Path': 'a'}], 'lsjson remote:x')"
    run = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "RcloneOutputError: rclone lsjson remote:x printed an entry without an integer \"Size\"" in run.stderr


def test_a_binary_that_cannot_serve_calls_fails_in_one_line(tmp_path):
    """An old or foreign "rclone" without ``rcd``: the calls that go to the daemon say so, at once."""
    fake = tmp_path / "rclone"
    fake.write_text('#!/bin/sh\necho \'Error: unknown command "rcd" for "rclone"\' >&2\necho Usage: >&2\nexit 1\n')
    fake.chmod(0o755)
    with pytest.raises(RcloneError) as info:
        Rclone(str(fake), flags=[]).stat(str(tmp_path))
    assert str(info.value) == 'rclone lsjson failed (exit 1): unknown command "rcd" for "rclone"'


def test_real_rclone_output_parses(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    body = os.urandom(1234)
    (folder / "sub" / "a.bin").write_bytes(body)
    rclone = Rclone(flags=[])

    listing = rclone.lsjson(str(folder), recurse=True, hash="md5")
    by_path = {e.path: e for e in listing}
    assert set(by_path) == {"sub", "sub/a.bin"}
    assert by_path["sub"].is_dir and not by_path["sub/a.bin"].is_dir
    assert by_path["sub/a.bin"].size == 1234 and by_path["sub/a.bin"].mod_time
    assert by_path["sub/a.bin"].hash("md5") == hashlib.md5(body).hexdigest()

    stat = rclone.stat(str(folder / "sub" / "a.bin"))
    assert (stat.path, stat.size, stat.is_dir) == ("a.bin", 1234, False)
    features = rclone.features(str(tmp_path))
    assert "md5" in features.hashes and features.has("About") and features.precision_ns > 0
    assert (rclone.about(str(tmp_path)).free or 0) > 0
    assert rclone.remote_type("gdrive") == ""  # RCLONE_CONFIG=/dev/null (conftest)


def test_a_remotes_type_comes_from_its_variable_or_the_config_file(tmp_path, monkeypatch):
    """As rclone finds it: ``RCLONE_CONFIG_<NAME upper-cased>_TYPE`` first, then the file's section."""
    config = tmp_path / "rclone.conf"
    config.write_text("[Filed]\ntype = Local\n\n[both]\ntype = local\n")
    monkeypatch.setenv("RCLONE_CONFIG", str(config))
    monkeypatch.setenv("RCLONE_CONFIG_MIXEDCASE_TYPE", "WebDAV")
    monkeypatch.setenv("RCLONE_CONFIG_BOTH_TYPE", "s3")
    rclone = Rclone(flags=[])
    assert [rclone.remote_type(n) for n in ("MixedCase", "Filed", "both", "none")] == ["webdav", "local", "s3", ""]


def test_real_stats_lines_reach_the_listener(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(os.urandom(100_000))
    seen: list[Progress] = []
    Rclone(flags=[]).run("copy", str(tmp_path / "src"), str(tmp_path / "dst"), on_stats=seen.append)
    assert seen and seen[-1].done_bytes == seen[-1].total_bytes == 100_000
    assert seen[-1].done_files == seen[-1].total_files == 1


@pytest.fixture
def shell_as_rclone(tmp_path) -> str:
    """A "binary" that runs its second argument as a shell script: any stderr, through the real reader."""
    path = tmp_path / "sh-rclone"
    path.write_text('#!/bin/sh\neval "$2"\n')
    path.chmod(0o755)
    return str(path)


def test_a_malformed_stats_line_costs_only_the_progress(shell_as_rclone, caplog):
    """The stderr reader survives stats of another shape (said once) and still collects rclone's errors."""
    bad = '{"level":"info","msg":"stats","stats":{"bytes":"many","totalBytes":10}}'
    error = '{"level":"error","msg":"boom","object":"x.bin"}'
    script = f"echo '{bad}' >&2; echo '{bad}' >&2; echo '{error}' >&2; exit 1"
    seen: list[Progress] = []
    caplog.set_level(logging.WARNING, logger="colab_magics")
    with RcloneProcess([shell_as_rclone, "copy", script], on_stats=seen.append) as p:
        rc = p.wait()
    assert rc == 1 and "x.bin: boom" in str(p.error(rc))
    assert seen == []
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("colab_magics")]
    assert len(warnings) == 1 and 'rclone copy printed stats whose "bytes" is not an integer' in warnings[0]


def test_a_mistyped_flag_is_named_not_buried_under_rclones_usage_text(tmp_path, monkeypatch):
    """rclone prints "Error: unknown flag" and then 40 lines of usage: the error is the line people need."""
    import colab_magics as cm

    (tmp_path / "src").mkdir()
    monkeypatch.setenv("COLAB_MAGICS_RCLONE_FLAGS", "--tpslimt 5")
    with pytest.raises(ColabMagicsError) as caught:
        cm.push(str(tmp_path / "src"), str(tmp_path / "remote" / "x"))
    message = str(caught.value)
    assert "refused its arguments (check COLAB_MAGICS_RCLONE_FLAGS): unknown flag: --tpslimt" in message
    assert "\n" not in message and "stringArray" not in message


def test_max_transfer_is_its_own_error_not_a_rate_limit(tmp_path, monkeypatch):
    import colab_magics as cm

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    monkeypatch.setenv("COLAB_MAGICS_RCLONE_FLAGS", "--max-transfer 1M")
    with pytest.raises(ColabMagicsError) as caught:
        cm.push(str(big), str(tmp_path / "remote") + "/")
    message = str(caught.value)
    assert "stopped at its --max-transfer limit" in message and "rate-limiting" not in message
    assert not (tmp_path / "remote" / "big.bin").exists()  # nothing half-written at the final name
