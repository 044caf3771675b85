"""demo.ipynb, the tour, executed top to bottom by a real kernel with no configuration at all.

The kernel gets a clean environment: no ``COLAB_MAGICS_REMOTE``, so the embedded default remote
is used, under a temporary ``XDG_DATA_HOME``.  Then the outputs are read as a person would read
them (the panel, the restore, the resumed training) and the files are checked against the remote.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "demo.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _stream(cell: dict) -> str:
    return "".join(o["text"] for o in cell.get("outputs", []) if o["output_type"] == "stream" and o["name"] == "stdout")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_is_saved_without_outputs():
    """The notebook in git carries no outputs, execution counts or widget state."""
    nb = json.loads(DEMO.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "demo.ipynb has no code cells"
    for cell in code:
        assert cell.get("outputs") == [] and cell.get("execution_count") is None, _source(cell)[:60]
    assert "widgets" not in nb["metadata"]


@pytest.mark.kernel
def test_demo_runs_top_to_bottom_with_no_configuration(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a test dependency")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is a test dependency")
    pytest.importorskip("ipykernel", reason="ipykernel is a test dependency")
    pytest.importorskip("ipywidgets")

    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(DEMO, workdir / "demo.ipynb")
    # The kernel inherits this process's environment: a new user's, with temporary homes.
    monkeypatch.delenv("COLAB_MAGICS_REMOTE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("COLAB_MAGICS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RCLONE_CONFIG", "/dev/null")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    remote = tmp_path / "xdg" / "colab_magics" / "remote"  # platformdirs' user data dir under XDG_DATA_HOME

    nb = nbformat.read(workdir / "demo.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", store_widget_state=True, resources={"metadata": {"path": str(workdir)}}
    )
    started = time.monotonic()
    client.execute()  # raises CellExecutionError on any failing cell
    seconds = time.monotonic() - started
    assert seconds < 60, f"the tour took {seconds:.0f}s; it must stay well under a minute"

    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, (_source(cell)[:60], errors)

    # The panel: a widget view whose text form (for logs, or front-ends without widgets) is ours.
    views = [o for c in code for o in c.outputs if o.output_type == "display_data" and WIDGET_VIEW in o.data]
    assert views, "no panel was displayed"
    for view in views:
        assert view.data["text/plain"].startswith("colab_magics:"), view.data["text/plain"]
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    assert views[0].data[WIDGET_VIEW]["model_id"] in state, "the panel's widget state was not stored"

    # Zero configuration: everything went to the embedded default remote.
    first = code[0]
    assert f"remote root: {remote}" in _stream(first), _stream(first)
    toy = json.loads((remote / "toy_dataset" / "manifest.json").read_text())
    assert len(toy["files"]) == 2000

    push = next(c for c in code if _source(c).startswith("%drive_push toy_dataset --pack"))
    assert "pushed 2,000 files" in _stream(push), _stream(push)
    stage = next(c for c in code if _source(c).startswith("%drive_stage toy_dataset staged_dataset"))
    assert "staged 2,000 files" in _stream(stage), _stream(stage)
    assert any("matches toy_dataset/: 2,000 files" in _stream(c) for c in code)

    # The same %%persist cell twice: from scratch, then after the lost runtime, restored and resumed.
    persist = [c for c in code if _source(c).startswith("%%persist outputs")]
    assert len(persist) == 2 and _source(persist[0]) == _source(persist[1])
    before, after = _stream(persist[0]), _stream(persist[1])
    assert "starting from scratch" in before and "restored:" not in before, before
    assert "checkpoint at step 6 of 12" in before, before
    assert "final sync at" in before, before
    restored = re.search(r"^restored: .*$", after, re.MULTILINE)
    assert restored and "2 files" in restored.group(0), after
    assert "resuming from step 6" in after, after
    trained = [int(n) for n in re.findall(r"^step +(\d+) ", after, re.MULTILINE)]
    assert trained == list(range(7, 13)), after  # resumed at 7, not from 1
    assert "checkpoint at step 12 of 12" in after and "final sync at" in after, after

    # The files: the final checkpoint and the whole log, in the workdir and identical on the remote.
    outputs = workdir / "outputs"
    ckpt = json.loads((outputs / "ckpt" / "state.json").read_text())
    assert ckpt["step"] == 12 and 0.98 < ckpt["weight"] < 1.0, ckpt
    assert abs(ckpt["loss"] - (1.0 - ckpt["weight"]) ** 2) < 1e-12
    log = (outputs / "train.log").read_text().splitlines()
    assert [int(line.split()[1]) for line in log] == list(range(1, 13)), log
    assert not list(outputs.rglob("*.tmp"))

    manifest = json.loads((remote / "outputs" / "manifest.json").read_text())
    on_remote = {f["path"]: f for f in manifest["files"]}
    assert set(on_remote) == {"ckpt/state.json", "train.log"}
    for path, entry in on_remote.items():
        assert entry["size"] == (outputs / path).stat().st_size, path
        assert entry["sha256"] == _sha256(outputs / path), path

    # And staged back independently of the kernel, the remote copy is the same bytes.
    from colab_magics import stage as stage_back

    stage_back(str(remote / "outputs"), str(tmp_path / "check"))
    for path in on_remote:
        assert (tmp_path / "check" / path).read_bytes() == (outputs / path).read_bytes(), path

    # %drive_status after each persist cell: everything is synced, but to the embedded folder on this
    # machine, so it must say so and never call it safe to disconnect.
    status = [c for c in code if _source(c).strip() == "%drive_status"]
    assert len(status) == 2
    headers = [next(o.data["text/plain"] for o in c.outputs if WIDGET_VIEW in o.get("data", {})) for c in status]
    honest = (
        "colab_magics: synced \u2014 NOT safe to disconnect (kept on this machine only: lost if the runtime is lost)"
    )
    wrong = [h.splitlines()[0] for h in headers if not h.startswith(honest)]
    assert not wrong, f"%drive_status after a finished %%persist: {wrong}"
