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

from colab_magics.notebook.panel import PANEL_TEXT

DEMO = Path(__file__).resolve().parent.parent / "demo.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _stream(cell: dict) -> str:
    """The cell's stdout as a front-end shows it: a line rewritten after a carriage return shows its last form."""
    text = "".join(o["text"] for o in cell.get("outputs", []) if o["output_type"] == "stream" and o["name"] == "stdout")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


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
    # the user's own outputs, here and on their default remote: the tour must never touch them
    for mine in (workdir / "outputs", remote / "outputs"):
        mine.mkdir(parents=True)
        (mine / "mine.txt").write_text("the user's own")
    runs = [_tour(workdir, remote, tmp_path / f"check{n}", nbformat, nbclient) for n in (1, 2)]
    assert runs[0] != runs[1]  # each run in a folder of its own on the remote: the second tells the same story
    for mine in (workdir / "outputs", remote / "outputs"):
        assert [p.name for p in mine.iterdir()] == ["mine.txt"] and (mine / "mine.txt").read_text() == "the user's own"


def _tour(workdir: Path, remote: Path, check: Path, nbformat, nbclient) -> str:  # type: ignore[no-untyped-def]
    """Run demo.ipynb top to bottom in a fresh kernel and check its story; returns its folder on the remote."""

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
    # Once a session, in the first cell that runs a magic; again only where %drive_status asks for it.
    displays = [(_source(c), o) for c in code for o in c.outputs if o.output_type == "display_data"]
    shown = [(source, o) for source, o in displays if WIDGET_VIEW in o.data]
    assert [source.split()[0] for source, _ in shown] == ["%drive_push", "%drive_status", "%drive_status"], shown
    views = [view for _, view in shown]
    for view in views:
        assert view.data["text/plain"] == PANEL_TEXT  # never a status that the live panel later contradicts
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    assert views[0].data[WIDGET_VIEW]["model_id"] in state, "the panel's widget state was not stored"

    # Zero configuration: everything went to the embedded default remote, in this run's own folder.
    first = code[0]
    assert f"remote root: {remote}" in _stream(first), _stream(first)
    run = re.search(r"^this tour writes under: (colab_magics_demo/\S+)$", _stream(first), re.MULTILINE)
    assert run, _stream(first)
    here = remote / run.group(1)
    toy = json.loads((here / "toy_dataset" / "manifest.json").read_text())
    assert len(toy["files"]) == 2000

    push = next(c for c in code if _source(c).startswith("%drive_push demo_toy_dataset {RUN}/toy_dataset --pack"))
    assert "pushed 2,000 files" in _stream(push), _stream(push)
    stage = next(c for c in code if _source(c).startswith("%drive_stage {RUN}/toy_dataset demo_staged"))
    assert "staged 2,000 files" in _stream(stage), _stream(stage)
    assert any("demo_staged/ matches demo_toy_dataset/: 2,000 files" in _stream(c) for c in code)

    # The same %%persist cell twice: from scratch, then after the lost runtime, restored and resumed.
    persist = [c for c in code if _source(c).startswith("%%persist demo_outputs --to {RUN}/outputs")]
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
    outputs = workdir / "demo_outputs"
    ckpt = json.loads((outputs / "ckpt" / "state.json").read_text())
    assert ckpt["step"] == 12 and 0.98 < ckpt["weight"] < 1.0, ckpt
    assert abs(ckpt["loss"] - (1.0 - ckpt["weight"]) ** 2) < 1e-12
    log = (outputs / "train.log").read_text().splitlines()
    assert [int(line.split()[1]) for line in log] == list(range(1, 13)), log
    assert not list(outputs.rglob("*.tmp"))

    manifest = json.loads((here / "outputs" / "manifest.json").read_text())
    on_remote = {f["path"]: f for f in manifest["files"]}
    assert set(on_remote) == {"ckpt/state.json", "train.log"}
    for path, entry in on_remote.items():
        assert entry["size"] == (outputs / path).stat().st_size, path
        assert entry["sha256"] == _sha256(outputs / path), path

    # And staged back independently of the kernel, the remote copy is the same bytes.
    from colab_magics import stage as stage_back

    stage_back(str(here / "outputs"), str(check))
    for path in on_remote:
        assert (check / path).read_bytes() == (outputs / path).read_bytes(), path

    # %drive_status after each persist cell: everything is synced, but to the embedded folder on this
    # machine, so the panel (its header as the notebook stored it) must say so, never "safe to disconnect".
    headers = [m["state"]["value"] for m in state.values() if "cm-header" in m["state"].get("_dom_classes", ())]
    assert len(headers) == 1, headers  # one panel for the whole session
    assert "synced" in headers[0] and "not safe to disconnect" in headers[0], headers[0]
    assert "kept on this machine only: lost if the runtime is lost" in headers[0], headers[0]
    return run.group(1)
