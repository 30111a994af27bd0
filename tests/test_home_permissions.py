"""Defaults a careful user expects (issue 14): ``$HICLAW_HOME`` private whatever the umask, and a
warning when the team runs as root.

Before the fix, under the common umask 022 the home was 0755 and ``config.toml``, ``state.db``
(with its -wal/-shm), the homeserver's and the workers' files were readable by every local user.
"""
from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from hiclaw.cli.app import root_warning
from hiclaw.config import save_config
from hiclaw.testing import clean_env
from hiclaw.testing.gateway import running_scripted_model
from hiclaw.testing.team import team_config, wait_until


def with_umask_022(*argv: str) -> list[str]:
    return ["sh", "-c", 'umask 022 && exec "$@"', "sh", *argv]


def hiclaw(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(with_umask_022(sys.executable, "-m", "hiclaw", *args), capture_output=True, text=True,
                          env=clean_env(home), timeout=timeout, check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def open_to_others(home: Path) -> list[str]:
    """Everything under ``home`` that a user other than its owner could read, write or enter."""
    return [f"{mode(p):04o} {p.relative_to(home)}" for p in [home, *home.rglob("*")]
            if not p.is_symlink() and mode(p) & 0o077]


def test_init_writes_a_private_home_under_umask_022(tmp_path):
    home = tmp_path / "home"
    done = hiclaw(home, "init", "--non-interactive", "--provider", "openai-compatible",
                  "--api-base", "http://127.0.0.1:9/v1", "--api-key", "sk-not-real")
    assert done.returncode == 0, done.stderr
    assert mode(home) == 0o700
    assert mode(home / "config.toml") == mode(home / "secrets.toml") == 0o600
    assert open_to_others(home) == []


def test_the_root_warning_is_one_line_saying_the_risk_and_the_way_out():
    warning = root_warning(0)
    assert warning is not None and "\n" not in warning
    assert warning.startswith("warning: running as root") and "sandbox" in warning and "ordinary user" in warning
    assert root_warning(1000) is None


async def test_up_under_umask_022_keeps_everything_private_and_workers_start(tmp_path):
    home = tmp_path / "home"
    with running_scripted_model({"agents": {"*": {"default": {"text": "ok"}}}}) as model:
        save_config(team_config(model.base_url), home)
        os.chmod(home, 0o755)  # as an older hiclaw (or a umask 022 mkdir) left them
        os.chmod(home / "config.toml", 0o644)
        with open(tmp_path / "up.log", "w") as log:
            up = subprocess.Popen(with_umask_022(sys.executable, "-m", "hiclaw", "up"), env=clean_env(home),
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            await wait_until(lambda: "hiclaw is up" in (tmp_path / "up.log").read_text() or up.poll() is not None,
                             timeout=120, what="hiclaw up")
            output = (tmp_path / "up.log").read_text()
            assert up.poll() is None, output
            assert ("warning: running as root" in output) == (os.geteuid() == 0), output
            created = await asyncio.to_thread(hiclaw, home, "worker", "create", "bob", "--role", "tester")
            assert created.returncode == 0, created.stderr  # a sandboxed worker still reads its spec and files
            for name in ("config.toml", "secrets.toml", "state.db", "gateway/gateway.db", "run/control.json",
                         "run/workers/bob.json", "channel/channel.sqlite3"):
                assert mode(home / name) == 0o600, name
            assert mode(home) == 0o700
            assert open_to_others(home) == []
        finally:
            up.send_signal(signal.SIGINT)
            code = up.wait(60)
        assert code == 0, (tmp_path / "up.log").read_text()[-2000:]
    assert open_to_others(home) == []
