"""A runtime dying mid-training: a real kernel killed with SIGKILL inside a %%persist cell.

A fresh kernel re-running the cell must restore every file in a state the loop fully wrote,
losing at most about one sync interval.
"""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

jupyter_client = pytest.importorskip("jupyter_client", reason="jupyter_client is a test dependency")
pytest.importorskip("ipykernel", reason="ipykernel is a test dependency")

from kernels import kernel_env, run, shut_down, start  # noqa: E402
from waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.kernel

STEP_SECONDS = 0.1
EVERY = 1.0

TRAIN = f"""%%persist outputs --every {EVERY}s
import json, os, time
os.makedirs("outputs", exist_ok=True)
step = 0
if os.path.exists("outputs/ckpt.json"):
    step = json.load(open("outputs/ckpt.json"))["step"] + 1
while True:
    state = {{"step": step, "weights": [step] * 20000}}
    with open("outputs/ckpt.json.tmp", "w") as f:      # write-temp-then-rename
        json.dump(state, f)
    os.replace("outputs/ckpt.json.tmp", "outputs/ckpt.json")
    with open("outputs/inplace.json", "w") as f:       # plain in-place rewrite
        json.dump(state, f)
    with open("outputs/log.txt", "a") as f:
        f.write(f"step {{step}}\\n")
    step += 1
    if step > 10**6:
        break
    time.sleep({STEP_SECONDS})
"""

RESUME = """%%persist outputs --every 1h
import json
resumed = json.load(open("outputs/ckpt.json"))["step"]
inplace = json.load(open("outputs/inplace.json"))["step"]
log_steps = [int(line.split()[1]) for line in open("outputs/log.txt")]
print("RESUMED", resumed, inplace, log_steps[0], log_steps[-1], len(log_steps))
"""


@pytest.mark.fault("kernel SIGKILL mid-persist")
def test_sigkill_mid_persist_then_fresh_kernel_restores(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    remote = tmp_path / "remote"
    trace = tmp_path / "trace.log"
    env = dict(kernel_env(tmp_path, remote), COLAB_MAGICS_DEBUG=str(trace))  # read if the syncs never land
    km, kc = start(workdir, env)
    try:
        run(kc, "%load_ext colab_magics")
        train = kc.execute(TRAIN)
        manifest = remote / "outputs" / "manifest.json"
        syncs: set[int] = set()

        def landed() -> bool:  # let a few background syncs land
            if manifest.exists():
                syncs.add(os.stat(manifest).st_mtime_ns)
            return len(syncs) >= 3

        try:
            wait_until(landed, "three background syncs while the cell runs", interval=0.2)
        except AssertionError as exc:  # say what the kernel said and did, not only that it did not sync
            said = []
            while kc.iopub_channel.msg_ready():
                msg = kc.get_iopub_msg(timeout=1)
                if msg["parent_header"].get("msg_id") == train and msg["msg_type"] in ("stream", "error"):
                    said.append(msg["content"].get("text") or msg["content"].get("evalue"))
            tail = trace.read_text(errors="replace")[-4000:] if trace.exists() else "(no trace)"
            raise AssertionError(f"{exc}; {len(syncs)} seen; the cell said: {said}; trace tail:\n{tail}") from None
        killed_at = json.load(open(workdir / "outputs" / "ckpt.json"))["step"]
        os.kill(km.provisioner.pid, signal.SIGKILL)  # no finally, no final sync, no lock release
        km.provisioner.process.wait()
    finally:
        shut_down(km, kc)
    os.system(f"rm -rf '{workdir / 'outputs'}'")  # the runtime's disk is gone too

    km, kc = start(workdir, env)
    try:
        run(kc, "%load_ext colab_magics")
        text = run(kc, RESUME)  # the dead kernel's lock is recognised as stale (same host, no such pid)
    finally:
        shut_down(km, kc)
    m = re.search(r"RESUMED (\d+) (\d+) (\d+) (\d+) (\d+)", text)
    assert m, text
    resumed, inplace, first_log, last_log, log_lines = map(int, m.groups())
    assert "restored" in text
    assert first_log == 0 and log_lines == last_log + 1  # a complete log prefix, never a torn line
    assert resumed >= 1 and inplace >= 1  # complete JSON states (json.load succeeded)
    lost_steps = killed_at - resumed
    allowed = (EVERY + 3 * 0.5 + 3.0) / STEP_SECONDS  # one interval + the settle wait + sync time
    assert 0 <= lost_steps <= allowed, (killed_at, resumed)
