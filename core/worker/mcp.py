"""A worker's MCP tools: the servers granted to it, reached at ``{gateway}/mcp/<server>`` with its
consumer token (docs/mcp.md). The worker holds no credential and imports no MCP SDK: this is a
small Streamable HTTP client of its own (the initialize handshake, revision 2025-11-25, which the
gateway's SDK server speaks next to the current one), over the worker's gateway bridge.

Which servers, and which of their tools, is the gateway's answer (``GET /mcp``, then
``tools/list``), asked again at each new task (and at most every :data:`REFRESH_SECONDS`), so a
grant made while the worker runs reaches it and a revoked tool disappears; the gateway refuses a
revoked tool on the very next call anyway. Up to :data:`DIRECT_LIMIT` tools in all become
ordinary tools named ``mcp__<server>__<tool>``; more are disclosed progressively with
``mcp_tools`` (look them up) and ``mcp_call`` (call one), so a big catalogue does not fill the
model's context.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from hiclaw.errors import InvalidInputError
from hiclaw.models import ToolSpec

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "2025-11-25"
DIRECT_LIMIT = 16
REFRESH_SECONDS = 60.0
MAX_RESULT_CHARS = 12000
MAX_DESCRIPTION_CHARS = 1024
TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class McpToolError(Exception):
    """One line for the model: what failed and, where it helps, what to do."""


@dataclass
class McpTool:
    server: str
    name: str
    description: str
    schema: dict[str, Any]


@dataclass
class McpServerSession:
    """The handshake with one server's endpoint on the gateway (a session id if it gives one)."""

    server: str
    session_id: str | None = None
    initialized: bool = False
    next_id: int = 1


