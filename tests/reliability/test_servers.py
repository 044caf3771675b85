"""Independent servers: WsgiDAV and Apache mod_dav (no hashes, no times), moto (S3), OpenSSH (SFTP).

The checks a server that keeps no hashes or times breaks first: a file rewritten with new bytes of
the same size must reach the remote in every mode (packed push, persist, plain push), a replace
that the server silently drops must never be reported as done, and nothing the previous version
needs may be removed before the new one is proven in place.  Every check reads the result back
through the remote itself (a stage), never from the server's disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from trees import ODD_NAMES, rewrite_same_size, snapshot

import colab_magics as cm
from colab_magics import remotes
from colab_magics.events import Job
from colab_magics.manifest import Manifest
from colab_magics.persist import Persister
from colab_magics.runner import Rclone
from colab_magics.transfer import Context


def _checkpoints(root: Path) -> Path:
    root.mkdir()
    (root / "model.ckpt").write_bytes(os.urandom(100_000))
    (root / "step.txt").write_text("step 0001\n")
    return root


def _manifest(remote: str) -> Manifest:
    ctx = Context(Rclone(), Job("check", "down"), None)
    raw = ctx.read_optional(remotes.join(remote, "manifest.json"))
    assert raw is not None
    return Manifest.from_json(raw, remote)


@pytest.mark.fault("same-size rewrite, packed push")
def test_packed_push_of_a_same_size_rewrite_reaches_the_remote(foreign, tmp_path, no_loss):
    src = _checkpoints(tmp_path / "run")
    cm.push(src, foreign.root, pack=True)
    first = _manifest(foreign.root)
    for step in range(2, 4):
        rewrite_same_size(src / "model.ckpt")
        (src / "step.txt").write_text(f"step {step:04d}\n")
        cm.push(src, foreign.root, pack=True)
        now = _manifest(foreign.root)
        assert now.to_json() != first.to_json() and len(now.to_json()) == len(first.to_json())  # the hard case
        check = tmp_path / f"check{step}"
        cm.stage(foreign.root, check)
        no_loss(snapshot(src), snapshot(check), f"{foreign.kind} after same-size rewrite {step}")


@pytest.mark.fault("same-size rewrite, persist")
def test_persist_syncs_same_size_rewrites_and_keeps_its_lock(foreign, tmp_path, no_loss):
    local = _checkpoints(tmp_path / "outputs")
    p = Persister(local, foreign.root, every=3600, settle=0.0)
    p.start()
    try:
        ctx = Context(Rclone(), Job("check", "down"), None)
        for _ in range(3):
            rewrite_same_size(local / "model.ckpt")
            p.sync()
            before = json.loads(ctx.read_optional(p.lock.path) or b"{}")
            p.lock.refresh(ctx)  # a refresh the server dropped would let the lock expire under us
            after = json.loads(ctx.read_optional(p.lock.path) or b"{}")
            assert after["owner"] == p.lock.owner and after["expires"] > before["expires"]
    finally:
        p.stop()
    fresh = tmp_path / "fresh-runtime"
    Persister(fresh, foreign.root, every=3600).restore()
    no_loss(snapshot(local), snapshot(fresh), f"{foreign.kind} restore after same-size rewrites")


@pytest.mark.fault("same-size rewrite, plain push")
def test_plain_push_of_a_same_size_rewrite_and_an_unchanged_push(foreign, tmp_path, no_loss):
    src = _checkpoints(tmp_path / "run")
    (src / "sub").mkdir()
    (src / "sub" / "weights.bin").write_bytes(os.urandom(5000))
    cm.push(src, foreign.root)
    again = cm.push(src, foreign.root)
    assert again.up_to_date, again.summary()  # nothing to upload: said so, not "directory not found"
    rewrite_same_size(src / "model.ckpt")
    rewrite_same_size(src / "sub" / "weights.bin")
    pushed = cm.push(src, foreign.root)
    assert not pushed.up_to_date
    cm.stage(foreign.root, tmp_path / "check")
    no_loss(snapshot(src, modes=False, mtimes=False), snapshot(tmp_path / "check", modes=False, mtimes=False),
            f"{foreign.kind} plain push after same-size rewrites")  # fmt: skip
    single = tmp_path / "single.pt"  # one file: moved over its old version of the same size
    single.write_bytes(os.urandom(4096))
    cm.push(single, remotes.join(foreign.root, "single.pt"))
    rewrite_same_size(single)
    cm.push(single, remotes.join(foreign.root, "single.pt"))
    cm.stage(foreign.root, tmp_path / "check", force=True)
    assert (tmp_path / "check" / "single.pt").read_bytes() == single.read_bytes()


@pytest.mark.bad_input
def test_plain_push_of_odd_names(foreign, tmp_path, no_loss):
    """Names that URL handling gets wrong go up straight to their place (a server-side move would cut
    ``a;b`` to ``a`` on WsgiDAV, or fail on moto), and arrive exactly."""
    src = tmp_path / "odd"
    src.mkdir()
    for name in ODD_NAMES + ["hash#tag+plus.txt", ".hidden-dotfile", "per%20cent?.txt", "back\\slash.txt"]:
        (src / name).write_text(name)
    cm.push(src, foreign.root)
    (src / "semi;colon&amp|pipe.txt").write_text("changed: the second push replaces it")
    cm.push(src, foreign.root)
    cm.stage(foreign.root, tmp_path / "check")
    no_loss(snapshot(src, modes=False, mtimes=False), snapshot(tmp_path / "check", modes=False, mtimes=False),
            f"{foreign.kind} plain push of odd names")  # fmt: skip


@pytest.mark.bad_input
def test_plain_push_of_a_name_the_server_cannot_store_fails_in_one_line(foreign, tmp_path):
    src = tmp_path / "newline"
    src.mkdir()
    (src / "new\nline.txt").write_text("a newline in the name")
    (src / "plain.txt").write_text("fine")
    try:
        cm.push(src, foreign.root)
    except cm.ColabMagicsError as exc:  # never a silent drop: one line that points to --pack
        assert "\n" not in str(exc)
        assert "--pack" in str(exc) or "new" in str(exc)
    else:
        cm.stage(foreign.root, tmp_path / "check")
        assert (tmp_path / "check" / "new\nline.txt").read_text() == "a newline in the name"
    cm.push(src, remotes.join(foreign.root, "packed"), pack=True)  # packed keeps any name
    cm.stage(remotes.join(foreign.root, "packed"), tmp_path / "packed")
    assert (tmp_path / "packed" / "new\nline.txt").read_text() == "a newline in the name"


def test_stage_names_the_missing_part(foreign, tmp_path):
    src = _checkpoints(tmp_path / "run")
    cm.push(src, foreign.root, pack=True)
    part = _manifest(foreign.root).parts[0].name
    Rclone().run("deletefile", remotes.join(foreign.root, part))
    with pytest.raises(cm.ColabMagicsError, match=f"lists {part}, which is not on the remote"):
        cm.stage(foreign.root, tmp_path / "check")
    assert not (tmp_path / "check").exists()
