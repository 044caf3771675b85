from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from servers import Server
from thirdparty import ALL as THIRD_PARTY
from thirdparty import ThirdPartyServer


@dataclass
class Remote:
    """A test remote: ``root`` is the rclone path, ``folder`` the files behind it on disk."""

    kind: str
    root: str
    folder: Path
    server: Server | None = None


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No user rclone config, no user state: every test starts clean."""
    monkeypatch.setenv("RCLONE_CONFIG", "/dev/null")
    monkeypatch.setenv("COLAB_MAGICS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLAB_MAGICS_REMOTE", str(tmp_path / "default-remote"))
    monkeypatch.delenv("COLAB_MAGICS_RCLONE_FLAGS", raising=False)


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("servers")
    started = {kind: Server(kind, base / kind).start() for kind in ("s3", "webdav")}
    (base / "s3" / "bucket").mkdir()
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture(params=["local", "s3", "webdav"])
def remote(request, tmp_path, monkeypatch) -> Remote:
    """Each test that takes it runs against a plain folder, ``rclone serve s3`` and ``serve webdav``."""
    name = request.node.name.split("[")[0][:40]
    if request.param == "local":
        folder = tmp_path / "remote"
        folder.mkdir()
        return Remote("local", str(folder), folder)
    server = request.getfixturevalue("servers")[request.param]
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    if request.param == "s3":
        folder = server.folder / "bucket" / name
        folder.mkdir(parents=True, exist_ok=True)
        return Remote("s3", f"{server.name}:bucket/{name}", folder, server)
    folder = server.folder / name
    folder.mkdir(parents=True, exist_ok=True)
    return Remote("webdav", f"{server.name}:{name}", folder, server)


@pytest.fixture
def ip():
    """A real IPython shell with the extension loaded (history off), torn down after."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryAccessor.enabled = False
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "colab_magics")
    yield shell
    shell.run_line_magic("unload_ext", "colab_magics")
    InteractiveShell.clear_instance()


@pytest.fixture(scope="session", params=sorted(THIRD_PARTY))
def third_party_server(request, tmp_path_factory) -> ThirdPartyServer:
    """Each independent server (WsgiDAV, Apache, moto, OpenSSH), started once for the session.

    A server that cannot run here is skipped with the reason, except where
    ``REQUIRE_THIRD_PARTY_SERVERS=1`` (CI installs them all) makes its absence a failure.
    """
    cls = THIRD_PARTY[request.param]
    why = cls.missing()
    if why:
        if os.environ.get("REQUIRE_THIRD_PARTY_SERVERS") == "1":
            pytest.fail(f"{why}; REQUIRE_THIRD_PARTY_SERVERS=1 requires it")
        pytest.skip(why)
    server = cls(tmp_path_factory.mktemp(request.param)).start()
    yield server
    server.stop()


@pytest.fixture
def foreign(request, third_party_server, monkeypatch) -> Remote:
    """A fresh folder on one independent server; ``folder`` is None (check through the remote, not its disk)."""
    for key, value in third_party_server.env().items():
        monkeypatch.setenv(key, value)
    name = request.node.name.split("[")[0][:40]
    return Remote(third_party_server.name, third_party_server.root(name), None)  # type: ignore[arg-type]


FAKE = str(Path(__file__).parent / "fake_colab")


@pytest.fixture
def colab(tmp_path, monkeypatch):
    """A Colab runtime with nothing configured and Drive not mounted yet; returns the calls made to Colab."""
    monkeypatch.delenv("COLAB_MAGICS_REMOTE")
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-fake")
    monkeypatch.setenv("COLAB_MAGICS_DRIVE_MOUNT", str(tmp_path / "drive"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))  # where the embedded folder would go
    monkeypatch.setenv("FAKE_COLAB_LOG", str(tmp_path / "colab-calls.jsonl"))
    monkeypatch.syspath_prepend(FAKE)
    for name in [m for m in sys.modules if m == "google.colab" or m.startswith("google.colab.")]:
        monkeypatch.delitem(sys.modules, name)

    def calls() -> list[dict]:
        log = tmp_path / "colab-calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


@pytest.fixture
def mount(tmp_path, monkeypatch) -> Path:
    """Drive mounted at a fake mount point: a destination there is classed as the mount."""
    monkeypatch.setenv("COLAB_MAGICS_DRIVE_MOUNT", str(tmp_path / "drive"))
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    return tmp_path / "drive" / "MyDrive"


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs: a disk that fills up (skipped where tmpfs cannot be mounted)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)
