"""Building test trees with awkward content, and comparing trees exactly."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

ODD_NAMES = [
    "with space.txt",
    'quote\'s "double".txt',
    "dollar $HOME $(id).txt",
    "ünïcødé ✓ 数据.txt",
    "semi;colon&amp|pipe.txt",
]


def make_tree(root: Path, *, big: int = 0, small: int = 20, odd: bool = True, raw_bytes_name: bool = False) -> Path:
    """A tree with nested and empty folders, odd names, modes, an empty file and a symlink."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty" / "nested-empty").mkdir(parents=True)
    for i in range(small):
        (root / "a" / f"small-{i:03d}.bin").write_bytes(os.urandom(100 + 37 * i))
    (root / "a" / "b" / "c" / "deep.txt").write_text("deep\n")
    (root / "zero-length").write_bytes(b"")
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    secret = root / "a" / "private.key"
    secret.write_bytes(os.urandom(64))
    secret.chmod(0o600)
    os.symlink("a/b/c/deep.txt", root / "link-to-deep")
    if odd:
        for name in ODD_NAMES:
            (root / "a" / name).write_text(name)
        (root / "a" / "new\nline.txt").write_text("newline in the name")
    if raw_bytes_name:
        with open(os.path.join(os.fsencode(root / "a"), b"latin1-\xe9t\xe9.txt"), "wb") as fh:
            fh.write(b"not utf-8")
    if big:
        (root / "big.bin").write_bytes(os.urandom(big))
    return root


def rewrite_same_size(path: Path) -> None:
    """New bytes, the same size, a modification time in the same second: invisible to sizes and times."""
    old = path.stat()
    path.write_bytes(os.urandom(old.st_size))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1000))


def plant_leftovers(root: str, tmp_path: Path) -> tuple[str, str]:
    """Leave on the remote ``root`` what killed runs leave: in the packed dataset ``ds`` a staging folder
    and a half-made manifest two hours old and a staging folder made now; beside the plain folder
    ``plain`` a staging folder and a temporary file two hours old.  Returns the (old, new) name stamps."""
    import time

    from colab_magics.rclone import remotes
    from colab_magics.rclone.process import Rclone

    old, new = f"{int(time.time()) - 7200:08x}abcdef", f"{int(time.time()):08x}abcdef"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"left by a killed run")
    rc = Rclone()
    for name in (f"ds/.cm-upload-{old}/000/part-{old}-0000.tar", f"ds/manifest.json.cm-tmp-{old}",
                 f"ds/.cm-upload-{new}/000/part-{new}-0000.tar", f".plain.cm-upload-{old}/a.bin",
                 f"plain.cm-tmp-{old}"):  # fmt: skip
        rc.run("copyto", str(junk), remotes.join(root, name))
    return old, new


def snapshot(root: Path, *, modes: bool = True, mtimes: bool = True, links: bool = True) -> dict:
    """Everything that must survive a round trip, by relative path (bytes, as the OS gives them)."""
    out = {}
    base = os.fsencode(root)
    for folder, dirs, files in os.walk(base):
        for name in dirs + files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                if links:
                    out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode) if modes else None)
            else:
                with open(full, "rb") as fh:
                    data = fh.read()
                out[rel] = (
                    "file",
                    data,
                    stat.S_IMODE(st.st_mode) if modes else None,
                    st.st_mtime_ns if mtimes else None,
                )
    return out


def parts_staged(dest: Path) -> int:
    """How many whole parts a stage into ``dest`` has recorded for a resume so far (0 before any)."""
    progress = dest.parent / f".{dest.name}.cm-stage" / "progress.json"
    try:
        return len(json.loads(progress.read_text())["done"])
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced
        return 0


def leftovers(folder: Path, lock: bool = False) -> list[str]:
    """What failed or killed runs left under ``folder`` (a remote's folder on disk): temporary names
    (``*.cm-tmp-*`` manifests and locks, ``.cm-upload-*`` staging of earlier versions, rclone's
    ``*.partial`` uploads), parts that no manifest beside them names (parts go up to their final
    names: one cut short, or never named, is a leftover too), and with ``lock`` a lock not released."""
    named = set()
    for manifest in folder.rglob("manifest.json"):
        named |= {manifest.parent / part["name"] for part in json.loads(manifest.read_bytes())["parts"]}
    found = []
    for p in folder.rglob("*"):
        if not p.is_file():  # (serve s3 may keep an empty folder for a deleted prefix)
            continue
        rel = str(p.relative_to(folder))
        temporary = any(mark in rel for mark in (".cm-tmp", ".cm-upload", ".partial", *([".cm-lock"] if lock else [])))
        unnamed = p.parent.parent.name == "parts" and p not in named
        if temporary or unnamed:
            found.append(rel)
    return sorted(found)
