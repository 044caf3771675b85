"""One option table and one persist lifecycle for both faces: the CLI takes the same flags, help and
``COLAB_MAGICS_*`` defaults as the magics, and both run a persist through ``with Persister(...)``."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys

import pytest
from IPython.core.error import UsageError
from trees import make_tree, snapshot
from waiting import PATIENCE, wait_until

from colab_magics import cli, errors, options
from colab_magics.notebook.magics import ColabMagics
from colab_magics.packed.manifest import Manifest
from colab_magics.persist import Ending, Final, Persister


def _cli(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "colab_magics.cli", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=PATIENCE,
    )  # fmt: skip


def _manifest(folder) -> Manifest:
    return Manifest.from_json((folder / "manifest.json").read_bytes(), "t")


def _squashed(text: str) -> str:
    """Help as words only: argparse wraps lines where the terminal's width says."""
    return "".join(text.split())


FACES = [("stage", "drive_stage", options.STAGE), ("push", "drive_push", options.PUSH),
         ("persist", "persist", options.PERSIST), ("flush", "drive_flush", options.FLUSH)]  # fmt: skip


@pytest.mark.parametrize("command, magic, declared", FACES, ids=[c for c, _, _ in FACES])
def test_the_cli_and_the_magic_say_the_same_help_for_every_option(ip, command, magic, declared):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    found = ip.find_line_magic(magic) or ip.find_cell_magic(magic)
    for face in (out.getvalue(), found.__doc__):
        for option in declared:
            assert _squashed(option.help_text()) in _squashed(face), (option.name, face)
            assert all(flag in face for flag in option.flags)


def test_the_notebook_settings_come_from_the_same_table():
    traits = ColabMagics.class_traits(config=True)
    for option in options.SETTINGS:
        assert traits[option.name].help == option.help_text()
        assert option.env is not None and option.env in option.help_text()


def test_the_cli_packs_with_the_part_size_of_the_environment(tmp_path):
    src = make_tree(tmp_path / "src", small=2, big=3 << 20, odd=False)
    run = _cli("push", str(src), "ds", "--pack", env={"COLAB_MAGICS_PART_SIZE": "1M"})
    assert run.returncode == 0, run.stderr
    assert len(_manifest(tmp_path / "default-remote" / "ds").parts) >= 3  # 4G would be one part
    run = _cli("push", str(src), "ds2", "--pack", "--part-size", "4G", env={"COLAB_MAGICS_PART_SIZE": "1M"})
    assert run.returncode == 0 and len(_manifest(tmp_path / "default-remote" / "ds2").parts) == 1  # the flag wins


def test_the_cli_stages_with_the_workers_of_the_environment(tmp_path):
    src = make_tree(tmp_path / "src", small=2, odd=False)
    assert _cli("push", str(src), "ds", "--pack").returncode == 0
    run = _cli("stage", "ds", str(tmp_path / "dest"), env={"COLAB_MAGICS_WORKERS": "0"})
    assert run.returncode == 1 and "workers must be between 1 and 32" in run.stderr  # the engine was given 0
    assert not (tmp_path / "dest").exists()
    run = _cli("stage", "ds", str(tmp_path / "dest"), "-w", "2", env={"COLAB_MAGICS_WORKERS": "0"})
    assert run.returncode == 0 and snapshot(tmp_path / "dest") == snapshot(src)


