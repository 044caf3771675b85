"""Faults in real kernels: Ctrl-C during each magic, SIGKILL mid-stage, two kernels on one folder.

Each kernel is a real ipykernel started by jupyter_client; "Ctrl-C" is the front-end's
interrupt (SIGINT to the kernel), "killed" is SIGKILL with no chance to clean up.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import time
from pathlib import Path
from typing import Callable

import pytest

pytest.importorskip("jupyter_client", reason="jupyter_client is a test dependency")
pytest.importorskip("ipykernel", reason="ipykernel is a test dependency")

from kernels import kernel_env, outputs, run, running
from procs import descendants
from procs import running as processes_mentioning
from trees import leftovers, make_tree, parts_staged, snapshot
from waiting import PATIENCE, wait_until

import colab_magics as cm

pytestmark = pytest.mark.kernel
SLOW = "--bwlimit 3M"  # slow enough to be interrupted mid-transfer


def _rclone_under(km) -> list[str]:
    """The kernel's rclone children, but for its daemon (``rclone rcd`` and its watcher), which is meant
    to outlive a transfer (tests/test_daemon.py shows it goes with the kernel)."""
    return [cmd for _, cmd in descendants(km.provisioner.pid) if "rclone" in cmd and " rcd " not in cmd]


def _interrupt_when(km, kc, code: str, ready: Callable[[], object], what: str) -> tuple[dict, str, list[dict]]:
    """Start ``code``, press Ctrl-C (as a front-end does) once ``ready()``, return its outputs."""
    msg_id = kc.execute(code)
    wait_until(ready, what)
    km.interrupt_kernel()
    out: list[dict] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=60)
    late = time.monotonic() + PATIENCE  # output published after the idle status (seen under load on ipykernel 6)
    while reply["content"]["status"] == "error" and not any(m["msg_type"] == "error" for m in out) and \
            time.monotonic() < late:  # fmt: skip
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            out.append(msg)
    text = "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream")
    return reply, text, [m["content"] for m in out if m["msg_type"] == "error"]


def _old_data_and_a_big_dataset(tmp_path, monkeypatch):
    """work/data staged from the dataset "old"; "big" (24 MiB in 4 MiB parts) on the remote, to stage over it."""
    remote, work = tmp_path / "remote", tmp_path / "work"
    work.mkdir()
    old = make_tree(tmp_path / "old", small=5, odd=False)
    big = make_tree(tmp_path / "big", small=5, big=24 << 20, odd=False)
    monkeypatch.setenv("COLAB_MAGICS_REMOTE", str(remote))  # for the test's own pushes and checks
    cm.push(old, "old", pack=True)
    cm.push(big, "big", pack=True, part_size=4 << 20)
    cm.stage("old", work / "data")
    return remote, work, old, big


@pytest.mark.fault("Ctrl-C during %drive_stage")
def test_ctrl_c_during_drive_stage(tmp_path, no_loss, monkeypatch):
    remote, work, old, big = _old_data_and_a_big_dataset(tmp_path, monkeypatch)
    env = dict(kernel_env(tmp_path, remote), COLAB_MAGICS_RCLONE_FLAGS=SLOW)
    with running(work, env) as (km, kc):
        reply, text, errors = _interrupt_when(km, kc, "%drive_stage big data --force",
                                              lambda: parts_staged(work / "data") > 0, "a part staged")  # fmt: skip
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt", errors
        assert "dest is unchanged" in text and "run the same stage again to resume" in text
        assert not _rclone_under(km)  # every rclone child stopped
        no_loss(snapshot(old), snapshot(work / "data"), "dest after Ctrl-C")  # dest unchanged
        run(kc, "%drive_stage big data --force", timeout=120)  # the re-run resumes and completes
    no_loss(snapshot(big), snapshot(work / "data"), "dest after the re-run")
    assert sorted(p.name for p in work.iterdir()) == ["data"]  # no resume folder or temporary left


@pytest.mark.fault("Ctrl-C during %drive_push")
def test_ctrl_c_during_drive_push(tmp_path, no_loss, monkeypatch):
    remote, work = tmp_path / "remote", tmp_path / "work"
    work.mkdir()
    v1 = make_tree(work / "model", small=5, odd=False)
    env = dict(kernel_env(tmp_path, remote), COLAB_MAGICS_RCLONE_FLAGS=SLOW)
    with running(work, env) as (km, kc):
        run(kc, "%drive_push model models/model --pack")
        saved = snapshot(v1)
        (work / "model" / "big.bin").write_bytes(os.urandom(24 << 20))
        reply, _, errors = _interrupt_when(km, kc, "%drive_push model models/model --pack --part-size 4M",
                                           lambda: _rclone_under(km), "the push's transfer")  # fmt: skip
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt", errors
        assert not _rclone_under(km)
    assert not leftovers(remote)  # no staging folder, no temporary manifest
    monkeypatch.setenv("COLAB_MAGICS_REMOTE", str(remote))
    cm.stage("models/model", tmp_path / "check")
    no_loss(saved, snapshot(tmp_path / "check"), "remote after Ctrl-C")  # the previous version, whole


PERSIST_LOOP = """%%persist outputs --every 1s
import os, time
os.makedirs("outputs", exist_ok=True)
i = 0
while True:
    with open(f"outputs/step-{i:04d}.bin", "wb") as f:
        f.write(os.urandom(200_000))
    i += 1
    time.sleep(0.05)
