"""The gateway's HTTP handlers: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /healthz``,
``ANY /egress/<route>/<path>`` (credentialed HTTP routes, :mod:`~hiclaw.plugins.gateways.embedded.egress`)
and ``/mcp/<server>`` (MCP servers, :mod:`~hiclaw.plugins.gateways.embedded.mcp`; ``GET /mcp`` lists the granted ones).

Order of checks for a completion (each answered OpenAI-style): token (401) → body size (413) →
JSON and the parameter allow-list (400, :mod:`~hiclaw.plugins.gateways.embedded.params`) → model
exists (404) and is allowed (403) → budgets (429) → upstream (retries, then fallbacks; 502/504).
Every call that presented a valid token is written to the ledger, refused or not.

Attribution: a consumer the control plane assigns work (every worker) is tagged from those
assignments, never from its own headers — ``X-Hiclaw-Task`` only picks one of its current tasks,
whose project comes from the assignment; a call without such a tag counts toward every project
it currently works on. A consumer with no assignments on record (a token minted by hand) tags
its calls with the headers as it likes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from hiclaw.plugins.gateways.embedded.budget import BudgetGuard, estimate_cost
from hiclaw.plugins.gateways.embedded.egress import EgressCall, EgressProxy
from hiclaw.plugins.gateways.embedded.errors import GatewayHTTPError, UpstreamError, bad_request, unauthorized
from hiclaw.plugins.gateways.embedded.mcp import McpCall, McpHub
from hiclaw.plugins.gateways.embedded.params import check_request
from hiclaw.plugins.gateways.embedded.routing import Route, Router
from hiclaw.plugins.gateways.embedded.settings import EmbeddedGatewaySettings
from hiclaw.plugins.gateways.embedded.store import BudgetCrossing, Consumer, GatewayStore, LedgerEntry
from hiclaw.plugins.gateways.embedded.upstream import ChunkStream, DirectUpstream, LitellmUpstream

log = logging.getLogger("hiclaw.gateway")

TASK_HEADER = "X-Hiclaw-Task"
PROJECT_HEADER = "X-Hiclaw-Project"
MODEL_HEADER = "X-Hiclaw-Model"
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
T = TypeVar("T")


@dataclass
class Call:
    """What the ledger needs to know about one call while it runs."""

    consumer: str
    started: float
    stream: bool = False
    task: str | None = None
    project: str | None = None
    budget_projects: tuple[str, ...] = ()  # the project budgets the call is checked against
    route: Route | None = None


class GatewayServer:
    def __init__(self, *, settings: EmbeddedGatewaySettings, store: GatewayStore, router: Router,
                 direct: DirectUpstream, via_litellm: LitellmUpstream | None,
                 on_crossings: Callable[[list[BudgetCrossing]], None], egress: EgressProxy | None = None,
                 mcp: McpHub | None = None) -> None:
        self.settings = settings
        self.egress_proxy = egress
        self.mcp_hub = mcp
        self.store = store
        self.router = router
        self.direct = direct
        self.via_litellm = via_litellm
        self.budget = BudgetGuard(store)
        self.on_crossings = on_crossings

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.health)
        if self.egress_proxy is not None:
            app.router.add_get("/egress", self.egress_routes)
            app.router.add_route("*", "/egress/{tail:.*}", self.egress)
        if self.mcp_hub is not None:
            app.router.add_get("/mcp", self.mcp_servers)
            app.router.add_route("*", "/mcp/{server}", self.mcp)
        return app

    # ------------------------------------------------------------------ checks

    def _authenticate(self, request: web.Request) -> Consumer:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise unauthorized("no consumer token: send `Authorization: Bearer <token>` (mint one with "
                               "`hiclaw gateway token mint NAME`)", "missing_api_key")
        consumer = self.store.authenticate(header[7:].strip())
        if consumer is None:
            raise unauthorized("invalid consumer token", "invalid_api_key")
        if consumer.revoked_at is not None:
            raise unauthorized(f"the token of consumer {consumer.name!r} was revoked", "token_revoked")
        return consumer

    @staticmethod
    def _tag(request: web.Request, header: str) -> str | None:
        value = request.headers.get(header)
        if value is None or value == "":
            return None
        if not TAG.match(value):
            raise bad_request(f"header {header} must be 1-128 letters, digits or . _ : / - (got {value[:40]!r})",
                              "invalid_header", header)
        return value

    def _attribute(self, request: web.Request, consumer: Consumer, call: Call) -> None:
        """Set the call's task, project and the project budgets it counts toward."""
        task, project = self._tag(request, TASK_HEADER), self._tag(request, PROJECT_HEADER)
        assigned = self.store.assignments(consumer.name)
        if assigned is None:  # not managed by a control plane: the holder's own tags
            call.task, call.project = task, project
        elif task is not None and task in assigned:  # one of its own tasks; the project is the control plane's
            call.task, call.project = task, assigned[task]
        else:  # no tag, or one naming no task of its own (headers are never trusted): every project it is on
            call.budget_projects = tuple(sorted({p for p in assigned.values() if p is not None}))
            call.project = self.budget.tightest(call.budget_projects)
            return
        call.budget_projects = (call.project,) if call.project is not None else ()

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], int]:
        limit = self.settings.max_body_bytes
        too_large = GatewayHTTPError(413, f"request body is larger than {limit} bytes (gateway max_body_bytes)",
                                     code="request_too_large")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"request body is not valid JSON: {exc}", "invalid_json") from None
        return check_request(payload), len(raw)

    def _allowed(self, consumer: Consumer) -> list[str]:
        return [alias for alias in self.router.aliases() if consumer.allows(alias)]

    def _route_chain(self, payload: dict[str, Any], consumer: Consumer) -> list[Route]:
        alias = self.router.resolve(payload["model"])
        if alias is None:
            raise GatewayHTTPError(404, f"model {payload['model']!r} does not exist on this gateway (yours: "
                                   f"{', '.join(self._allowed(consumer)) or 'none'})", code="model_not_found", param="model")
        if not consumer.allows(alias):
            raise GatewayHTTPError(403, f"consumer {consumer.name!r} may not use model {alias!r} (allowed: "
                                   f"{', '.join(self._allowed(consumer)) or 'none'})", code="model_not_allowed",
                                   kind="permission_error", param="model")
        return self.router.chain(alias)

    # ------------------------------------------------------------------ ledger

    def _record(self, call: Call, status: int, *, error: str | None = None, prompt: int = 0, completion: int = 0) -> None:
        route = call.route
        cost = route.price.cost(prompt, completion) if route is not None else 0.0
        latency = (time.perf_counter() - call.started) * 1000
        entry = LedgerEntry(call.consumer, call.task, call.project, route.alias if route else None,
                            route.model if route else None, prompt, completion, cost, latency, status, error, call.stream)
        crossings = self.store.record(entry, warn_ratio=self.settings.budget_warning_ratio)
        level = logging.DEBUG if status == 200 else logging.INFO  # the ledger has every call; errors stand out
        if log.isEnabledFor(level):
            log.log(level, "%s %s %s %d tokens=%d+%d cost=$%.6f %.1fms task=%s project=%s%s", call.consumer,
                     route.alias if route else "-", route.model if route else "-", status, prompt, completion, cost,
                     latency, call.task or "-", call.project or "-", f" error={error}" if error else "")
        if crossings:
            self.on_crossings(crossings)

    # ------------------------------------------------------------------ upstream

    def _upstream(self, route: Route) -> DirectUpstream | LitellmUpstream:
        if route.direct:
            return self.direct
        assert self.via_litellm is not None, "litellm upstream not started"
        return self.via_litellm

    async def _with_fallback(self, call: Call, chain: list[Route], op: Callable[[Route], Awaitable[T]]) -> T:
        tried: list[str] = []
        last: UpstreamError | None = None
        for route in chain:
            call.route = route
            for attempt in range(self.settings.retries + 1):
                tried.append(route.alias)
                try:
                    return await op(route)
                except UpstreamError as exc:
                    if not exc.retryable:
                        raise
                    last = exc
                    log.warning("%s: upstream %s attempt %d failed: %s", call.consumer, route.alias, attempt + 1, exc.message)
                    if attempt < self.settings.retries and self.settings.retry_backoff_seconds:
                        await asyncio.sleep(self.settings.retry_backoff_seconds * (attempt + 1))  # back-off, not sync
        assert last is not None
        raise UpstreamError(last.status, f"{last.message} (tried: {', '.join(tried)})", code=last.code, retryable=False)

    # ------------------------------------------------------------------ routes

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            consumer = self._authenticate(request)
        except GatewayHTTPError as exc:
            return exc.response()
        call = Call(consumer.name, started)
        try:
            self._attribute(request, consumer, call)
            payload, size = await self._read(request)
            call.stream = bool(payload.get("stream"))
            chain = self._route_chain(payload, consumer)
            call.route = chain[0]
            reservation = self.budget.reserve(consumer, call.budget_projects, estimate_cost(
                chain, payload, size, self.settings.reserve_completion_tokens))
        except GatewayHTTPError as exc:
            self._record(call, exc.status, error=exc.code)
            return exc.response()
        try:
            if call.stream:
                return await self._stream(request, call, chain, payload)
            return await self._complete(call, chain, payload)
        finally:
            self.budget.release(reservation)

    async def _complete(self, call: Call, chain: list[Route], payload: dict[str, Any]) -> web.Response:
        try:
            result = await self._with_fallback(
                call, chain, lambda route: self._upstream(route).complete(route, payload, call.consumer))
        except UpstreamError as exc:
            self._record(call, exc.status, error=exc.code)
            return exc.answer().response()
        self._record(call, 200, prompt=result.prompt_tokens, completion=result.completion_tokens)
        assert call.route is not None
        return web.Response(body=result.body, content_type="application/json", headers={MODEL_HEADER: call.route.alias})

    async def _stream(self, request: web.Request, call: Call, chain: list[Route], payload: dict[str, Any]) -> web.StreamResponse:
        try:
            chunks: ChunkStream = await self._with_fallback(
                call, chain, lambda route: self._upstream(route).stream(route, payload, call.consumer))
        except UpstreamError as exc:  # nothing sent yet: a plain JSON error
            self._record(call, exc.status, error=exc.code)
            return exc.answer().response()
        assert call.route is not None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               MODEL_HEADER: call.route.alias})
        status, error = 200, None
        try:
            await response.prepare(request)
            async for data in chunks:
                await response.write(b"data: " + data + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
        except UpstreamError as exc:  # mid-stream: an error event, then the end
            status, error = exc.status, exc.code
            log.warning("%s: upstream %s failed mid-stream: %s", call.consumer, call.route.alias, exc.message)
            await _quietly(response.write(GatewayHTTPError(exc.status, exc.message, code=exc.code, kind=exc.kind).sse_event()))
        except ConnectionResetError:
            status, error = 499, "client_disconnected"
        except asyncio.CancelledError:
            status, error = 499, "client_disconnected"
            raise
        finally:
            await chunks.aclose()
            self._record(call, status, error=error, prompt=chunks.prompt_tokens, completion=chunks.completion_tokens)
        await _quietly(response.write_eof())
        return response

    async def models(self, request: web.Request) -> web.Response:
        try:
            consumer = self._authenticate(request)
        except GatewayHTTPError as exc:
            return exc.response()
        data = [{"id": alias, "object": "model", "created": 0, "owned_by": "hiclaw"} for alias in self._allowed(consumer)]
        return web.json_response({"object": "list", "data": data})

    async def egress(self, request: web.Request) -> web.StreamResponse:
        """``ANY /egress/<route>/<path>``: refused or forwarded by the egress proxy, then audited."""
        started = time.perf_counter()
        try:
            consumer = self._authenticate(request)
        except GatewayHTTPError as exc:
            return exc.response()
        assert self.egress_proxy is not None
        proxy = self.egress_proxy
        call = EgressCall(consumer.name, "", request.method.upper(), "", started)
        status = 500  # cancelled mid-call: the audit still has it
        error_code: str | None = "internal_error"
        try:
            attributed = Call(consumer.name, started)
            self._attribute(request, consumer, attributed)
            call.task, call.project = attributed.task, attributed.project
            response = await proxy.serve(request, consumer.name, call)
            status, error_code = response.status, None
            return response
        except GatewayHTTPError as exc:
            status, error_code = exc.status, exc.code
            exc.message = proxy.redact_all(exc.message)
            return exc.response()
        except Exception as exc:  # noqa: BLE001 - its text may hold the upstream URL (a query credential): never shown
            status = 502
            log.warning("%s egress %s: failed with %s", consumer.name, call.route or "-", type(exc).__name__)
            return GatewayHTTPError(502, f"egress route {call.route!r} failed ({type(exc).__name__})",
                                    code="internal_error", kind="upstream_error").response()
        finally:
            self.store.record_egress({
                "consumer": call.consumer, "task": call.task, "project": call.project, "route": call.route or None,
                "method": call.method[:16], "path": proxy.redact_all(call.path), "status": status, "error": error_code,
                "request_bytes": call.request_bytes, "response_bytes": call.response_bytes,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3)})
            proxy.log_line(call, status, error_code)

    async def egress_routes(self, request: web.Request) -> web.Response:
        """``GET /egress``: the routes granted to this consumer (names and rules, never a URL or secret)."""
        try:
            consumer = self._authenticate(request)
        except GatewayHTTPError as exc:
            return exc.response()
        assert self.egress_proxy is not None
        return web.json_response({"routes": self.egress_proxy.granted_routes(consumer.name)})

    async def mcp_servers(self, request: web.Request) -> web.Response:
        """``GET /mcp``: the MCP servers granted to this consumer."""
        try:
            consumer = self._authenticate(request)
        except GatewayHTTPError as exc:
            return exc.response()
        assert self.mcp_hub is not None
        return web.json_response({"servers": self.mcp_hub.granted_servers(consumer.name)})

    async def mcp(self, request: web.Request) -> web.StreamResponse:
        """``/mcp/<server>``: a Streamable HTTP MCP endpoint per configured server, for its grantees."""
        started = time.perf_counter()
        try:
            consumer = self._authenticate(request)
        except GatewayHTTPError as exc:
            return exc.response()
        assert self.mcp_hub is not None
        attributed = Call(consumer.name, started)
        call = McpCall(consumer.name, request.match_info["server"])
        try:
            self._attribute(request, consumer, attributed)
            call.task, call.project = attributed.task, attributed.project
            return await self.mcp_hub.serve(request, call)
        except GatewayHTTPError as exc:
            if not call.audited:
                self.mcp_hub.audit(call, request.method, None, "refused", exc.code, 0, started)
            return exc.response()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


async def _quietly(write: Awaitable[Any]) -> None:
    try:
        await write
    except ConnectionResetError:  # the caller has gone; the ledger already says so
        pass
