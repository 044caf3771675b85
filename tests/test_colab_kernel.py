"""Colab, emulated honestly, in one real kernel: Google's services faked (tests/fake_colab), all else real.

With nothing configured the first magic mounts Drive (no VM-disk fallback), the panel is the web one,
what lands on the mount is "upload pending", and %drive_flush makes it safe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kernels import kernel_env, outputs, run, running

pytestmark = pytest.mark.kernel

FAKE = str(Path(__file__).parent / "fake_colab")


def test_colab_in_a_real_kernel_mounts_drive_and_flush_makes_it_safe(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = kernel_env(tmp_path, tmp_path / "unused")
    env.pop("COLAB_MAGICS_REMOTE")
    env.update(
        COLAB_RELEASE_TAG="release-colab-fake", COLAB_MAGICS_DRIVE_MOUNT=str(tmp_path / "drive"),
        FAKE_COLAB_LOG=str(tmp_path / "calls.jsonl"), XDG_DATA_HOME=str(tmp_path / "data-home"),
        PYTHONPATH=os.pathsep.join([FAKE, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )  # fmt: skip
    with running(work, env) as (_, kc):
        reply, text, errors = outputs(kc, "%%persist outputs --every 1h\nopen('outputs/model.pt', 'w').write('w')")
        assert reply["content"]["status"] == "ok", errors
        assert "(mount) every 1h" in text and "on the Drive mount, upload pending" in text, text
        shown = []
        reply = kc.execute_interactive("%drive_status", timeout=60, output_hook=shown.append)
        html = [m["content"]["data"]["text/html"] for m in shown if m["msg_type"] == "display_data"]
        assert html and "cm-webpanel" in html[0] and "proxyPort" in html[0]  # Colab gets the web panel
        run(kc, "import colab_magics; m = list(colab_magics._loaded.values())[0]")
        state = run(kc, "print(m._web_state()['html'])")
        assert "not safe to disconnect" in state and "upload pending" in state, state
        flushed = run(kc, "%drive_flush")
        assert flushed.startswith("flushed to Drive at ") and "safe to disconnect" in flushed, flushed
        state = run(kc, "print(m._web_state()['html'])")
        assert "not safe" not in state and "safe to disconnect" in state, state
    calls = [json.loads(line)["call"] for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls == ["drive.mount", "drive.flush_and_unmount"]
    assert (tmp_path / "drive.drive" / "colab_magics" / "outputs" / "manifest.json").exists()
    assert not (tmp_path / "data-home").exists()  # never the VM's own disk
