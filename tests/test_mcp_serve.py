"""``hiclaw mcp serve``: the team as an MCP server, driven by the official SDK's client as an
outside MCP client would (a desktop app launching it over stdio; an IDE over Streamable HTTP),
against a live team (Synapse, gateway, scripted Manager). Tokens are the admin's: unknown or
revoked ones are refused, the revoked one on its very next call."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hiclaw.cli import cli
from hiclaw.testing.team import free_port, running_team, wait_until

SCENARIO = {"agents": {"manager": {"default": {"text": "On it: I will plan that and post the plan here."}},
                       "*": {"default": {"text": "ok"}}}}


def make_token(home: Path, name: str) -> str:
    result = CliRunner().invoke(cli, ["mcp", "token", "create", name], env={"HICLAW_HOME": str(home)})
    assert result.exit_code == 0, result.output
    return result.output.strip()


def env_for(home: Path, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HICLAW_")}
    env["HICLAW_HOME"] = str(home)
    if token is not None:
        env["HICLAW_MCP_TOKEN"] = token
    return env


def text_of(result: Any) -> str:
    return "\n".join(getattr(part, "text", "") for part in result.content)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_an_mcp_client_drives_the_team_over_stdio(tmp_path: Path, mode: str) -> None:
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    home = tmp_path / "home"
    async with running_team(home, SCENARIO) as team:
        await team.plane.provisioner.create_worker("alice", role="writer")
        token = make_token(home, "desktop")
        params = StdioServerParameters(command=sys.executable, args=["-m", "hiclaw", "mcp", "serve"],
                                       env=env_for(home, token))
        async with Client(stdio_client(params), mode=mode) as client:
            assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
            names = sorted(t.name for t in (await client.list_tools()).tools)
            assert names == ["ask_manager", "run_task", "start_project", "task_result", "team_status", "usage"]
            status = await client.call_tool("team_status", {})
            assert not status.is_error and [w["name"] for w in status.structured_content["workers"]] == ["alice"]
            asked = await client.call_tool("start_project", {"goal": "a landing page for the writing assistant"})
            assert not asked.is_error, text_of(asked)
            assert "On it" in str(asked.structured_content["reply"])
            # The request is in the Manager room, from the admin, for the human to see.
            await wait_until(lambda: team.said("admin", "start a project"), what="the request in the Manager room")
            missing = await client.call_tool("task_result", {"task_id": "task-999"})
            assert missing.is_error and "no task 'task-999'" in text_of(missing)
            spent = await client.call_tool("usage", {"by": "consumer"})
            assert not spent.is_error and "manager" in str(spent.structured_content)

            revoked = CliRunner().invoke(cli, ["mcp", "token", "revoke", "desktop"], env={"HICLAW_HOME": str(home)})
            assert revoked.exit_code == 0
            refused = await client.call_tool("team_status", {})
            assert refused.is_error and "revoked" in text_of(refused)


async def test_the_http_transport_wants_a_bearer_token(tmp_path: Path) -> None:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    home = tmp_path / "home"
    async with running_team(home, SCENARIO) as team:
        token = make_token(home, "ide")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "hiclaw", "mcp", "serve", "--http", "--port", str(port)],
                                  env=env_for(home, None), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}/mcp"

            async def up() -> bool:
                try:
                    async with httpx2.AsyncClient() as http:
                        return (await http.post(url, json={})).status_code == 401
                except httpx2.HTTPError:
                    return False

            await wait_until(up, timeout=60, what="hiclaw mcp serve --http")
            async with httpx2.AsyncClient() as http:
                wrong = await http.post(url, json={}, headers={"Authorization": "Bearer hcmcp_wrong"})
                assert wrong.status_code == 401 and "hiclaw mcp token create" in wrong.text
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            async with Client(streamable_http_client(url, http_client=http)) as client:
                status = await client.call_tool("team_status", {})
                assert not status.is_error and status.structured_content["workers"] == []
                assert team.plane.state.projects() == []
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_serve_refuses_to_start_without_a_valid_token(tmp_path: Path) -> None:
    for token in (None, "hcmcp_not-a-token"):
        done = subprocess.run([sys.executable, "-m", "hiclaw", "mcp", "serve"], env=env_for(tmp_path, token),
                              capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert done.stderr.startswith("error: HICLAW_MCP_TOKEN is") and "hiclaw mcp token create" in done.stderr


async def test_a_stopped_team_is_one_clear_line(tmp_path: Path) -> None:
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    token = make_token(tmp_path, "desktop")
    params = StdioServerParameters(command=sys.executable, args=["-m", "hiclaw", "mcp", "serve"],
                                   env=env_for(tmp_path, token))
    async with Client(stdio_client(params)) as client:
        result = await client.call_tool("team_status", {})
        assert result.is_error and "the team is not running" in text_of(result) and "hiclaw up" in text_of(result)