def test_the_cli_persist_syncs_at_the_interval_of_the_environment(tmp_path):
    manifest = tmp_path / "default-remote" / "out" / "manifest.json"
    waits = (
        "import os, sys, time\n"
        "open('out/a.txt', 'w').write('a')\n"
        f"deadline = time.monotonic() + {PATIENCE}\n"
        f"while time.monotonic() < deadline:\n"
        f"    if os.path.exists({str(manifest)!r}) and 'a.txt' in open({str(manifest)!r}).read():\n"
        "        sys.exit(0)\n"
        "    time.sleep(0.1)\n"
        "sys.exit(5)\n"
    )  # the command sees its file on the remote while it still runs: a background sync
    run = subprocess.run(
        [sys.executable, "-m", "colab_magics.cli", "persist", "out", "--", sys.executable, "-c", waits],
        cwd=tmp_path, capture_output=True, text=True, timeout=2 * PATIENCE,
        env={**os.environ, "COLAB_MAGICS_SYNC_INTERVAL": "1s"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    "args, env, value",
    [(("stage", "ds", "dest"), "COLAB_MAGICS_WORKERS", "abc"),
     (("push", "src", "--pack"), "COLAB_MAGICS_PART_SIZE", "12x"),
     (("persist", "out", "--", "true"), "COLAB_MAGICS_SYNC_INTERVAL", "soon")],
)  # fmt: skip
def test_a_bad_environment_value_is_one_line_in_the_cli(tmp_path, args, env, value):
    (tmp_path / "src").mkdir()
    run = _cli(*args, env={env: value}, cwd=tmp_path)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(f"colab-magics: error: {env}: ") and repr(value) in run.stderr
    assert not (tmp_path / "default-remote").exists() and not (tmp_path / "out").exists()  # nothing was done


def test_the_magics_read_the_environment_when_used_and_say_a_bad_value_in_one_line(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tree(tmp_path / "src", small=2, big=3 << 20, odd=False)
    monkeypatch.setenv("COLAB_MAGICS_PART_SIZE", "1M")  # set after the extension was loaded
    ip.run_line_magic("drive_push", "src ds --pack")
    assert len(_manifest(tmp_path / "default-remote" / "ds").parts) >= 3
    monkeypatch.setenv("COLAB_MAGICS_WORKERS", "abc")
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("drive_stage", "ds staged")
    assert str(info.value) == "COLAB_MAGICS_WORKERS: invalid int value 'abc'"
    ip.run_line_magic("config", "ColabMagics.workers = 2")  # the notebook's setting comes before the environment
    ip.run_line_magic("drive_stage", "ds staged")
    assert snapshot(tmp_path / "staged") == snapshot(tmp_path / "src")


def test_compress_works_end_to_end_from_the_cli(tmp_path):
    src = make_tree(tmp_path / "src", small=5, odd=False)
    assert _cli("push", str(src), "ds", "--pack", "--compress").returncode == 0
    assert all(part.name.endswith(".tar.zst") for part in _manifest(tmp_path / "default-remote" / "ds").parts)
    assert _cli("stage", "ds", str(tmp_path / "back")).returncode == 0
    assert snapshot(tmp_path / "back") == snapshot(src)


# -- the lifecycle ---------------------------------------------------------------------------------
class _Recorded:
    """A report that keeps what it was told."""

    def __init__(self) -> None:
        self.steps = 0
        self.told: list[object] = []

    def step(self, work):
        self.steps += 1
        return work()

    def started(self, persister, restored) -> None:
        self.told.append(restored)

    def ended(self, persister, final: Final) -> None:
        self.told.append(final)


@pytest.mark.parametrize("body_error", [ValueError, KeyboardInterrupt])
def test_leaving_the_with_syncs_stops_and_reports_whatever_the_body_did(tmp_path, body_error):
    report = _Recorded()
    with pytest.raises(body_error):
        with Persister(tmp_path / "out", every=3600, report=report) as persister:
            (tmp_path / "out" / "a.txt").write_text("a")
            raise body_error()
    remote = tmp_path / "default-remote" / "out"
    assert [f.path for f in _manifest(remote).files] == ["a.txt"] and not (remote / ".cm-lock.json").exists()
    restored, final = report.told
    assert restored is None and report.steps == 2  # the start and the final sync, shown as the face shows work
    assert final.ending is Ending.SYNCED and final.interrupted == (body_error is KeyboardInterrupt)
    assert persister.status().state == "stopped"
    report = _Recorded()
    (tmp_path / "out" / "a.txt").unlink()
    with Persister(tmp_path / "out", every=3600, restore=True, report=report):
        assert (tmp_path / "out" / "a.txt").read_text() == "a"
    assert report.told[0].files == 1


def test_a_final_sync_that_fails_is_raised_unless_the_body_failed(tmp_path):
    for body_error in (None, ValueError):
        report = _Recorded()
        thief = Persister(tmp_path / "out", every=3600)
        with pytest.raises(body_error or errors.LockLost):
            with Persister(tmp_path / "out", every=3600, report=report):
                thief.start(steal_lock=True)  # another writer takes over
                if body_error:
                    raise body_error()
        thief.stop(final=False)
        if body_error:  # the body's error went on; the sync's is reported
            final = report.told[-1]
            assert final.ending is Ending.FAILED and isinstance(final.error, errors.LockLost)
        else:
            assert len(report.told) == 1  # raised, not reported


def test_ctrl_c_ends_the_cli_persist_with_130_after_the_final_sync(tmp_path):
    ready = tmp_path / "ready"
    waits = (
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\n"  # dies of Ctrl-C, as most commands do
        f"open('out/a.txt', 'w').write('a')\nopen({str(ready)!r}, 'w').close()\ntime.sleep(600)\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "colab_magics.cli", "persist", "out", "--every", "1h", "--", sys.executable, "-c",
         waits],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even where a shell started us ignoring it
    )  # fmt: skip
    try:
        wait_until(ready.exists, "the command's start")
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C at a terminal does: the whole foreground group
        _, err = run.communicate(timeout=PATIENCE)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130 and "final sync: " in err and "Traceback" not in err, err
    assert [f.path for f in _manifest(tmp_path / "default-remote" / "out").files] == ["a.txt"]
