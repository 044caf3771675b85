"""What a persist costs in rclone processes: upper bounds, counted (never timed), so that a change that
brings back a sweep in every sync, or more calls per sync or heartbeat, fails here (issue #12;
``python bench/starts.py`` prints the counts).  Leftovers of killed runs are still swept: at start,
and after a sync that failed."""

from __future__ import annotations

import pytest
from trees import plant_leftovers

from colab_magics.errors import ColabMagicsError
from colab_magics.persist import Persister
from colab_magics.rclone import process as runner
from colab_magics.rclone import remotes

# a sync of one small changed file: for its part rcat, one listing that verifies it, move, rmdirs of
# the staging folder; the lock check; for the manifest rcat, verify, moveto, verify; the previous part's delete
SYNC_STARTS = 10
HEARTBEAT_STARTS = 5  # the check, then rcat, verify, moveto, verify


@pytest.fixture
def started(monkeypatch) -> list[list[str]]:
    """The argv of every rclone child started from now on (the test empties it between steps)."""
    argvs: list[list[str]] = []
    original = runner.RcloneProcess.__init__

    def counted(process: runner.RcloneProcess, argv: list[str], *args: object, **kw: object) -> None:
        argvs.append(list(argv))
        original(process, argv, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(runner.RcloneProcess, "__init__", counted)
    return argvs


def _sweeps(argvs: list[list[str]]) -> list[list[str]]:
    """The listings that look for leftovers: of the dataset folder, and of its parts."""
    return [a for a in argvs if a[1] == "lsjson" and ("--max-depth" in a or any(x.endswith("/parts") for x in a))]


def _change(folder, n: int) -> None:
    (folder / "train.log").write_text(f"step {n}\n" * (n + 1))


def test_a_later_sync_and_a_heartbeat_stay_within_their_budget(remote, tmp_path, started):
    local = tmp_path / "outputs"
    local.mkdir()
    for i in range(5):
        (local / f"f{i}.bin").write_bytes(bytes([i]) * 1000)
    persister = Persister(local, remotes.join(remote.root, "ds"), every=3600)
    persister.start()
    try:
        _change(local, 1)
        persister.sync(settle=0.0)
        assert _sweeps(started)  # the first sync looks for what killed runs left
        for n in (2, 3):
            started.clear()
            _change(local, n)
            assert persister.sync(settle=0.0).result.moved_files == 1
            assert len(started) <= SYNC_STARTS, [a[1:3] for a in started]
            assert not _sweeps(started)  # nothing can be left since: no listing looks
        started.clear()
        assert persister.sync(settle=0.0).result.up_to_date
        assert started == []  # nothing changed: no request at all
        persister.lock.refresh(persister._context())
        assert 0 < len(started) <= HEARTBEAT_STARTS, [a[1:3] for a in started]
    finally:
        persister.stop()


def test_leftovers_are_swept_at_start_and_after_a_failed_sync(remote, tmp_path, started, monkeypatch):
    old, new = plant_leftovers(remote.root, tmp_path)
    local = tmp_path / "outputs"
    local.mkdir()
    persister = Persister(local, remotes.join(remote.root, "ds"), every=3600)
    persister.start()
    try:
        _change(local, 1)
        persister.sync(settle=0.0)
        names = {p.name for p in (remote.folder / "ds").rglob("*") if p.is_file()}
        assert not {n for n in names if old in n}, sorted(names)
        assert f"part-{new}-0000.tar" in names  # young: may belong to a push still running

        def refused(ctx: object) -> None:
            raise ColabMagicsError("the server refused the check")

        with monkeypatch.context() as m:
            m.setattr(persister.lock, "check", refused)
            _change(local, 2)
            with pytest.raises(ColabMagicsError, match="refused"):
                persister.sync(settle=0.0)
        started.clear()
        persister.sync(settle=0.0)
        assert _sweeps(started)  # the failed sync may have left something: this one looks
        started.clear()
        _change(local, 3)
        persister.sync(settle=0.0)
        assert not _sweeps(started)
    finally:
        persister.stop()
