"""Who may use which MCP server and egress route (hiclaw.control.access, issue 17): config's
standing grants joined with run-time grants in the state DB, the CLI that changes them (team
stopped: the state DB; team running: the control API), and the real gateway applying a change
on the very next call of an independent MCP client (the official SDK)."""
from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from hiclaw.cli import cli
from hiclaw.config import HiclawConfig, load_config, save_config
from hiclaw.control.access import AccessBook, LiveAccess, access_tools, joined, worker_mcp, worker_routes
from hiclaw.errors import HiclawError, InvalidInputError, NotFoundError
from hiclaw.host import ComponentContext, PluginHost
from hiclaw.plugins.gateways import embedded
from hiclaw.state import StateDB, Worker

TRACKER = Path(__file__).parent / "mcp_servers" / "tracker.py"
CANARY = "access-canary-" + secrets.token_hex(10)


def config_with(tmp_path: Path) -> HiclawConfig:
    return HiclawConfig.model_validate({
        "mcp": {"tracker": {"command": sys.executable, "args": [str(TRACKER), "stdio"],
                            "secret_env": {"TRACKER_TOKEN": "tracker_token"},
                            "env": {"TRACKER_FILE": str(tmp_path / "issues.jsonl")},
                            "workers": ["carol"], "description": "the issue tracker"},
                "locked": {"url": "http://127.0.0.1:9/mcp", "secret": "tracker_token", "manager_grants": False,
                           "tools": ["read"]}},
        "egress": {"api": {"base_url": "http://127.0.0.1:9", "secret": "tracker_token", "header": "X-Key",
                           "workers": ["carol"]}}})


@pytest.fixture
def book(tmp_path: Path) -> AccessBook:
    state = StateDB(tmp_path / "state.db")
    for name in ("alice", "bob", "carol"):
        state.upsert_worker(Worker(name=name, role="r", model="smart"))
    return AccessBook(config_with(tmp_path), state)


def test_standing_and_run_time_grants_join(book: AccessBook) -> None:
    assert joined(book.config, ()).mcp == {"carol": {"tracker": None}}
    book.grant("alice", "mcp", "tracker", ["create_issue"])
    book.grant("alice", "mcp", "tracker", ["list_issues"])  # added to the first
    book.grant("bob", "mcp", "tracker")
    book.grant("bob", "egress", "api")
    access = book.access()
    assert access.mcp == {"carol": {"tracker": None}, "alice": {"tracker": ["create_issue", "list_issues"]},
                          "bob": {"tracker": None}}
    assert access.egress == {"carol": ["api"], "bob": ["api"]}
    assert [g["server"] for g in worker_mcp(book.config, "alice", access)] == ["tracker"]
    assert worker_mcp(book.config, "alice", access)[0]["tools"] == ["create_issue", "list_issues"]
    assert [r["name"] for r in worker_routes(book.config, "bob", access)] == ["api"]
    assert worker_routes(book.config, "alice", access) == []
    # A server removed from config: its run-time grants stay in the DB but grant nothing.
    smaller = book.config.model_copy(update={"mcp": {}})
    assert joined(smaller, book.state.tool_grants()).mcp == {}


def test_revoke_takes_back_tools_or_the_whole_grant(book: AccessBook) -> None:
    book.grant("alice", "mcp", "tracker", ["create_issue", "list_issues"])
    assert "create_issue" in book.revoke("alice", "mcp", "tracker", ["create_issue"])
    assert book.access().mcp["alice"] == {"tracker": ["list_issues"]}
    assert "no tool left" in book.revoke("alice", "mcp", "tracker", ["list_issues"])
    assert "alice" not in book.access().mcp
    book.grant("alice", "mcp", "tracker")
    with pytest.raises(InvalidInputError, match="every tool"):
        book.revoke("alice", "mcp", "tracker", ["create_issue"])
    book.revoke("alice", "mcp", "tracker")
    assert "alice" not in book.access().mcp


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda b: b.grant("alice", "mcp", "nope"), NotFoundError, "no MCP server 'nope' is configured (configured: locked, tracker)"),
    (lambda b: b.grant("alice", "egress", "nope"), NotFoundError, "no egress route 'nope'"),
    (lambda b: b.grant("zed", "mcp", "tracker"), NotFoundError, "no worker 'zed'"),
    (lambda b: b.grant("alice", "shell", "tracker"), InvalidInputError, "unknown grant kind"),
    (lambda b: b.grant("alice", "egress", "api", ["x"]), InvalidInputError, "granted whole"),
    (lambda b: b.grant("alice", "mcp", "locked", ["write"]), InvalidInputError, "offers only read"),
    (lambda b: b.grant("alice", "mcp", "tracker", ["bad name!"]), InvalidInputError, "not a tool name"),
    (lambda b: b.grant("alice", "mcp", "locked", by="manager"), InvalidInputError, "only the admin may grant"),
    (lambda b: b.revoke("carol", "mcp", "tracker"), InvalidInputError, "in config.toml"),
    (lambda b: b.revoke("alice", "mcp", "tracker"), NotFoundError, "has no grant"),
])
def test_bad_grants_are_refused_with_one_line(book: AccessBook, call: Any, error: type, words: str) -> None:
    with pytest.raises(error) as caught:
        call(book)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert book.state.tool_grants() == []  # nothing written


