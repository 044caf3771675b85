"""Remote paths: the default root, name resolution, and what a remote can do.

Any rclone path works (``gdrive:colab``, ``s3:bucket/x``, ``/mnt/backup``).  With no setting,
the root is the mounted Drive on Colab, or else an embedded local folder, so everything works
with zero configuration.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from dataclasses import dataclass

import platformdirs

from ..errors import BadInput, NoRemote
from ..host.colab import drive_root, on_colab
from .process import Rclone, is_remote, split_root


def configured_root() -> str:
    return os.environ.get("COLAB_MAGICS_REMOTE", "").strip()


def default_root() -> str:
    """``COLAB_MAGICS_REMOTE``, else Drive on Colab, else a local folder in the user data dir.

    On Colab the local folder would be the VM's own disk, lost with the runtime: there, with Drive
    not mounted and nothing configured, this refuses in one line instead (the notebook face mounts
    Drive first, with Colab's own consent prompt).
    """
    configured = configured_root()
    if configured:
        return configured
    if os.path.isdir(drive_root()):
        return drive_root() + "/colab_magics"
    if on_colab():
        raise NoRemote(
            "Google Drive is not mounted and no remote is set: run `from google.colab import drive; "
            "drive.mount('/content/drive')`, or set COLAB_MAGICS_REMOTE to an rclone remote such as gdrive:colab"
        )
    return os.path.join(platformdirs.user_data_dir("colab_magics"), "remote")


# rclone's rule for a configured remote's name
_REMOTE_NAME = re.compile(r"[\w.+@]([\w.+@ -]*[\w.+@-])?")  # never a leading "-": rclone would read a flag


def resolve(name: str, root: str | None = None) -> str:
    """The rclone path for ``name``: as given if it has ``:`` or starts with ``/``, else under the root.

    Malformed remotes are refused here, in plain words, rather than by rclone later; ``:local:``
    (rclone's on-the-fly local backend) becomes the local path it names, so that the checks
    for overlapping source and dest see it.
    """
    name = os.fspath(name)
    if not name.strip():
        raise BadInput("the remote path is empty; give a name such as datasets/flowers or gdrive:data")
    if name.startswith("/"):
        return name
    if name.startswith(":"):  # a connection string, :backend[,option=value...]:path
        backend, sep, path = name[1:].partition(":")
        if not sep or not backend.split(",", 1)[0]:
            raise BadInput(f"malformed remote {name!r}: {_FORMS}")
        return os.path.abspath(path or ".") if backend == "local" else name
    head, sep, _ = name.partition(":")
    if sep:  # NAME:path, or a local relative path that holds a colon after a "/"
        if "/" not in head and not _REMOTE_NAME.fullmatch(head):
            raise BadInput(f"malformed remote {name!r}: {_FORMS}")
        return name
    if ".." in name.split("/"):
        raise BadInput(f"{name!r} climbs out of the remote root with '..'; give a name inside it, or a full path")
    return join(root or default_root(), name)


_FORMS = (
    "write NAME:path with a configured remote NAME (letters, digits, _ - . + @, inner spaces), "
    "a name under the remote root such as datasets/flowers, or a local /absolute/path"
)


def join(base: str, *parts: str) -> str:
    """Join rclone path pieces with ``/`` (``remote:`` + ``x`` gives ``remote:x``)."""
    path = base
    for part in parts:
        part = part.strip("/")
        if not part:
            continue
        path = path + part if path.endswith((":", "/")) else path + "/" + part
    return path


def parent(dest: str) -> tuple[str, str]:
    """(the folder that holds ``dest``, its name), also at the top of a remote or of the file system."""
    head, sep, path = dest.partition(":") if is_remote(dest) else ("", "", dest)
    folder, _, name = path.rstrip("/").rpartition("/")
    return f"{head}{sep}{folder or ('/' if path.startswith('/') else '')}", name


def basename(path: str) -> str:
    """Last component of a local or remote path (``gdrive:a/b/`` gives ``b``)."""
    tail = path.split(":", 1)[1] if is_remote(path) else path
    return posixpath.basename(tail.rstrip("/"))


def local_path(path: str) -> str | None:
    """The local folder behind ``path`` when it is a plain local path, else None."""
    return None if is_remote(path) else os.path.abspath(path)


_CONTROL_PICTURES = {chr(0x2400 + c): chr(c) for c in range(0x20)}
_QUOTE = "\u201b"  # rclone's escape: a picture character that really is in the name


def listed_name(path: str) -> str:
    """A path as rclone lists it, back to the real name.

    rclone shows control characters (a newline) as their Unicode pictures (U+2400-U+241F) and
    quotes a picture that really is in the name with U+201B.
    """
    if not any(c in _CONTROL_PICTURES or c == _QUOTE for c in path):
        return path
    out = []
    chars = iter(path)
    for c in chars:
        if c == _QUOTE:
            out.append(next(chars, ""))
        else:
            out.append(_CONTROL_PICTURES.get(c, c))
    return "".join(out)


@dataclass(frozen=True)
class RemoteInfo:
    """What the engine needs to know about a backend."""

    type: str
    hashes: tuple[str, ...]
    modtime_precision_s: float | None  # None: the remote keeps no modification times
    about: bool = False  # reports its quota and free space (``rclone about``)

    @property
    def md5(self) -> bool:
        return "md5" in self.hashes


def _remote_type(rclone: Rclone, path: str) -> str:
    if not is_remote(path):
        return "local"
    head = path.split(":", 1)[0]
    if path.startswith(":"):  # connection string, ":s3,provider=...:bucket"
        return path[1:].split(",", 1)[0].split(":", 1)[0]
    return rclone.remote_type(head)


@functools.lru_cache(maxsize=64)
def _info(binary: str, flags: tuple[str, ...], root: str) -> RemoteInfo:
    rclone = Rclone(binary, flags)
    kind = _remote_type(rclone, root)
    features = rclone.features(root)
    precision = None if features.precision_ns >= 3600 * 10**9 else features.precision_ns / 1e9
    return RemoteInfo(kind, features.hashes, precision, features.has("About"))


def remote_info(rclone: Rclone, path: str) -> RemoteInfo:
    """Type, hashes, time precision and free-space reporting of the backend that holds ``path`` (cached)."""
    return _info(rclone.binary, tuple(rclone.flags), split_root(path)[0].rstrip("/") or "/")
