"""MCP servers behind the embedded gateway (``/mcp/<server>``, docs/mcp.md), on real components,
against whoever does not cooperate.

The independent client is the official SDK's (``mcp.client.Client`` over Streamable HTTP), in both
protocol eras: the current revision (``mode="auto"``, 2026-07-28) and the initialize handshake
(``mode="legacy"``, 2025-11-25). The servers are real processes: the tests' tracker (the SDK's
server, with leaky, failing, big and slow tools) over stdio and over HTTP behind a bearer token,
servers that are missing, exit at once or get killed, and ``@modelcontextprotocol/server-everything``
from npm, which nobody here wrote. The tracker's issue file is written only by a call that
reached it: a refused call leaves it untouched.

The credential is a canary with quotes, a slash and a backslash (so every escaping changes it);
its random middle must appear in no answer, error, log record, audit row or file of the gateway.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from hiclaw.config import HiclawConfig
from hiclaw.errors import InvalidInputError
from hiclaw.host import ComponentContext, PluginHost
from hiclaw.plugins.gateways import embedded
from hiclaw.waiting import wait_until

TRACKER = Path(__file__).parent / "mcp_servers" / "tracker.py"
MARK = secrets.token_hex(12)  # what no answer, log or file may hold, in any encoding
CANARY = f'mcp-{MARK}/"q\\'
REMOTE = f"remote-{MARK}"
SECRETS = {"tracker_token": CANARY, "remote_key": REMOTE}
MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])
VERSIONS = {"auto": "2026-07-28", "legacy": "2025-11-25"}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def tracker(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """``[mcp.tracker]`` over stdio; extra environment as ``env``, other keys as given."""
    env = {"TRACKER_FILE": str(tmp_path / "issues.jsonl"), **settings.pop("env", {})}
    return {"command": sys.executable, "args": [str(TRACKER), "stdio"], "env": env,
            "secret_env": {"TRACKER_TOKEN": "tracker_token"}, **settings}


def issues(tmp_path: Path) -> list[str]:
    path = tmp_path / "issues.jsonl"
    return [json.loads(line)["title"] for line in path.read_text().splitlines()] if path.exists() else []


def text_of(result: Any) -> str:
    return "\n".join(getattr(part, "text", "") for part in result.content)


class Rig:
    """The real embedded gateway on a free port, and SDK clients of it that keep every answer."""

    def __init__(self, gateway: Any, home: Path) -> None:
        self.gateway = gateway
        self.home = home
        self.answers: list[str] = []  # every HTTP answer any client of the rig got, verbatim

    def url(self, server: str) -> str:
        return f"http://127.0.0.1:{self.gateway.port}/mcp/{server}"

    def http(self, token: str | None, **headers: str) -> Any:
        import httpx2

        async def keep(response: Any) -> None:
            await response.aread()
            self.answers.append(response.text)

        auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx2.AsyncClient(headers={**auth, **headers}, event_hooks={"response": [keep]}, timeout=30)

    def client(self, server: str, token: str, mode: str = "auto", **headers: str) -> Any:
        from mcp.client import Client
        from mcp.client.streamable_http import streamable_http_client

        return Client(streamable_http_client(self.url(server), http_client=self.http(token, **headers)), mode=mode)

    async def post(self, server: str, token: str | None, body: Any, **headers: str) -> Any:
        async with self.http(token, **{**ACCEPT, **headers}) as http:
            content = body if isinstance(body, (bytes, str)) else json.dumps(body)
            return await http.post(self.url(server), content=content)


@asynccontextmanager
async def serving(home: Path, servers: dict[str, Any], grants: dict[str, Any] | None = None,
                  **settings: Any) -> AsyncIterator[Rig]:
    config = HiclawConfig.model_validate({"mcp": servers})
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded)],
                      secret_source=lambda name: SecretStr(SECRETS[name]) if name in SECRETS else None)
    gateway = host.create("gateway", "embedded-gateway", {"port": 0, **settings},
                          ComponentContext(home=home, config=config))
    if grants is not None:
        await gateway.set_mcp(config.mcp, grants)
    await gateway.start()
    try:
        yield Rig(gateway, home)
    finally:
        await gateway.stop()
        gateway.store.close()


@pytest.fixture(autouse=True)
def no_canary_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every log record of every logger, at every level, during each test."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert MARK not in record.getMessage() and MARK not in str(record.args), record.getMessage()


def call(tool: str, arguments: dict[str, Any] | None = None, ident: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "method": "tools/call", "params": {"name": tool, "arguments": arguments or {}}}


def tracker_pids() -> list[int]:
    """The tracker processes this test process started (the gateway's stdio children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # after the command's name: state, parent
        if int(ppid) == os.getpid() and state != "Z" and str(TRACKER).encode() in cmdline:
            found.append(int(entry.name))
    return found


# ---------------------------------------------------------------------------------------------- happy paths


@MODES
async def test_a_stdio_server_in_both_protocol_eras(tmp_path: Path, mode: str) -> None:
    async with serving(tmp_path, {"tracker": tracker(tmp_path, workers=["alice"])}) as rig:
        token = await rig.gateway.mint_token("alice")
        async with rig.client("tracker", token, mode) as client:
            assert client.protocol_version == VERSIONS[mode]
            names = sorted(t.name for t in (await client.list_tools()).tools)
            assert names == ["big", "create_issue", "fail", "leak_error", "list_issues", "reveal", "slow"]
            made = await client.call_tool("create_issue", {"title": f"via {mode}"})
            assert not made.is_error and made.structured_content == {"number": 1, "title": f"via {mode}"}
            failed = await client.call_tool("fail", {"reason": "on purpose"})
            assert failed.is_error and "Error executing tool fail" in text_of(failed)  # the SDK's words
        assert issues(tmp_path) == [f"via {mode}"]  # the tracker got the credential from its environment
        rows = [(r["consumer"], r["method"], r["tool"], r["outcome"]) for r in await rig.gateway.mcp_calls()]
        assert ("alice", "tools/call", "create_issue", "ok") in rows and ("alice", "tools/call", "fail", "tool_error") in rows


@MODES
async def test_a_remote_server_gets_its_credential_from_the_gateway_only(
        tmp_path: Path, remote_tracker: Callable[[str], Awaitable[str]], mode: str) -> None:
    remote = await remote_tracker(REMOTE)  # wants `Authorization: Bearer REMOTE`
    servers = {"remote": {"url": remote, "secret": "remote_key", "workers": ["alice"]},
               "bare": {"url": remote, "workers": ["alice"]}}  # the same server, without the credential
    async with serving(tmp_path, servers) as rig:
        token = await rig.gateway.mint_token("alice")
        async with rig.client("remote", token, mode) as client:
            assert client.protocol_version == VERSIONS[mode]
            made = await client.call_tool("create_issue", {"title": "remote"})
            assert not made.is_error and made.structured_content == {"number": 1, "title": "remote"}
            leaked = await client.call_tool("reveal", {})
            assert "[redacted]" in text_of(leaked)
        async with rig.client("bare", token, mode) as client:
            from mcp.shared.exceptions import MCPError

            with pytest.raises(MCPError) as refused:  # the server's 401, as one line naming the server
                await client.list_tools()
            assert "MCP server 'bare' could not be started or reached" in str(refused.value)
        assert issues(tmp_path) == ["remote"]
        assert not any(MARK in answer for answer in rig.answers)
        assert MARK not in json.dumps(await rig.gateway.mcp_calls())


# ---------------------------------------------------------------------------------------------- who may call what


async def test_tokens_servers_and_grants_are_checked_before_the_server_acts(tmp_path: Path) -> None:
    servers = {"tracker": tracker(tmp_path), "offered": tracker(tmp_path, tools=["list_issues", "create_issue"])}
    grants = {"alice": {"tracker": ["list_issues", "reveal"], "offered": None}, "bob": {"offered": ["reveal"]}}
    async with serving(tmp_path, servers, grants) as rig:
        alice, bob, carol = [await rig.gateway.mint_token(name) for name in ("alice", "bob", "carol")]
        tools_list = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        assert (await rig.post("tracker", None, tools_list)).status_code == 401
        assert (await rig.post("tracker", alice[:-2] + "xx", tools_list)).status_code == 401
        unknown = await rig.post("nope", alice, tools_list)
        assert unknown.status_code == 404 and "yours: offered, tracker" in unknown.text
        assert (await rig.post("tracker", carol, tools_list)).status_code == 403  # nothing granted
        assert (await rig.post("tracker", bob, tools_list)).status_code == 403  # another server only
        # bob's grant names only a tool [mcp.offered] does not offer: he is offered nothing of it
        async with rig.client("offered", bob) as client:
            assert [t.name for t in (await client.list_tools()).tools] == []
        async with rig.client("tracker", alice) as client:
            from mcp.shared.exceptions import MCPError

            assert sorted(t.name for t in (await client.list_tools()).tools) == ["list_issues", "reveal"]
            for tool in ("create_issue", "CREATE_ISSUE", "big"):
                with pytest.raises(MCPError, match="not offered to you"):
                    await client.call_tool(tool, {"title": "refused", "size": 1})
        async with rig.client("offered", alice) as client:  # every tool granted, of the two offered
            assert sorted(t.name for t in (await client.list_tools()).tools) == ["create_issue", "list_issues"]
            with pytest.raises(MCPError, match="not offered to you"):
                await client.call_tool("reveal", {})
        assert issues(tmp_path) == []  # no refused call reached the tracker
        async with rig.http(alice) as http:
            listed = (await http.get(f"http://127.0.0.1:{rig.gateway.port}/mcp")).json()
        assert listed == {"servers": [{"name": "offered", "description": "", "tools": None},
                                      {"name": "tracker", "description": "", "tools": ["list_issues", "reveal"]}]}
        refused = [r for r in await rig.gateway.mcp_calls() if r["outcome"] == "refused"]
        assert {r["error"] for r in refused} >= {"server_not_found", "server_not_granted", "tool_not_granted"}


async def test_a_revoked_token_is_refused_on_the_next_request(tmp_path: Path) -> None:
    from mcp.shared.exceptions import MCPError

    async with serving(tmp_path, {"tracker": tracker(tmp_path, workers=["alice"])}) as rig:
        token = await rig.gateway.mint_token("alice")
        async with rig.client("tracker", token) as client:
            assert not (await client.call_tool("list_issues", {})).is_error
            await rig.gateway.revoke_token("alice")
            with pytest.raises(MCPError):  # the 401 (the SDK client keeps only "error response")
                await client.call_tool("create_issue", {"title": "after revoke"})
        assert (await rig.post("tracker", token, call("list_issues"))).status_code == 401
        assert issues(tmp_path) == []


@MODES
async def test_set_mcp_applies_on_the_next_call_of_the_same_connection(tmp_path: Path, mode: str) -> None:
    servers = {"tracker": tracker(tmp_path)}
    async with serving(tmp_path, servers, {"alice": {"tracker": ["create_issue", "list_issues"]}}) as rig:
        from mcp.shared.exceptions import MCPError

        token = await rig.gateway.mint_token("alice")
        config = HiclawConfig.model_validate({"mcp": servers})
        async with rig.client("tracker", token, mode) as client:
            assert not (await client.call_tool("create_issue", {"title": "granted"})).is_error
            await rig.gateway.set_mcp(config.mcp, {"alice": {"tracker": ["list_issues"]}})
            with pytest.raises(MCPError, match="not offered to you"):
                await client.call_tool("create_issue", {"title": "revoked"})
            assert [t.name for t in (await client.list_tools()).tools] == ["list_issues"]
            await rig.gateway.set_mcp(config.mcp, {})
            with pytest.raises(MCPError):  # the 403 of a server no longer granted
                await client.call_tool("list_issues", {})
            await rig.gateway.set_mcp(config.mcp, {"alice": {"tracker": None}})
            assert not (await client.call_tool("create_issue", {"title": "granted again"})).is_error
        assert issues(tmp_path) == ["granted", "granted again"]


# ---------------------------------------------------------------------------------------------- the canary


@MODES
async def test_the_servers_secret_reaches_nobody(tmp_path: Path, mode: str) -> None:
    async with serving(tmp_path, {"tracker": tracker(tmp_path, workers=["alice"])}) as rig:
        token = await rig.gateway.mint_token("alice")
        async with rig.client("tracker", token, mode) as client:
            leaked = await client.call_tool("reveal", {})
            # raw and JSON-escaped, each redacted where it stood
            assert text_of(leaked) == 'my token is [redacted] (json: {"t": "[redacted]"})', text_of(leaked)
            assert MARK not in json.dumps(leaked.structured_content)
            failed = await client.call_tool("leak_error", {})
            assert failed.is_error and "cannot authenticate with [redacted]" in text_of(failed)
            assert not (await client.call_tool("create_issue", {"title": CANARY[:4]})).is_error
        assert rig.answers and not any(MARK in answer for answer in rig.answers)
        rows = await rig.gateway.mcp_calls()
        assert {r["tool"] for r in rows} >= {"reveal", "leak_error"} and MARK not in json.dumps(rows)
        await rig.gateway.stop()  # flushed: the state database and every log of the gateway
        holding = [path.relative_to(rig.home) for path in rig.home.rglob("*")
                   if path.is_file() and MARK.encode() in path.read_bytes()]
        # Only the server's own stderr (the SDK logs its failures there), in the admin's logs/ as
        # the server wrote it: it holds the secret anyway.
        assert holding in ([], [Path("logs/mcp-tracker.log")]), holding


# ---------------------------------------------------------------------------------------------- unruly servers


async def test_a_big_result_and_a_slow_tool_are_errors_and_the_next_call_works(tmp_path: Path) -> None:
    server = tracker(tmp_path, workers=["alice"], max_result_bytes=4096, timeout_seconds=2)
    async with serving(tmp_path, {"tracker": server}) as rig:
        token = await rig.gateway.mint_token("alice")
        async with rig.client("tracker", token) as client:
            assert not (await client.call_tool("big", {"size": 1000})).is_error
            big = await client.call_tool("big", {"size": 10_000})
            assert big.is_error and "over its limit of 4096 (max_result_bytes)" in text_of(big)
            slow = await asyncio.wait_for(client.call_tool("slow", {"seconds": 60}), 30)
            assert slow.is_error and "tool 'slow' did not answer within 2 s" in text_of(slow)
            made = await client.call_tool("create_issue", {"title": "after the slow one"})
            assert not made.is_error and made.structured_content == {"number": 1, "title": "after the slow one"}
        rows = [r for r in await rig.gateway.mcp_calls() if r["method"] == "tools/call"]
        assert [(r["tool"], r["outcome"], r["error"]) for r in reversed(rows)] == [
            ("big", "ok", None), ("big", "tool_error", None), ("slow", "failed", "upstream"), ("create_issue", "ok", None)]
        assert rows[-2]["result_bytes"] > 4096  # the answer that was too large, as it was


async def test_a_killed_stdio_server_is_reopened_and_its_call_in_flight_ends(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Killed between calls: the gateway notices (its log says so) and the next call reopens it.
    Killed during a call: that call is an error at once (never retried: it may have acted)."""
    def noticed(count: int) -> bool:
        return caplog.text.count("MCP server tracker: connection lost") >= count

    started = tmp_path / "slow.started"
    server = tracker(tmp_path, workers=["alice"], env={"TRACKER_STARTED": str(started)}, timeout_seconds=30)
    async with serving(tmp_path, {"tracker": server}) as rig:
        token = await rig.gateway.mint_token("alice")
        async with rig.client("tracker", token) as client:
            assert not (await client.call_tool("create_issue", {"title": "one"})).is_error
            [first] = tracker_pids()
            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: noticed(1), timeout=10, what="the gateway noticing the loss")
            assert first not in tracker_pids()
            again = await asyncio.wait_for(client.call_tool("create_issue", {"title": "two"}), 20)
            assert not again.is_error, text_of(again)
            [second] = tracker_pids()
            assert second != first
            in_flight = asyncio.create_task(client.call_tool("slow", {"seconds": 600}))
            await wait_until(started.exists, timeout=20, what="the slow call at the tracker")
            os.kill(second, signal.SIGKILL)
            lost = await asyncio.wait_for(in_flight, 20)  # an error, well before its 30 s timeout
            assert lost.is_error and "the connection was lost during tool 'slow'" in text_of(lost), text_of(lost)
            third = await asyncio.wait_for(client.call_tool("create_issue", {"title": "three"}), 20)
            assert not third.is_error, text_of(third)
        assert issues(tmp_path) == ["one", "two", "three"]


@pytest.mark.parametrize(("name", "command", "args"), [
    ("ghost", "/nonexistent/mcp-server", []),
    ("quitter", sys.executable, ["-c", "import sys; sys.exit(3)"]),
    ("babbler", sys.executable, ["-c", "print('hello, not JSON-RPC'); import time; time.sleep(0.2)"]),
])
async def test_a_server_that_cannot_serve_is_one_clear_error(tmp_path: Path, name: str, command: str,
                                                            args: list[str]) -> None:
    servers = {name: {"command": command, "args": args, "workers": ["alice"]}, "tracker": tracker(tmp_path,
                                                                                                  workers=["alice"])}
    async with serving(tmp_path, servers) as rig:
        token = await rig.gateway.mint_token("alice")
        with pytest.raises(InvalidInputError) as caught:
            await asyncio.wait_for(rig.gateway.mcp_tools(name), 30)
        assert f"MCP server {name!r} could not be started or reached" in str(caught.value)
        answer = await asyncio.wait_for(rig.post(name, token, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}), 30)
        error = answer.json()["error"]
        assert f"MCP server {name!r} could not be started or reached" in error["message"]
        assert "Traceback" not in answer.text and command not in error["message"]
        async with rig.client(name, token) as client:
            result = await asyncio.wait_for(client.call_tool("anything", {}), 30)  # an error result, never a hang
            assert result.is_error and f"MCP server {name!r}" in text_of(result)
        async with rig.client("tracker", token) as client:  # the others are not affected
            assert not (await client.call_tool("list_issues", {})).is_error


# ---------------------------------------------------------------------------------------------- bad input


async def test_malformed_requests_are_refused_and_attribution_is_the_gateways(tmp_path: Path) -> None:
    async with serving(tmp_path, {"tracker": tracker(tmp_path, workers=["alice"])}, max_body_bytes=8192) as rig:
        token = await rig.gateway.mint_token("alice")
        broken = await rig.post("tracker", token, b'{"jsonrpc": "2.0", "id": 1, "method": ')
        assert broken.status_code == 400 and broken.json()["error"]["code"] == -32700  # parse error
        assert (await rig.post("tracker", token, b"[]")).status_code == 400
        typed = await rig.post("tracker", token, call("create_issue", {"title": "typed"}), **{"Content-Type": "text/plain"})
        assert typed.status_code in (400, 415)
        huge = await rig.post("tracker", token, call("create_issue", {"title": "x" * 10_000}))
        assert huge.status_code == 413
        assert issues(tmp_path) == []
        # Attribution comes from the control plane's assignments: a task tag counts only when it
        # names one of the consumer's own tasks, and the project is always the plane's.
        await rig.gateway.set_assignments("alice", {"task-007": "proj-002"})
        forged = {"X-Hiclaw-Task": "task-999", "X-Hiclaw-Project": "proj-999", "X-Hiclaw-Consumer": "bob"}
        for title, headers in (("forged", forged), ("own task", {**forged, "X-Hiclaw-Task": "task-007"})):
            async with rig.client("tracker", token, **headers) as client:
                assert not (await client.call_tool("create_issue", {"title": title})).is_error
        rows = [(r["consumer"], r["task"], r["project"]) for r in await rig.gateway.mcp_calls()
                if r["tool"] == "create_issue" and r["outcome"] == "ok"]
        assert rows == [("alice", "task-007", "proj-002"), ("alice", None, "proj-002")]
        assert issues(tmp_path) == ["forged", "own task"]


# ---------------------------------------------------------------------------------------------- a foreign server


@MODES
async def test_a_server_nobody_here_wrote_passes_through_unchanged(tmp_path: Path, everything: Path,
                                                                   mode: str) -> None:
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.shared.exceptions import MCPError

    node = shutil.which("node")
    assert node is not None
    async with Client(StdioServerParameters(command=node, args=[str(everything), "stdio"])) as direct:
        theirs = {t.name: t.input_schema for t in (await direct.list_tools()).tools}
    assert "echo" in theirs and len(theirs) > 3
    servers = {"everything": {"command": node, "args": [str(everything), "stdio"]}}
    async with serving(tmp_path, servers, {"alice": {"everything": None}, "bob": {"everything": ["echo"]}}) as rig:
        async with rig.client("everything", await rig.gateway.mint_token("alice"), mode) as client:
            assert client.protocol_version == VERSIONS[mode]
            ours = {t.name: t.input_schema for t in (await client.list_tools()).tools}
            assert ours == theirs  # every tool and schema as the server gave them
            echoed = await client.call_tool("echo", {"message": f"hello in {mode}"})
            assert not echoed.is_error and f"hello in {mode}" in text_of(echoed)
        async with rig.client("everything", await rig.gateway.mint_token("bob"), mode) as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
            other = next(name for name in theirs if name != "echo")
            with pytest.raises(MCPError, match="not offered to you"):
                await client.call_tool(other, {})
        outcomes = {(r["consumer"], r["tool"], r["outcome"]) for r in await rig.gateway.mcp_calls()}
        assert ("alice", "echo", "ok") in outcomes and ("bob", other, "refused") in outcomes