"""


@pytest.mark.fault("Ctrl-C during %%persist")
def test_ctrl_c_during_persist_cell_flushes(tmp_path, no_loss, monkeypatch):
    remote, work = tmp_path / "remote", tmp_path / "work"
    work.mkdir()
    with running(work, kernel_env(tmp_path, remote)) as (km, kc):
        manifest = remote / "outputs" / "manifest.json"
        reply, text, errors = _interrupt_when(km, kc, PERSIST_LOOP, manifest.exists, "a background sync of the cell")
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "UsageError"
        assert reply["content"]["evalue"].startswith("interrupted; final sync done: ")  # it flushed everything
        assert not errors and "UsageError: interrupted; final sync done: " in text  # one line, no traceback
        assert not _rclone_under(km)
    assert not (remote / "outputs" / ".cm-lock.json").exists()  # released
    assert not leftovers(remote)
    monkeypatch.setenv("COLAB_MAGICS_REMOTE", str(remote))
    cm.stage("outputs", tmp_path / "check")
    no_loss(snapshot(work / "outputs"), snapshot(tmp_path / "check"), "remote after Ctrl-C in %%persist")


@pytest.mark.fault("kernel SIGKILL mid-stage")
def test_kernel_killed_mid_stage(tmp_path, no_loss, monkeypatch):
    remote, work, old, big = _old_data_and_a_big_dataset(tmp_path, monkeypatch)
    env = dict(kernel_env(tmp_path, remote), COLAB_MAGICS_RCLONE_FLAGS=SLOW)
    with running(work, env) as (km, kc):
        kc.execute("%drive_stage big data --force")
        wait_until(lambda: parts_staged(work / "data") > 0, "a whole part staged")
        os.kill(km.provisioner.pid, signal.SIGKILL)  # no finally, no cleanup
        km.provisioner.process.wait()
    no_loss(snapshot(old), snapshot(work / "data"), "dest after the kill")  # dest keeps its content
    # rclone children lose their parent: they must end on their own
    wait_until(lambda: not processes_mentioning(str(remote)), "the end of the killed kernel's rclone children")
    result = cm.stage("big", work / "data", force=True)  # a fresh stage resumes and completes
    assert result.reused_parts >= 1
    no_loss(snapshot(big), snapshot(work / "data"), "dest after the resumed stage")
    assert sorted(p.name for p in work.iterdir()) == ["data"]


TWO_WRITERS = """%%persist outputs --to shared/run --every 1s
import os, time
os.makedirs("outputs", exist_ok=True)
for i in range(6000):  # until told to stop (the cap only bounds a broken test): load must not end it first
    with open(f"outputs/{PREFIX}-{i:03d}.txt", "w") as f:
        f.write(f"{PREFIX} step {i}\\n" * 100)
    if os.path.exists("../stop-" + PREFIX):
        break
    time.sleep(0.1)
