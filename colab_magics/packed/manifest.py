"""The manifest of a packed dataset: what every file is, and which tar part holds it.

A packed dataset on the remote is a folder::

    manifest.json                       written last: its presence means the dataset is complete
    parts/000/part-<push id>-0000.tar[.zst]

Parts are at most ``part_size`` bytes (Drive gets into quota trouble above ~5 GB) and at most
``PARTS_PER_FOLDER`` share a folder.  A file larger than a part is split into segments, each a
tar member carrying its offset, so every part stays a valid tar.  File hashes are SHA-256;
part hashes are MD5 because that is what Drive and S3 report, so an upload is verified without
reading it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import ManifestError

FORMAT = "colab_magics/packed-dataset"
VERSION = 1
MANIFEST_NAME = "manifest.json"
PARTS_PER_FOLDER = 1000
DEFAULT_PART_SIZE = 4 * 1024**3


@dataclass(frozen=True)
class Segment:
    """``length`` bytes of a file at ``offset``, stored in part number ``part``."""

    part: int
    offset: int
    length: int


@dataclass(frozen=True)
class FileEntry:
    path: str  # "/"-separated, relative; non-UTF-8 bytes kept as surrogate escapes
    size: int
    mode: int
    mtime_ns: int
    sha256: str
    segments: tuple[Segment, ...]

    def stat_key(self) -> tuple[str, int, int, int]:
        """What must match for an unchanged file (rsync's quick check, plus the mode)."""
        return (self.path, self.size, self.mtime_ns, self.mode)


@dataclass(frozen=True)
class LinkEntry:
    path: str
    target: str


@dataclass(frozen=True)
class DirEntry:
    path: str
    mode: int


@dataclass(frozen=True)
class PartEntry:
    name: str  # path relative to the dataset folder
    size: int
    md5: str
    members: int
    data_bytes: int  # file bytes in it (the rest is tar headers): what "half current" is measured on
    skip: tuple[str, ...] = ()  # members superseded by a later part, or torn: not extracted


@dataclass
class Manifest:
    compression: str  # "none" or "zstd"
    files: list[FileEntry] = field(default_factory=list)
    dirs: list[DirEntry] = field(default_factory=list)
    links: list[LinkEntry] = field(default_factory=list)
    parts: list[PartEntry] = field(default_factory=list)
    # one more than the manifest it replaced: of two copies a cut replace left, the later one wins
    # (their names' times come from writers' clocks); not compared: it says nothing of the content
    generation: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        self.stored_size: int | None = None  # bytes as read or written (not a field: not in the JSON)

    @staticmethod
    def generation_of(raw: bytes) -> int | None:
        """The generation of the manifest ``raw``; None if it is not a whole manifest (a copy cut short)."""
        try:
            return Manifest.from_json(raw, "").generation
        except ManifestError:
            return None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        """What ``json.dumps({"format", "version", **asdict(self)}, indent=0, sort_keys=True)`` writes, byte
        for byte, written directly: ``asdict`` and the pure-Python encoder that ``indent`` needs took
        seconds and ~100 MB for 50,000 files; this takes a tenth of the time and about twice the result."""
        q = _quote
        out = bytearray()

        def array(items: Iterable[str]) -> None:  # laid out as indent=0 does
            empty = True
            for item in items:
                out.extend(b",\n" if not empty else b"[\n")
                out.extend(item.encode("ascii"))
                empty = False
            out.extend(b"[]" if empty else b"\n]")

        out.extend(f'{{\n"compression": {q(self.compression)},\n"dirs": '.encode("ascii"))
        array(f'{{\n"mode": {d.mode},\n"path": {q(d.path)}\n}}' for d in self.dirs)
        out.extend(b',\n"files": ')
        array(
            f'{{\n"mode": {f.mode},\n"mtime_ns": {f.mtime_ns},\n"path": {q(f.path)},\n"segments": '
            f'{_small_array([_segment(s) for s in f.segments])},\n"sha256": {q(f.sha256)},\n"size": {f.size}\n}}'
            for f in self.files
        )
        out.extend(f',\n"format": {q(FORMAT)},\n"generation": {self.generation},\n"links": '.encode("ascii"))
        array(f'{{\n"path": {q(link.path)},\n"target": {q(link.target)}\n}}' for link in self.links)
        out.extend(b',\n"parts": ')
        array(
            f'{{\n"data_bytes": {p.data_bytes},\n"md5": {q(p.md5)},\n"members": {p.members},\n"name": {q(p.name)},\n'
            f'"size": {p.size},\n"skip": {_small_array([q(x) for x in p.skip])}\n}}'
            for p in self.parts
        )
        out.extend(f',\n"version": {VERSION}\n}}'.encode("ascii"))
        return bytes(out)

    def members_by_part(self) -> list[dict[str, tuple[FileEntry, Segment]]]:
        """Members expected in each part, by path: one pass over the files, whatever the number of parts."""
        found: list[dict[str, tuple[FileEntry, Segment]]] = [{} for _ in self.parts]
        for f in self.files:
            for seg in f.segments:
                found[seg.part][f.path] = (f, seg)
        return found

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ManifestError(f"{where}: manifest.json is not valid JSON ({exc}); re-push the dataset") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestError(f"{where}: manifest.json is not a colab_magics packed-dataset manifest")
        version = data.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise ManifestError(
                f"{where}: packed with a newer colab_magics (format {version}, this one reads {VERSION}); "
                "pip install --upgrade colab_magics"
            )
        try:
            manifest = cls(
                compression=_choice(data["compression"], ("none", "zstd")),
                generation=_count(data.get("generation", 0)),
                files=[
                    FileEntry(
                        path=_rel(f["path"]),
                        size=_count(f["size"]),
                        mode=_count(f["mode"]),
                        mtime_ns=int(f["mtime_ns"]),
                        sha256=str(f["sha256"]),
                        segments=tuple(Segment(**s) for s in f["segments"]),
                    )
                    for f in data["files"]
                ],
                dirs=[DirEntry(_rel(d["path"]), _count(d["mode"])) for d in data["dirs"]],
                links=[LinkEntry(_rel(link["path"]), str(link["target"])) for link in data["links"]],
                parts=[
                    PartEntry(
                        str(p["name"]),
                        _count(p["size"]),
                        str(p["md5"]),
                        _count(p["members"]),
                        _count(p["data_bytes"]),
                        tuple(_rel(x) for x in p.get("skip", ())),
                    )  # fmt: skip
                    for p in data["parts"]
                ],
            )
            for f in manifest.files:
                if any(not 0 <= seg.part < len(manifest.parts) for seg in f.segments):
                    raise ValueError(f"{f.path!r} is in a part the manifest does not list")
            manifest.stored_size = len(raw)
            return manifest
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: manifest.json is malformed ({exc!r}); re-push the dataset") from exc


_quote = json.JSONEncoder(ensure_ascii=True).encode  # a str as a JSON string, as json.dumps writes it


def _small_array(items: list[str]) -> str:
    """A JSON array of already encoded items, laid out as ``indent=0`` does."""
    return "[\n" + ",\n".join(items) + "\n]" if items else "[]"


def _segment(s: Segment) -> str:
    return f'{{\n"length": {s.length},\n"offset": {s.offset},\n"part": {s.part}\n}}'


def _choice(value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown value {value!r}")
    return str(value)


def _count(value: object) -> int:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"bad number {value!r}")
    return value


def _rel(path: object) -> str:
    """A safe relative path, or ValueError (the extractor checks again at write time)."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\x00" in path:
        raise ValueError(f"bad path {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"bad path {path!r}")
    return path
