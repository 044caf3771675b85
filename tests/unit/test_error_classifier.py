"""What rclone's failures become: each real stderr, replayed, must turn into our error type with its
one actionable line.

The samples in ``rclone_stderr/`` are what rclone v1.75.2 wrote (``--use-json-log``, and for copies
``-v --stats 500ms --stats-log-level INFO`` as the engine asks) against the loopback servers of
``tests/servers.py``, the refusing proxy of ``tests/ratelimit_proxy.py`` and a closed port.  A
stand-in for rclone replays one sample on stderr and exits with the status rclone had, so the
whole path is real: the stderr reader, then the classifier.  No rclone, no network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from colab_magics.errors import (
    ColabMagicsError,
    QuotaError,
    RcloneError,
    RemoteNotFound,
    SourceChanged,
    UnknownRemote,
)
from colab_magics.rclone.process import RcloneProcess

SAMPLES = Path(__file__).parent / "rclone_stderr"
RETRY = "wait a few minutes and retry, or lower the request rate with COLAB_MAGICS_RCLONE_FLAGS='--tpslimit 5'"
REFUSED = (
    'read metadata failed: Propfind "http://127.0.0.1:52559/run/small.txt": '
    "dial tcp 127.0.0.1:52559: connect: connection refused"
)

# sample: (the command it came from, rclone's exit status, the error, its message)
CASES = {
    "unknown-remote": (
        "lsjson", 1, UnknownRemote,
        "unknown remote 'gdrive:': configure it with `rclone config` or set RCLONE_CONFIG_GDRIVE_TYPE=...",
    ),
    "local-not-found": (
        "copyto", 3, RemoteNotFound,
        "not found on the remote: Local file system at /nonexistent/ds/manifest.json: "
        "error reading source root directory: directory not found",  # said once
    ),
    "webdav-dir-not-found": (
        "lsjson", 3, RemoteNotFound, "not found on the remote: error listing: directory not found",
    ),
    "connection-refused": ("copyto", 5, RcloneError, f"rclone copyto failed (exit 5): {REFUSED}"),
    # three tries of rclone's, one cause: said once
    "connection-refused-retried": ("copyto", 5, RcloneError, f"rclone copyto failed (exit 5): {REFUSED}"),
    "http-429": (
        "copyto", 1, QuotaError,
        "the remote is rate-limiting requests (HTTP 429 Too Many Requests, rateLimitExceeded: Too Many Requests); "
        + RETRY,
    ),
    "drive-403-user-rate-limit": (
        "copyto", 1, QuotaError,
        "the remote is rate-limiting requests (HTTP 403 Forbidden, userRateLimitExceeded: User Rate Limit Exceeded); "
        + RETRY,
    ),
    "drive-403-storage-quota": (
        "copyto", 1, QuotaError,
        "the remote is out of storage quota (HTTP 403 Forbidden, storageQuotaExceeded: The user's Drive storage "
        "quota has been exceeded.); nothing more can be uploaded there until space is freed (empty its trash too) "
        "or the quota is raised, or push to another remote",
    ),
    "drive-403-download-quota": (
        "copyto", 1, QuotaError,
        "the remote's download quota for this data is used up (HTTP 403 Forbidden, downloadQuotaExceeded: "
        "The download quota for this file has been exceeded.); wait until it resets (Drive: up to 24 hours) "
        "and stage again",
    ),
    "source-changed": (
        "copyto", 6, SourceChanged, "train.log changed while it was being uploaded; push again once it is written",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Path:
    """A stand-in rclone: writes the sample named by ``$CM_SAMPLE`` to stderr, exits with ``$CM_EXIT``."""
    script = tmp_path_factory.mktemp("fake-rclone") / "rclone"
    script.write_text('#!/bin/sh\ncat "$CM_SAMPLE" >&2\nexit "$CM_EXIT"\n')
    script.chmod(0o755)
    return script


def _failure(replay: Path, sample: str, command: str, status: int) -> Exception:
    env = dict(os.environ, CM_SAMPLE=str(SAMPLES / f"{sample}.jsonl"), CM_EXIT=str(status))
    child = RcloneProcess([str(replay), command, "src", "dest", "--use-json-log"], env=env)
    with pytest.raises(ColabMagicsError) as info:  # the exact type is each test's to check
        child.check()
    return info.value


def test_every_sample_is_used():
    assert sorted(p.stem for p in SAMPLES.glob("*.jsonl")) == sorted(CASES)


@pytest.mark.parametrize("sample", sorted(CASES))
def test_rclone_stderr_becomes_one_actionable_line(replay, sample):
    command, status, kind, message = CASES[sample]
    error = _failure(replay, sample, command, status)
    assert type(error) is kind and str(error) == message
    assert "\n" not in str(error)
    if isinstance(error, RcloneError):
        assert error.exit_code == status and error.stderr  # rclone's own words are kept for the log


def test_a_file_that_changed_while_uploaded_is_named(replay):
    error = _failure(replay, "source-changed", "copyto", 6)
    assert isinstance(error, SourceChanged) and error.paths == ["train.log"]
