"""The debug trace: every rclone call and every sync decision, silent unless asked for.

Each module logs under its own name below ``colab_magics`` (``colab_magics.rclone.process``,
``colab_magics.packed.upload``, ``colab_magics.lock``, ...).  The package logger has a
:class:`logging.NullHandler`, so nothing is printed unless the application configures logging
or the trace is turned on, with timestamps and thread names:

- ``COLAB_MAGICS_DEBUG=1`` (to stderr) or ``COLAB_MAGICS_DEBUG=/path/trace.log`` (appended to that
  file), read when the package is imported;
- ``%config ColabMagics.debug = True`` in a notebook (``False`` turns it off);
- :func:`enable` and :func:`disable` from code.

rclone's argv is traced with its secrets hidden (:func:`redact`); its environment never is.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from .errors import BadInput

PACKAGE = "colab_magics"
ENV = "COLAB_MAGICS_DEBUG"
FORMAT = "%(asctime)s.%(msecs)03d %(threadName)s %(name)s %(levelname)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
HIDDEN = "REDACTED"
_OFF = {"", "0", "false", "no", "off"}
_ON = {"1", "true", "yes", "on"}

_handler: logging.Handler | None = None
_saved_level = logging.NOTSET
_lock = threading.Lock()


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record: a notebook kernel or a test swaps it."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr


def _env_file() -> str | None:
    """The file ``COLAB_MAGICS_DEBUG`` names, None when it is a plain on or off."""
    value = os.environ.get(ENV, "").strip()
    return None if value.lower() in _OFF | _ON else value


def enable(path: str | None = None) -> None:
    """Turn the trace on: appended to the file ``path``, else to the file ``COLAB_MAGICS_DEBUG`` names,
    else to stderr (``path="-"``: stderr whatever the environment says)."""
    global _handler, _saved_level
    path = _env_file() if path is None else path
    if path and path != "-":
        try:
            handler: logging.Handler = logging.FileHandler(os.path.expanduser(path), encoding="utf-8")
        except OSError as exc:
            raise BadInput(f"cannot write the debug trace to {path} ({exc.strerror}); give a writable file") from None
    else:
        handler = _Stderr()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    logger = logging.getLogger(PACKAGE)
    with _lock:
        old, _handler = _handler, handler
        if old is None:
            _saved_level = logger.level
        else:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)


def disable() -> None:
    """Turn the trace off (the package logger's level goes back to what it was before)."""
    global _handler
    logger = logging.getLogger(PACKAGE)
    with _lock:
        old, _handler = _handler, None
        if old is None:
            return
        logger.removeHandler(old)
        old.close()
        logger.setLevel(_saved_level)


def enabled() -> bool:
    return _handler is not None


def turn_on() -> None:
    """:func:`enable` as ``COLAB_MAGICS_DEBUG`` says; where its file cannot be written, to stderr, with why
    as the trace's first line (a setting that is only for debugging never stops the work)."""
    try:
        enable()
    except BadInput as exc:
        enable("-")
        logging.getLogger(__name__).warning("%s: %s; tracing to stderr instead", ENV, exc)


def from_env() -> None:
    """Apply ``COLAB_MAGICS_DEBUG``: off (unset, 0), on (1: stderr) or the path of a file."""
    if os.environ.get(ENV, "").strip().lower() not in _OFF:
        turn_on()


# -- secrets ------------------------------------------------------------------------------------
_SECRET = re.compile(r"pass|token|key|secret|auth|credential|sas|signature|cookie", re.IGNORECASE)
# key=value in a connection string (":s3,secret_access_key=X:bucket") or a backend option ("-o key=X")
_PARAM = re.compile(r"(^|,)([\w-]+)=('[^']*'|\"[^\"]*\"|[^,:]*)")
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")  # https://user:password@host


def _hide_params(arg: str) -> str:
    arg = _USERINFO.sub(HIDDEN + "@", arg)
    if "=" not in arg:
        return arg
    return _PARAM.sub(lambda m: f"{m[1]}{m[2]}={HIDDEN}" if _SECRET.search(m[2]) else m[0], arg)


def redact(args: Sequence[str], hide_values: bool = False) -> list[str]:
    """``args`` fit for a log: the values of secret-looking flags (``--drive-token X``,
    ``--webdav-pass=X``), secret parameters (``:s3,secret_access_key=X:bucket``, ``-o key=X``) and
    a URL's user and password hidden.  ``hide_values``: every flag's value (flags from the environment)."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        if arg.startswith("-"):
            name, eq, _ = arg.partition("=")
            secret = hide_values or bool(_SECRET.search(name))
            out.append(f"{name}={HIDDEN}" if eq and secret else arg if not eq else _hide_params(arg))
            hide_next = secret and not eq
        elif hide_next:
            out.append(HIDDEN)
            hide_next = False
        else:
            out.append(_hide_params(arg))
    return out


def command_line(args: Sequence[str], hide_values: bool = False) -> str:
    """``args`` redacted, quoted as a shell would need them, on one line."""
    line = " ".join(shlex.quote(a) for a in redact(args, hide_values))
    return line.replace("\n", "\\n").replace("\r", "\\r")
