"""Real Jupyter kernels for tests: start one in a folder with an environment, run code, shut down."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import jupyter_client


def kernel_env(tmp_path: Path, remote: Path) -> dict[str, str]:
    """A kernel's environment: the default remote and the state folder under ``tmp_path``, no user config."""
    return dict(os.environ, COLAB_MAGICS_REMOTE=str(remote), COLAB_MAGICS_STATE_DIR=str(tmp_path / "state"),
                RCLONE_CONFIG="/dev/null")  # fmt: skip


def start(workdir: Path, env: dict[str, str]):
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(workdir), env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


@contextlib.contextmanager
def running(workdir: Path, env: dict[str, str]):
    """A kernel with colab_magics loaded, always shut down after."""
    km, kc = start(workdir, env)
    try:
        run(kc, "%load_ext colab_magics")
        yield km, kc
    finally:
        shut_down(km, kc)


def shut_down(km, kc) -> None:
    """Stop the client and the kernel, and close the client's zmq context now: jupyter_client closes it
    only when the client is garbage-collected, which its reference cycles leave to chance (the leak check
    then sees its eventfds)."""
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    kc.context.destroy(linger=0)


def outputs(kc, code: str, timeout: float = 60) -> tuple[dict, str, list[dict]]:
    """Run ``code``; return the reply, the stream text and the error outputs."""
    out: list[dict] = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=out.append)
    text = "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream")
    errors = [m["content"] for m in out if m["msg_type"] == "error"]
    return reply, text, errors


def run(kc, code: str, timeout: float = 60) -> str:
    """Run ``code``, which must succeed; return its stream text."""
    reply, text, errors = outputs(kc, code, timeout)
    assert reply["content"]["status"] == "ok", (errors, text)
    return text
