"""The worker's MCP client on the wire: Streamable HTTP to ``{gateway}/mcp/<server>``, through the
worker's gateway client (its consumer token, its bridge), without the MCP SDK — a worker stays
small (``bench/worker_start.py``), and what it needs is a handful of JSON-RPC requests.

Two protocol eras, as the SDK's server speaks them (``mcp`` 2.3):

* **modern** (revision 2026-07-28): every request stands alone — no handshake, no session. Its
  ``params._meta`` carries the protocol version, the client's info and capabilities, and the
  headers repeat the version and the method (``MCP-Protocol-Version``, ``Mcp-Method``; a
  ``tools/call`` also ``Mcp-Name`` and an ``Mcp-Param-<h>`` header for each argument its input
  schema marks ``x-mcp-header``), which the server checks against the body
  (``mcp.shared.inbound.classify_inbound_request``).
* **legacy** (the ``initialize`` handshake, 2025-11-25): ``initialize`` then
  ``notifications/initialized``, and the ``Mcp-Session-Id`` the server gives on every request.

Which one a server speaks is asked once with ``server/discover`` at the modern revision; anything
but a discover result naming it falls back to the handshake (the SDK's own ``mode="auto"``
policy, :mod:`mcp.client._probe`). A 401/403/404 of the gateway (its token, its grants, its
servers) is never an era question: it is the answer, one line for the model.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
CLIENT_INFO = {"name": "hiclaw-worker", "version": "1"}
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
#: JSON-RPC error codes (``mcp_types.jsonrpc``) the client acts on.
UNSUPPORTED_PROTOCOL_VERSION = -32022
HEADER_MISMATCH = -32020
#: A tool's ``x-mcp-header`` annotation: mirrored as ``Mcp-Param-<token>`` (RFC 9110 token).
X_MCP_HEADER = "x-mcp-header"
HEADER_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
HEADER_SAFE = re.compile(r"^[\x20-\x7e]*$")
BASE64_SENTINEL = re.compile(r"^=\?base64\?.*\?=$")
INSTANCE_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
SCHEMA_MAPS = frozenset({"$defs", "definitions", "patternProperties", "dependentSchemas"})
#: What a gateway's (or any server's) error text may add to the model's one line.
MAX_ERROR_CHARS = 300


class McpToolError(Exception):
    """One line for the model: what failed and, where it helps, what to do."""


class McpUnreachable(McpToolError):
    """The gateway did not answer."""


class McpAccessError(McpToolError):
    """The gateway refused this consumer (401 token, 403 grant, 404 server): never retried."""


class McpRpcError(McpToolError):
    """A JSON-RPC error answer (``code``, ``data``), an HTTP refusal without one (``status``), or no
    JSON-RPC answer at all: the server's word, which may be an era question (never the gateway's)."""

    def __init__(self, message: str, *, code: int | None = None, data: Any = None, status: int = 200) -> None:
        super().__init__(message)
        self.code, self.data, self.status = code, data, status


@dataclass
class McpEndpoint:
    """One server's endpoint: the era it speaks (None: not asked yet) and a handshake's session."""

    server: str
    era: str | None = None
    version: str = LEGACY  # the handshake's negotiated revision
    session_id: str | None = None
    initialized: bool = False
    next_id: int = 0

    def request_id(self) -> int:
        self.next_id += 1
        return self.next_id


def header(headers: dict[str, str], name: str) -> str | None:
    return next((value for key, value in headers.items() if key.lower() == name), None)


def encode_header_value(value: str) -> str:
    """A value as an HTTP header carries it: verbatim if printable ASCII without edge spaces, else
    ``=?base64?…?=`` (``mcp.shared.inbound.encode_header_value``)."""
    if HEADER_SAFE.fullmatch(value) and value == value.strip() and not BASE64_SENTINEL.fullmatch(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def x_mcp_headers(schema: Any) -> dict[tuple[str, ...], str] | None:
    """``x-mcp-header`` annotations of an input schema by property path; None when one is invalid
    (the SDK's clients then drop the tool: its calls could not be sent as the server checks them).

    Only positions reached through ``properties`` may carry one; annotations under any other
    keyword make the schema invalid, as ``mcp.shared.inbound.find_invalid_x_mcp_header`` says."""
    found: dict[tuple[str, ...], str] = {}
    seen: set[str] = set()
    stack: list[tuple[tuple[str, ...] | None, Any]] = [((), schema)]
    while stack:
        path, node = stack.pop()
        if not isinstance(node, dict):
            continue
        if X_MCP_HEADER in node:
            token, kind = node[X_MCP_HEADER], node.get("type")
            if (not path or not isinstance(token, str) or not HEADER_TOKEN.fullmatch(token)
                    or kind not in ("string", "integer", "boolean") or token.lower() in seen):
                return None
            seen.add(token.lower())
            found[path] = token
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                stack.extend(((*path, name) if path is not None else None, sub) for name, sub in value.items())
            elif key in INSTANCE_KEYWORDS:
                continue  # data, not schemas
            elif isinstance(value, dict):
                stack.extend((None, sub) for sub in (value.values() if key in SCHEMA_MAPS else [value]))
            elif isinstance(value, list):
                stack.extend((None, sub) for sub in value)
    return found


def param_headers(paths: dict[tuple[str, ...], str], arguments: dict[str, Any]) -> dict[str, str]:
    """The ``Mcp-Param-*`` headers of a ``tools/call`` (``mcp.shared.inbound.mcp_param_headers``)."""
    headers: dict[str, str] = {}
    for path, token in paths.items():
        value: Any = arguments
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, str | int | float):
            rendered = str(value)
        else:
            continue
        headers[f"Mcp-Param-{token}"] = encode_header_value(rendered)
    return headers


def sse_message(data: bytes, wanted: Any) -> Any:
    """The JSON-RPC answer to request ``wanted`` in a ``text/event-stream`` body (notifications,
    pings and other events before it are skipped)."""
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
        text = data.decode("utf-8", errors="replace").strip()
        return " ".join(text.split())[:MAX_ERROR_CHARS] or None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return " ".join(str(error.get("message") or "").split())[:MAX_ERROR_CHARS] or None
    return str(error)[:MAX_ERROR_CHARS] if error else None


def access_line(server: str, status: int, data: bytes) -> str:
    said = gateway_error(data)
    detail = f"HTTP {status}: {said}" if said else f"HTTP {status}"
    if status == 401:
        return (f"MCP server {server!r}: the gateway refused your token ({detail}); it may have been revoked — "
                "tell the Manager, do not retry")
    if status == 403:
        return f"MCP server {server!r} is not granted to you ({detail}); ask the Manager for access"
    return f"there is no MCP server {server!r} on the gateway ({detail}); check its name"


class McpClient:
    """JSON-RPC requests to the worker's MCP servers through ``gateway`` (a WorkerGatewayClient)."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.endpoints: dict[str, McpEndpoint] = {}

    async def request(self, server: str, method: str, params: dict[str, Any] | None = None, *,
                      headers: dict[str, str] | None = None, task_id: str | None = None) -> dict[str, Any]:
        """The result of ``method`` on ``server`` in its era (asked on first use). A request the
        server refused before running it (era gone, session lost) is sent again once."""
        endpoint = self.endpoints.setdefault(server, McpEndpoint(server))
        for attempt in (1, 2):
            if endpoint.era is None:
                await self._negotiate(endpoint, task_id)
            try:
                if endpoint.era == MODERN:
                    return await self._modern(endpoint, method, params, headers, task_id)
                return await self._legacy(endpoint, method, params, task_id)
            except McpRpcError as exc:
                if attempt == 2 or not self._refused_before_running(endpoint, exc):
                    raise
                endpoint.era, endpoint.initialized, endpoint.session_id = None, False, None
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _refused_before_running(endpoint: McpEndpoint, exc: McpRpcError) -> bool:
        if endpoint.era == MODERN:  # the server no longer takes this revision (it was replaced)
            return exc.code == UNSUPPORTED_PROTOCOL_VERSION
        # the session is gone (the server restarted): its transport refused the request, no handler ran
        return endpoint.session_id is not None and (exc.status == 404 or (exc.status == 400 and exc.code in (None, -32600)))

    async def _negotiate(self, endpoint: McpEndpoint, task_id: str | None) -> None:
        try:
            result = await self._modern(endpoint, "server/discover", None, None, task_id)
        except McpRpcError:
            result = {}  # not a modern server: the handshake
        versions = result.get("supportedVersions")
        endpoint.era = MODERN if isinstance(versions, list) and MODERN in versions else LEGACY
        endpoint.initialized, endpoint.session_id = False, None

    async def _modern(self, endpoint: McpEndpoint, method: str, params: dict[str, Any] | None,
                      extra: dict[str, str] | None, task_id: str | None) -> dict[str, Any]:
        sent = dict(params or {})
        sent["_meta"] = {**(sent.get("_meta") or {}), META_VERSION: MODERN, META_CLIENT_INFO: CLIENT_INFO,
                         META_CAPABILITIES: {}}
        headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
        if method == "tools/call" and isinstance(sent.get("name"), str):
            headers["Mcp-Name"] = encode_header_value(sent["name"])
            headers.update(extra or {})
        body = {"jsonrpc": "2.0", "id": endpoint.request_id(), "method": method, "params": sent}
        return await self._post(endpoint, body, headers, task_id) or {}

    async def _legacy(self, endpoint: McpEndpoint, method: str, params: dict[str, Any] | None,
                      task_id: str | None) -> dict[str, Any]:
        if not endpoint.initialized:
            endpoint.session_id = None
            answer = await self._post(endpoint, {"jsonrpc": "2.0", "id": endpoint.request_id(), "method": "initialize",
                                                 "params": {"protocolVersion": LEGACY, "capabilities": {},
                                                            "clientInfo": CLIENT_INFO}},
                                      {"MCP-Protocol-Version": LEGACY}, task_id) or {}
            version = answer.get("protocolVersion")
            if version not in HANDSHAKE_VERSIONS:
                raise McpToolError(f"MCP server {endpoint.server!r} answered the handshake with protocol version "
                                   f"{str(version)[:40]!r}, which this worker does not speak")
            endpoint.version = str(version)
            await self._post(endpoint, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                             {"MCP-Protocol-Version": endpoint.version}, task_id)
            endpoint.initialized = True
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": endpoint.request_id(), "method": method}
        if params is not None:
            body["params"] = params
        return await self._post(endpoint, body, {"MCP-Protocol-Version": endpoint.version}, task_id) or {}

    async def _post(self, endpoint: McpEndpoint, body: dict[str, Any], headers: dict[str, str],
                    task_id: str | None) -> dict[str, Any] | None:
        """One POST; its JSON-RPC result (None for an accepted notification), else an error."""
        from hiclaw.agent.client import Unreachable

        server = endpoint.server
        sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers}
        if endpoint.session_id and endpoint.era != MODERN:
            sent["Mcp-Session-Id"] = endpoint.session_id
        try:
            status, data, answer = await self.gateway.mcp_post(server, json.dumps(body).encode(), headers=sent,
                                                                task_id=task_id)
        except Unreachable as exc:
            raise McpUnreachable(f"MCP server {server!r}: the gateway did not answer ({exc}); try again in a "
                                 "moment") from None
        if "id" not in body and status in (200, 202):
            return None  # a notification, accepted
        kind = header(answer, "content-type") or ""
        message: Any = None
        if "text/event-stream" in kind:
            message = sse_message(data, body.get("id"))
        else:
            try:
                message = json.loads(data or b"null")
            except ValueError:
                message = None
        rpc = isinstance(message, dict) and message.get("jsonrpc") == "2.0"
        if status in (401, 403) or (status == 404 and not rpc and isinstance(message, dict)
                                    and isinstance(message.get("error"), dict)):
            raise McpAccessError(access_line(server, status, data))  # the gateway's answer: token, grant, server
        if rpc and isinstance(message.get("error"), dict):
            error = message["error"]
            code = error.get("code") if isinstance(error.get("code"), int) else None
            text = " ".join(str(error.get("message") or "error").split())[:MAX_ERROR_CHARS]
            raise McpRpcError(f"MCP server {server!r}: {text}", code=code, data=error.get("data"), status=status)
        if status != 200:
            said = gateway_error(data)
            raise McpRpcError(f"MCP server {server!r} answered HTTP {status}" + (f": {said}" if said else "")
                              + ("; try again later" if status >= 500 else ""), status=status)
        session = header(answer, "mcp-session-id")
        if session and endpoint.era != MODERN:
            endpoint.session_id = session
        if not rpc or "result" not in message:
            raise McpRpcError(f"MCP server {server!r} gave no JSON-RPC answer to {body.get('method')!r}")
        result = message["result"]
        return result if isinstance(result, dict) else {}
