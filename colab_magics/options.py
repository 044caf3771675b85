"""Every user option once: its spellings, how its text is read, its default, the ``COLAB_MAGICS_*``
variable that changes that default, and its help.

Both faces are built from this table: the CLI's argparse parsers and the magics' ``magic_arguments``
(:meth:`Option.argument` gives both the same ``add_argument`` call) and the magics' ``%config``
settings.  So a flag means the same thing, says the same help and takes the same defaults in a
terminal and in a notebook, and a new option is added here only.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable

from .destination.trash import DEFAULT_FACTOR, parse_factor
from .errors import BadInput, ColabMagicsError
from .packed.manifest import DEFAULT_PART_SIZE
from .persist import DEFAULT_EVERY, MIN_EVERY
from .units import format_duration, parse_duration, parse_size


def sync_interval(text: str | float) -> float:
    """Seconds between two background syncs of a persist (each costs requests against the quota)."""
    return parse_duration(text, minimum=MIN_EVERY)


@dataclass(frozen=True)
class Option:
    """One user option; ``name`` is where its value lands (``args.<name>``, ``ColabMagics.<name>``)."""

    name: str
    help: str
    flags: tuple[str, ...] = ()  # e.g. ("-w", "--workers"); none: a positional argument
    read: Callable[[Any], Any] | None = None  # text -> value; None: an on/off switch
    default: str | None = None  # as a user would type it
    env: str | None = None  # the COLAB_MAGICS_* variable that replaces ``default``
    setting: type | None = None  # str or int: also ``%config ColabMagics.<name>`` (before ``env``)
    optional: bool = False  # a positional argument that may be left out

    def help_text(self) -> str:
        """The help, with the default and what changes it: the same words in every face."""
        said = [f"default {self.default}"] if self.default is not None else []
        changers = [c for c in (self.env, self.setting and f"ColabMagics.{self.name}") if c]
        if changers:
            said.append(f"set {' or '.join(changers)} to change it")
        return f"{self.help} ({'; '.join(said)})" if said else self.help

    def argument(self) -> tuple[tuple[str, ...], dict[str, Any]]:
        """``add_argument``'s arguments for this option, in an argparse parser or a magic's."""
        text = self.help_text().replace("%", "%%")  # argparse formats help with %
        if not self.flags:
            return (self.name,), {"help": text, **({"nargs": "?"} if self.optional else {})}
        if self.read is None:
            return self.flags, {"dest": self.name, "action": "store_true", "help": text}
        metavar = self.flags[-1].lstrip("-").upper().replace("-", "_")
        return self.flags, {"dest": self.name, "type": _argparse_type(self.read), "metavar": metavar, "help": text}

    def value(self, given: Any = None, configured: Any = None) -> Any:
        """The value in force: the flag if given, else the notebook's setting, else ``env``, else the default."""
        if given is not None:
            return given
        if configured is not None and configured != "":
            return self._read(configured, f"ColabMagics.{self.name}")
        if self.env and os.environ.get(self.env, "").strip():
            return self._read(os.environ[self.env].strip(), self.env)
        return None if self.default is None else self._read(self.default, "its default")

    def _read(self, raw: Any, source: str) -> Any:
        assert self.read is not None
        try:
            return self.read(raw)
        except BadInput as exc:
            raise BadInput(f"{source}: {exc}") from None
        except ValueError:  # a builtin reader such as int(): argparse's own words
            raise BadInput(f"{source}: invalid {self.read.__name__} value {raw!r}") from None


def _argparse_type(read: Callable[[Any], Any]) -> Callable[[str], Any]:
    """``read`` for argparse: its one-line error becomes argparse's message, a ValueError stays argparse's
    "invalid int value" (argparse names the type by ``__name__``)."""

    def convert(text: str) -> Any:
        try:
            return read(text)
        except ColabMagicsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = read.__name__
    return convert


def resolve(command: tuple[Option, ...], args: argparse.Namespace, settings: object = None) -> argparse.Namespace:
    """Fill every option of ``command`` that was not given (its value is None) from ``settings``'s
    ``%config`` values (the magics), the environment and the defaults; a bad value raises BadInput."""
    for option in command:
        if option.flags and option.read is not None:
            configured = getattr(settings, option.name) if settings is not None and option.setting else None
            setattr(args, option.name, option.value(getattr(args, option.name), configured))
    return args


# -- the table ------------------------------------------------------------------------------------
REMOTE = Option(
    "remote",
    "default remote root for names without ':'; unset, Drive on Colab, else a folder on this machine",
    read=str,
    env="COLAB_MAGICS_REMOTE",
    setting=str,
)
PART_SIZE = Option(
    "part_size",
    "largest tar part of a packed upload, e.g. 512M",
    ("--part-size",),
    parse_size,
    f"{DEFAULT_PART_SIZE // 1024**3}G",
    "COLAB_MAGICS_PART_SIZE",
    str,
)
WORKERS = Option("workers", "parts downloaded at once", ("-w", "--workers"), int, "4", "COLAB_MAGICS_WORKERS", int)
SYNC_INTERVAL = Option(
    "sync_interval",
    "how often the folder syncs in the background: 30s, 5m, 1h, ...",
    ("--every",),
    sync_interval,
    format_duration(DEFAULT_EVERY),
    "COLAB_MAGICS_SYNC_INTERVAL",
    str,
)
MOUNT_TRASH = Option(
    "mount_trash",
    "on the Drive mount, what the timed syncs may leave in Drive's Trash, as a multiple of the folder's size "
    "(off: no bound); Sync now and the final sync always go",
    ("--mount-trash",),
    parse_factor,
    DEFAULT_FACTOR,
    "COLAB_MAGICS_MOUNT_TRASH",
    str,
)

STAGE = (
    Option("source", "remote path (gdrive:x, /path) or a name under the default remote root"),
    Option("dest", "local folder (default: ./<basename of SOURCE>)", optional=True),
    Option("force", "stage again even if DEST is up to date, or replace a DEST that holds other files",
           ("-f", "--force")),  # fmt: skip
    WORKERS,
)
PUSH = (
    Option("source", "local file or folder"),
    Option("dest", "remote path; ending in / means 'into this folder' (default: <remote root>/<basename of SOURCE>)",
           optional=True),  # fmt: skip
    Option("pack", "store a folder as tar parts plus a manifest (fast to stage)", ("-p", "--pack")),
    Option("compress", "with --pack: zstd-compress the parts", ("-z", "--compress")),
    PART_SIZE,
)
PERSIST = (
    Option("dir", "local folder to keep safe (created if missing)"),
    Option("dest", "remote path (default: <remote root>/<basename of DIR>)", ("--to",), str),
    SYNC_INTERVAL,
    Option("no_restore", "do not bring back an earlier sync first", ("--no-restore",)),
    Option("mirror", "also delete on the remote what is deleted locally", ("--mirror",)),
    Option("steal_lock", "take over from another writer (a kernel or a script) persisting to the same place",
           ("--steal-lock",)),  # fmt: skip
    PART_SIZE,
    MOUNT_TRASH,
)
FLUSH = (Option("disconnect", "then end this runtime (google.colab.runtime.unassign)", ("--disconnect",)),)
SETTINGS = (REMOTE, PART_SIZE, WORKERS, SYNC_INTERVAL, MOUNT_TRASH)  # %config ColabMagics.<name>
