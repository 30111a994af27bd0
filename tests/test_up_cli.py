"""`hiclaw up` as a user runs it: status, workers from the CLI, and Ctrl-C stops everything."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

from hiclaw.config import save_config
from hiclaw.testing import clean_env
from hiclaw.testing.gateway import running_scripted_model
from hiclaw.testing.team import team_config, wait_until


def hiclaw(home, *args, timeout=120):
    env = clean_env(home)
    return subprocess.run([sys.executable, "-m", "hiclaw", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_up_status_worker_commands_and_ctrl_c(tmp_path):
    home = tmp_path / "home"
    with running_scripted_model({"agents": {"*": {"default": {"text": "ok"}}}}) as model:
        save_config(team_config(model.base_url), home)
        assert hiclaw(home, "status").stdout.startswith("team: stopped")
        env = clean_env(home)
        with open(tmp_path / "up.log", "w") as log:  # the child keeps its own copy of the descriptor
            up = subprocess.Popen([sys.executable, "-m", "hiclaw", "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            await wait_until(lambda: "hiclaw is up" in (tmp_path / "up.log").read_text() or up.poll() is not None,
                             timeout=120, what="hiclaw up")
            output = (tmp_path / "up.log").read_text()
            assert up.poll() is None, output
            assert "user @admin:hiclaw.test" in output and "password (shown once" in output and "hiclaw chat" in output

            again = hiclaw(home, "up")
            assert again.returncode == 1 and "already running" in again.stderr

            created = await asyncio.to_thread(hiclaw, home, "worker", "create", "bob", "--role", "tester", "--json")
            assert created.returncode == 0, created.stderr
            assert json.loads(created.stdout)["name"] == "bob"
            status = json.loads(hiclaw(home, "status", "--json").stdout)
            assert status["running"] is True and status["components"]["sandbox"] in ("bwrap", "process")
            (bob,) = [w for w in status["workers"] if w["name"] == "bob"]
            assert bob["process"] == "running"
            listed = json.loads(hiclaw(home, "worker", "list", "--json").stdout)
            assert [w["name"] for w in listed] == ["bob"]
            bad = hiclaw(home, "worker", "create", "Bad Name", "--role", "x")
            assert bad.returncode == 1 and bad.stderr.startswith("error: invalid agent name")

            # bob's sandbox, as its run record names it (the worker itself sees only neutral paths).
            record = json.loads((home / "run" / "sandbox" / "bob.run.json").read_text())
            worker_pids = [record["pid"], record["signal_pid"]]
            assert all(alive(pid) for pid in worker_pids), "bob's sandbox is visible on the host"
        finally:
            up.send_signal(signal.SIGINT)
            code = up.wait(60)
        assert code == 0, (tmp_path / "up.log").read_text()[-2000:]
        assert "stopped" in (tmp_path / "up.log").read_text()
        await wait_until(lambda: not any(alive(pid) for pid in worker_pids), timeout=20, what="workers to stop")
        assert hiclaw(home, "status").stdout.startswith("team: stopped")
        removed = hiclaw(home, "worker", "remove", "bob")
        assert removed.returncode == 1 and "the team is not running" in removed.stderr


def test_up_refuses_a_team_without_models_or_keys(tmp_path):
    home = tmp_path / "home"
    assert json.loads(hiclaw(home, "project", "list", "--json").stdout) == []  # a team that never ran
    missing = hiclaw(home, "task", "show", "task-001")
    assert missing.returncode == 1 and "the team has not run yet" in missing.stderr
    result = hiclaw(home, "up")
    assert result.returncode == 1
    assert result.stderr.startswith("error: no model aliases are configured — run `hiclaw init`")
    assert hiclaw(home, "init", "--non-interactive", "--provider", "openai", "--sandbox", "process").returncode == 0
    result = hiclaw(home, "up")
    assert result.returncode == 1
    assert "model alias 'smart' needs the secret 'openai_api_key', which is not set" in result.stderr
    assert "export OPENAI_API_KEY" in result.stderr and "Traceback" not in result.stderr