@dataclass
class WorkerMcp:
    """The worker's MCP servers and tools, through ``gateway`` (a WorkerGatewayClient)."""

    gateway: Any
    sessions: dict[str, McpServerSession] = field(default_factory=dict)
    servers: dict[str, str] = field(default_factory=dict)  # name -> description
    tools: list[McpTool] = field(default_factory=list)
    fetched_at: float = 0.0
    fetched_for: str | None = None

    # ------------------------------------------------------------------ wire

    async def _post(self, server: str, body: dict[str, Any], *, task_id: str | None) -> dict[str, Any] | None:
        session = self.sessions.setdefault(server, McpServerSession(server))
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": PROTOCOL_VERSION}
        if session.session_id:
            headers["Mcp-Session-Id"] = session.session_id
        status, data, answer = await self.gateway.mcp_post(server, json.dumps(body).encode(), headers=headers,
                                                            task_id=task_id)
        if status == 202 and "id" not in body:
            return None  # a notification, accepted
        if status in (401, 403, 404):
            session.initialized = False
            raise McpToolError(f"MCP server {server!r}: {gateway_error(data) or f'HTTP {status}'}")
        if status != 200:
            raise McpToolError(f"MCP server {server!r} answered HTTP {status}: {gateway_error(data) or 'try again later'}")
        sid = next((v for k, v in answer.items() if k.lower() == "mcp-session-id"), None)
        if sid:
            session.session_id = sid
        kind = next((v for k, v in answer.items() if k.lower() == "content-type"), "")
        message = sse_message(data, body.get("id")) if "text/event-stream" in kind else json.loads(data or b"null")
        if not isinstance(message, dict):
            raise McpToolError(f"MCP server {server!r} gave no JSON-RPC answer")
        if "error" in message:
            error = message["error"] if isinstance(message["error"], dict) else {}
            raise McpToolError(f"MCP server {server!r}: {str(error.get('message') or 'error')[:500]}")
        result = message.get("result")
        return result if isinstance(result, dict) else {}

    async def request(self, server: str, method: str, params: dict[str, Any] | None = None, *,
                      task_id: str | None = None) -> dict[str, Any]:
        session = self.sessions.setdefault(server, McpServerSession(server))
        if not session.initialized:
            session.session_id = None
            await self._post(server, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                "clientInfo": {"name": "hiclaw-worker", "version": "1"}}}, task_id=task_id)
            await self._post(server, {"jsonrpc": "2.0", "method": "notifications/initialized"}, task_id=task_id)
            session.initialized = True
        session.next_id += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": session.next_id, "method": method}
        if params is not None:
            body["params"] = params
        return await self._post(server, body, task_id=task_id) or {}

    # ------------------------------------------------------------------ catalogue

    async def refresh(self, task_id: str | None, *, force: bool = False) -> None:
        """Ask the gateway again which servers and tools this worker has (new task, or stale)."""
        if not force and task_id == self.fetched_for and time.monotonic() - self.fetched_at < REFRESH_SECONDS:
            return
        self.fetched_for, self.fetched_at = task_id, time.monotonic()
        try:
            granted = await self.gateway.mcp_servers()
        except Exception as exc:  # noqa: BLE001 - no MCP this turn; the other tools still work
            log.warning("MCP servers unavailable: %s", exc)
            self.servers, self.tools = {}, []
            return
        self.servers = {str(s["name"]): str(s.get("description") or "") for s in granted if isinstance(s, dict)}
        tools: list[McpTool] = []
        for server in sorted(self.servers):
            try:
                tools.extend(await self.list_tools(server, task_id=task_id))
            except McpToolError as exc:
                log.warning("%s", exc)
        self.tools = tools

    async def list_tools(self, server: str, *, task_id: str | None = None) -> list[McpTool]:
        found: list[McpTool] = []
        cursor: str | None = None
        for _ in range(50):  # a server that pages forever cannot hang the worker
            result = await self.request(server, "tools/list", {"cursor": cursor} if cursor else None, task_id=task_id)
            for tool in result.get("tools") or []:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    found.append(McpTool(server, tool["name"], str(tool.get("description") or "")[:MAX_DESCRIPTION_CHARS],
                                         object_schema(tool.get("inputSchema"))))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        return found

    async def call(self, server: str, tool: str, arguments: dict[str, Any], *, task_id: str | None = None) -> str:
        if server not in self.servers:
            raise InvalidInputError(f"MCP server {server!r} is not granted to you",
                                    hint=f"use one of {', '.join(sorted(self.servers)) or 'none'}")
        try:
            result = await self.request(server, "tools/call", {"name": tool, "arguments": arguments}, task_id=task_id)
        except McpToolError as exc:
            raise InvalidInputError(str(exc)) from None
        text = render_result(result)
        if result.get("isError"):
            raise InvalidInputError(f"tool {tool!r} of {server!r} failed: {text[:2000]}")
        return text

    # ------------------------------------------------------------------ what the model is offered

    def specs(self, task_id: str | None) -> list[ToolSpec]:
        if not self.tools:
            return []
        if len(self.tools) <= DIRECT_LIMIT:
            return [self._direct(tool, task_id) for tool in self._named()]
        return self._progressive(task_id)

    def _named(self) -> list[tuple[str, McpTool]]:
        named: list[tuple[str, McpTool]] = []
        taken: set[str] = set()
        for tool in self.tools:
            base = TOOL_NAME.sub("_", f"mcp__{tool.server}__{tool.name}")[:64]
            name, n = base, 2
            while name in taken:
                name = f"{base[:60]}_{n}"
                n += 1
            taken.add(name)
            named.append((name, tool))
        return named

    def _direct(self, entry: tuple[str, McpTool], task_id: str | None) -> ToolSpec:
        name, tool = entry

        async def handler(arguments: dict[str, Any]) -> Any:
            return await self.call(tool.server, tool.name, arguments, task_id=task_id)

        description = (f"[MCP {tool.server}] {tool.description}".strip() or f"MCP tool {tool.name} of {tool.server}")
        return ToolSpec(name=name, description=description[:MAX_DESCRIPTION_CHARS], parameters=tool.schema,
                        handler=handler)

    def _progressive(self, task_id: str | None) -> list[ToolSpec]:
        servers = "; ".join(f"{name}" + (f": {desc}" if desc else "") for name, desc in sorted(self.servers.items()))

        async def mcp_tools(arguments: dict[str, Any]) -> Any:
            server, query = str(arguments.get("server") or ""), str(arguments.get("query") or "").lower()
            detail = arguments.get("tool")
            matching = [t for t in self.tools if (not server or t.server == server)
                        and (not query or query in t.name.lower() or query in t.description.lower())]
            if detail:
                match = next((t for t in matching if t.name == detail), None)
                if match is None:
                    raise InvalidInputError(f"no tool {detail!r}" + (f" on {server!r}" if server else ""))
                return {"server": match.server, "tool": match.name, "description": match.description,
                        "input_schema": match.schema}
            return {"tools": [{"server": t.server, "tool": t.name, "description": t.description.split("\n")[0][:160]}
                              for t in matching[:50]], "more": max(0, len(matching) - 50)}

        async def mcp_call(arguments: dict[str, Any]) -> Any:
            server, tool = str(arguments.get("server") or ""), str(arguments.get("tool") or "")
            args = arguments.get("arguments") or {}
            known = next((t for t in self.tools if t.server == server and t.name == tool), None)
            if known is None:
                raise InvalidInputError(f"no tool {tool!r} on MCP server {server!r}",
                                        hint="look it up with mcp_tools(server, query)")
            from hiclaw.agent.arguments import argument_problems

            problems = argument_problems(known.schema, args) if isinstance(args, dict) else "arguments: must be an object"
            if problems:
                raise InvalidInputError(f"arguments of {tool!r}: {problems}",
                                        hint="see its input_schema: mcp_tools(server, tool=...)")
            return await self.call(server, tool, args, task_id=task_id)

        text = {"type": "string"}
        return [
            ToolSpec(name="mcp_tools", description=("Look up the tools of your MCP servers (" + servers + "): by server "
                                                    "and a word of their name or description; with `tool`, one tool's "
                                                    "description and input schema.")[:MAX_DESCRIPTION_CHARS],
                     parameters={"type": "object", "properties": {"server": text, "query": text, "tool": text},
                                 "additionalProperties": False}, handler=mcp_tools),
            ToolSpec(name="mcp_call", description="Call a tool of one of your MCP servers (find it with mcp_tools).",
                     parameters={"type": "object", "properties": {"server": text, "tool": text, "arguments": {
                         "type": "object", "description": "the tool's arguments, as its input schema says"}},
                         "required": ["server", "tool"], "additionalProperties": False}, handler=mcp_call),
        ]


