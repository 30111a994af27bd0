"""End to end: a bwrap worker with no network uses an MCP server's tools through the gateway.

A real team (Synapse, the embedded gateway, the scripted model, bubblewrap) with the tests'
tracker (the demo's MCP server plus hostile tools) as a stdio server the gateway runs, its
credential a canary in ``secrets.toml``. The worker is granted it *while it runs*; at its next
task it is offered the tracker's tools as ``mcp__tracker__…``, files an issue (the tracker needs
the credential to write: the issue on the host proves it arrived) and calls the leaky tool (the
answer is redacted). Then the admin revokes one tool: the worker's next call of it is refused
and never reaches the tracker. The canary is nowhere the worker or the model can read.
"""
from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest

from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.testing.team import running_team, wait_until

pytestmark = pytest.mark.skipif(bwrap_unavailable() is not None, reason=str(bwrap_unavailable()))

WORKER, OTHER = "eve", "bob"
TRACKER = Path(__file__).parent / "mcp_servers" / "tracker.py"


def call(tool: str, **arguments: Any) -> list[dict[str, Any]]:
    return [{"name": tool, "arguments": arguments}]


def scenario() -> dict[str, Any]:
    return {"agents": {WORKER: {"turns": [
        {"when": {"contains": "file the issue"}, "tool_calls": call("mcp__tracker__create_issue", title="from eve",
                                                                    labels=["e2e"])},
        {"when": {"tool_result": "mcp__tracker__create_issue", "regex": r'"number":\s*(?P<number>\d+)'},
         "tool_calls": call("mcp__tracker__reveal")},
        {"when": {"tool_result": "mcp__tracker__reveal", "regex": r"(?s)(?P<revealed>.*)"},
         "text": "filed issue {{number}}"},
        {"when": {"contains": "file another"}, "tool_calls": call("mcp__tracker__create_issue", title="after revoke")},
        {"when": {"tool_result": "mcp__tracker__create_issue", "regex": r"(?s)(?P<refused>.*)"},
         "text": "second: {{refused}}"},
    ]}, "*": {"default": {"text": "ok"}}}}


async def test_a_sandboxed_worker_uses_granted_mcp_tools_and_never_sees_the_credential(tmp_path: Path):
    canary = "hcanary-" + secrets.token_hex(16)
    issues = tmp_path / "issues.jsonl"
    mcp = {"tracker": {"command": sys.executable, "args": [str(TRACKER), "stdio"],
                       "secret_env": {"TRACKER_TOKEN": "tracker_token"}, "env": {"TRACKER_FILE": str(issues)},
                       "description": "the team's issue tracker"}}
    async with running_team(tmp_path / "home", scenario(), secrets={"tracker_token": canary}, mcp=mcp) as team:
        plane = team.plane
        await plane.provisioner.create_worker(WORKER, role="tracker user")
        await plane.provisioner.create_worker(OTHER, role="bystander")
        await plane.access.grant(WORKER, "mcp", "tracker", ["create_issue", "reveal", "list_issues"])  # while it runs
        room = await plane.chat.worker_room(WORKER)
        await wait_until(lambda: room in team.admin.room_names, what="the admin in the worker's room")
        await team.admin.send(room, f"@{WORKER} please file the issue", mention=team.user_id(WORKER))
        await team.wait_for_message("filed issue 1", sender=WORKER, timeout=120)

        assert [json.loads(line)["title"] for line in issues.read_text().splitlines()] == ["from eve"]
        variables = team.model.engine.stats()["agents"][WORKER]["variables"]
        assert "[redacted]" in variables["revealed"] and canary not in variables["revealed"]
        offered = [record["tools"] for record in team.model.recent if record["agent"] == WORKER]
        assert offered and all("mcp__tracker__create_issue" in tools and "mcp__tracker__fail" not in tools
                               for tools in offered)  # only the granted tools
        assert not any("mcp__" in " ".join(record["tools"]) for record in team.model.recent
                       if record["agent"] == OTHER)

        # One tool revoked by the admin: the next call is refused and never reaches the tracker.
        await plane.access.revoke(WORKER, "mcp", "tracker", ["create_issue"])
        await team.admin.send(room, f"@{WORKER} please file another", mention=team.user_id(WORKER))
        await team.wait_for_message("second:", sender=WORKER, timeout=120)
        refused = team.model.engine.stats()["agents"][WORKER]["variables"]["refused"]
        assert "not offered to you" in refused, refused
        assert len(issues.read_text().splitlines()) == 1
        calls = [(c["consumer"], c["tool"], c["outcome"]) for c in await plane.gateway.mcp_calls()
                 if c["method"] == "tools/call"]
        assert calls[0] == (WORKER, "create_issue", "refused") and (WORKER, "create_issue", "ok") in calls

        seen: dict[str, bytes] = {f"model request {r['agent']} #{r['call']}": json.dumps(r).encode()
                                  for r in team.model.recent}
        for root in (team.home / "workers", team.home / "logs" / "workers", Path(plane.storage.root)):
            for path in root.rglob("*"):
                if path.is_file():
                    seen[str(path)] = path.read_bytes()
        for message in team.admin.messages:
            seen[f"matrix {message.event_id}"] = json.dumps(message.content).encode()
        runs = {name: plane.provisioner.run_record_path(name).read_text() for name in (WORKER, OTHER)}
        seen.update({f"run record {name}": text.encode() for name, text in runs.items()})
        leaked = sorted(where for where, data in seen.items() if canary.encode() in data)
        assert not leaked, f"the canary leaked into: {leaked}"
