"""A crash of the control plane does not stop the workers: `kill -9` of a real `hiclaw up` while a
worker waits for its model, then `hiclaw up` again. The worker's process is adopted (same pid,
nothing re-minted), its model call goes on through the new gateway, a mention sent while the
control plane was down is answered after it, and `hiclaw down` stops what a crash left.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hiclaw.config import Secrets, load_config, save_config
from hiclaw.demo.admin import AdminClient
from hiclaw.testing.gateway import running_scripted_model
from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.testing.team import team_config, wait_until
from hiclaw.testing.up import UpProcess

pytestmark = [pytest.mark.needs_bwrap, pytest.mark.skipif(bool(bwrap_unavailable()), reason=str(bwrap_unavailable()))]

SERVER = "hiclaw.adopt"
SCENARIO = {"agents": {
    "bob": {"turns": [
        # The first answer takes long: the control plane is killed while bob waits for it.
        {"when": {"contains": "long job"}, "delay_ms": 15_000, "text": "never seen: lost with the gateway"},
        {"when": {"contains": "long job"}, "text": "long job finished after the restart"},
        {"when": {"contains": "while you were alone"}, "text": "answered what was asked during the outage"},
    ]},
    "*": {"default": {"text": "ok"}},
}}


def launcher(home: Path, name: str) -> tuple[int, int]:
    """(launcher pid, its start time) from the sandbox's run record."""
    record = json.loads((home / "run" / "sandbox" / f"{name}.run.json").read_text())
    return record["signal_pid"], record["signal_start"]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_crash_leaves_workers_running_and_the_next_up_adopts_them(tmp_path):
    home = tmp_path / "home"
    up = UpProcess(home)
    admin: AdminClient | None = None
    with running_scripted_model(SCENARIO) as model:
        try:
            save_config(team_config(model.base_url, server_name=SERVER, sandbox="bwrap"), home)
            await up.start_and_wait_async()
            created = up.cli("worker", "create", "bob", "--role", "tester")
            assert created.returncode == 0, created.stderr
            password = Secrets.load(home).get("matrix_admin_password").get_secret_value()
            admin = AdminClient(f"http://127.0.0.1:{load_config(home).channel.settings['port']}", "admin", password)
            await admin.login()
            await admin.start()
            room = await admin.resolve(f"#hiclaw-worker-bob:{SERVER}")
            bob = f"@bob:{SERVER}"
            pid_before = launcher(home, "bob")

            await admin.send(room, "@bob please do the long job", mention=bob)
            await wait_until(lambda: model.requests("bob"), timeout=60, what="bob's model call")
            up.kill()  # crash, with bob's model call in flight
            assert alive(pid_before[0])  # bob outlives the crash
            await admin.send(room, "@bob a question while you were alone", mention=bob)  # Synapse still serves

            await up.start_and_wait_async()
            assert "1 kept running through the crash (adopted)" in up.log.read_text()
            assert launcher(home, "bob") == pid_before  # the same process, not a new one

            def said(text: str) -> bool:
                return any(m.sender == bob and text in m.body for m in admin.messages)

            await wait_until(lambda: said("long job finished after the restart"), timeout=60,
                             what="bob's turn to go on after the restart")
            await wait_until(lambda: said("answered what was asked during the outage"), timeout=60,
                             what="the mention sent during the outage to be answered")
            assert not any(m.sender == bob and "could not finish" in m.body for m in admin.messages)
            calls = [r["latest_input"] for r in model.requests("bob")]
            assert len(calls) == 3, calls  # the lost call, its retry, the question: nothing else
            log = (home / "logs" / "workers" / "bob.log").read_text()
            assert "adopted by a new control plane" in log and "reconnected to the control plane" in log
            status = json.loads(up.cli("status", "--json").stdout)
            assert [w["process"] for w in status["workers"]] == ["running"]

            # A crash, then a change that the running worker does not have (one more model alias):
            # its sandbox is stopped and it starts afresh, with a new token.
            up.kill()
            config = load_config(home)
            config.models["extra"] = config.models["fast"]
            save_config(config, home)
            await up.start_and_wait_async()
            assert "adopted" not in up.log.read_text()
            assert not alive(pid_before[0])
            pid_after = launcher(home, "bob")
            assert pid_after != pid_before and alive(pid_after[0])
            await admin.send(room, "@bob the long job again, please", mention=bob)
            await wait_until(lambda: len(model.requests("bob")) == 4, timeout=60, what="the new bob's model call")

            # A crash, and this time nobody wants the team back: `hiclaw down`.
            await admin.stop()
            admin = None
            up.kill()
            pid_before = pid_after
            assert alive(pid_before[0])
            down = up.cli("down")
            assert down.returncode == 0, down.stderr
            assert "worker bob stopped" in down.stdout and "homeserver stopped" in down.stdout
            assert not alive(pid_before[0])
            assert not (home / "run" / "sandbox" / "bob.run.json").exists()
            again = up.cli("down")
            assert "no workers were left running" in again.stdout and "homeserver was not running" in again.stdout
        finally:
            if admin is not None:
                await admin.stop()
            up.stop()


def test_down_refuses_while_the_team_runs(tmp_path):
    """`hiclaw down` is for leftovers of a crash, never for a running team."""
    home = tmp_path / "home"
    with running_scripted_model(SCENARIO) as model:
        save_config(team_config(model.base_url, server_name=SERVER), home)
        up = UpProcess(home)
        try:
            up.start_and_wait()
            result = up.cli("down")
            assert result.returncode == 1
            assert result.stderr.strip().splitlines() == [
                "error: the team is running — stop `hiclaw up` with Ctrl-C: that stops everything"]
            assert up.proc is not None and up.proc.poll() is None and os.path.exists(home / "run" / "control.json")
        finally:
            up.stop()


async def test_a_worker_whose_control_plane_never_comes_back_stops_itself(tmp_path):
    """A crash nobody follows with `hiclaw up`: after `orphan_timeout_seconds` the worker stops."""
    home = tmp_path / "home"
    up = UpProcess(home)
    with running_scripted_model(SCENARIO) as model:
        try:
            save_config(team_config(model.base_url, server_name=SERVER, sandbox="bwrap", orphan_timeout_seconds=2), home)
            await up.start_and_wait_async()
            assert up.cli("worker", "create", "bob", "--role", "tester").returncode == 0
            pid = launcher(home, "bob")[0]
            up.kill()
            assert alive(pid)
            await wait_until(lambda: not alive(pid), timeout=30, what="bob to stop on his own")
            log = (home / "logs" / "workers" / "bob.log").read_text()
            assert "the control plane has been unreachable for" in log
            down = up.cli("down")
            assert "no workers were left running" in down.stdout and "homeserver stopped" in down.stdout
        finally:
            up.stop()