def object_schema(schema: Any) -> dict[str, Any]:
    """The tool's input schema if it is an object schema the model can be given; else an open one."""
    if isinstance(schema, dict) and schema.get("type") == "object":
        try:
            json.dumps(schema)
        except (TypeError, ValueError):
            return {"type": "object", "properties": {}}
        return {k: v for k, v in schema.items() if k != "$schema"}
    return {"type": "object", "properties": {}}


def render_result(result: dict[str, Any]) -> str:
    """A ``CallToolResult`` as text: text parts joined; structured content as JSON; the rest named."""
    parts: list[str] = []
    for item in result.get("content") or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text":
            parts.append(str(item.get("text") or ""))
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {item.get('mimeType') or ''}, {len(str(item.get('data') or ''))} base64 characters]")
        elif kind == "resource_link":
            parts.append(f"[resource link {item.get('uri')}: {item.get('name') or ''}]")
        elif kind == "resource":
            resource = item.get("resource") or {}
            parts.append(str(resource.get("text")) if isinstance(resource, dict) and "text" in resource
                         else f"[resource {resource.get('uri') if isinstance(resource, dict) else ''}]")
    structured = result.get("structuredContent")
    if structured is not None and not parts:
        parts.append(json.dumps(structured, ensure_ascii=False))
    text = "\n".join(parts) or "(no content)"
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n… [{len(text) - MAX_RESULT_CHARS} characters cut]"
    return text


def sse_message(data: bytes, wanted: Any) -> Any:
    """The JSON-RPC answer to request ``wanted`` in a ``text/event-stream`` body."""
    found: Any = None
    for event in data.decode("utf-8", errors="replace").replace("\r\n", "\n").split("\n\n"):
        payload = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
        if not payload:
            continue
        try:
            message = json.loads(payload)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("id") == wanted and ("result" in message or "error" in message):
            found = message
    return found


def gateway_error(data: bytes) -> str | None:
    """The message of a gateway error body (``{"error": {"message": …}}``) or a JSON-RPC error."""
    try:
        body = json.loads(data)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "")[:500] or None
    return str(error)[:500] if error else None
