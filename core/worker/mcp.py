"""A worker's MCP tools: the servers granted to it, reached at ``{gateway}/mcp/<server>`` with its
consumer token (docs/mcp.md). The worker holds no credential and imports no MCP SDK: the wire is
:mod:`hiclaw.worker.mcp_client` (revision 2026-07-28, or the initialize handshake), over the
worker's gateway bridge.

Which servers, and which of their tools, is the gateway's answer (``GET /mcp``, then
``tools/list``), asked at the worker's start (when its spec names servers) and again at each new
task (and at most every :data:`REFRESH_SECONDS`), so a grant made while the worker runs reaches it
and a revoked tool disappears; the gateway refuses a revoked tool on the very next call anyway.
A server that fails is logged in one line and skipped. Up to :data:`DIRECT_LIMIT` tools in all
become ordinary tools named ``mcp__<server>__<tool>``; more are disclosed progressively with
``mcp_tools`` (look them up) and ``mcp_call`` (call one), so a big catalogue does not fill the
model's context. Input schemas are reduced to what the agent loop's validator takes
(:func:`object_schema`); results become text (:func:`render_result`).
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
from hiclaw.protocols import APPROVAL_META, CALL_ID_META
from hiclaw.worker.approval import call_id, until_decided
from hiclaw.worker.mcp_client import McpClient, McpToolError, McpUnreachable, param_headers, x_mcp_headers
from hiclaw.worker.spec import McpGrant

log = logging.getLogger(__name__)

DIRECT_LIMIT = 16
REFRESH_SECONDS = 60.0
MAX_RESULT_CHARS = 12000
MAX_DESCRIPTION_CHARS = 1024
#: A server's catalogue is read at most this far (pages, tools): one that pages forever cannot hang the worker.
MAX_PAGES = 50
MAX_TOOLS_PER_SERVER = 500
#: Input schemas deeper or longer than this are flattened (their top-level properties kept, open).
MAX_SCHEMA_DEPTH = 12
MAX_SCHEMA_CHARS = 16000
TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]")
SCHEMA_TYPES = frozenset({"object", "array", "string", "boolean", "null", "integer", "number"})
OPEN_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}

__all__ = ["DIRECT_LIMIT", "McpTool", "McpToolError", "WorkerMcp", "object_schema", "render_result"]


@dataclass
class McpTool:
    server: str
    name: str
    description: str
    schema: dict[str, Any]
    #: Arguments a 2026-07-28 call mirrors as ``Mcp-Param-*`` headers (its schema's ``x-mcp-header``).
    headers: dict[tuple[str, ...], str] = field(default_factory=dict)


@dataclass
class WorkerMcp:
    """The worker's MCP servers and tools, through ``gateway`` (a WorkerGatewayClient); ``grants``:
    the servers its spec names, used until (and whenever) the gateway cannot say."""

    gateway: Any
    grants: list[McpGrant] = field(default_factory=list)
    servers: dict[str, str] = field(default_factory=dict)  # name -> description
    tools: list[McpTool] = field(default_factory=list)
    fetched_at: float = 0.0
    fetched_for: str | None = None

    def __post_init__(self) -> None:
        self.client = McpClient(self.gateway)
        self.servers = self.servers or {grant.server: grant.description for grant in self.grants}

    # ------------------------------------------------------------------ catalogue

    async def refresh(self, task_id: str | None, *, force: bool = False) -> None:
        """Ask the gateway again which servers and tools this worker has (new task, or stale)."""
        if not force and self.fetched_at and task_id == self.fetched_for \
                and time.monotonic() - self.fetched_at < REFRESH_SECONDS:
            return
        self.fetched_for, self.fetched_at = task_id, time.monotonic()
        granted = await self.granted()
        self.servers = {grant.server: grant.description for grant in granted}
        tools: list[McpTool] = []
        for grant in sorted(granted, key=lambda g: g.server):
            try:
                listed = await self.list_tools(grant.server, task_id=task_id)
            except McpToolError as exc:
                log.warning("%s — its tools are left out until the next task", exc)
                continue
            allowed = None if grant.tools is None else set(grant.tools)
            tools.extend(tool for tool in listed if allowed is None or tool.name in allowed)
        self.tools = tools

    async def granted(self) -> list[McpGrant]:
        """The gateway's list of this worker's servers (``GET /mcp``), else the spec's."""
        try:
            listed = await self.gateway.mcp_servers()
        except Exception as exc:  # noqa: BLE001 - the spec's servers then; each call is checked anyway
            log.warning("MCP: the gateway did not say which servers are yours (%s); using your spec's", exc)
            return list(self.grants)
        if listed is None:  # the gateway lists none (no GET /mcp): the spec's
            return list(self.grants)
        grants = []
        for item in listed:
            name, tools = item.get("name"), item.get("tools")
            if isinstance(name, str) and name:
                grants.append(McpGrant(server=name, description=str(item.get("description") or ""),
                                       tools=[str(t) for t in tools] if isinstance(tools, list) else None))
        return grants

    async def list_tools(self, server: str, *, task_id: str | None = None) -> list[McpTool]:
        found: list[McpTool] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            result = await self.client.request(server, "tools/list", {"cursor": cursor} if cursor else None,
                                               task_id=task_id)
            for tool in result.get("tools") or []:
                if not (isinstance(tool, dict) and isinstance(tool.get("name"), str) and tool["name"]):
                    continue
                headers = x_mcp_headers(tool.get("inputSchema"))
                if headers is None:
                    log.warning("MCP server %r: tool %r skipped: its input schema has an invalid x-mcp-header",
                                server, tool["name"][:64])
                    continue
                found.append(McpTool(server, tool["name"], str(tool.get("description") or "")[:MAX_DESCRIPTION_CHARS],
                                     object_schema(tool.get("inputSchema")), headers))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor or cursor in seen or len(found) >= MAX_TOOLS_PER_SERVER:
                break
            seen.add(cursor)
        return found[:MAX_TOOLS_PER_SERVER]

    def find(self, server: str, tool: str) -> McpTool | None:
        return next((t for t in self.tools if t.server == server and t.name == tool), None)

    async def call(self, server: str, tool: str, arguments: dict[str, Any], *, task_id: str | None = None) -> str:
        """Call ``tool`` of ``server``: its result as text, or :class:`InvalidInputError` with one line."""
        if server not in self.servers:
            raise InvalidInputError(f"MCP server {server!r} is not granted to you",
                                    hint=f"use one of {', '.join(sorted(self.servers)) or 'none'}")
        known = self.find(server, tool)
        params = {"name": tool, "arguments": arguments, "_meta": {CALL_ID_META: call_id()}}

        async def send() -> dict[str, Any]:
            return await self.client.request(server, "tools/call", params,
                                             headers=param_headers(known.headers, arguments) if known else None,
                                             task_id=task_id)

        def pending(result: dict[str, Any]) -> str | None:
            meta = result.get("_meta")
            approval = meta.get(APPROVAL_META) if isinstance(meta, dict) else None
            if isinstance(approval, dict) and approval.get("state") == "pending":
                return str(approval.get("id"))
            return None

        try:
            result = await until_decided(send, pending, away=(McpUnreachable,))
        except McpToolError as exc:
            raise InvalidInputError(str(exc)) from None
        kind = result.get("resultType")
        if kind not in (None, "complete"):
            raise InvalidInputError(f"tool {tool!r} of MCP server {server!r} asks for input first "
                                    f"(resultType {str(kind)[:40]!r}), which a worker cannot give")
        text = render_result(result)
        if result.get("isError"):
            raise InvalidInputError(f"tool {tool!r} of MCP server {server!r} failed: {text[:2000]}")
        return text

    # ------------------------------------------------------------------ what the model is offered

    def specs(self, task_id: str | None) -> list[ToolSpec]:
        if not self.tools:
            return []
        if len(self.tools) <= DIRECT_LIMIT:
            return [self._direct(name, tool, task_id) for name, tool in self.named().items()]
        return self._progressive(task_id)

    def named(self) -> dict[str, McpTool]:
        """Each tool under its model-facing name ``mcp__<server>__<tool>`` (``[a-zA-Z0-9_-]{1,64}``,
        unique): the map back to its server and real name."""
        named: dict[str, McpTool] = {}
        for tool in self.tools:
            base = TOOL_NAME.sub("_", f"mcp__{tool.server}__{tool.name}")[:64]
            name, n = base, 2
            while name in named:
                name = f"{base[:60]}_{n}"
                n += 1
            named[name] = tool
        return named

    def _direct(self, name: str, tool: McpTool, task_id: str | None) -> ToolSpec:
        async def handler(arguments: dict[str, Any]) -> Any:
            return await self.call(tool.server, tool.name, arguments, task_id=task_id)

        description = f"[MCP {tool.server}] {tool.description}".strip() if tool.description else \
            f"[MCP {tool.server}] the tool {tool.name!r}"
        return ToolSpec(name=name, description=description[:MAX_DESCRIPTION_CHARS], parameters=tool.schema,
                        handler=handler)

    def _progressive(self, task_id: str | None) -> list[ToolSpec]:
        from hiclaw.agent.functions import function_tool

        servers = "; ".join(f"{name}" + (f": {desc}" if desc else "") for name, desc in sorted(self.servers.items()))

        async def mcp_tools(server: str, query: str | None = None, tool: str | None = None) -> Any:
            """Look up the tools of one of your MCP servers.

            Args:
                server: the server's name.
                query: a word of the tools' names or descriptions (none: every tool).
                tool: one tool's name: its full description and input schema.
            """
            if server not in self.servers:
                raise InvalidInputError(f"MCP server {server!r} is not granted to you",
                                        hint=f"use one of {', '.join(sorted(self.servers))}")
            if tool:
                match = self.find(server, tool)
                if match is None:
                    raise InvalidInputError(f"no tool {tool!r} on MCP server {server!r}",
                                            hint="look it up with mcp_tools(server, query)")
                return {"server": server, "tool": match.name, "description": match.description,
                        "input_schema": match.schema}
            words = (query or "").lower()
            matching = [t for t in self.tools if t.server == server
                        and (not words or words in t.name.lower() or words in t.description.lower())]
            return {"tools": [{"tool": t.name, "description": t.description.split("\n")[0][:160]} for t in matching[:50]],
                    "more": max(0, len(matching) - 50)}

        async def mcp_call(server: str, tool: str, arguments: dict[str, Any] | None = None) -> Any:
            """Call a tool of one of your MCP servers (find it and its input schema with mcp_tools).

            Args:
                server: the server's name.
                tool: the tool's name.
                arguments: the tool's arguments, as its input schema says.
            """
            from hiclaw.agent.arguments import argument_problems

            known = self.find(server, tool)
            if known is None:
                raise InvalidInputError(f"no tool {tool!r} on MCP server {server!r}",
                                        hint="look it up with mcp_tools(server, query)")
            problems = argument_problems(known.schema, arguments or {})
            if problems:
                raise InvalidInputError(f"arguments of {tool!r}: {problems}",
                                        hint="see its input_schema: mcp_tools(server, tool=...)")
            return await self.call(server, tool, arguments or {}, task_id=task_id)

        return [function_tool(mcp_tools, description=f"Look up the tools of your MCP servers ({servers}): by "
                              "a word of their name or description; with `tool`, one tool's description and input "
                              "schema."[:MAX_DESCRIPTION_CHARS]),
                function_tool(mcp_call)]


