"""The worker's MCP client (hiclaw.worker.mcp, .mcp_client) on the wire against the official SDK's
own servers: lowlevel ``mcp.server.Server`` apps served over Streamable HTTP by the SDK's session
manager under uvicorn, mounted at ``/mcp/<server>`` behind a bearer check that answers as the
gateway does (401 token, 403 grant, 404 server, ``GET /mcp``), driven through the worker's
gateway client (aiohttp). The current revision (2026-07-28, with ``Mcp-Param-*`` headers the SDK
checks, and an SSE answer), the handshake fallback (an endpoint that refuses the modern one; SSE
answers, a session id), pagination, results and errors as the model sees them, a revocation on
the next call, a grant picked up at the next task, a failing server skipped, and the progressive
mode past 16 tools. Loopback only. (test_worker_mcp_client.py: the same client against the real
gateway.)"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from hiclaw.agent.arguments import argument_problems
from hiclaw.errors import InvalidInputError
from hiclaw.testing.team import free_port
from hiclaw.waiting import wait_until
from hiclaw.worker.http import WorkerGatewayClient
from hiclaw.worker.mcp import DIRECT_LIMIT, WorkerMcp, object_schema
from hiclaw.worker.mcp_client import LEGACY, MODERN, x_mcp_headers
from hiclaw.worker.spec import McpGrant, WorkerRuntimeSpec

TOKEN, OTHER = "tok-alice", "tok-bob"
PAGE = 3
MESSY = {"type": "object", "properties": {"a": {"type": {"weird": 1}, "minLength": "3"}, "b": "not a schema",
                                          "c": {"type": "array", "items": [{"type": "string"}], "minItems": True}},
         "required": "a", "enum": 5, "$schema": "https://json-schema.org/draft/2020-12/schema"}


def schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


NOTES_TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "echo": ("Say it back.", schema(text={"type": "string"})),
    "add": ("Add two numbers.", schema(a={"type": "integer"}, b={"type": "integer"})),
    "sum_only": ("Add, structured only.", schema(a={"type": "integer"}, b={"type": "integer"})),
    "region": ("Where it runs.", schema(region={"type": "string", "x-mcp-header": "Region"})),
    "picture": ("A picture.", schema()),
    "fail": ("Always fails.", schema()),
    "progress": ("Reports progress, then answers.", schema()),
    "dot.name": ("A dotted name.", schema()),
    "dot_name": ("An underscored name.", schema()),
    "messy": ("A schema the loop's validator cannot take as is.", MESSY),
    "bad_header": ("An x-mcp-header on a number.", schema(n={"type": "number", "x-mcp-header": "N"})),
}


@dataclass
class Rig:
    url: str
    servers: dict[str, Any]
    tokens: set[str] = field(default_factory=lambda: {TOKEN, OTHER})
    revoked: set[str] = field(default_factory=set)  # servers refused (403) to TOKEN
    listing: list[dict[str, Any]] | None = None  # GET /mcp; None: 404 (the gateway lists none)
    requests: list[tuple[str, str, str | None, dict[str, Any]]] = field(default_factory=list)

    def client(self, token: str = TOKEN) -> WorkerGatewayClient:
        return WorkerGatewayClient(self.url + "/v1", token)

    def methods(self, server: str) -> list[str]:
        return [method for name, method, _, _ in self.requests if name == server]


def notes_server(calls: list[str], *, messy: bool = True) -> Any:
    """``messy``: offer the tool whose schema the SDK itself refuses to send at the handshake's revisions."""
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    tools = [types.Tool(name=name, description=text, input_schema=shape) for name, (text, shape) in NOTES_TOOLS.items()
             if messy or name != "messy"]

    async def list_tools(ctx: Any, params: Any) -> Any:
        start = int(params.cursor) if params is not None and params.cursor else 0
        more = start + PAGE < len(tools)
        return types.ListToolsResult(tools=tools[start:start + PAGE], next_cursor=str(start + PAGE) if more else None)

    async def call_tool(ctx: Any, params: Any) -> Any:
        name, args = params.name, dict(params.arguments or {})
        calls.append(name)
        text = lambda t: [types.TextContent(type="text", text=t)]  # noqa: E731
        if name == "echo":
            return types.CallToolResult(content=text(args["text"]))
        if name == "add":
            return types.CallToolResult(content=text(str(args["a"] + args["b"])),
                                        structured_content={"sum": args["a"] + args["b"]})
        if name == "sum_only":
            return types.CallToolResult(content=[], structured_content={"sum": args["a"] + args["b"]})
        if name == "region":
            return types.CallToolResult(content=text(f"runs in {args['region']}"))
        if name == "picture":
            return types.CallToolResult(content=[types.ImageContent(type="image", data="QUJD", mime_type="image/png")])
        if name == "fail":
            return types.CallToolResult(content=text("the disk is full"), is_error=True)
        if name == "progress":
            await ctx.session.send_progress_notification(progress_token="p", progress=0.5,
                                                         related_request_id=ctx.request_id)
            return types.CallToolResult(content=text("done after progress"))
        if name in ("dot.name", "dot_name"):
            return types.CallToolResult(content=text(f"I am {name}"))
        raise MCPError(types.INVALID_PARAMS, f"unknown tool {name!r}")

    return Server("notes", on_list_tools=list_tools, on_call_tool=call_tool)


def big_server(count: int) -> Any:
    import mcp_types as types
    from mcp.server.lowlevel import Server

    tools = [types.Tool(name=f"tool_{i:02d}", description=f"Tool number {i}.\nMore lines.",
                        input_schema=schema(n={"type": "integer"})) for i in range(count)]

    async def list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: Any) -> Any:
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"{params.name}: {params.arguments}")])

    return Server("big", on_list_tools=list_tools, on_call_tool=call_tool)


def refusal(status: int, message: str, code: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode()


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings

    calls: list[str] = []
    open_host = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    managers = {
        # both eras; SSE answers when a handler emits (the modern entry defers), sessions for the handshake
        "notes": StreamableHTTPSessionManager(notes_server(calls), json_response=False, security_settings=open_host),
        # the same server behind an endpoint that does not take 2026-07-28 (its header never reaches the SDK)
        "old": StreamableHTTPSessionManager(notes_server(calls, messy=False), json_response=False, security_settings=open_host),
        "big": StreamableHTTPSessionManager(big_server(DIRECT_LIMIT + 4), json_response=True, stateless=True,
                                            security_settings=open_host),
    }
    port = free_port()
    state = Rig(url=f"http://127.0.0.1:{port}", servers=managers)
    state.calls = calls  # type: ignore[attr-defined]

    async def answer(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        token = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
        if token not in state.tokens:
            return await answer(send, *refusal(401, "invalid or revoked consumer token", "invalid_token"))
        if scope["path"] == "/mcp" and scope["method"] == "GET":
            if state.listing is None:
                return await answer(send, 404, b'{"error": {"message": "not found", "code": "not_found"}}')
            return await answer(send, 200, json.dumps({"servers": state.listing}).encode())
        server = scope["path"].removeprefix("/mcp/")
        if not scope["path"].startswith("/mcp/") or (server not in managers and server != "broken"):
            return await answer(send, *refusal(404, f"no MCP server {server!r} on this gateway", "server_not_found"))
        if token == TOKEN and server in state.revoked:
            return await answer(send, *refusal(403, f"consumer 'alice' is not granted MCP server {server!r}",
                                               "server_not_granted"))
        if server == "broken":
            return await answer(send, 502, b'{"error": {"message": "upstream down", "code": "upstream"}}')
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            sent = json.loads(body)
        except ValueError:
            sent = {}
        version = headers.get(b"mcp-protocol-version", b"").decode() or None
        if isinstance(sent, dict):
            state.requests.append((server, str(sent.get("method")), version, {k.decode(): v.decode()
                                                                              for k, v in scope["headers"]}))
        kept = [(k, v) for k, v in scope["headers"] if not (server == "old" and k == b"mcp-protocol-version"
                                                                and v.decode() == MODERN)]
        delivered = False

        async def replay() -> Any:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await managers[server].handle_request({**scope, "headers": kept}, replay, send)

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))

    async def serve() -> None:  # one task holds the SDK's session managers (anyio scopes) and uvicorn
        async with AsyncExitStack() as stack:
            for manager in managers.values():
                await stack.enter_async_context(manager.run())
            await server.serve()

    serving = asyncio.create_task(serve())
    try:
        await wait_until(lambda: server.started or serving.done(), timeout=30, what="the MCP test server")
        assert not serving.done(), serving
        yield state
    finally:
        server.should_exit = True
        await serving


