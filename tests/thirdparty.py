"""Servers nobody here wrote, on loopback: where rclone's assumptions about hashes, times and moves fail.

``rclone serve`` keeps hashes and modification times the way rclone expects; ordinary servers do
not, and that is where a sync tool loses data silently.  Each class starts one real server from
pip or apt on 127.0.0.1, gives the ``RCLONE_CONFIG_<NAME>_*`` settings of a client, and stops it
(its whole process group) in teardown.  What ``rclone backend features`` reports for each:

- WsgiDAV and Apache mod_dav (WebDAV, ``vendor=other``): no hashes, no modification times, no PutStream;
- moto (S3, in memory): MD5 and 1 ns times;
- OpenSSH's sftp-server: MD5 and SHA-1 (a remote ``md5sum`` per file) and 1 s times.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from servers import Server, free_port, wait_until_listening

from colab_magics.rclone.binary import find_rclone

APACHE = "/usr/sbin/apache2"
SSHD = "/usr/sbin/sshd"


class ThirdPartyServer(ABC):
    """One server process (its own process group) with a remote ``<name>:`` that reaches it."""

    kind = ""
    name = ""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = base / f"{self.name}.log"

    # -- what each server says ------------------------------------------------------------------
    @staticmethod
    def missing() -> str:
        """Why this server cannot run here ("" when it can)."""
        return ""

    @abstractmethod
    def argv(self) -> list[str]:
        """The server's own command line."""

    @abstractmethod
    def settings(self) -> dict[str, str]:
        """A client's rclone settings for this server (``type``, ``url``, ...)."""

    def prepare(self) -> dict[str, str] | None:
        """Files the server needs before it starts; returns its environment (None: ours)."""
        return None

    def ready(self) -> None:
        """Called once the port answers (make a bucket, ...)."""

    def root(self, folder: str) -> str:
        """The rclone path of a test folder on this server."""
        return f"{self.name}:{folder}"

    # -- lifecycle ------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        prefix = f"RCLONE_CONFIG_{self.name.upper()}_"
        return {prefix + key.upper(): value for key, value in self.settings().items()}

    def start(self) -> ThirdPartyServer:
        self.base.mkdir(parents=True, exist_ok=True)
        env = self.prepare()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=log, env=env, start_new_session=True, stdin=subprocess.DEVNULL
            )
        Server.live_pids.add(self.proc.pid)
        try:
            wait_until_listening(self.proc, self.port, self.name, self.log)
        except RuntimeError:
            self.stop()
            raise
        self.ready()
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)
        Server.live_pids.discard(self.proc.pid)
        self.proc = None

    def pause(self) -> None:
        """Stop answering without closing: connections are accepted and then hang (SIGSTOP)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def rclone(self, *args: str) -> None:
        """Run rclone against this server with its client settings (test set-up only)."""
        env = dict(os.environ, RCLONE_CONFIG="/dev/null", **self.env())
        subprocess.run([find_rclone(), *args], env=env, check=True, capture_output=True, timeout=120)


class GenericWebDAV(ThirdPartyServer, ABC):
    """A WebDAV server that is not rclone's: rclone's ``vendor=other``, no hashes, no settable times."""

    kind = "webdav"

    def settings(self) -> dict[str, str]:
        return {"type": "webdav", "url": f"http://127.0.0.1:{self.port}/", "vendor": "other", "pacer_min_sleep": "0"}


class WsgiDAV(GenericWebDAV):
    """WsgiDAV 4 (pip), a pure-Python WebDAV server."""

    name = "cmwsgidav"

    @staticmethod
    def missing() -> str:
        return "" if shutil.which("wsgidav") or _module("wsgidav") else "WsgiDAV is not installed (pip install wsgidav)"

    def argv(self) -> list[str]:
        data = self.base / "data"
        data.mkdir(exist_ok=True)
        return [sys.executable, "-m", "wsgidav.server.server_cli", "-H", "127.0.0.1", "-p", str(self.port),
                "-r", str(data), "--auth", "anonymous", "--no-config", "-q"]  # fmt: skip


class Apache(GenericWebDAV):
    """Apache httpd 2.4 with mod_dav_fs (apt): the WebDAV server of most self-hosted setups."""

    name = "cmapache"

    @staticmethod
    def missing() -> str:
        return "" if os.path.exists(APACHE) else "Apache is not installed (apt-get install apache2)"

    def prepare(self) -> dict[str, str]:
        # apache serves as www-data: its files live in a world-traversable folder of their own
        self.home = Path(tempfile.mkdtemp(prefix="cm-apache-"))
        self.home.chmod(0o755)
        for sub in ("data", "lock", "run", "log"):
            (self.home / sub).mkdir()
        www = pwd.getpwnam("www-data")
        for sub in ("data", "lock"):
            os.chown(self.home / sub, www.pw_uid, www.pw_gid)
        modules = "/usr/lib/apache2/modules"
        conf = self.home / "httpd.conf"
        conf.write_text(
            f"""ServerRoot /etc/apache2