"""


def _manifest_files(path: Path) -> dict[str, int]:
    return {f["path"]: f["size"] for f in json.loads(path.read_text())["files"]}


@pytest.mark.fault("two kernels persisting to one folder")
def test_two_kernels_persisting_to_one_folder(tmp_path, no_loss, monkeypatch):
    remote = tmp_path / "remote"
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    env = kernel_env(tmp_path, remote)
    manifest = remote / "shared" / "run" / "manifest.json"
    with running(a_dir, env) as (_, ka), running(b_dir, env) as (_, kb):
        run(ka, "PREFIX = 'a'")
        run(kb, "PREFIX = 'b'")
        a_msg = ka.execute(TWO_WRITERS)
        wait_until(lambda: manifest.exists() and len(_manifest_files(manifest)) >= 5, "kernel A's first syncs")
        # the second kernel is refused in one line while the first is alive
        reply, text, _ = outputs(kb, TWO_WRITERS)
        refused = reply["content"]
        assert refused["status"] == "error" and refused["ename"] == "UsageError", (refused, text)
        assert "being persisted by" in refused["evalue"] and "--steal-lock" in refused["evalue"]
        assert "\n" not in refused["evalue"] and "Traceback" not in text
        assert not (b_dir / "outputs").exists()  # refused before it touched anything here
        # it takes over on purpose; what the first kernel had synced must survive on the remote
        synced_by_a = _manifest_files(manifest)
        (tmp_path / "stop-b").write_text("")
        run(kb, TWO_WRITERS.replace("--every 1s", "--every 1s --steal-lock"), timeout=120)
        (tmp_path / "stop-a").write_text("")
        reply = ka.get_shell_msg(timeout=120)
        while reply["parent_header"].get("msg_id") != a_msg:
            reply = ka.get_shell_msg(timeout=120)
        # the first kernel noticed it was taken over and stopped writing, saying so in one line
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "UsageError"
        assert "taken over by" in reply["content"]["evalue"]
    monkeypatch.setenv("COLAB_MAGICS_REMOTE", str(remote))
    cm.stage("shared/run", tmp_path / "check")
    back = snapshot(tmp_path / "check", mtimes=False, modes=False)
    expected_a = {k: v for k, v in snapshot(a_dir / "outputs", mtimes=False, modes=False).items()
                  if os.fsdecode(k) in synced_by_a}  # fmt: skip
    no_loss(expected_a, {k: v for k, v in back.items() if k in expected_a}, "kernel A's synced files")
    in_b = snapshot(b_dir / "outputs", mtimes=False, modes=False)
    written_by_b = {k: v for k, v in in_b.items() if k.startswith(b"b-")}
    no_loss(written_by_b, {k: v for k, v in back.items() if k.startswith(b"b-")}, "kernel B's files")


def test_an_error_in_a_persist_cell_shows_the_cells_own_lines(tmp_path):
    """As for any cell: the traceback points at the user's lines, never into colab_magics."""
    remote, work = tmp_path / "remote", tmp_path / "work"
    work.mkdir()
    with running(work, kernel_env(tmp_path, remote)) as (km, kc):
        reply, text, errors = outputs(kc, "%%persist outputs --every 1h\ndef f():\n    return 1 / 0\nf()")
        assert reply["content"]["status"] == "error" and errors[0]["ename"] == "ZeroDivisionError"
        traceback = "\n".join(errors[0]["traceback"])
        assert "return 1 / 0" in traceback, traceback
        assert "colab_magics" not in traceback and "Could not get source" not in traceback, traceback
        assert "final sync at" in text


def test_a_persist_cell_may_await_in_a_kernel_whose_loop_is_running(tmp_path):
    remote, work = tmp_path / "remote", tmp_path / "work"
    work.mkdir()
    with running(work, kernel_env(tmp_path, remote)) as (_, kc):
        shown: list[dict] = []
        cell = (
            "%%persist outputs --every 1h\nimport asyncio\nawait asyncio.sleep(0.1)\n"
            "open('outputs/a.txt', 'w').write('a')\n6 * 7"
        )
        reply = kc.execute_interactive(cell, timeout=60, output_hook=shown.append)
        assert reply["content"]["status"] == "ok", shown
        assert [m["content"]["data"]["text/plain"] for m in shown if m["msg_type"] == "execute_result"] == ["42"]
    assert {f["path"] for f in json.loads((remote / "outputs" / "manifest.json").read_text())["files"]} == {"a.txt"}
