"""Approvals on a live team (Synapse, the embedded gateway, bubblewrap, the tests' tracker as a
stdio MCP server): under ``level = "smart"`` a worker's read-only MCP call goes alone; its
writing call posts an approval card mentioning the admin and nothing happens until the admin
decides — approved in chat, it runs exactly once; denied from the CLI, the model reads the reason.
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from hiclaw.testing import clean_env
from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.testing.team import running_team, wait_until

pytestmark = pytest.mark.skipif(bwrap_unavailable() is not None, reason=str(bwrap_unavailable()))

WORKER = "eve"
TRACKER = Path(__file__).parent / "mcp_servers" / "tracker.py"


def call(tool: str, **arguments: Any) -> list[dict[str, Any]]:
    return [{"name": tool, "arguments": arguments}]


SCENARIO = {"agents": {WORKER: {"rules": [
    {"when": {"contains": "list the issues"}, "tool_calls": call("mcp__tracker__list_issues")},
    {"when": {"tool_result": "mcp__tracker__list_issues", "regex": r"(?s)(?P<listed>.*)"}, "text": "listed: {{listed}}"},
    {"when": {"contains": "file the issue"}, "tool_calls": call("mcp__tracker__create_issue", title="launch")},
    {"when": {"tool_result": "mcp__tracker__create_issue", "regex": r"(?s)(?P<answer>.*)"},
     "text": "create answered: {{answer}}"},
]}, "*": {"default": {"text": "ok"}}}}


def tracker(issues: Path) -> dict[str, Any]:
    return {"tracker": {"command": sys.executable, "args": [str(TRACKER), "stdio"],
                        "secret_env": {"TRACKER_TOKEN": "tracker_token"}, "env": {"TRACKER_FILE": str(issues)},
                        "workers": [WORKER]}}


def filed(issues: Path) -> list[str]:
    return [json.loads(line)["title"] for line in issues.read_text().splitlines()] if issues.exists() else []


async def cli(home: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hiclaw", *args, env=clean_env(home),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def eve_in_her_room(team: Any) -> str:
    await team.plane.provisioner.create_worker(WORKER, role="tracker user")
    room = await team.plane.chat.worker_room(WORKER)
    await wait_until(lambda: room in team.admin.room_names, what="the admin in the worker's room")
    return str(room)


async def test_smart_level_a_writing_call_waits_for_the_admin_and_runs_once(tmp_path: Path):
    issues = tmp_path / "issues.jsonl"
    approvals = {"level": "smart", "hold_seconds": 1}
    async with running_team(tmp_path / "home", SCENARIO, secrets={"tracker_token": "t0ken-for-tests"},
                            mcp=tracker(issues), approvals=approvals) as team:
        plane, room = team.plane, await eve_in_her_room(team)

        # Read-only (annotated so): no approval.
        await team.admin.send(room, f"@{WORKER} please list the issues", mention=team.user_id(WORKER))
        await team.wait_for_message("listed:", sender=WORKER, timeout=60)
        assert plane.state.approvals() == []

        # A write: a card for the admin, and nothing happens until the admin decides.
        await team.admin.send(room, f"@{WORKER} please file the issue", mention=team.user_id(WORKER))
        card = await team.wait_for_message("approval **apr-1**", sender="manager", timeout=60)
        assert card.room_id == room and team.user_id("admin") in card.mentions
        assert "tracker/create_issue" in card.body and '"title": "launch"' in card.body
        assert "not marked read-only" in card.body
        await wait_until(lambda: sum(c["outcome"] == "pending_approval" for c in plane.gateway.store.mcp_calls(50)) >= 2,
                         timeout=30, what="the worker asking again while it waits")
        assert filed(issues) == []
        code, out, err = await cli(team.home, "approvals", "list", "--json")
        assert code == 0, err
        assert [(a["id"], a["state"], a["worker"], a["target"]) for a in json.loads(out)] == [
            ("apr-1", "pending", WORKER, "tracker/create_issue")]

        # Approved in chat (a line of the admin's, in the room of the card): it runs, once.
        await team.admin.send(room, "approve apr-1 go ahead")
        await team.wait_for_message("create answered:", sender=WORKER, timeout=60)
        assert filed(issues) == ["launch"]
        approval = plane.state.approval("apr-1")
        assert (approval.state, approval.decided_by, approval.note) == ("done", "admin", "go ahead")
        assert len(plane.state.events(kind="approval.ran")) == 1
        assert next(c["outcome"] for c in plane.gateway.store.mcp_calls(50) if c["tool"] == "create_issue") == "ok"
        # A second decision is refused with one line.
        code, out, err = await cli(team.home, "approvals", "deny", "apr-1", "--reason", "too late")
        assert code == 1 and "apr-1 is already done" in err and "Traceback" not in err


async def test_denied_from_the_cli_the_model_reads_the_reason(tmp_path: Path):
    issues = tmp_path / "issues.jsonl"
    approvals = {"level": "auto", "hold_seconds": 1,
                 "rules": [{"tool": "mcp:tracker/create_*", "workers": [WORKER], "args": '"title": "launch"'}]}
    async with running_team(tmp_path / "home", SCENARIO, secrets={"tracker_token": "t0ken-for-tests"},
                            mcp=tracker(issues), approvals=approvals) as team:
        room = await eve_in_her_room(team)
        await team.admin.send(room, f"@{WORKER} please file the issue", mention=team.user_id(WORKER))
        card = await team.wait_for_message("approval **apr-1**", sender="manager", timeout=60)
        assert "the rule for 'mcp:tracker/create_*'" in card.body
        code, out, err = await cli(team.home, "approvals", "deny", "apr-1", "--reason", "not before the launch date")
        assert code == 0 and "apr-1 denied" in out, err
        answer = await team.wait_for_message("create answered:", sender=WORKER, timeout=60)
        assert "denied" in answer.body and "not before the launch date" in answer.body
        assert filed(issues) == []
        await team.wait_for_message("apr-1 denied by admin", sender="manager", timeout=30)


async def test_an_approval_pending_across_a_kill_9_of_the_control_plane_runs_once(tmp_path: Path):
    """`hiclaw up` killed (-9) while a call waits: the approval is still pending after the
    restart, the worker (adopted) goes on asking, the admin approves from the CLI, and the call
    runs exactly once."""
    from hiclaw.config import Secrets, load_config, save_config
    from hiclaw.demo.admin import AdminClient
    from hiclaw.scripted import parse_scenario
    from hiclaw.state import StateDB
    from hiclaw.testing.gateway import running_scripted_model
    from hiclaw.testing.team import team_config
    from hiclaw.testing.up import UpProcess

    home, issues, server = tmp_path / "home", tmp_path / "issues.jsonl", "hiclaw.approvals"
    home.mkdir()
    up = UpProcess(home)
    admin: AdminClient | None = None
    with running_scripted_model(parse_scenario(SCENARIO)) as model:
        try:
            save_config(team_config(model.base_url, server_name=server, mcp=tracker(issues),
                                    approvals={"level": "smart", "hold_seconds": 1}), home)
            stored = Secrets.load(home)
            stored.set("tracker_token", "t0ken-for-tests")
            stored.save()
            await up.start_and_wait_async()
            created = up.cli("worker", "create", WORKER, "--role", "tracker user")
            assert created.returncode == 0, created.stderr
            password = Secrets.load(home).get("matrix_admin_password").get_secret_value()
            admin = AdminClient(f"http://127.0.0.1:{load_config(home).channel.settings['port']}", "admin", password)
            await admin.login()
            await admin.start()
            room = await wait_until(lambda: next((r for r, n in admin.room_names.items() if n == f"Worker: {WORKER}"),
                                                 None), timeout=30, what="the worker's room")
            await admin.send(room, f"@{WORKER} please file the issue", mention=f"@{WORKER}:{server}")
            await wait_until(lambda: any("approval **apr-1**" in m.body for m in admin.messages), timeout=60,
                             what="the approval card")

            up.kill()
            await up.start_and_wait_async()
            state = StateDB(home / "state.db", readonly=True)
            try:
                assert state.approval("apr-1").state == "pending"
            finally:
                state.close()
            assert filed(issues) == []
            approved = up.cli("approvals", "approve", "apr-1")
            assert approved.returncode == 0, approved.stderr
            await wait_until(lambda: any(m.sender == f"@{WORKER}:{server}" and "create answered:" in m.body
                                         for m in admin.messages), timeout=90, what="the worker's answer")
            answer = next(m.body for m in admin.messages if m.sender == f"@{WORKER}:{server}" and "create answered:" in m.body)
            assert filed(issues) == ["launch"], answer
            state = StateDB(home / "state.db", readonly=True)
            try:
                assert state.approval("apr-1").state == "done"
                assert len(state.events(kind="approval.ran")) == 1
                assert len(state.events(kind="worker.adopted", subject=WORKER)) == 1
            finally:
                state.close()
        finally:
            if admin is not None:
                await admin.stop()
            up.stop()