def test_cli_grants_on_a_stopped_team(tmp_path: Path, book: AccessBook) -> None:
    home = tmp_path
    save_config(book.config, home)
    runner = CliRunner()
    env = {"HICLAW_HOME": str(home)}
    result = runner.invoke(cli, ["mcp", "grant", "alice", "tracker", "--tools", "create_issue,list_issues"], env=env)
    assert result.exit_code == 0, result.output
    assert "granted mcp tracker to alice (create_issue, list_issues)" in result.output
    result = runner.invoke(cli, ["mcp", "list", "--json"], env=env)
    grants = json.loads(result.output)["grants"]
    assert {"worker": "alice", "kind": "mcp", "name": "tracker", "tools": ["create_issue", "list_issues"],
            "source": "admin"} in grants
    assert {"worker": "carol", "kind": "mcp", "name": "tracker", "tools": None, "source": "config"} in grants
    result = runner.invoke(cli, ["egress", "grant", "bob", "api"], env=env)
    assert result.exit_code == 0 and "granted egress api to bob" in result.output
    result = runner.invoke(cli, ["egress", "list"], env=env)
    assert "bob (admin)" in result.output and "carol (config)" in result.output
    result = runner.invoke(cli, ["mcp", "revoke", "carol", "tracker"], env=env)
    assert result.exit_code == 1 and "in config.toml" in str(result.exception)
    result = runner.invoke(cli, ["mcp", "revoke", "alice", "tracker"], env=env)
    assert result.exit_code == 0, result.output
    state = StateDB(home / "state.db", readonly=True)
    assert [(g.worker, g.kind) for g in state.tool_grants()] == [("bob", "egress")]
    state.close()


def test_cli_adds_and_removes_servers_in_config(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"HICLAW_HOME": str(tmp_path)}
    result = runner.invoke(cli, ["mcp", "add", "gh", "--url", "https://mcp.example.com/mcp", "--secret", "gh_pat",
                                 "--tools", "search,get_issue", "--worker", "alice", "--description", "GitHub"], env=env)
    assert result.exit_code == 0, result.output
    assert "set the secret(s) gh_pat in secrets.toml" in result.output
    server = load_config(tmp_path).mcp["gh"]
    assert (server.url, server.secret, server.format, server.tools, server.workers) == \
        ("https://mcp.example.com/mcp", "gh_pat", "Bearer {secret}", ["get_issue", "search"], ["alice"])
    bad = runner.invoke(cli, ["mcp", "add", "gh2", "--url", "https://user:pw@example.com/"], env=env)
    assert bad.exit_code == 1 and "not a base URL" in str(bad.exception) and "gh2" not in load_config(tmp_path).mcp
    both = runner.invoke(cli, ["mcp", "add", "x", "--command", "x", "--url", "http://h"], env=env)
    assert both.exit_code == 1 and "exactly one of `command`" in str(both.exception)
    bad_env = runner.invoke(cli, ["mcp", "add", "y", "--command", "y", "--secret-env", "NOVALUE"], env=env)
    assert bad_env.exit_code == 1 and "is not KEY=VALUE" in str(bad_env.exception)
    assert runner.invoke(cli, ["mcp", "remove", "gh"], env=env).exit_code == 0
    assert load_config(tmp_path).mcp == {}
    gone = runner.invoke(cli, ["mcp", "remove", "gh"], env=env)
    assert gone.exit_code == 1 and "no MCP server 'gh'" in str(gone.exception)
    # What a user sees: one line naming the fix, no traceback.
    import subprocess

    typed = subprocess.run([sys.executable, "-m", "hiclaw", "mcp", "grant", "alice", "gh"], capture_output=True, check=False,
                           text=True, env={**__import__("os").environ, "HICLAW_HOME": str(tmp_path)}, timeout=60)
    assert typed.returncode != 0 and "Traceback" not in typed.stderr
    assert typed.stderr.strip().count("\n") == 0 and typed.stderr.startswith("error: ")


