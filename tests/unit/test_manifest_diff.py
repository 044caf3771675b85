"""The incremental sync's diff: which files stay in the parts already on the remote, which go up
again, and the manifest that results (no remote, no rclone: the decisions only).

A part stays while at least half of its data is current; a file whose version in it is no longer
current is listed in its ``skip``; a part less than half current is dissolved and its current
files go up again; a file deleted here but kept (copy semantics) pins its part; a file that
changed while it was read keeps its previous version.  The JSON round trip of the manifest is
``tests/test_manifest.py``'s.
"""

from __future__ import annotations

import hashlib

from colab_magics.local.tree import FileStat, Tree
from colab_magics.packed.manifest import DirEntry, FileEntry, LinkEntry, Manifest, PartEntry, Segment
from colab_magics.packed.tar_writer import Piece
from colab_magics.packed.upload import PackedSync, SyncOptions, served_from_old

MTIME = 1_700_000_000 * 10**9


def _old(*parts: dict[str, int]) -> Manifest:
    """A manifest on the remote: part ``i`` holds ``{path: bytes}``; a path in several parts is split."""
    segments: dict[str, list[Segment]] = {}
    for i, members in enumerate(parts):
        for path, length in members.items():
            done = sum(s.length for s in segments.get(path, []))
            segments.setdefault(path, []).append(Segment(i, done, length))
    m = Manifest("none")
    m.parts = [
        PartEntry(f"parts/000/part-old-{i:04d}.tar", 10240 + sum(members.values()), f"md5-old-{i}", len(members),
                  sum(members.values()))
        for i, members in enumerate(parts)
    ]  # fmt: skip
    m.files = [
        FileEntry(p, sum(s.length for s in segs), 0o644, MTIME, f"sha-old-{p}", tuple(segs))
        for p, segs in sorted(segments.items())
    ]
    return m


def _served(old: Manifest | None, live: set[str], kept_deleted: frozenset[str] = frozenset()) -> set[str]:
    """What ``run`` asks: of the unchanged files (and the deleted ones kept), which stay where they are."""
    old_files = {f.path: f for f in old.files} if old else {}
    return served_from_old(old, old_files, live | kept_deleted, set(kept_deleted))[0]


def _build(
    old: Manifest,
    here: dict[str, int],
    served: set[str],
    new: list[list[str]],
    torn: frozenset[str] = frozenset(),
    grown: dict[str, int] | None = None,
    keep_deleted: bool = False,
    dirs: tuple[tuple[str, int], ...] = (),
    links: tuple[tuple[str, str], ...] = (),
) -> Manifest:
    """The manifest after uploading ``new`` (one list of whole files per new part) beside the old parts;
    ``here`` is the scan (path: size), ``grown`` what a file had grown to when it was read."""
    sync = PackedSync.__new__(PackedSync)  # _build reads nothing but the options: no remote behind it
    sync.opt = SyncOptions(keep_deleted=keep_deleted)
    stats = {p: FileStat(p, size, 0o644, MTIME + 1) for p, size in here.items()}
    tree = Tree(files=list(stats.values()), dirs=list(dirs), links=list(links))
    new_parts = []
    for i, paths in enumerate(new):
        data = sum(stats[p].size for p in paths)
        entry = PartEntry(f"parts/000/part-new-{i:04d}.tar", 10240 + data, f"md5-new-{i}", len(paths), data)
        new_parts.append((entry, [Piece(stats[p], 0, stats[p].size) for p in paths]))
    uploaded = [p for paths in new for p in paths]
    digests = {p: hashlib.sha256(p.encode()) for p in uploaded}
    grown = grown or {}
    taken = {p: FileStat(p, grown[p], 0o644, MTIME + 2) if p in grown else stats[p] for p in uploaded if p not in torn}
    manifest, _ = sync._build(tree, old, {f.path: f for f in old.files}, served, new_parts, set(torn), digests, taken)
    return manifest


def _where(m: Manifest) -> dict[str, list[tuple[str, int, int]]]:
    """Each file's segments as (part name, offset, length)."""
    return {f.path: [(m.parts[s.part].name, s.offset, s.length) for s in f.segments] for f in m.files}


