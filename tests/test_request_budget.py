"""What a persist costs in rclone processes and daemon calls: upper bounds, counted (never timed), so that a change that
brings back a sweep in every sync, or more calls per sync or heartbeat, fails here (issue #12;
``python bench/starts.py`` prints the counts).  Leftovers of killed runs are still swept: at start,
and after a sync that failed."""

from __future__ import annotations

import fnmatch
import os
import re

import pytest
from trees import plant_leftovers

import colab_magics as cm
from colab_magics.errors import ColabMagicsError
from colab_magics.persist import Persister
from colab_magics.rclone import process as runner
from colab_magics.rclone import remotes

# rclone processes: a sync of one small changed file starts one, for its part's upload (rcat); every
# other request goes to the rclone daemon, which the persist's start has running already
SYNC_STARTS = 1
HEARTBEAT_STARTS = 0
# daemon calls (each one or a few requests to the remote): for the part (uploaded to its final name),
# one listing that verifies it; the lock check; for the manifest copy, verify, moveto, verify; the
# previous part's delete
SYNC_CALLS = 8
HEARTBEAT_CALLS = 5  # the check, then copy, verify, moveto, verify


class Counted:
    """Every rclone child started and every daemon call made from now on (the test clears them between steps)."""

    def __init__(self) -> None:
        self.starts: list[list[str]] = []
        self.calls: list[tuple[str, dict]] = []

    def clear(self) -> None:
        self.starts.clear()
        self.calls.clear()

    def sweeps(self) -> list[tuple[str, dict]]:
        """The listings that look for leftovers: of the dataset folder, and of all its parts (not the
        listing of the ``parts/NNN`` folder that checks a sync's new parts)."""
        return [
            (method, params)
            for method, params in self.calls
            if method == "operations/list"
            and (not params["opt"]["recurse"] or params["remote"].endswith("/parts"))
            and not re.search(r"/parts/\d{3}$", params["remote"])
        ]


@pytest.fixture
def started(monkeypatch) -> Counted:
    counted = Counted()
    start, call = runner.RcloneProcess.__init__, runner.Rclone.call

    def counted_start(process: runner.RcloneProcess, argv: list[str], *args: object, **kw: object) -> None:
        counted.starts.append(list(argv))
        start(process, argv, *args, **kw)  # type: ignore[arg-type]

    def counted_call(rclone: runner.Rclone, method: str, params: dict, **kw: object) -> dict:
        if not kw.get("brief"):  # a probe or a clean-up's brief try is not the sync's own work
            counted.calls.append((method, params))
        return call(rclone, method, params, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(runner.RcloneProcess, "__init__", counted_start)
    monkeypatch.setattr(runner.Rclone, "call", counted_call)
    return counted


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
        assert started.sweeps()  # the first sync looks for what killed runs left
        for n in (2, 3):
            started.clear()
            _change(local, n)
            assert persister.sync(settle=0.0).result.moved_files == 1
            assert len(started.starts) <= SYNC_STARTS, [a[1:3] for a in started.starts]
            assert len(started.calls) <= SYNC_CALLS, [c[0] for c in started.calls]
            assert not started.sweeps()  # nothing can be left since: no listing looks
        started.clear()
        assert persister.sync(settle=0.0).result.up_to_date
        assert started.starts == [] and started.calls == []  # nothing changed: no request at all
        persister.lock.refresh(persister._context())
        assert len(started.starts) <= HEARTBEAT_STARTS, [a[1:3] for a in started.starts]
        assert 0 < len(started.calls) <= HEARTBEAT_CALLS, [c[0] for c in started.calls]
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
        assert started.sweeps()  # the failed sync may have left something: this one looks
        started.clear()
        _change(local, 3)
        persister.sync(settle=0.0)
        assert not started.sweeps()
    finally:
        persister.stop()


def test_a_push_to_a_new_name_lists_it_once_and_sweeps_nothing(remote, tmp_path, started):
    """Nothing can be left where nothing was: the listing that finds the name new is the only one (no
    second look for copies of a manifest, no sweep), and each part goes up to its final name (no move)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(bytes([i]) * 1000)
    dest = remotes.join(remote.root, "fresh")
    cm.push(src, dest, pack=True)
    lists = [params["remote"] for method, params in started.calls if method == "operations/list"]
    looked = [r for r in lists if not re.search(r"/parts/\d{3}$", r)]
    assert len(looked) == 1 and looked[0].endswith("fresh"), lists
    moves = [method for method, _ in started.calls if method in ("operations/movefile", "sync/move")]
    assert moves == ["operations/movefile"]  # the manifest's, into place: no part is moved
    assert len(started.starts) == 1  # the part's upload
    assert cm.stage(dest, tmp_path / "back").files == 3


def test_new_parts_are_checked_by_a_listing_of_their_own_names(remote, tmp_path, started):
    """The listing that checks a sync's new parts asks only for them: where MD5s are computed by reading
    (a local folder, the Drive mount), the folder's older parts (up to 1,000 of 4 GiB) are not read again."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(1 << 20))
    dest = remotes.join(remote.root, "ds")
    cm.push(src, dest, pack=True)
    (src / "small.txt").write_text("new\n")
    started.clear()
    cm.push(src, dest, pack=True)
    checks = [params for method, params in started.calls
              if method == "operations/list" and re.search(r"/parts/\d{3}$", params["remote"])]  # fmt: skip
    assert len(checks) == 1
    rule = checks[0]["_filter"]["IncludeRule"]
    new = [p for p in (remote.folder / "ds" / "parts").rglob("part-*") if fnmatch.fnmatch(p.name, rule[0])]
    assert len(rule) == 1 and len(new) == 1  # the one new part, not the first push's


def test_a_local_folder_is_staged_by_its_listing_without_reading_its_files_for_hashes(tmp_path, started):
    """A folder on a local path (the Drive mount above all, where reading a file may mean downloading it)
    is compared by size and time, to the nanosecond (the mount's to the millisecond): no listing asks
    rclone for hashes, which it would compute by reading every file at every repeat."""
    src = tmp_path / "drive" / "data"
    src.mkdir(parents=True)
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(bytes([i]) * 1000)
    assert not cm.stage(str(src), tmp_path / "here").up_to_date
    assert cm.stage(str(src), tmp_path / "here").up_to_date
    (src / "f1.bin").write_bytes(b"\x09" * 1000)  # same size, rewritten: a new time
    again = cm.stage(str(src), tmp_path / "here")
    assert not again.up_to_date and (tmp_path / "here" / "f1.bin").read_bytes() == b"\x09" * 1000
    lists = [params for method, params in started.calls if method == "operations/list"]
    assert lists and not [params for params in lists if params["opt"].get("showHash")]


def test_a_plain_folder_is_staged_with_one_listing(remote, tmp_path, started):
    """The look for a cut manifest's copy (a packed dataset whose manifest replace was cut) uses the
    listing a plain folder needs anyway: one listing a stage, not one more for nothing."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(bytes([i]) * 1000)
    dest = remotes.join(remote.root, "plain")
    cm.push(src, dest)
    started.clear()
    assert cm.stage(dest, tmp_path / "here").files == 3
    assert [params["opt"]["recurse"] for method, params in started.calls if method == "operations/list"] == [True]