def object_schema(schema: Any) -> dict[str, Any]:
    """A tool's input schema as the model is given it: an object schema with only what the agent
    loop's validator (:mod:`hiclaw.agent.arguments`) can read in each of its keywords — a malformed
    ``required``, ``type``, ``enum`` or bound is dropped, not a crash at call time; anything else
    (descriptions, formats, ``$ref``) passed as is. Not an object schema: an open object."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return dict(OPEN_OBJECT)
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError):
        return dict(OPEN_OBJECT)
    clean = _clean(schema, 0)
    if size > MAX_SCHEMA_CHARS:  # flattened: the properties' names and descriptions, open
        properties = clean.get("properties") or {}
        clean = {"type": "object", "properties": {
            name: {"description": str(sub.get("description"))[:200]} if sub.get("description") else {}
            for name, sub in list(properties.items())[:100]}}
    clean.setdefault("properties", {})
    return clean


def _clean(node: Any, depth: int) -> dict[str, Any]:
    if not isinstance(node, dict) or depth > MAX_SCHEMA_DEPTH:
        return {}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$schema":
            continue
        if key == "type":
            kinds = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            if kinds and all(isinstance(k, str) and k in SCHEMA_TYPES for k in kinds):
                out[key] = value
        elif key in ("properties", "$defs", "definitions"):
            if isinstance(value, dict):
                out[key] = {str(name): _clean(sub, depth + 1) for name, sub in value.items()}
        elif key in ("items", "not", "additionalProperties"):
            if isinstance(value, dict):
                out[key] = _clean(value, depth + 1)
            elif isinstance(value, bool) and key == "additionalProperties":
                out[key] = value
        elif key in ("anyOf", "oneOf", "allOf"):
            if isinstance(value, list):
                out[key] = [_clean(sub, depth + 1) for sub in value]
        elif key == "required":
            if isinstance(value, list) and all(isinstance(name, str) for name in value):
                out[key] = value
        elif key == "enum":
            if isinstance(value, list) and value:
                out[key] = value
        elif key in ("minItems", "maxItems", "minLength"):
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                out[key] = value
        else:
            out[key] = value
    return out


def render_result(result: dict[str, Any]) -> str:
    """A ``CallToolResult`` as text: text parts joined; structured content as JSON (when no text
    part carries it); images, audio and resources as one-line placeholders."""
    parts: list[str] = []
    texts = 0
    for item in result.get("content") or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text":
            parts.append(str(item.get("text") or ""))
            texts += 1
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {item.get('mimeType') or ''}, {len(str(item.get('data') or ''))} base64 characters]")
        elif kind == "resource_link":
            parts.append(f"[resource link {item.get('uri')}: {item.get('name') or ''}]")
        elif kind == "resource":
            resource = item.get("resource") or {}
            parts.append(str(resource.get("text")) if isinstance(resource, dict) and "text" in resource
                         else f"[resource {resource.get('uri') if isinstance(resource, dict) else ''}]")
    structured = result.get("structuredContent")
    if structured is not None and not texts:
        parts.append(json.dumps(structured, ensure_ascii=False))
    text = "\n".join(parts) or "(no content)"
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n… [{len(text) - MAX_RESULT_CHARS} characters cut]"
    return text
