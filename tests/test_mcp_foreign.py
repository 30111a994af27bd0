"""An MCP server nobody here wrote, behind the gateway: ``@modelcontextprotocol/server-everything``
(the reference server of the MCP project, from npm; pinned). Installed once into a cache folder
with npm (skipped, saying why, only if npm cannot fetch it), run by the gateway as a stdio
server, and used through ``/mcp/everything`` by the official SDK client (both protocol eras) and
by the worker's own MCP client."""
from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from hiclaw.config import HiclawConfig
from hiclaw.host import ComponentContext, PluginHost
from hiclaw.plugins.gateways import embedded
from hiclaw.worker.http import WorkerGatewayClient
from hiclaw.worker.mcp import WorkerMcp


@pytest_asyncio.fixture
async def rig(tmp_path: Path, everything: Path) -> AsyncIterator[Any]:
    node = shutil.which("node")
    config = HiclawConfig.model_validate({"mcp": {"everything": {
        "command": node, "args": [str(everything), "stdio"], "tools": ["echo", "get-sum"],
        "description": "the MCP reference server", "workers": ["alice"]}}})
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded)],
                      secret_source=lambda name: None)
    gateway = host.create("gateway", "embedded-gateway", {"port": 0}, ComponentContext(home=tmp_path, config=config))
    await gateway.start()
    token = await gateway.mint_token("alice")
    try:
        yield SimpleNamespace(gateway=gateway, token=token, url=f"http://127.0.0.1:{gateway.port}/mcp/everything")
    finally:
        await gateway.stop()
        gateway.store.close()


def text_of(result: Any) -> str:
    return "\n".join(getattr(part, "text", "") for part in result.content)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_reference_server_behind_the_gateway(rig: Any, mode: str) -> None:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    offered = {t["name"] for t in await rig.gateway.mcp_tools("everything")}
    assert offered == {"echo", "get-sum"}  # of its many tools, the two [mcp.everything] tools offers
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {rig.token}"})
    async with Client(streamable_http_client(rig.url, http_client=http), mode=mode) as client:
        assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
        assert sorted(t.name for t in (await client.list_tools()).tools) == ["echo", "get-sum"]
        echoed = await client.call_tool("echo", {"message": "hello from hiclaw"})
        assert not echoed.is_error and "hello from hiclaw" in text_of(echoed)
        summed = await client.call_tool("get-sum", {"a": 2, "b": 40})
        assert not summed.is_error and "42" in text_of(summed)
    rows = [(r["tool"], r["outcome"]) for r in await rig.gateway.mcp_calls() if r["method"] == "tools/call"]
    assert ("echo", "ok") in rows and ("get-sum", "ok") in rows


async def test_a_worker_uses_the_reference_server(rig: Any) -> None:
    client = WorkerGatewayClient(rig.url.rsplit("/mcp/", 1)[0] + "/v1", rig.token)
    try:
        mcp = WorkerMcp(client)
        await mcp.refresh(None)
        specs = {spec.name: spec for spec in mcp.specs(None)}
        assert sorted(specs) == ["mcp__everything__echo", "mcp__everything__get-sum"]
        assert "hello" in await specs["mcp__everything__echo"].handler({"message": "hello"})
    finally:
        await client.aclose()