ServerName 127.0.0.1
Listen 127.0.0.1:{self.port}
PidFile {self.home}/run/httpd.pid
ErrorLog {self.home}/log/error.log
User www-data
Group www-data
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule dav_module {modules}/mod_dav.so
LoadModule dav_fs_module {modules}/mod_dav_fs.so
DavLockDB {self.home}/lock/DavLock
LimitRequestBody 0
DocumentRoot {self.home}/data
<Directory {self.home}/data>
    Dav On
    Require all granted
</Directory>
"""
        )
        self.conf = conf
        run = {
            "APACHE_RUN_DIR": "run",
            "APACHE_LOCK_DIR": "lock",
            "APACHE_LOG_DIR": "log",
            "APACHE_PID_FILE": "run/httpd.pid",
        }
        return dict(os.environ, **{k: str(self.home / v) for k, v in run.items()}, APACHE_RUN_USER="www-data",
                    APACHE_RUN_GROUP="www-data")  # fmt: skip

    def argv(self) -> list[str]:
        return [APACHE, "-f", str(self.conf), "-DFOREGROUND"]

    def stop(self) -> None:
        super().stop()
        if getattr(self, "home", None):
            shutil.rmtree(self.home, ignore_errors=True)


class Moto(ThirdPartyServer):
    """moto's S3 server (pip), in memory: a restart loses everything."""

    kind = "s3"
    name = "cmmoto"

    @staticmethod
    def missing() -> str:
        return "" if _module("moto") and _module("flask") else "moto is not installed (pip install 'moto[server]')"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def settings(self) -> dict[str, str]:
        return {"type": "s3", "provider": "Other", "endpoint": f"http://127.0.0.1:{self.port}", "region": "us-east-1",
                "force_path_style": "true", "access_key_id": "test", "secret_access_key": "test"}  # fmt: skip

    def ready(self) -> None:
        self.rclone("mkdir", f"{self.name}:bucket")

    def root(self, folder: str) -> str:
        return f"{self.name}:bucket/{folder}"


class OpenSSH(ThirdPartyServer):
    """OpenSSH's sshd (apt) with a throwaway host key and client key: SFTP, hashes by remote md5sum."""

    kind = "sftp"
    name = "cmsftp"

    @staticmethod
    def missing() -> str:
        return "" if os.path.exists(SSHD) else "OpenSSH's server is not installed (apt-get install openssh-server)"

    def prepare(self) -> None:
        keys = self.base / "keys"
        keys.mkdir(exist_ok=True)
        for key in ("host", "client"):
            if not (keys / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key)], check=True)
        (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
        host_key = (keys / "host.pub").read_text().split()
        (keys / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_key[0]} {host_key[1]}\n")
        self.data = self.base / "data"
        self.data.mkdir(exist_ok=True)
        self.conf = self.base / "sshd_config"
        self.conf.write_text(
            f"""ListenAddress 127.0.0.1
Port {self.port}
HostKey {keys}/host
AuthorizedKeysFile {keys}/authorized_keys
PidFile {self.base}/sshd.pid
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp /usr/lib/openssh/sftp-server
"""
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        self.keys = keys

    def argv(self) -> list[str]:
        return [SSHD, "-D", "-e", "-f", str(self.conf)]

    def settings(self) -> dict[str, str]:
        return {"type": "sftp", "host": "127.0.0.1", "port": str(self.port), "user": pwd.getpwuid(os.getuid()).pw_name,
                "key_file": str(self.keys / "client"), "known_hosts_file": str(self.keys / "known_hosts")}  # fmt: skip

    def root(self, folder: str) -> str:
        return f"{self.name}:{self.data}/{folder}"


ALL = {cls.name: cls for cls in (WsgiDAV, Apache, Moto, OpenSSH)}


def _module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
