"""The worker's own MCP client (hiclaw.worker.mcp) against the real gateway and a real SDK server:
what the model is offered for small and big catalogues, calls and their failures, a revocation
seen on the next call, SSE answers, and that a worker never imports the MCP SDK."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from pydantic import SecretStr

from hiclaw.config import HiclawConfig
from hiclaw.errors import InvalidInputError
from hiclaw.host import ComponentContext, PluginHost
from hiclaw.plugins.gateways import embedded
from hiclaw.worker.http import WorkerGatewayClient
from hiclaw.worker.mcp import DIRECT_LIMIT, WorkerMcp, object_schema, render_result
from hiclaw.worker.mcp_client import MODERN, sse_message

TRACKER = Path(__file__).parent / "mcp_servers" / "tracker.py"
CANARY = "client-canary-" + secrets.token_hex(8)


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Any]:
    def server(extra: int) -> dict[str, Any]:
        return {"command": sys.executable, "args": [str(TRACKER), "stdio"],
                "secret_env": {"TRACKER_TOKEN": "tracker_token"},
                "env": {"TRACKER_FILE": str(tmp_path / "issues.jsonl"), "TRACKER_MANY": str(extra)}}

    config = HiclawConfig.model_validate({"mcp": {"small": server(0), "big": server(DIRECT_LIMIT + 4)}})
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded)],
                      secret_source=lambda n: SecretStr(CANARY) if n == "tracker_token" else None)
    gateway = host.create("gateway", "embedded-gateway", {"port": 0}, ComponentContext(home=tmp_path, config=config))
    await gateway.set_mcp(config.mcp, {"alice": {"small": None}, "bob": {"small": None, "big": None}})
    await gateway.start()
    clients = {name: WorkerGatewayClient(f"http://127.0.0.1:{gateway.port}/v1", await gateway.mint_token(name))
               for name in ("alice", "bob", "carol")}
    try:
        yield SimpleNamespace(gateway=gateway, config=config, clients=clients, issues=tmp_path / "issues.jsonl")
    finally:
        for client in clients.values():
            await client.aclose()
        await gateway.stop()
        gateway.store.close()


async def test_a_small_catalogue_becomes_ordinary_tools(rig: Any) -> None:
    mcp = WorkerMcp(rig.clients["alice"])
    await mcp.refresh("task-001")
    assert mcp.client.endpoints["small"].era == MODERN  # the gateway's SDK server takes the current revision
    specs = {spec.name: spec for spec in mcp.specs("task-001")}
    assert sorted(specs) == ["mcp__small__big", "mcp__small__create_issue", "mcp__small__fail", "mcp__small__leak_error",
                             "mcp__small__list_issues", "mcp__small__reveal", "mcp__small__slow"]
    create = specs["mcp__small__create_issue"]
    assert create.description.startswith("[MCP small] Open an issue")
    assert create.parameters["type"] == "object" and "title" in create.parameters["properties"]
    answer = await create.handler({"title": "hello"})
    assert json.loads(answer)["number"] == 1 and "hello" in rig.issues.read_text()
    assert CANARY not in await specs["mcp__small__reveal"].handler({})
    with pytest.raises(InvalidInputError, match="failed"):
        await specs["mcp__small__fail"].handler({"reason": "boom"})
    rows = await rig.gateway.mcp_calls()
    assert {r["task"] for r in rows if r["method"] == "tools/call"} == {"task-001"}  # no assignments: its own tag


async def test_a_big_catalogue_is_disclosed_progressively(rig: Any) -> None:
    mcp = WorkerMcp(rig.clients["bob"])
    await mcp.refresh(None)
    assert len(mcp.tools) == 7 + DIRECT_LIMIT + 4 + 7  # the tracker's 7 tools on both servers, the extras on big
    specs = {spec.name: spec for spec in mcp.specs(None)}
    assert sorted(specs) == ["mcp_call", "mcp_tools"]
    assert "big" in specs["mcp_tools"].description and "small" in specs["mcp_tools"].description
    found = await specs["mcp_tools"].handler({"server": "big", "query": "extra_01"})
    assert [t["tool"] for t in found["tools"]] == [f"extra_{i:03d}" for i in range(10, 20)]
    one = await specs["mcp_tools"].handler({"server": "big", "tool": "extra_003"})
    assert one["input_schema"]["properties"]["n"]["type"] == "integer"
    assert await specs["mcp_call"].handler({"server": "big", "tool": "extra_003", "arguments": {"n": 7}}) == "tool 3: 7"
    with pytest.raises(InvalidInputError, match="arguments of 'extra_003'"):
        await specs["mcp_call"].handler({"server": "big", "tool": "extra_003", "arguments": {"n": "seven"}})
    with pytest.raises(InvalidInputError, match="no tool 'nope'"):
        await specs["mcp_call"].handler({"server": "big", "tool": "nope"})


async def test_revocations_and_ungranted_servers(rig: Any) -> None:
    mcp = WorkerMcp(rig.clients["alice"])
    await mcp.refresh("task-001")
    create = next(s for s in mcp.specs("task-001") if s.name == "mcp__small__create_issue")
    await rig.gateway.set_mcp(rig.config.mcp, {"alice": {"small": ["list_issues"]}})
    with pytest.raises(InvalidInputError, match="not offered to you"):
        await create.handler({"title": "late"})
    await rig.gateway.set_mcp(rig.config.mcp, {})
    with pytest.raises(InvalidInputError, match="not granted MCP server 'small'"):
        await create.handler({"title": "later"})
    assert not rig.issues.exists()
    await mcp.refresh("task-002")  # the next task: nothing offered any more
    assert mcp.specs("task-002") == []
    with pytest.raises(InvalidInputError, match="not granted to you"):
        await mcp.call("small", "list_issues", {})
    nobody = WorkerMcp(rig.clients["carol"])
    await nobody.refresh(None)
    assert nobody.specs(None) == []


def test_results_and_schemas_as_the_model_sees_them() -> None:
    assert render_result({"content": [{"type": "text", "text": "a"}, {"type": "image", "mimeType": "image/png",
                                                                       "data": "AAAA"}]}) == \
        "a\n[image image/png, 4 base64 characters]"
    assert render_result({"content": [], "structuredContent": {"x": 1}}) == '{"x": 1}'
    assert render_result({}) == "(no content)"
    assert "characters cut" in render_result({"content": [{"type": "text", "text": "x" * 50000}]})
    assert object_schema({"type": "string"}) == {"type": "object", "properties": {}}
    assert object_schema({"$schema": "x", "type": "object", "properties": {}}) == {"type": "object", "properties": {}}
    body = (b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
            b'event: message\ndata: {"jsonrpc":"2.0","id":3,"result":{"ok":true}}\n\n')
    assert sse_message(body, 3) == {"jsonrpc": "2.0", "id": 3, "result": {"ok": True}}
    assert sse_message(body, 4) is None


def test_a_worker_never_imports_the_mcp_sdk() -> None:
    code = ("import sys, hiclaw.worker.runtime, hiclaw.worker.mcp, hiclaw.worker.tools; "
            "print([m for m in sys.modules if m == 'mcp' or m.startswith(('mcp.', 'mcp_types', 'starlette', 'httpx2'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout
