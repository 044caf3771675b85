"""Exception types of the engine.

Every failure a user can cause or meet (bad input, missing paths, remote trouble) is a
:class:`ColabMagicsError` whose message is one actionable line; the magics and the CLI
show exactly that line.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ColabMagicsError(Exception):
    """An expected failure, explained in one line that says what to do."""


class RcloneNotFound(ColabMagicsError):
    """No usable rclone binary (missing or too old)."""


class RcloneError(ColabMagicsError):
    """rclone exited with an error; carries its exit code and its own message."""

    def __init__(self, message: str, *, exit_code: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr = stderr


class RcloneOutputError(RcloneError):
    """rclone answered with output that is not what its JSON is documented to be (a field missing or
    of another type): checked at the boundary, so that ``python -O`` cannot turn it into a wrong answer."""


class RemoteNotFound(RcloneError):
    """The remote path (folder or file) does not exist."""


class UnknownRemote(RcloneError):
    """The remote name is not configured."""


class RemoteUnreachable(RcloneError):
    """The remote stopped answering (refused, timed out, unknown host) for longer than allowed."""


class QuotaError(RcloneError):
    """The remote refused because of a rate limit or a storage or transfer quota."""


class NoRoom(ColabMagicsError):
    """The destination has less room than the upload needs (checked before anything is sent)."""


class TransferCancelled(ColabMagicsError):
    """The transfer was stopped on request (Ctrl-C or cancel())."""


class UnsafeArchive(ColabMagicsError):
    """An archive entry would land outside the destination, or is a device or special file."""


class UnsupportedArchive(ColabMagicsError):
    """An archive (or an entry of it) that cannot be read here: encrypted, or an unknown compression."""


class VerificationError(ColabMagicsError):
    """Data did not match its recorded size or hash."""


class ManifestError(ColabMagicsError):
    """A packed dataset's manifest is missing, malformed, or of a newer format."""


class SourceChanged(ColabMagicsError):
    """Local files changed while they were being read for upload."""

    def __init__(self, message: str, paths: list[str] | None = None) -> None:
        super().__init__(message)
        self.paths = paths or []


class LockHeld(ColabMagicsError):
    """Another kernel is persisting to the same destination."""


class LockLost(LockHeld):
    """Another kernel took over the destination while this one was persisting to it."""


class FlushFailed(ColabMagicsError):
    """Colab's Drive mount could not upload what it holds (its flush failed)."""


class NoRemote(ColabMagicsError):
    """Nothing is configured and the default would lose data (Colab without Drive mounted)."""


class BadInput(ColabMagicsError):
    """An argument cannot work as given (wrong kind of path, destination inside source, ...)."""
