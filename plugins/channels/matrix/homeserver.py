"""The embedded homeserver: Synapse from PyPI, configured and run by hiclaw.

``EmbeddedHomeserver(home, settings)`` owns ``$HICLAW_HOME/homeserver/`` (config, SQLite
database, signing key, registration shared secret — a private 0700 directory),
``$HICLAW_HOME/logs/homeserver.log`` and the pid file ``$HICLAW_HOME/run/homeserver.pid``.

- ``start()`` runs Synapse as a child that stops when its parent exits;
  ``start(detach=True)`` runs it as a background daemon (``hiclaw homeserver start``);
  ``start(detach=True, mode="team")`` is how ``hiclaw up`` runs it: a daemon that the control
  plane owns — stopped on a clean shutdown, but still serving (phones stay connected) if the
  control plane crashes, and adopted by the next ``hiclaw up``.
  Either way it returns once the server answers, and an already running one is reused.
- ``stop()`` stops it (SIGTERM, then SIGKILL after a grace period); ``status()`` reports it.

No matrix-nio here: this module is used by the CLI and by ``hiclaw up``.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from hiclaw.plugins.channels.matrix.errors import HomeserverError
from hiclaw.plugins.channels.matrix.settings import MatrixSettings
from hiclaw.plugins.channels.matrix.synapse_config import ensure_shared_secret, homeserver_config, write_config
from hiclaw.storage.files import write_text_atomically

RUNNER = "hiclaw.plugins.channels.matrix.synapse_runner"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited child not yet reaped) is not running
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (what Synapse would bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted does
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise HomeserverError(f"cannot bind {host}:{port}: {exc.strerror}",
                                  hint="check [channel.settings] host and port") from None
    return False


class EmbeddedHomeserver:
    """Synapse under ``$HICLAW_HOME/homeserver`` (see the module docstring)."""

    def __init__(self, home: Path, settings: MatrixSettings | None = None) -> None:
        self.home = Path(home)
        self.settings = settings or MatrixSettings()
        self.data_dir = self.home / "homeserver"
        self.config_path = self.data_dir / "homeserver.yaml"
        self.log_file = self.home / "logs" / "homeserver.log"
        self.stderr_file = self.home / "logs" / "homeserver.stderr.log"
        self.pid_file = self.home / "run" / "homeserver.pid"
        self._child: subprocess.Popen[bytes] | None = None
        self.owned = False  # True once start() launched the process (rather than reusing one)

    # ------------------------------------------------------------------ facts

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def server_name(self) -> str:
        return self.settings.server_name

    @property
    def shared_secret(self) -> str:
        """The registration shared secret (generated on first configuration, kept 0600)."""
        path = self.data_dir / "registration_shared_secret"
        if not path.exists():
            raise HomeserverError(f"{self.data_dir} is not set up",
                                  hint="run `hiclaw homeserver start` (or `hiclaw up`) once")
        return ensure_shared_secret(path)

    def configure(self) -> Path:
        """(Re)write the generated config from the settings; keys and database are kept."""
        config = homeserver_config(
            server_name=self.settings.server_name, host=self.settings.host, port=self.settings.port,
            data_dir=self.data_dir, log_file=self.log_file, overrides=self.settings.synapse_config,
        )
        self._check_server_name()
        return write_config(self.data_dir, config, self.log_file)

    def _check_server_name(self) -> None:
        # A Synapse database belongs to one server name for ever; say so instead of Synapse's traceback.
        marker = self.data_dir / "server_name"
        if marker.exists() and marker.read_text().strip() != self.settings.server_name:
            raise HomeserverError(
                f"{self.data_dir} was created for server name {marker.read_text().strip()!r}, "
                f"not {self.settings.server_name!r}",
                hint="set [channel.settings] server_name back, or move that directory away to start afresh",
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        marker.write_text(self.settings.server_name + "\n")

    # ------------------------------------------------------------------ pid file

    def _read_pid_file(self) -> dict[str, Any] | None:
        try:
            lines = self.pid_file.read_text().split()
            info: dict[str, Any] = {"pid": int(lines[0]), "mode": lines[1], "parent": int(lines[2])}
        except (OSError, ValueError, IndexError):
            return None
        if not _alive(info["pid"]) or RUNNER not in _cmdline(info["pid"]):
            return None  # stale: the process is gone (or the pid was reused)
        return info

    def _write_pid_file(self, pid: int, mode: str) -> None:
        write_text_atomically(self.pid_file, f"{pid}\n{mode}\n{os.getpid()}\n", mode=0o600)

    # ------------------------------------------------------------------ lifecycle

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def status(self) -> dict[str, Any]:
        info = self._read_pid_file()
        state = "stopped"
        if info is not None:
            state = "running" if self.healthy() else "starting"
        return {
            "state": state,
            "pid": info["pid"] if info else None,
            "mode": info["mode"] if info else None,
            "url": self.url,
            "server_name": self.server_name,
            "config": str(self.config_path),
            "log": str(self.log_file),
        }

    def start(self, *, detach: bool = False, timeout: float = 30.0, mode: str | None = None) -> dict[str, Any]:
        """Start (or reuse) the server and wait until it answers; returns :meth:`status`.

        ``mode`` is recorded in the pid file: ``child`` (default without ``detach``), ``daemon``
        (default with it) or ``team`` (a daemon owned by ``hiclaw up``; a running ``team`` server
        is adopted — :attr:`owned` — so the next clean shutdown stops it)."""
        mode = mode or ("daemon" if detach else "child")
        running = self._read_pid_file()
        if running is not None:
            self._wait_ready(timeout, proc=None)
            self.owned = running["mode"] == "team" and mode == "team"
            return self.status()
        if port_in_use(self.settings.host, self.settings.port):
            raise HomeserverError(
                f"port {self.settings.port} on {self.settings.host} is already in use by another program",
                hint="stop that program or set [channel.settings] port to a free port",
            )
        try:
            import synapse  # noqa: F401  (only to give a clear error when it is missing)
        except ImportError:
            raise HomeserverError("Synapse is not installed in this environment",
                                  hint="install it with `pip install 'hiclaw[homeserver]'`") from None
        self.configure()
        argv = [sys.executable, "-m", RUNNER, str(self.config_path)]
        if not detach:
            argv += ["--parent", str(os.getpid())]
        self.stderr_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_file, "ab") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=self.data_dir,
                start_new_session=detach, close_fds=True,
            )
        self._write_pid_file(proc.pid, mode)
        self.owned = True
        if not detach:
            self._child = proc
        try:
            self._wait_ready(timeout, proc=proc)
        except BaseException:
            self._terminate(proc.pid, proc)
            raise
        return self.status()

    def _wait_ready(self, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                if proc is not None and proc.poll() is not None:
                    raise HomeserverError(f"Synapse exited during start-up (code {proc.returncode}): {self._last_error()}",
                                          hint=f"see {self.stderr_file} and {self.log_file}")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise HomeserverError(f"Synapse did not answer on {self.url} within {timeout:.0f}s",
                                          hint=f"see {self.log_file}")
                time.sleep(0.05)  # polling the real server with a deadline, not synchronising tests

    def _last_error(self) -> str:
        try:
            lines = [line for line in self.stderr_file.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no output"
        return " ".join(lines[-1].split())[:300] if lines else "no output"

    def stop(self, *, timeout: float = 15.0, force: bool = False) -> bool:
        """Stop the server; returns False when it was not running.

        A server started by another process as its child (``hiclaw up``) is left alone unless
        ``force`` — stopping it would pull the homeserver from under a running control plane."""
        info = self._read_pid_file()
        if info is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        if (info["mode"] == "child" and info["parent"] != os.getpid() and _alive(info["parent"]) and not force):
            raise HomeserverError(
                f"the homeserver (pid {info['pid']}) belongs to a running `hiclaw up` (pid {info['parent']})",
                hint="stop `hiclaw up` instead, or pass --force",
            )
        self._terminate(info["pid"], self._child if self._child and self._child.pid == info["pid"] else None, timeout)
        return True

    def _terminate(self, pid: int, proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout=5)
            self._child = None
        self.pid_file.unlink(missing_ok=True)