async def test_a_change_applies_on_the_next_call(tmp_path: Path, book: AccessBook,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Grant, then revoke one tool, then the whole server, while one SDK client stays connected."""
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    config = book.config.model_copy(update={"mcp": {"tracker": book.config.mcp["tracker"]}, "egress": {}})
    book = AccessBook(config, book.state)
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded)],
                      secret_source=lambda n: SecretStr(CANARY) if n == "tracker_token" else None)
    gateway = host.create("gateway", "embedded-gateway", {"port": 0}, ComponentContext(home=tmp_path, config=config))
    live = LiveAccess(book, gateway=gateway, plugin="embedded-gateway")
    await live.apply()
    await gateway.start()
    try:
        token = await gateway.mint_token("alice")
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
        url = f"http://127.0.0.1:{gateway.port}/mcp/tracker"
        refused = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 403 and "not granted MCP server 'tracker'" in refused.text  # nothing granted yet
        await live.grant("alice", "mcp", "tracker", ["create_issue", "list_issues"])
        async with Client(streamable_http_client(url, http_client=httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {token}"}))) as client:
            assert sorted(t.name for t in (await client.list_tools()).tools) == ["create_issue", "list_issues"]
            made = await client.call_tool("create_issue", {"title": "first"})
            assert not made.is_error
            await live.revoke("alice", "mcp", "tracker", ["create_issue"])
            with pytest.raises(MCPError, match="not offered to you"):
                await client.call_tool("create_issue", {"title": "second"})
            assert [t.name for t in (await client.list_tools()).tools] == ["list_issues"]
            # The Manager's tools do the same through the same code (by="manager").
            tools = {spec.name: spec for spec in access_tools(live)}
            await tools["revoke_access"].handler({"worker": "alice", "kind": "mcp", "name": "tracker"})
            with pytest.raises(MCPError):  # HTTP 403 (the SDK client keeps only "error response")
                await client.call_tool("list_issues", {})
            assert gateway.store.mcp_calls(1)[0]["error"] == "server_not_granted"
        issues = (tmp_path / "issues.jsonl").read_text().splitlines()
        assert [json.loads(line)["title"] for line in issues] == ["first"]  # the refused call never arrived
        outcomes = [(r["tool"], r["outcome"]) for r in reversed(gateway.store.mcp_calls(50)) if r["method"] == "tools/call"]
        assert ("create_issue", "ok") in outcomes and ("create_issue", "refused") in outcomes
        usage = await gateway.tool_usage()  # what `hiclaw usage` adds to its table
        assert [(u["consumer"], u["kind"], u["name"], u["calls"], u["refused"]) for u in usage] == \
            [("alice", "mcp", "tracker", 2, 1)]
        events = [e["kind"] for e in book.state.events()]
        assert events.count("access_granted") == 1 and events.count("access_revoked") == 2
        assert CANARY not in caplog.text
    finally:
        await gateway.stop()
        gateway.store.close()


def test_manager_cannot_grant_what_the_admin_locked(book: AccessBook) -> None:
    with pytest.raises(HiclawError, match="only the admin"):
        book.grant("alice", "mcp", "locked", by="manager")


def test_only_turns_the_admin_started_may_grant() -> None:
    """A worker's message or a wake-up gives the Manager only its judgement tools: not these."""
    from hiclaw.manager.origin import JUDGEMENT_TOOLS

    assert not {"grant_access", "revoke_access", "list_access"} & set(JUDGEMENT_TOOLS)


async def test_a_gateway_without_mcp_refuses_a_team_with_servers(tmp_path: Path) -> None:
    from hiclaw.config import Secrets
    from hiclaw.control.access import apply_access, check_access
    from hiclaw.errors import ConfigError, PluginError

    config = HiclawConfig.model_validate({"mcp": {"x": {"command": "x", "secret_env": {"X_TOKEN": "x_token"}}}})
    with pytest.raises(PluginError, match=r"cannot serve \[mcp\] servers \(x\): it lacks set_mcp"):
        await apply_access(config, object(), "thirdparty", joined(config, ()))
    await apply_access(HiclawConfig(), object(), "thirdparty", joined(HiclawConfig(), ()))  # nothing configured
    with pytest.raises(ConfigError, match="MCP server 'x' needs the secret 'x_token', which is not set"):
        check_access(config, Secrets.load(tmp_path, environ={}))
    check_access(config, Secrets.load(tmp_path, environ={"X_TOKEN": "v"}))
