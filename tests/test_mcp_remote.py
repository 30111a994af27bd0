"""A remote MCP server (Streamable HTTP) behind the gateway: the tests' tracker served by the SDK
over HTTP, requiring ``Authorization: Bearer <secret>``. The gateway adds the header from its
secrets; the consumer never sends or sees it, and a wrong secret is one clear error."""
from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import SecretStr

from hiclaw.config import HiclawConfig
from hiclaw.host import ComponentContext, PluginHost
from hiclaw.plugins.gateways import embedded

SECRET = "remote-canary-" + secrets.token_hex(10)


async def gateway_for(tmp_path: Path, url: str, secret: str) -> Any:
    config = HiclawConfig.model_validate({"mcp": {"remote": {"url": url, "secret": "remote_key", "workers": ["alice"],
                                                             "headers": {"X-Team": "acme"}}}})
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded)],
                      secret_source=lambda n: SecretStr(secret) if n == "remote_key" else None)
    gateway = host.create("gateway", "embedded-gateway", {"port": 0}, ComponentContext(home=tmp_path, config=config))
    await gateway.start()
    return gateway


@pytest_asyncio.fixture
async def up(remote_tracker: Callable[[str], Awaitable[str]]) -> str:
    return await remote_tracker(SECRET)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_gateway_adds_the_remote_servers_credential(tmp_path: Path, up: str, mode: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    gateway = await gateway_for(tmp_path, up, SECRET)
    try:
        token = await gateway.mint_token("alice")
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
        url = f"http://127.0.0.1:{gateway.port}/mcp/remote"
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            made = await client.call_tool("create_issue", {"title": "remote"})
            assert not made.is_error and made.structured_content == {"number": 1, "title": "remote"}
            leaked = await client.call_tool("reveal", {})
            text = "\n".join(getattr(part, "text", "") for part in leaked.content)
            assert "[redacted]" in text and SECRET not in text and SECRET not in str(leaked.structured_content)
        assert (tmp_path / "issues.jsonl").read_text().count('"remote"') == 1
        assert SECRET not in caplog.text
    finally:
        await gateway.stop()
        gateway.store.close()


async def test_a_wrong_remote_secret_is_one_clear_error(tmp_path: Path, up: str) -> None:
    import httpx2

    gateway = await gateway_for(tmp_path, up, "not-the-secret")
    try:
        from hiclaw.errors import InvalidInputError

        with pytest.raises(InvalidInputError) as caught:
            await gateway.mcp_tools("remote")
        assert "MCP server 'remote' could not be started or reached" in str(caught.value)
        assert "not-the-secret" not in str(caught.value)
        token = await gateway.mint_token("alice")
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}",
                                               "Accept": "application/json, text/event-stream"}) as http:
            answer = await http.post(f"http://127.0.0.1:{gateway.port}/mcp/remote",
                                     json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert answer.status_code == 200 and "could not be started or reached" in answer.text
    finally:
        await gateway.stop()
        gateway.store.close()