def _parts(m: Manifest) -> list[tuple[str, tuple[str, ...]]]:
    return [(p.name, p.skip) for p in m.parts]


OLD0, OLD1, OLD2 = (f"parts/000/part-old-{i:04d}.tar" for i in range(3))
NEW0 = "parts/000/part-new-0000.tar"


def test_a_file_is_unchanged_only_with_the_same_size_mtime_and_mode():
    entry = _old({"a": 10}).files[0]
    assert entry.stat_key() == ("a", 10, MTIME, 0o644)
    assert entry.stat_key() != ("a", 10, MTIME, 0o755)  # a chmod is a change: the mode is restored too


def test_nothing_is_served_from_a_dataset_that_does_not_exist_yet():
    assert _served(None, set()) == set()


def test_unchanged_files_stay_in_their_parts():
    old = _old({"a": 60, "b": 40}, {"c": 100})
    assert _served(old, {"a", "b", "c"}) == {"a", "b", "c"}


def test_a_part_half_current_stays_and_one_less_than_half_current_is_repacked():
    old = _old({"a": 50, "b": 50}, {"c": 49, "d": 51})
    # b and d changed: old part 0 is exactly half current, old part 1 less than half
    assert _served(old, {"a", "c"}) == {"a"}


def test_a_split_file_goes_up_again_when_any_part_of_it_is_repacked():
    old = _old({"big": 100}, {"big": 60, "x": 40}, {"big": 10, "y": 90})
    assert _served(old, {"big", "x"}) == {"x"}  # y changed: part 2 is 10% current, and holds a piece of big
    assert _served(old, {"big", "y"}) == {"big", "y"}  # x changed: part 1 is still 60% current


def test_a_file_deleted_here_but_kept_pins_its_part():
    old = _old({"gone": 10, "changed": 80, "a": 10}, {"other": 100})
    assert _served(old, {"a", "other"}, kept_deleted=frozenset({"gone"})) == {"gone", "a", "other"}
    assert _served(old, {"a", "other"}) == {"other"}  # mirror: part 0 is 10% current, repacked


def _held(old: Manifest, live: set[str], allowance: int | None, kept_deleted: frozenset[str] = frozenset()):
    """What ``run`` asks on the Drive mount: (served, held back) when the parts deleted may come to
    ``allowance`` bytes (each old part is 10,240 bytes of tar headers plus its data)."""
    old_files = {f.path: f for f in old.files}
    return served_from_old(old, old_files, live | kept_deleted, set(kept_deleted), allowance)


def test_within_the_trash_allowance_nothing_is_held():
    old = _old({"model": 1000}, {"log": 10})  # parts of 11,240 and 10,250 bytes
    assert _held(old, set(), allowance=21_490) == (set(), set())  # both changed, both parts let go
    assert _held(old, set(), allowance=None) == (set(), set())  # no bound


def test_the_smallest_parts_are_let_go_first_and_the_rest_is_held_at_its_previous_version():
    old = _old({"model": 1000}, {"log": 10})
    assert _held(old, set(), allowance=10_250) == ({"model"}, {"model"})  # the log goes up, the model waits
    assert _held(old, set(), allowance=0) == ({"model", "log"}, {"model", "log"})


def test_an_unchanged_file_in_a_part_that_must_stay_is_not_held_and_not_repacked():
    old = _old({"model": 1000, "config": 10})
    assert _held(old, {"config"}, allowance=0) == ({"model", "config"}, {"model"})


def test_a_held_file_split_over_parts_keeps_every_part_of_it():
    old = _old({"big": 100}, {"big": 60, "x": 40}, {"y": 90})
    # big and x changed: the allowance lets part 0 go and holds part 1 back, so big is held, and part 0,
    # which holds its first piece, stays too
    served, held = _held(old, {"y"}, allowance=10_240 + 100)
    assert held == {"big", "x"} and served == {"big", "x", "y"}


