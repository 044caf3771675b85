"""The reliability suite's ledger: faults survived, bad inputs tried, data lost, leaks found.

Every number in the closing summary is measured, not declared:
- a fault counts as survived only when its test passed (``@pytest.mark.fault("what")``);
- each bad input counts once per passing parametrised case (``@pytest.mark.bad_input``);
- lost files and bytes come from comparing what must be on a side with what is there
  (the ``no_loss`` fixture), and the test fails on any loss;
- leaks come from an autouse check of threads, child processes and file descriptors
  before and after every test, and the test fails on any leak.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from procs import descendants
from servers import Server
from waiting import poll

from colab_magics.rclone import daemon


@dataclass
class Ledger:
    faults: list[str] = field(default_factory=list)
    bad_inputs: int = 0
    compared_files: int = 0
    lost_files: int = 0
    lost_bytes: int = 0
    leaks: list[str] = field(default_factory=list)


LEDGER = Ledger()


def pytest_configure(config):
    config.addinivalue_line("markers", "fault(what): a fault the test injects; counted as survived when it passes")
    config.addinivalue_line("markers", "bad_input: each passing case counts as one hostile input tried")


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.reliability)


def pytest_runtest_logreport(report):
    if report.when != "call" or not report.passed:
        return
    for name, *args in getattr(report, "cm_marks", []):
        if name == "fault":
            LEDGER.faults.append(args[0])
        elif name == "bad_input":
            LEDGER.bad_inputs += 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.cm_marks = [(m.name, *m.args) for m in item.iter_markers() if m.name in ("fault", "bad_input")]


def pytest_terminal_summary(terminalreporter):
    if not (LEDGER.faults or LEDGER.bad_inputs or LEDGER.compared_files):
        return
    tr = terminalreporter
    tr.section("colab_magics reliability")
    tr.line(f"faults survived:   {len(LEDGER.faults)} ({', '.join(sorted(set(LEDGER.faults)))})")
    tr.line(f"bad inputs tried:  {LEDGER.bad_inputs}")
    tr.line(f"files checked:     {LEDGER.compared_files}")
    tr.line(f"lost:              {LEDGER.lost_files} files, {LEDGER.lost_bytes} bytes")
    tr.line(f"leaks found:       {len(LEDGER.leaks)}" + (f" ({'; '.join(LEDGER.leaks)})" if LEDGER.leaks else ""))


class NoLoss:
    """Compares two :func:`trees.snapshot` results; every missing or different entry is a loss."""

    def __call__(self, expected: dict, actual: dict, where: str = "") -> None:
        lost = {k: v for k, v in expected.items() if actual.get(k) != v}
        LEDGER.compared_files += len(expected)
        LEDGER.lost_files += len(lost)
        LEDGER.lost_bytes += sum(len(v[1]) for v in lost.values() if v[0] == "file")
        extra = sorted(set(actual) - set(expected))
        assert not lost and not extra, f"{where}: lost or changed {sorted(lost)[:5]}, unexpected {extra[:5]}"

    def same_file(self, expected: os.PathLike[str], actual: os.PathLike[str], where: str = "") -> None:
        """Two files, however big, must be equal: each streamed in chunks (never whole in memory), the
        two on two threads, and the chunks' SHA-256s compared; every chunk that differs or is missing
        counts as lost bytes."""
        with ThreadPoolExecutor(2) as pool:
            want, got = pool.map(_chunk_digests, (expected, actual))
        bad = [i for i, chunk in enumerate(want) if i >= len(got) or got[i] != chunk]
        lost = sum(want[i][0] for i in bad)
        extra = sum(n for n, _ in got[len(want) :])
        LEDGER.compared_files += 1
        LEDGER.lost_files += bool(lost)
        LEDGER.lost_bytes += lost
        assert not bad and not extra, (
            f"{where}: {lost:,} bytes lost or changed in {len(bad)} chunk(s) of {_CHUNK:,} bytes"
            f"{f' (the first at offset {bad[0] * _CHUNK:,})' if bad else ''}, {extra:,} bytes too many"
        )


_CHUNK = 8 << 20


def _chunk_digests(path: os.PathLike[str]) -> list[tuple[int, bytes]]:
    """(length, SHA-256) of each chunk of the file at ``path``; none when it is missing."""
    if not os.path.exists(path):
        return []
    buf = memoryview(bytearray(_CHUNK))
    out = []
    with open(path, "rb") as fh:  # buffered: each readinto fills the chunk unless at the end
        while n := fh.readinto(buf):
            out.append((n, hashlib.sha256(buf[:n]).digest()))
    return out


@pytest.fixture
def no_loss() -> NoLoss:
    return NoLoss()


@pytest.fixture
def dav(tmp_path, monkeypatch):
    """A ``rclone serve webdav`` of its own (the remote ``cmwebdav:``), which a test may kill and restart."""
    server = Server("webdav", tmp_path / "dav").start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


# -- leaks -------------------------------------------------------------------------------------
def _children() -> set[tuple[int, str]]:
    """Live descendants of this process, minus the test servers and their own children (Apache forks
    workers as it pleases, sshd a process per connection)."""
    servers = set(Server.live_pids)
    for pid in Server.live_pids:
        servers |= {child for child, _ in descendants(pid)}
    return {c for c in descendants(os.getpid()) if c[0] not in servers}


def _fds() -> set[str]:
    """Open descriptors, except those on /dev/null: jupyter_client 7.4 (Colab's) keeps one from each
    kernel launch for the kernel's output; they hold nothing of ours."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target != os.devnull:
            out.add(f"{fd}->{target}")
    return out


def _state() -> tuple[set[str], set[tuple[int, str]], set[str]]:
    threads = {f"{t.name}" for t in threading.enumerate() if t.is_alive()}
    return threads, _children(), _fds()


# created once on first use and kept for the life of the process, by design
_LONG_LIVED = ("colab_magics-events",)


@pytest.fixture(scope="session", autouse=True)
def _process_wide_test_state():
    """What jupyter_client keeps for the life of the process (its ZeroMQ context and the event
    loop of its synchronous API): made before any baseline, so it is not counted as a leak."""
    try:
        import zmq
        from jupyter_core.utils import ensure_event_loop
    except ImportError:
        return
    zmq.Context.instance()
    ensure_event_loop()


@pytest.fixture(autouse=True)
def _no_leaks(request, _process_wide_test_state):
    daemon.stop_all()
    before = _state()
    yield
    # the rclone daemon outlives calls by design (until unload or exit, when it is stopped the same way):
    # stopped here, so that what shows is what the test itself left
    daemon.stop_all()
    found: list[str] = []

    def settled() -> bool:  # what a test started may take a moment to end
        threads, children, fds = _state()
        found[:] = [f"thread {t}" for t in sorted(threads - before[0] - set(_LONG_LIVED))]
        found.extend(f"process {c[1]}" for c in sorted(children - before[1]))
        found.extend(f"fd {f}" for f in sorted(fds - before[2]))
        return not found

    poll(settled, interval=0.1)
    if found:
        LEDGER.leaks.append(f"{request.node.name}: {', '.join(found)}")
        pytest.fail(f"leaked: {found}")
