"""MCP servers behind the gateway (``[mcp.<name>]``, docs/mcp.md): ``/mcp/<server>``.

The admin configures a server once: a ``command`` the gateway runs as a subprocess *outside every
sandbox* (stdio, with its secrets in its environment) or a remote ``url`` (Streamable HTTP, with
the credential header added here). Workers reach each server at ``{gateway}/mcp/<server>`` with
their consumer token, as an ordinary Streamable HTTP MCP endpoint served by the official SDK
(``mcp``: the current revision, 2026-07-28, and the initialize handshake of the previous ones).

Checks, in this order, before anything reaches the server: consumer token (401), server exists
(404), some of its tools granted to this consumer (403) — then the SDK answers the request and
our handlers list only the granted tools and refuse a call of any other (JSON-RPC -32602). Grants
are read on every request, so a revocation applies on the next call. Results are capped
(``max_result_bytes``), time-limited (``timeout_seconds``) and redacted: every secret the gateway
holds (raw, URL-encoded, JSON-escaped) becomes ``[redacted]``. Every request is written to the
``mcp_calls`` audit table with its consumer, task and project.

The upstream connection is opened on first use and kept; if the server dies it is reopened on
the next request (a tool call is never retried: it may have acted). The SDK is imported when a
server is configured, never by ``import hiclaw``.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web
from pydantic import SecretStr

from hiclaw.errors import ConfigError
from hiclaw.plugins.gateways.embedded.egress import secret_forms
from hiclaw.plugins.gateways.embedded.errors import GatewayHTTPError, Redactor
from hiclaw.protocols import APPROVAL_META, CALL_ID_META, Review

log = logging.getLogger("hiclaw.gateway")

PREFIX = "/mcp/"
#: Request headers never passed to the SDK's transport (the consumer's token, cookies, ours).
NOT_PASSED = frozenset({"authorization", "cookie", "cookie2", "proxy-authorization", "forwarded"})
#: How long a tools/list answer of an upstream is reused.
CATALOGUE_TTL_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 60.0


def leaf(exc: BaseException) -> str:
    """The type of the innermost failure (an anyio task group wraps it in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__


class McpUpstreamError(Exception):
    """The upstream server could not be reached or failed; the text names the server, never a secret."""


@dataclass
class McpCall:
    """Who is asking, set for the SDK's handlers of one HTTP request (and what the audit gets)."""

    consumer: str
    server: str
    task: str | None = None
    project: str | None = None
    audited: bool = False


CALLER: contextvars.ContextVar[McpCall] = contextvars.ContextVar("hiclaw_mcp_caller")


@dataclass
class Catalogue:
    tools: list[Any]  # mcp_types.Tool
    fetched: float


class McpUpstream:
    """One configured server: the connection (opened on first use, reopened after a failure)."""

    def __init__(self, name: str, server: Any, *, env: Mapping[str, str], header: str | None,
                 log_dir: Path) -> None:
        self.name = name
        self.server = server  # hiclaw.config.McpServer
        self.env = dict(env)
        self.header_value = header  # the credential header's value (remote servers)
        self._log_dir = log_dir
        self._client: Any = None
        self._holder: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._catalogue: Catalogue | None = None
        self._errlog: TextIO | None = None

    def _transport(self) -> Any:
        from mcp.client.stdio import StdioServerParameters, stdio_client
        from mcp.client.streamable_http import streamable_http_client

        if self.server.command is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            if self._errlog is None:
                self._errlog = (self._log_dir / f"mcp-{self.name}.log").open("a", encoding="utf-8")
            params = StdioServerParameters(command=self.server.command, args=list(self.server.args),
                                           env={**self.server.env, **self.env}, cwd=self.server.cwd)
            stop = self._stop  # this connection's: a late report of an old one must not end a new one
            return watched(stdio_client(params, errlog=self._errlog), lambda: self._lost(stop))
        import httpx2

        headers = dict(self.server.headers)
        if self.header_value is not None:
            headers[self.server.header] = self.header_value
        http = httpx2.AsyncClient(headers=headers, trust_env=False, follow_redirects=False,
                                  timeout=httpx2.Timeout(self.server.timeout_seconds, connect=15.0))
        return streamable_http_client(self.server.url, http_client=http)

    async def _hold(self, ready: asyncio.Future[Any]) -> None:
        from mcp.client import Client
        from mcp_types import Implementation

        try:
            async with Client(self._transport(), mode="auto", read_timeout_seconds=self.server.timeout_seconds,
                              client_info=Implementation(name="hiclaw-gateway", version="1")) as client:
                if not ready.done():
                    ready.set_result(client)
                await self._stop.wait()
        except Exception as exc:  # noqa: BLE001 - reported to whoever waits; reopened on the next request
            if not ready.done():
                where = f"; its log: logs/mcp-{self.name}.log" if self.server.command is not None else ""
                ready.set_exception(McpUpstreamError(f"MCP server {self.name!r} could not be started or reached "
                                                     f"({leaf(exc)}{where})"))
            else:
                log.warning("MCP server %s: connection lost (%s); reopened on the next request", self.name,
                            type(exc).__name__)
        finally:
            self._client = None
            self._catalogue = None

    def _lost(self, stop: asyncio.Event) -> None:
        """The server's end of the connection closed (a stdio server that exited or was killed)."""
        if not stop.is_set():
            log.warning("MCP server %s: connection lost; reopened on the next request", self.name)
            stop.set()  # the holder closes the client; the next request opens a new one

    async def client(self) -> Any:
        async with self._lock:
            if (self._client is not None and self._holder is not None and not self._holder.done()
                    and not self._stop.is_set()):
                return self._client
            if self._holder is not None:
                await self._end()  # a lost connection still closing
            self._stop = asyncio.Event()
            ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._holder = asyncio.create_task(self._hold(ready), name=f"hiclaw-mcp-{self.name}")
            try:
                self._client = await asyncio.wait_for(asyncio.shield(ready), CONNECT_TIMEOUT_SECONDS)
            except TimeoutError:
                await self._end()
                raise McpUpstreamError(f"MCP server {self.name!r} did not answer within "
                                       f"{CONNECT_TIMEOUT_SECONDS:.0f} s") from None
            return self._client

    async def tools(self, *, fresh: bool = False) -> list[Any]:
        """The server's tools (``mcp_types.Tool``), every page; reused for a minute."""
        catalogue = self._catalogue
        if catalogue is not None and not fresh and time.monotonic() - catalogue.fetched < CATALOGUE_TTL_SECONDS:
            return catalogue.tools
        client = await self.client()
        tools: list[Any] = []
        cursor: str | None = None
        for _ in range(100):  # a paginator that never ends cannot hang us
            try:
                page = await asyncio.wait_for(client.list_tools(cursor=cursor, cache_mode="refresh"),
                                              self.server.timeout_seconds)
            except TimeoutError:
                raise McpUpstreamError(f"MCP server {self.name!r} did not list its tools within "
                                       f"{self.server.timeout_seconds:g} s") from None
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        self._catalogue = Catalogue(tools, time.monotonic())
        return tools

    async def call(self, tool: str, arguments: dict[str, Any] | None) -> Any:
        """Call ``tool`` once (never retried); an ``mcp_types.CallToolResult``."""
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        client = await self.client()
        stop = self._stop
        try:
            return await asyncio.wait_for(client.call_tool(tool, arguments), self.server.timeout_seconds)
        except TimeoutError:
            raise McpUpstreamError(f"MCP server {self.name!r}: tool {tool!r} did not answer within "
                                   f"{self.server.timeout_seconds:g} s") from None
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED or not stop.is_set():  # else the server's own error (-32000 too)
                raise
            raise McpUpstreamError(f"MCP server {self.name!r}: the connection was lost during tool {tool!r} "
                                   "(not retried: it may have acted)") from None

    async def _end(self) -> None:
        self._stop.set()
        holder, self._holder = self._holder, None
        if holder is not None:
            try:
                await asyncio.wait_for(holder, 10)
            except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                holder.cancel()
                with contextlib.suppress(BaseException):
                    await holder

    async def close(self) -> None:
        async with self._lock:
            await self._end()
            if self._errlog is not None:
                self._errlog.close()
                self._errlog = None


def scrub(value: Any, redact: Redactor) -> Any:
    """``value`` (decoded JSON) with every string in it, keys too, redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [scrub(item, redact) for item in value]
    if isinstance(value, dict):
        return {redact(key): scrub(item, redact) for key, item in value.items()}
    return value


@contextlib.asynccontextmanager
async def watched(transport: Any, lost: Callable[[], None]) -> AsyncIterator[Any]:
    """``transport``'s streams, calling ``lost`` when the server's side ends: the SDK's client
    session only fails the requests made after that, and a dead stdio server would stay our client
    until then (its next call failed instead of reopening it)."""
    import anyio

    async with transport as (read, write):
        relay_send, relay_receive = anyio.create_memory_object_stream[Any](0)

        async def relay() -> None:
            async with relay_send:
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    async for item in read:
                        await relay_send.send(item)
            lost()

        async with anyio.create_task_group() as group:
            group.start_soon(relay)
            try:
                yield relay_receive, write
            finally:
                group.cancel_scope.cancel()


@dataclass(frozen=True)
class McpGrant:
    """What one consumer may use of one server: every offered tool (``tools`` None) or these."""

    server: str
    tools: frozenset[str] | None = None


@dataclass
class McpHub:
    """The servers, the grants and the SDK server that answers ``/mcp/<server>``."""

    secrets: Mapping[str, SecretStr]
    store: Any  # GatewayStore
    log_dir: Path
    max_body_bytes: int = 1024 * 1024
    servers: dict[str, Any] = field(default_factory=dict)  # name -> hiclaw.config.McpServer
    upstreams: dict[str, McpUpstream] = field(default_factory=dict)
    grants: dict[str, dict[str, McpGrant]] = field(default_factory=dict)  # consumer -> server -> grant
    configured: bool = False
    review: Review | None = None  # the control plane's approvals (hiclaw.protocols.ApprovalGate)

    def __post_init__(self) -> None:
        forms = [form for value in self.secrets.values() for form in secret_forms(value.get_secret_value())]
        self.redact = Redactor(forms)
        self._manager: Any = None
        self._holder: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._retired: list[McpUpstream] = []

    # ------------------------------------------------------------------ configuration

    def set(self, servers: Mapping[str, Any], grants: Mapping[str, Mapping[str, Sequence[str] | None]]) -> None:
        """Replace the servers (``{name: McpServer}``) and grants (``{consumer: {server: tools or None}}``).
        A server whose configuration changed is reconnected on its next use."""
        upstreams: dict[str, McpUpstream] = {}
        for name, server in servers.items():
            env: dict[str, str] = {}
            for var, secret_name in server.secret_env.items():
                env[var] = self._secret(name, secret_name)
            header = server.format.replace("{secret}", self._secret(name, server.secret)) if server.secret else None
            current = self.upstreams.get(name)
            if current is not None and current.server == server and current.env == env and current.header_value == header:
                upstreams[name] = current
            else:
                upstreams[name] = McpUpstream(name, server, env=env, header=header, log_dir=self.log_dir)
        unknown = sorted({s for per in grants.values() for s in per} - set(servers))
        if unknown:
            raise ConfigError(f"MCP grants name unknown server(s) {', '.join(unknown)}",
                              hint="grant only servers configured as [mcp.<name>]")
        self._retired.extend(u for name, u in self.upstreams.items() if upstreams.get(name) is not u)
        self.servers = dict(servers)
        self.upstreams = upstreams
        self.grants = {consumer: {server: McpGrant(server, None if tools is None else frozenset(tools))
                                  for server, tools in per.items()}
                       for consumer, per in grants.items()}
        self.configured = True

    def _secret(self, server: str, name: str) -> str:
        secret = self.secrets.get(name)
        if secret is None:
            raise ConfigError(f"MCP server {server!r} needs the secret {name!r}, which the gateway was not given",
                              hint=f"add `{name} = \"…\"` to secrets.toml or export {name.upper()}")
        return secret.get_secret_value()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._holder is not None:
            return
        from mcp.server.lowlevel import Server
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.transport_security import TransportSecuritySettings

        app: Any = Server("hiclaw-gateway", version="1", on_list_tools=self._list_tools, on_call_tool=self._call_tool,
                          instructions="The MCP servers the hiclaw admin configured, as granted to your consumer token.")
        # Tokens authenticate every request; the Host check against DNS rebinding would only refuse
        # the bridge's and the LAN's names.
        self._manager = StreamableHTTPSessionManager(
            app, json_response=True, stateless=True, max_request_body_size=self.max_body_bytes,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()

        async def hold() -> None:
            try:
                async with self._manager.run():
                    ready.set_result(None)
                    await self._stop.wait()
            except Exception as exc:  # noqa: BLE001 - reported to start()
                if not ready.done():
                    ready.set_exception(exc)
                else:
                    log.error("MCP endpoint stopped: %s", type(exc).__name__)

        self._holder = asyncio.create_task(hold(), name="hiclaw-mcp-endpoint")
        await ready

    async def close(self) -> None:
        self._stop.set()
        holder, self._holder = self._holder, None
        if holder is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(holder, 10)
        for upstream in [*self.upstreams.values(), *self._retired]:
            await upstream.close()
        self._retired.clear()

    # ------------------------------------------------------------------ access

    def grant(self, consumer: str, server: str) -> McpGrant:
        """What ``consumer`` may use of ``server``; 404/403 (before the SDK sees anything) otherwise."""
        if server not in self.servers:
            mine = ", ".join(sorted(self.grants.get(consumer, {}))) or "none"
            raise GatewayHTTPError(404, f"no MCP server {server!r} on this gateway (yours: {mine})",
                                   code="server_not_found")
        grant = self.grants.get(consumer, {}).get(server)
        if grant is None or grant.tools == frozenset():
            raise GatewayHTTPError(403, f"consumer {consumer!r} is not granted MCP server {server!r}",
                                   code="server_not_granted", kind="permission_error")
        return grant

    def granted_servers(self, consumer: str) -> list[dict[str, Any]]:
        """``GET /mcp``: the servers this consumer may use (names, descriptions, tool grants)."""
        return [{"name": name, "description": self.servers[name].description,
                 "tools": None if grant.tools is None else sorted(grant.tools)}
                for name, grant in sorted(self.grants.get(consumer, {}).items())
                if name in self.servers and grant.tools != frozenset()]

    async def offered(self, server: str, *, fresh: bool = False) -> list[Any]:
        """The server's tools the admin offers at all (``[mcp.<name>] tools``, default every one)."""
        tools = await self.upstreams[server].tools(fresh=fresh)
        allowed = self.servers[server].tools
        return [t for t in tools if allowed is None or t.name in allowed]

    async def granted_tools(self, call: McpCall) -> list[Any]:
        grant = self.grant(call.consumer, call.server)  # read again: it may have changed since the request came in
        return [t for t in await self.offered(call.server) if grant.tools is None or t.name in grant.tools]

    # ------------------------------------------------------------------ the SDK's handlers

    async def _list_tools(self, ctx: Any, params: Any) -> Any:
        from mcp_types import ListToolsResult

        call = CALLER.get()
        started = time.perf_counter()
        outcome, error = "failed", None
        try:
            tools = await self.granted_tools(call)
            outcome = "ok"
            return ListToolsResult(tools=tools)
        except GatewayHTTPError as exc:
            outcome, error = "refused", exc.code
            raise self._mcp_error(exc.message) from None
        except McpUpstreamError as exc:
            error = "upstream"
            raise self._mcp_error(str(exc), internal=True) from None
        finally:
            self.audit(call, "tools/list", None, outcome, error, 0, started)

    async def _call_tool(self, ctx: Any, params: Any) -> Any:
        from mcp.shared.exceptions import MCPError
        from mcp_types import CallToolResult, TextContent

        call = CALLER.get()
        started = time.perf_counter()
        tool = str(params.name)
        outcome, error, size = "failed", None, 0
        try:
            granted = {t.name: t for t in await self.granted_tools(call)}
            if tool not in granted:
                outcome, error = "refused", "tool_not_granted"
                raise self._mcp_error(f"tool {tool!r} of MCP server {call.server!r} is not offered to you "
                                      f"(yours: {', '.join(sorted(granted)) or 'none'})")
            arguments = dict(params.arguments or {})
            if self.review is not None:
                result, outcome, size = await self._reviewed(call, granted[tool], arguments, params)
                return result
            result = await self.upstreams[call.server].call(tool, arguments)
            result, size = self._clean(call.server, result)
            outcome = "tool_error" if result.is_error else "ok"
            return result
        except GatewayHTTPError as exc:
            outcome, error = "refused", exc.code
            raise self._mcp_error(exc.message) from None
        except McpUpstreamError as exc:
            error = "upstream"
            return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        except MCPError as exc:  # ours (refused above) or the upstream's, redacted
            error = error or "upstream_error"
            raise self._mcp_error(self.redact(exc.message)) from None
        except Exception as exc:  # noqa: BLE001 - a failing server is the model's news, by its type only
            error = type(exc).__name__
            log.warning("%s mcp %s/%s: failed with %s", call.consumer, call.server, tool, type(exc).__name__)
            return CallToolResult(content=[TextContent(type="text", text=f"MCP server {call.server!r}: tool {tool!r} "
                                                                         f"failed ({type(exc).__name__})")],
                                  is_error=True)
        finally:
            self.audit(call, "tools/call", tool, outcome, error, size, started)

    async def _reviewed(self, call: McpCall, tool: Any, arguments: dict[str, Any], params: Any) -> tuple[Any, str, int]:
        """The call through the approvals (``review``): run now, the stored answer of an approved
        call (run exactly once), or an answer saying it waits for the admin or was denied."""
        from mcp_types import CallToolResult, TextContent

        assert self.review is not None
        annotations = tool.annotations
        meta = params.meta if isinstance(params.meta, dict) else {}

        async def run() -> dict[str, Any]:
            try:
                result, _ = self._clean(call.server, await self.upstreams[call.server].call(tool.name, arguments))
            except McpUpstreamError as exc:
                result = CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
            return result.model_dump(mode="json", by_alias=True, exclude_none=True)

        verdict = await self.review({
            "kind": "mcp", "worker": call.consumer, "call_id": str(meta.get(CALL_ID_META) or ""),
            "target": f"{call.server}/{tool.name}", "arguments": arguments, "task_id": call.task,
            "project_id": call.project, "read_only": bool(annotations and annotations.read_only_hint),
            "destructive": bool(annotations and annotations.destructive_hint)}, run)
        state = verdict["state"]
        if state == "done":
            result = CallToolResult.model_validate(verdict["result"])
            return result, "tool_error" if result.is_error else "ok", len(json.dumps(verdict["result"]).encode())
        approval = {"id": verdict.get("approval"), "state": state, "reason": verdict.get("reason")}
        if state == "pending":
            text = (f"this call waits for the admin's approval ({approval['id']}: {approval['reason']}); "
                    "send the same call again (same call id) to go on waiting")
            return CallToolResult(content=[TextContent(type="text", text=text)], _meta={APPROVAL_META: approval}), \
                "pending_approval", 0
        text = (f"the admin denied this call ({approval['id']}): {approval['reason']}" if state == "denied"
                else f"this call was not run ({approval['id']}): {approval['reason']}")
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True,
                              _meta={APPROVAL_META: approval}), state, 0

    def _clean(self, server: str, result: Any) -> tuple[Any, int]:
        """The result with every secret redacted, or an error result when it is too large."""
        from mcp_types import CallToolResult, TextContent

        data = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        meta = data.get("_meta")
        if isinstance(meta, dict) and APPROVAL_META in meta:
            # Only the gateway says a call waits for the admin: a server's "pending" would have the
            # worker send its call again and again (run each time, or never answered).
            result = CallToolResult.model_validate({**data, "_meta": {k: v for k, v in meta.items()
                                                                        if k != APPROVAL_META}})
            data = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        size = len(json.dumps(data).encode())
        limit = self.servers[server].max_result_bytes
        if size > limit:
            return CallToolResult(content=[TextContent(type="text", text=(
                f"the result of MCP server {server!r} is {size} bytes, over its limit of {limit} "
                "(max_result_bytes): ask for less"))], is_error=True), size
        # Every string on its own: in the serialised answer a secret the server had JSON-escaped
        # itself (a JSON document in a text part) would be escaped twice, a form no one redacts.
        cleaned = scrub(data, self.redact)
        return (CallToolResult.model_validate(cleaned) if cleaned != data else result), size

    @staticmethod
    def _mcp_error(message: str, *, internal: bool = False) -> Exception:
        from mcp.shared.exceptions import MCPError
        from mcp_types import INTERNAL_ERROR, INVALID_PARAMS

        return MCPError(INTERNAL_ERROR if internal else INVALID_PARAMS, message)

    def audit(self, call: McpCall, method: str, tool: str | None, outcome: str, error: str | None, size: int,
               started: float) -> None:
        call.audited = True
        latency = round((time.perf_counter() - started) * 1000, 3)
        self.store.record_mcp({"consumer": call.consumer, "task": call.task, "project": call.project,
                               "server": call.server, "method": method, "tool": tool, "outcome": outcome,
                               "error": error, "result_bytes": size, "latency_ms": latency})
        log.info("%s mcp %s %s%s → %s%s (%.0f ms)", call.consumer, call.server, method, f" {tool}" if tool else "",
                 outcome, f" [{error}]" if error else "", latency)

    # ------------------------------------------------------------------ HTTP

    async def serve(self, request: web.Request, call: McpCall) -> web.StreamResponse:
        """Hand one checked request to the SDK's transport (an ASGI app) and stream its answer back."""
        self.grant(call.consumer, call.server)
        if self._manager is None:
            raise GatewayHTTPError(503, "the MCP endpoint is not started", code="not_started", kind="server_error")
        token = CALLER.set(call)
        try:
            return await asgi(self._manager.handle_request, request, path=f"{PREFIX}{call.server}")
        finally:
            CALLER.reset(token)