async def refreshed(rig: Rig, grants: list[McpGrant], task: str | None = "task-001",
                    token: str = TOKEN) -> WorkerMcp:
    mcp = WorkerMcp(rig.client(token), grants)
    await mcp.refresh(task)
    return mcp


async def test_the_modern_revision_lists_pages_and_calls(rig: Rig) -> None:
    mcp = await refreshed(rig, [McpGrant(server="notes", description="team notes")])
    try:
        assert mcp.client.endpoints["notes"].era == MODERN
        pages = [h for s, m, _, h in rig.requests if s == "notes" and m == "tools/list"]
        assert len(pages) == -(-len(NOTES_TOOLS) // PAGE)  # every page, following nextCursor
        assert all(h["mcp-method"] == "tools/list" and "mcp-session-id" not in h for h in pages)
        assert rig.methods("notes")[0] == "server/discover" and "initialize" not in rig.methods("notes")
        specs = {spec.name: spec for spec in mcp.specs("task-001")}
        assert sorted(specs) == sorted(["mcp__notes__echo", "mcp__notes__add", "mcp__notes__sum_only",
                                        "mcp__notes__region", "mcp__notes__picture", "mcp__notes__fail",
                                        "mcp__notes__progress", "mcp__notes__dot_name", "mcp__notes__dot_name_2",
                                        "mcp__notes__messy"])  # bad_header dropped, the SDK's clients do too
        assert {mcp.named()[n].name for n in ("mcp__notes__dot_name", "mcp__notes__dot_name_2")} == {"dot.name",
                                                                                                       "dot_name"}
        assert specs["mcp__notes__echo"].description == "[MCP notes] Say it back."
        assert specs["mcp__notes__echo"].parameters == schema(text={"type": "string"})
        assert await specs["mcp__notes__echo"].handler({"text": "hello"}) == "hello"
        assert await specs["mcp__notes__add"].handler({"a": 2, "b": 3}) == "5"
        assert await specs["mcp__notes__sum_only"].handler({"a": 2, "b": 3}) == '{"sum": 5}'
        # The SDK refuses a call whose x-mcp-header argument is not mirrored in Mcp-Param-Region.
        assert await specs["mcp__notes__region"].handler({"region": "eu-west"}) == "runs in eu-west"
        call = [h for s, m, _, h in rig.requests if m == "tools/call"][-1]
        assert (call["mcp-name"], call["mcp-param-region"], call["mcp-protocol-version"]) == ("region", "eu-west",
                                                                                              MODERN)
        assert await specs["mcp__notes__picture"].handler({}) == "[image image/png, 4 base64 characters]"
        assert await specs["mcp__notes__progress"].handler({}) == "done after progress"  # an SSE answer
        assert await specs["mcp__notes__dot_name"].handler({}) == "I am dot.name"
        with pytest.raises(InvalidInputError, match="tool 'fail' of MCP server 'notes' failed: the disk is full"):
            await specs["mcp__notes__fail"].handler({})
        with pytest.raises(InvalidInputError, match=r"^MCP server 'notes': unknown tool 'nope'$"):
            await mcp.call("notes", "nope", {})
        messy = specs["mcp__notes__messy"].parameters
        assert argument_problems(messy, {"a": 1, "c": "x"}) == "c: must be array (not a JSON string holding it), got a string"
        assert "$schema" not in messy and "required" not in messy and "enum" not in messy
    finally:
        await mcp.gateway.aclose()


async def test_an_endpoint_refusing_the_modern_revision_gets_the_handshake(rig: Rig) -> None:
    mcp = await refreshed(rig, [McpGrant(server="old")])
    try:
        endpoint = mcp.client.endpoints["old"]
        assert endpoint.era == endpoint.version == LEGACY and endpoint.session_id
        assert rig.methods("old")[:3] == ["server/discover", "initialize", "notifications/initialized"]
        assert len(mcp.tools) == len(NOTES_TOOLS) - 2  # no messy, no bad_header
        tool = {s.name: s for s in mcp.specs(None)}
        assert await tool["mcp__old__echo"].handler({"text": "over SSE"}) == "over SSE"
        assert await tool["mcp__old__region"].handler({"region": "us"}) == "runs in us"
        later = [h for s, m, _, h in rig.requests if s == "old" and m == "tools/call"]
        assert all(h["mcp-session-id"] == endpoint.session_id and h["mcp-protocol-version"] == LEGACY for h in later)
        # The server forgets the session (restarted): the request is refused before it runs, and sent
        # again in a new session.
        endpoint.session_id = "gone"
        assert await tool["mcp__old__echo"].handler({"text": "again"}) == "again"
        assert endpoint.session_id != "gone" and rig.methods("old").count("initialize") == 2
    finally:
        await mcp.gateway.aclose()


async def test_revoked_refused_and_unknown_are_one_clear_line(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    mcp = await refreshed(rig, [McpGrant(server="notes"), McpGrant(server="broken"), McpGrant(server="ghost")])
    try:
        assert {t.server for t in mcp.tools} == {"notes"}  # the failing servers skipped, one line each
        skipped = [r.getMessage() for r in caplog.records if "left out until the next task" in r.getMessage()]
        assert len(skipped) == 2 and "answered HTTP 502: upstream down" in skipped[0]
        assert "there is no MCP server 'ghost' on the gateway (HTTP 404" in skipped[1]
        echo = next(s for s in mcp.specs(None) if s.name == "mcp__notes__echo")
        assert await echo.handler({"text": "before"}) == "before"
        rig.revoked.add("notes")
        with pytest.raises(InvalidInputError, match=r"MCP server 'notes' is not granted to you \(HTTP 403: consumer "
                                                    r"'alice' is not granted MCP server 'notes'\); ask the Manager"):
            await echo.handler({"text": "after"})
        rig.revoked.clear()
        rig.tokens.discard(TOKEN)
        with pytest.raises(InvalidInputError, match=r"the gateway refused your token \(HTTP 401: invalid or revoked "
                                                    r"consumer token\); it may have been revoked"):
            await echo.handler({"text": "after"})
        assert rig.calls.count("echo") == 1  # type: ignore[attr-defined]
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    finally:
        await mcp.gateway.aclose()


async def test_grants_are_asked_again_at_each_new_task(rig: Rig) -> None:
    rig.listing = [{"name": "notes", "description": "team notes", "tools": ["echo", "add"]}]
    mcp = await refreshed(rig, [McpGrant(server="big")])  # the gateway's answer wins over the spec
    try:
        assert mcp.servers == {"notes": "team notes"} and sorted(s.name for s in mcp.specs("task-001")) == [
            "mcp__notes__add", "mcp__notes__echo"]
        rig.listing.append({"name": "big", "description": "", "tools": ["tool_01"]})
        await mcp.refresh("task-001")  # the same task, a moment later: what it had
        assert {t.server for t in mcp.tools} == {"notes"}
        await mcp.refresh("task-002")
        assert sorted(s.name for s in mcp.specs("task-002")) == ["mcp__big__tool_01", "mcp__notes__add",
                                                                 "mcp__notes__echo"]
        rig.listing = []
        await mcp.refresh("task-003")
        assert mcp.specs("task-003") == []
        with pytest.raises(InvalidInputError, match="MCP server 'notes' is not granted to you"):
            await mcp.call("notes", "echo", {"text": "x"})
    finally:
        await mcp.gateway.aclose()


async def test_a_big_catalogue_is_disclosed_progressively(rig: Rig) -> None:
    mcp = await refreshed(rig, [McpGrant(server="big", description="many tools"), McpGrant(server="notes")])
    try:
        assert len(mcp.tools) == DIRECT_LIMIT + 4 + len(NOTES_TOOLS) - 1  # all but bad_header
        specs = {spec.name: spec for spec in mcp.specs(None)}
        assert sorted(specs) == ["mcp_call", "mcp_tools"]
        assert "big: many tools" in specs["mcp_tools"].description
        found = await specs["mcp_tools"].handler({"server": "big", "query": "number 1"})
        assert [t["tool"] for t in found["tools"]] == ["tool_01"] + [f"tool_{i}" for i in range(10, 20)]
        assert found["tools"][0]["description"] == "Tool number 1."
        one = await specs["mcp_tools"].handler({"server": "big", "tool": "tool_03"})
        assert one["input_schema"] == schema(n={"type": "integer"})
        assert await specs["mcp_call"].handler({"server": "big", "tool": "tool_03", "arguments": {"n": 7}}) == \
            "tool_03: {'n': 7}"
        assert await specs["mcp_call"].handler({"server": "notes", "tool": "region",
                                                "arguments": {"region": "ap"}}) == "runs in ap"
        with pytest.raises(InvalidInputError, match="arguments of 'tool_03': n: must be integer"):
            await specs["mcp_call"].handler({"server": "big", "tool": "tool_03", "arguments": {"n": "seven"}})
        with pytest.raises(InvalidInputError, match="no tool 'nope' on MCP server 'big'"):
            await specs["mcp_call"].handler({"server": "big", "tool": "nope"})
        with pytest.raises(InvalidInputError, match="invalid arguments for mcp_tools: server: required"):
            await specs["mcp_tools"].handler({})
        with pytest.raises(InvalidInputError, match="MCP server 'elsewhere' is not granted to you"):
            await specs["mcp_tools"].handler({"server": "elsewhere"})
    finally:
        await mcp.gateway.aclose()


def test_schemas_the_validator_can_take() -> None:
    assert object_schema({"type": "string"}) == {"type": "object", "properties": {}}
    assert object_schema("nonsense") == {"type": "object", "properties": {}}
    cleaned = object_schema(MESSY)
    assert cleaned == {"type": "object", "properties": {"a": {}, "b": {}, "c": {"type": "array"}}}
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(30):
        deep = {"type": "object", "properties": {"x": deep}}
    assert argument_problems(object_schema(deep), {"x": {"x": 1}}) == "x.x: must be object, got a number"
    huge = object_schema({"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 200}
                                                           for i in range(100)}})
    assert huge["properties"]["p0"] == {"description": "d" * 200} and len(huge["properties"]) == 100
    assert x_mcp_headers(schema(r={"type": "string", "x-mcp-header": "Region"})) == {("r",): "Region"}
    assert x_mcp_headers({"type": "object", "anyOf": [{"x-mcp-header": "A", "type": "string"}]}) is None
    assert x_mcp_headers(schema(a={"type": "string", "x-mcp-header": "X"}, b={"type": "string", "x-mcp-header": "x"})) \
        is None


def test_the_spec_names_servers_never_urls_or_secrets() -> None:
    base = {"name": "alice", "channel": {"plugin": "matrix"}, "storage": {"plugin": "local"},
            "gateway": {"base_url": "http://127.0.0.1:1/v1", "token": "t"}, "control_url": "http://x",
            "control_token": "c"}
    assert WorkerRuntimeSpec.model_validate(base).mcp == []  # older control planes send none
    spec = WorkerRuntimeSpec.model_validate({**base, "mcp": [{"server": "notes", "tools": ["echo"]}]})
    assert spec.mcp == [McpGrant(server="notes", description="", tools=["echo"])]
    assert WorkerRuntimeSpec.model_validate_json(spec.to_env()).mcp == spec.mcp
    with pytest.raises(ValueError, match="url"):
        McpGrant.model_validate({"server": "notes", "url": "https://x"})