def test_a_changed_file_goes_into_a_new_part_and_its_old_version_is_skipped():
    old = _old({"a": 60, "b": 40}, {"c": 100})
    m = _build(old, {"a": 60, "b": 45, "c": 100}, served={"a", "c"}, new=[["b"]])
    assert _where(m) == {"a": [(OLD0, 0, 60)], "b": [(NEW0, 0, 45)], "c": [(OLD1, 0, 100)]}
    assert _parts(m) == [(OLD0, ("b",)), (OLD1, ()), (NEW0, ())]
    b = next(f for f in m.files if f.path == "b")
    assert (b.size, b.mtime_ns, b.sha256) == (45, MTIME + 1, hashlib.sha256(b"b").hexdigest())


def test_a_repacked_part_leaves_the_manifest_and_the_rest_is_renumbered():
    old = _old({"a": 60, "b": 40}, {"c": 100})
    m = _build(old, {"a": 61, "b": 40, "c": 100}, served={"c"}, new=[["a", "b"]])
    assert _where(m) == {"a": [(NEW0, 0, 61)], "b": [(NEW0, 0, 40)], "c": [(OLD1, 0, 100)]}
    assert _parts(m) == [(OLD1, ()), (NEW0, ())]
    assert [s.part for f in m.files for s in f.segments] == [1, 1, 0]


def test_a_file_torn_while_read_keeps_its_previous_version():
    old = _old({"log": 50, "a": 50})
    m = _build(old, {"log": 80, "a": 50, "new": 5}, served={"a"}, new=[["log", "new"]], torn=frozenset({"log"}))
    assert _where(m) == {"a": [(OLD0, 0, 50)], "log": [(OLD0, 0, 50)], "new": [(NEW0, 0, 5)]}
    assert _parts(m) == [(OLD0, ()), (NEW0, ("log",))]  # the torn bytes in the new part are never extracted
    assert next(f for f in m.files if f.path == "log").sha256 == "sha-old-log"


def test_a_new_file_torn_while_read_is_left_out_until_the_next_sync():
    old = _old({"a": 10})
    m = _build(old, {"a": 10, "fresh": 7}, served={"a"}, new=[["fresh"]], torn=frozenset({"fresh"}))
    assert _where(m) == {"a": [(OLD0, 0, 10)]} and _parts(m) == [(OLD0, ()), (NEW0, ("fresh",))]


def test_a_log_that_grew_before_it_was_read_is_recorded_as_read():
    m = _build(_old({"a": 10}), {"a": 10, "train.log": 100}, {"a"}, [["train.log"]], grown={"train.log": 120})
    log = next(f for f in m.files if f.path == "train.log")
    assert (log.size, log.mtime_ns, log.segments) == (120, MTIME + 2, (Segment(1, 0, 120),))


def test_copy_semantics_keep_deleted_files_folders_and_links():
    old = _old({"gone": 10, "a": 10})
    old.dirs = [DirEntry("both", 0o700), DirEntry("old-dir", 0o755)]
    old.links = [LinkEntry("now-a-file", "a"), LinkEntry("old-link", "a")]
    here = {"a": 10, "now-a-file": 3}
    dirs, links = (("both", 0o755), ("new-dir", 0o750)), (("new-link", "a"),)
    kept = _build(old, here, {"a", "gone"}, [["now-a-file"]], keep_deleted=True, dirs=dirs, links=links)
    assert sorted(_where(kept)) == ["a", "gone", "now-a-file"]
    assert [(d.path, d.mode) for d in kept.dirs] == [("both", 0o755), ("new-dir", 0o750), ("old-dir", 0o755)]
    assert [(x.path, x.target) for x in kept.links] == [("new-link", "a"), ("old-link", "a")]  # a file won
    mirrored = _build(old, here, {"a"}, [["now-a-file"]], dirs=dirs, links=links)
    assert sorted(_where(mirrored)) == ["a", "now-a-file"] and _parts(mirrored)[0] == (OLD0, ("gone",))
    assert [(d.path, d.mode) for d in mirrored.dirs] == list(dirs)
    assert [(x.path, x.target) for x in mirrored.links] == list(links)