async def asgi(app: Any, request: web.Request, *, path: str) -> web.StreamResponse:
    """Serve aiohttp ``request`` with ASGI ``app`` (HTTP only): the body is read first (the
    aiohttp app's size limit applies), the answer streamed as the app sends it."""
    body = await request.read()
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in request.headers.items()
               if name.lower() not in NOT_PASSED and not name.lower().startswith("x-hiclaw-")]
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": request.method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": request.query_string.encode(), "root_path": "", "headers": headers,
             "client": (request.remote or "127.0.0.1", 0), "server": ("127.0.0.1", 0), "state": {}}
    sent = False
    finished = asyncio.Event()
    response: web.StreamResponse | None = None

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal response
        if message["type"] == "http.response.start":
            response = web.StreamResponse(status=message["status"])
            for name, value in message.get("headers", []):
                if name.lower() != b"content-length":
                    response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
        elif message["type"] == "http.response.body" and response is not None:
            if not response.prepared:
                await response.prepare(request)
            if message.get("body"):
                await response.write(message["body"])
            if not message.get("more_body"):
                await response.write_eof()

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    if response is None:
        raise GatewayHTTPError(500, "the MCP endpoint gave no answer", code="internal_error", kind="server_error")
    if not response.prepared:
        await response.prepare(request)
        await response.write_eof()
    return response
