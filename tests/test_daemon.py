"""The rclone daemon (``rclone rcd`` on a private unix socket): private, restarted if it dies, gone with
its process even when that process is SIGKILLed, and every call cancellable."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading

import pytest
from procs import running
from waiting import wait_until

from colab_magics.errors import RcloneError, RemoteNotFound, TransferCancelled, VerificationError
from colab_magics.events import Direction, Job
from colab_magics.jobs import Context
from colab_magics.rclone import daemon
from colab_magics.rclone.process import Rclone


@pytest.fixture(autouse=True)
def _fresh():
    daemon.stop_all()
    yield
    daemon.stop_all()


def _rclone_of(watcher: int) -> int:
    """The pid of the ``rclone rcd`` a watcher runs."""
    out = subprocess.run(["pgrep", "-P", str(watcher), "-f", "rclone rcd"], capture_output=True, text=True).stdout
    return int(out.split()[0])


def test_the_socket_is_private_and_calls_share_one_daemon(tmp_path):
    (tmp_path / "a").write_bytes(b"hello")
    rc = Rclone(flags=[])
    assert rc.stat(str(tmp_path / "a")).size == 5
    assert rc.lsjson(str(tmp_path))[0].path == "a"
    [watcher] = daemon.running()
    [rcd] = daemon._daemons.values()
    folder = os.stat(rcd.folder)
    assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
    assert stat.S_ISSOCK(os.stat(rcd.socket).st_mode)
    args = open(f"/proc/{_rclone_of(watcher)}/cmdline", "rb").read().split(b"\0")
    assert b"--rc-no-auth" in args and not any(a.startswith(b"--rc-addr=") for a in args)
    assert args[args.index(b"--rc-addr") + 1] == b"unix://" + rcd.socket.encode()  # never a port
    with pytest.raises(RemoteNotFound):
        rc.stat(str(tmp_path / "missing"))
    assert daemon.running() == [watcher]  # one daemon for all these calls


def test_a_daemon_that_died_is_replaced_and_its_folder_removed(tmp_path):
    rc = Rclone(flags=[])
    rc.stat(str(tmp_path))
    [watcher] = daemon.running()
    folder = next(iter(daemon._daemons.values())).folder
    os.kill(_rclone_of(watcher), signal.SIGKILL)
    wait_until(lambda: daemon.running() == [], what="the watcher to see rclone die")
    assert rc.stat(str(tmp_path)).is_dir  # the next call starts another
    [replacement] = daemon.running()
    assert replacement != watcher and not os.path.exists(folder)


def test_the_daemon_dies_with_a_process_killed_by_sigkill(tmp_path):
    """rclone has no "exit with my parent": the watcher's pipe closes with the process, whatever killed it."""
    code = textwrap.dedent(f"""
        import os, sys, time
        from colab_magics.rclone import daemon
        from colab_magics.rclone.process import Rclone
        Rclone(flags=[]).stat({str(tmp_path)!r})
        rcd = next(iter(daemon._daemons.values()))
        print(rcd.proc.pid, rcd.folder, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        watcher, folder = child.stdout.readline().split()
        rclone = _rclone_of(int(watcher))
        child.kill()
        child.wait()
        wait_until(lambda: not os.path.exists(f"/proc/{rclone}"), what="rclone rcd to exit")
        wait_until(lambda: not os.path.exists(folder), what="its private folder to go")
        assert not running(folder)
    finally:
        child.kill()
        child.stdout.close()


def test_a_cancel_stops_a_call_that_waits_on_a_silent_server(tmp_path):
    """A server that accepts connections and never answers: the call is a job, and a cancel stops it."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    cancel = threading.Event()
    caught: list[BaseException] = []

    def call() -> None:
        try:
            Rclone(flags=[]).lsjson(f":webdav,url='http://127.0.0.1:{port}/':x", cancel=cancel)
        except BaseException as exc:
            caught.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    try:
        wait_until(lambda: daemon.running(), what="the daemon to start")
        conn, _ = silent.accept()  # rclone's request has arrived: it now waits for an answer
        cancel.set()
        worker.join(30)
        assert not worker.is_alive() and isinstance(caught[0], TransferCancelled)
        conn.close()
    finally:
        cancel.set()
        silent.close()
        worker.join(30)


def test_a_stream_cut_off_is_told_apart_from_data_refused_before_its_end(tmp_path):
    """A reader that refuses what it read leaves the rest unread: not a cut.  A daemon killed mid-stream is."""
    (tmp_path / "big").write_bytes(os.urandom(64 << 20))
    ctx = Context(Rclone(flags=[]), Job("t", Direction.DOWN), None)

    def refuse(reader) -> None:
        reader.read(1 << 16)
        raise VerificationError("refused at its start")

    with pytest.raises(VerificationError, match="refused at its start"):
        ctx.stream(str(tmp_path / "big"), refuse)

    def cut(reader) -> None:
        reader.read(1 << 16)
        [watcher] = daemon.running()
        os.kill(_rclone_of(watcher), signal.SIGKILL)
        while reader.read(1 << 20):
            pass
        raise EOFError("ended early")

    with pytest.raises(RcloneError, match="broke off after"):
        ctx.stream(str(tmp_path / "big"), cut)


@pytest.mark.parametrize("answer", [b"garbage\r\n\r\n", b"HTTP/1.0 200 OK\r\nContent-Length: many\r\n\r\n{}"])
def test_an_answer_that_is_not_http_is_a_broken_connection(answer):
    """Not a ValueError out of the parser: an OSError, which a call reports in one line (and which
    makes the next call start a new daemon), as a connection cut off is."""
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(answer)
        with pytest.raises(OSError, match="not HTTP"):
            daemon.Body(ours, lambda: None, lambda: None).head()
    finally:
        ours.close()
        theirs.close()
