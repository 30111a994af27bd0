"""A hostile consumer against the gateway's MCP endpoint, byte for byte (raw HTTP, no MCP client to
tidy its requests): every attack must be refused before the server acts — proven by the
tracker's issue file on the host, which only a call that reached the tracker can write — and the
server's credential must come back in no answer."""
from __future__ import annotations

import json
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest_asyncio
from pydantic import SecretStr

from hiclaw.config import HiclawConfig
from hiclaw.host import ComponentContext, PluginHost
from hiclaw.plugins.gateways import embedded

TRACKER = Path(__file__).parent / "mcp_servers" / "tracker.py"
CANARY = "hostile-canary-" + secrets.token_hex(10)
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Any]:
    issues = tmp_path / "issues.jsonl"
    config = HiclawConfig.model_validate({"mcp": {"tracker": {
        "command": sys.executable, "args": [str(TRACKER), "stdio"], "secret_env": {"TRACKER_TOKEN": "tracker_token"},
        "env": {"TRACKER_FILE": str(issues)}}}})
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded)],
                      secret_source=lambda n: SecretStr(CANARY) if n == "tracker_token" else None)
    gateway = host.create("gateway", "embedded-gateway", {"port": 0, "max_body_bytes": 8192},
                          ComponentContext(home=tmp_path, config=config))
    await gateway.set_mcp(config.mcp, {"mallory": {"tracker": ["list_issues", "reveal"]}})
    await gateway.start()
    token = await gateway.mint_token("mallory")
    base = f"http://127.0.0.1:{gateway.port}"
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}", **ACCEPT}) as http:
        try:
            yield SimpleNamespace(gateway=gateway, http=http, issues=issues, base=base, token=token)
        finally:
            await gateway.stop()
            gateway.store.close()


def rpc(method: str, params: dict[str, Any] | None = None, ident: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "method": method, **({"params": params} if params is not None else {})}


def create(title: str = "pwned") -> dict[str, Any]:
    return rpc("tools/call", {"name": "create_issue", "arguments": {"title": title}})


async def test_an_ungranted_tool_is_refused_in_every_wrapping(rig: Any) -> None:
    attempts = [
        create(),                                                       # bare, no handshake
        {**create(), "params": {"name": "create_issue ", "arguments": {"title": "x"}}},  # a near name
        {**create(), "params": {"name": "CREATE_ISSUE", "arguments": {"title": "x"}}},
        [create(), rpc("tools/list", ident=2)],                           # a batch
        {**create(), "method": "tools/call", "params": {"name": "create_issue", "arguments": {"title": "x"},
                                                         "_meta": {"tool": "list_issues"}}},
    ]
    for body in attempts:
        answer = await rig.http.post("/mcp/tracker", content=json.dumps(body))
        assert answer.status_code in (200, 400), answer.text
        assert '"isError":false' not in answer.text.replace(" ", "") or "create_issue" not in answer.text
    with_version = await rig.http.post("/mcp/tracker", json=create(), headers={"MCP-Protocol-Version": "2026-07-28"})
    assert "number" not in with_version.text
    assert not rig.issues.exists()  # nothing reached the tracker's write
    refused = [r for r in await rig.gateway.mcp_calls() if r["outcome"] == "refused"]
    assert refused and all(r["consumer"] == "mallory" for r in refused)


async def test_other_methods_are_not_passed_to_the_server(rig: Any) -> None:
    for method in ("resources/list", "resources/read", "prompts/list", "prompts/get", "completion/complete",
                   "logging/setLevel", "sampling/createMessage"):
        answer = await rig.http.post("/mcp/tracker", json=rpc(method, {"uri": "file:///etc/passwd", "name": "x"}))
        assert "passwd" not in answer.text.replace("file:///etc/passwd", "") and CANARY not in answer.text
        body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        assert "result" not in body or not body["result"].get("contents"), (method, answer.text)


async def test_paths_tokens_and_sizes(rig: Any) -> None:
    for path in ("/mcp/tracker/../../v1/models", "/mcp/..%2fv1", "/mcp/tracker%00", "/mcp/Tracker", "/mcp/tracker/extra",
                 "/mcp/%74racker"):  # the last is the same server, decoded: still only the granted tools
        answer = await rig.http.post(path, json=create())
        assert answer.status_code in (200, 400, 404, 405), (path, answer.status_code, answer.text)
        assert answer.status_code != 200 or "not offered to you" in answer.text, (path, answer.text)
    async with httpx.AsyncClient(base_url=rig.base, headers=ACCEPT) as anonymous:
        assert (await anonymous.post("/mcp/tracker", json=create())).status_code == 401
        assert (await anonymous.post("/mcp/tracker", json=create(),
                                     headers={"Authorization": "Bearer " + rig.token[:-1]})).status_code == 401
        assert (await anonymous.get("/mcp", headers={"Authorization": "Bearer nope"})).status_code == 401
    big = await rig.http.post("/mcp/tracker", json=rpc("tools/call", {"name": "list_issues",
                                                                      "arguments": {"x": "y" * 20000}}))
    assert big.status_code == 413
    await rig.gateway.revoke_token("mallory")
    assert (await rig.http.post("/mcp/tracker", json=rpc("tools/list"))).status_code == 401
    assert not rig.issues.exists()


async def test_forged_attribution_and_the_leaky_tool(rig: Any) -> None:
    await rig.gateway.set_assignments("mallory", {"task-007": "proj-002"})
    answer = await rig.http.post("/mcp/tracker", json=rpc("tools/call", {"name": "reveal", "arguments": {}}),
                                 headers={"X-Hiclaw-Task": "task-999", "X-Hiclaw-Project": "proj-999"})
    assert answer.status_code == 200 and "[redacted]" in answer.text and CANARY not in answer.text
    row = next(r for r in await rig.gateway.mcp_calls() if r["tool"] == "reveal")
    assert (row["task"], row["project"]) != ("task-999", "proj-999")  # headers are never trusted
    assert row["project"] == "proj-002"
    listed = await rig.http.get("/mcp")
    assert listed.json() == {"servers": [{"name": "tracker", "description": "", "tools": ["list_issues", "reveal"]}]}
    assert CANARY not in listed.text and "tracker.py" not in listed.text  # no command, no secret
