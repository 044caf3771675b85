"""Part planning: which bytes of which file go into which tar part (no remote, no rclone).

Every planned part, laid out as ``write_part`` writes it (its real tar headers, data padded to
512-byte blocks, the end-of-archive blocks and the padding to a whole record), must fit the
part size, and every file must be covered once, in order.  The examples pin where parts are
closed: when the next member does not fit, or at the member cap.
"""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from colab_magics.errors import BadInput
from colab_magics.local.tree import FileStat
from colab_magics.packed.tar_writer import BLOCK, Piece, _tar_header, plan, write_part

KiB = 1 << 10
SMALLEST = 64 * KiB
END = 2 * BLOCK  # the end-of-archive blocks; the whole then pads to a tar record (10 KiB)
ROOM = SMALLEST - 2 * BLOCK - tarfile.RECORDSIZE  # what the smallest part holds in members, worst case


def _file(path: str, size: int) -> FileStat:
    return FileStat(path, size, 0o644, 1_700_000_000 * 10**9)


def _blocks(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _member(piece: Piece) -> int:
    """The bytes ``write_part`` writes for one piece: its own tar header, then its data padded."""
    header = _tar_header(piece.file.path, FileStat(piece.file.path, piece.length, piece.file.mode, 0))
    return len(header) + _blocks(piece.length)


def _tar_size(pieces: list[Piece]) -> int:
    body = sum(_member(p) for p in pieces) + END
    return body + (-body % tarfile.RECORDSIZE)


def _shape(parts: list[list[Piece]]) -> list[list[tuple[str, int, int]]]:
    return [[(p.file.path, p.offset, p.length) for p in part] for part in parts]


def test_a_part_size_below_64_kib_is_refused_in_one_line():
    with pytest.raises(BadInput) as info:
        plan([_file("a", 1)], SMALLEST - 1)
    assert str(info.value) == "part size 65,535 bytes is too small; use at least 64 KiB (default 4 GiB)"


def test_no_files_is_one_empty_part():
    assert plan([], SMALLEST) == [[]]


def test_small_files_share_a_part_in_their_order():
    files = [_file(name, size) for name, size in (("b", 10), ("a", 0), ("c/d", 512))]
    assert _shape(plan(files, SMALLEST)) == [[("b", 0, 10), ("a", 0, 0), ("c/d", 0, 512)]]


def test_a_file_that_fills_a_part_exactly_is_not_split():
    exact = ROOM - BLOCK  # its header and its data take the whole room
    assert _shape(plan([_file("x", exact)], SMALLEST)) == [[("x", 0, exact)]]
    assert _shape(plan([_file("x", exact + 1)], SMALLEST)) == [[("x", 0, exact)], [("x", exact, 1)]]


def test_a_file_too_big_for_the_rest_of_a_part_starts_the_next_one():
    files = [_file("a", 1000), _file("b", 100_000), _file("c", 100)]
    first = ROOM - BLOCK  # b's first segment fills a fresh part
    assert _shape(plan(files, SMALLEST)) == [
        [("a", 0, 1000)],
        [("b", 0, first)],
        [("b", first, 100_000 - first), ("c", 0, 100)],  # the next file goes on where b ended
    ]


def test_the_member_cap_closes_parts_of_many_small_files():
    files = [_file(f"f{i}", 1) for i in range(7)]
    assert [len(part) for part in plan(files, SMALLEST, max_members=3)] == [3, 3, 1]


def test_a_long_or_non_ascii_name_costs_its_extended_header():
    """Such names need a PAX header before the member: planning counts it, so the part still fits."""
    for name in ("n" * 101, "dönnées/ψ.bin", "d/" * 60 + "x"):
        size = ROOM - BLOCK  # would fit exactly with a plain 512-byte header
        parts = plan([_file(name, size)], SMALLEST)
        assert len(parts) == 2 and all(_tar_size(part) <= SMALLEST for part in parts), name


def _random_files(rng: random.Random, part_size: int) -> list[FileStat]:
    names = ["a", "x" * 100, "y" * 101, "ünï/cødé", "deep/" * 30 + "f", "sp ace", "emoji 😀"]
    sizes = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, part_size // 3, part_size - 1, part_size, 3 * part_size + 7]
    return [
        _file(f"{i:03d}-{rng.choice(names)}", rng.choice(sizes) if rng.random() < 0.7 else rng.randrange(4 * part_size))
        for i in range(rng.randrange(1, 30))
    ]


def test_random_plans_fit_and_cover_every_byte_once_in_order():
    rng = random.Random(13)
    for _ in range(300):
        part_size = rng.choice([SMALLEST, SMALLEST + 1, 100_000, 1 << 20])
        cap = rng.choice([1, 2, 5, 1000])
        files = _random_files(rng, part_size)
        parts = plan(files, part_size, cap)
        pieces = [p for part in parts for p in part]
        # every file, in order, in contiguous pieces that cover it exactly
        covered: dict[str, int] = {}
        for p in pieces:
            assert p.offset == covered.get(p.file.path, 0) and (p.length > 0 or p.file.size == 0)
            covered[p.file.path] = p.offset + p.length
        assert list(covered) == [f.path for f in files] and all(covered[f.path] == f.size for f in files)
        for part in parts:
            assert part and len(part) <= cap and _tar_size(part) <= part_size, (part_size, _shape([part]))


def test_the_planned_layout_is_what_write_part_writes(tmp_path):
    """The size model above is checked against the real writer, once, on real files."""
    rng = random.Random(5)
    files = _random_files(rng, SMALLEST)
    for f in files:
        (tmp_path / f.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f.path).write_bytes(rng.randbytes(f.size))
    files = [_file(f.path, f.size) for f in files]
    for part in plan(files, SMALLEST):
        stated = [Piece(FileStat(p.file.path, p.file.size, 0o644, (tmp_path / p.file.path).stat().st_mtime_ns),
                        p.offset, p.length) for p in part]  # fmt: skip
        sink = io.BytesIO()
        assert write_part(stated, str(tmp_path), sink, {}) == []
        assert len(sink.getvalue()) == _tar_size(part) <= SMALLEST


@pytest.mark.parametrize("tolerant", [True, False], ids=["persist", "push"])
def test_a_file_caught_mid_rewrite_is_never_packed_as_its_prefix(tmp_path, monkeypatch, tolerant):
    """A writer that has flushed part of a rewrite and is paused (json.dump writes 8 KiB at a time; the
    interpreter or the OS may hold it there) leaves a file whose size and time stand still while it is
    read.  One written that recently is given time to go on before it is read: here the pause ends,
    deterministically, during that wait."""
    import time

    from colab_magics.packed import tar_writer

    path = tmp_path / "state.json"
    full = b"[" + b"7, " * 40_000 + b"7]"
    path.write_bytes(full[:72 * KiB])  # flushed so far; the mtime is now
    scanned = FileStat("state.json", 72 * KiB, 0o644, path.stat().st_mtime_ns)
    waits: list[float] = []

    def the_writer_goes_on(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            with open(path, "ab") as fh:
                fh.write(full[72 * KiB :])

    clock = type("Clock", (), {"time_ns": staticmethod(time.time_ns), "sleep": staticmethod(the_writer_goes_on)})
    monkeypatch.setattr(tar_writer, "time", clock)
    sink, taken = io.BytesIO(), {}
    changed = write_part([Piece(scanned, 0, scanned.size)], str(tmp_path), sink, {}, tolerant=tolerant, taken=taken)
    assert waits and all(0 < w <= tar_writer.QUIET_NS / 1e9 for w in waits)
    packed = {m.name: m.size for m in tarfile.open(fileobj=io.BytesIO(sink.getvalue()))} if sink.getvalue() else {}
    if changed:  # left for the next sync, or refused as changed: nothing of it was sent
        assert changed == ["state.json"] and "state.json" not in taken and packed.get("state.json", 0) == 0
    else:  # taken whole, as it now is (a persist takes a file that grew since the scan)
        assert tolerant and taken["state.json"].size == len(full) and packed["state.json"] == len(full)
