"""``EmbeddedGateway``: the capability object (``hiclaw.protocols.Gateway``) of the embedded gateway.

Token, budget and usage methods work on the database whether or not the server was started,
so the CLI and the control plane share them. :meth:`start` serves HTTP in the current event
loop (standalone under ``hiclaw gateway serve``, or inside ``hiclaw up``).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from hiclaw.errors import InvalidInputError
from hiclaw.host import ComponentContext, RuntimeContext
from hiclaw.plugins.gateways.embedded.errors import Redactor
from hiclaw.plugins.gateways.embedded.settings import EmbeddedGatewaySettings
from hiclaw.plugins.gateways.embedded.store import BudgetCrossing, GatewayStore

log = logging.getLogger("hiclaw.gateway")

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(since: str | float | datetime | None) -> float | None:
    """``None``, a Unix time, a datetime, an ISO date/time, or a duration back from now ("90m", "24h", "7d")."""
    if since is None or isinstance(since, int | float):
        return since
    if isinstance(since, datetime):
        return (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
    text = str(since).strip()
    relative = _RELATIVE.match(text)
    if relative:
        return time.time() - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(f"--since {text!r} is neither a duration nor a date",
                                hint="use e.g. 30m, 24h, 7d, 2025-01-31 or 2025-01-31T12:00") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class EmbeddedGateway:
    """The default gateway. See ``docs/gateway.md``."""

    def __init__(self, settings: EmbeddedGatewaySettings, ctx: ComponentContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.store = GatewayStore(settings.db_path or ctx.home / "gateway" / "gateway.db")
        self.port = settings.port
        self._runner: Any = None
        self._upstreams: list[Any] = []
        self._hook_tasks: set[asyncio.Task[None]] = set()
        from hiclaw.plugins.gateways.embedded.egress import EgressProxy

        self.egress = EgressProxy(secrets=ctx.secrets, redact=Redactor(ctx.secrets.values()),
                                  max_body_bytes=settings.max_body_bytes)
        from hiclaw.plugins.gateways.embedded.mcp import McpHub

        self.mcp = McpHub(secrets=ctx.secrets, store=self.store, log_dir=ctx.home / "logs",
                          max_body_bytes=settings.max_body_bytes)

    # ------------------------------------------------------------------ serving

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.port}/v1"

    @property
    def aliases(self) -> list[str]:
        return sorted(self.ctx.config.models) if self.ctx.config is not None else []

    async def start(self) -> None:
        if self._runner is not None:
            return
        from aiohttp import web

        from hiclaw.plugins.gateways.embedded.routing import Router
        from hiclaw.plugins.gateways.embedded.server import GatewayServer
        from hiclaw.plugins.gateways.embedded.upstream import DirectUpstream, LitellmUpstream

        models = self.ctx.config.models if self.ctx.config is not None else {}
        if not models:
            log.warning("no model aliases configured ([models.<alias>] in config.toml): every call will get 404")
        redact = Redactor(self.ctx.secrets.values())
        router = await asyncio.to_thread(Router, models, self.ctx.secrets, direct_openai=self.settings.direct_openai)
        direct = DirectUpstream(timeout=self.settings.upstream_timeout_seconds,
                                connect_timeout=self.settings.connect_timeout_seconds, redact=redact)
        via_litellm = LitellmUpstream(timeout=self.settings.upstream_timeout_seconds, redact=redact) \
            if router.needs_litellm() else None
        self._upstreams = [u for u in (direct, via_litellm) if u is not None]
        for upstream in self._upstreams:
            await upstream.start()
        config = self.ctx.config
        if not self.egress.configured and config is not None and config.egress:
            self.egress.set(config.egress, config.egress_grants())  # standalone (`hiclaw gateway serve`)
        await self.egress.start()
        self._upstreams.append(self.egress)
        if not self.mcp.configured and config is not None and config.mcp:
            self.mcp.set(config.mcp, config.mcp_grants())  # standalone (`hiclaw gateway serve`)
        if self.mcp.servers:
            await self.mcp.start()  # imports the MCP SDK: only when a server is configured
        server = GatewayServer(settings=self.settings, store=self.store, router=router, direct=direct,
                               via_litellm=via_litellm, on_crossings=self._budget_warnings, egress=self.egress,
                               mcp=self.mcp)
        runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.settings.host, self.settings.port, backlog=1024).start()
        except OSError as exc:
            await runner.cleanup()
            for upstream in self._upstreams:
                await upstream.close()
            raise InvalidInputError(f"gateway cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror}",
                                    hint="set another [gateway.settings] port (0 picks a free one) or stop what uses it") from None
        self.port = runner.addresses[0][1]
        self._runner = runner
        self.store.start_background_checkpoints()
        log.info("gateway serving %s (aliases: %s)", self.base_url, ", ".join(router.aliases()) or "none")

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        for upstream in self._upstreams:
            await upstream.close()
        self._upstreams = []
        await self.mcp.close()  # also when only asked for a server's tools (`hiclaw mcp tools`, team stopped)
        self.store.stop_background_checkpoints()
        if self._hook_tasks:
            await asyncio.gather(*self._hook_tasks, return_exceptions=True)

    def _budget_warnings(self, crossings: list[BudgetCrossing]) -> None:
        for crossing in crossings:
            log.warning("%s %r has spent $%.4f of its $%.2f budget (%.0f%%)", crossing.scope, crossing.name,
                        crossing.spent_usd, crossing.budget_usd, 100 * crossing.spent_usd / crossing.budget_usd)
            if self.ctx.host is None:
                continue
            runtime = RuntimeContext(side="control", home=self.ctx.home, config=self.ctx.config,
                                     components={"gateway": self})
            task = asyncio.get_running_loop().create_task(self.ctx.host.budget_warning(
                scope=crossing.scope, name=crossing.name, spent_usd=crossing.spent_usd,
                budget_usd=crossing.budget_usd, ctx=runtime))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    # ------------------------------------------------------------------ tokens

    def _check_models(self, models: Sequence[str] | None) -> list[str] | None:
        if models is None:
            return None
        models = list(models)
        unknown = [m for m in models if m not in self.aliases]
        if unknown:
            raise InvalidInputError(f"unknown model alias(es) {', '.join(map(repr, unknown))}",
                                    hint=f"configured aliases: {', '.join(self.aliases) or 'none (add [models.<alias>])'}")
        return models

    async def mint_token(self, name: str, *, models: Sequence[str] | None = None, budget_usd: float | None = None) -> str:
        """Create consumer ``name`` (or replace its token, keeping what it has spent); return the token once."""
        return self.store.mint(name, models=self._check_models(models), budget_usd=budget_usd)

    async def revoke_token(self, name: str) -> None:
        self.store.revoke(name)

    async def check_token(self, name: str, token: str) -> bool:
        """True if ``token`` is consumer ``name``'s current token (a worker adopted after a crash
        keeps its token only then)."""
        consumer = self.store.authenticate(token)
        return consumer is not None and consumer.name == name and consumer.revoked_at is None

    async def list_tokens(self) -> list[dict[str, Any]]:
        return [c.as_dict() for c in self.store.consumers()]

    # ------------------------------------------------------------------ assignments

    async def set_assignments(self, consumer: str, assignments: Mapping[str, str | None]) -> None:
        """What ``consumer`` works on now, from the control plane (``{task id: project id or None}``).
        From then on its calls are attributed from this, never from its own headers."""
        self.store.set_assignments(consumer, dict(assignments))

    # ------------------------------------------------------------------ egress routes

    async def set_egress(self, routes: Mapping[str, Any], grants: Mapping[str, Sequence[str]]) -> None:
        """The credentialed HTTP routes (``{name: EgressRoute}``) and ``{consumer: [route names]}``
        (``hiclaw.protocols.EgressRoutes``); each route's secret must be among the declared ones."""
        self.egress.set(routes, grants)
        if self._runner is not None:
            await self.egress.start()

    def set_approvals(self, review: Any) -> None:
        """Ask ``review`` (the control plane's approvals) before every MCP tool call and egress
        request (``hiclaw.protocols.ApprovalGate``)."""
        self.mcp.review = self.egress.review = review

    # ------------------------------------------------------------------ MCP servers

    async def set_mcp(self, servers: Mapping[str, Any], grants: Mapping[str, Mapping[str, Sequence[str] | None]]) -> None:
        """The MCP servers (``{name: McpServer}``) and ``{consumer: {server: tool names or None for
        every offered tool}}`` (``hiclaw.protocols.McpServers``); applied to the next request."""
        self.mcp.set(servers, grants)
        if self._runner is not None and servers:
            await self.mcp.start()

    async def mcp_tools(self, server: str) -> list[dict[str, Any]]:
        """The tools ``server`` offers (name, description, input schema), asked afresh."""
        if server not in self.mcp.servers:
            raise InvalidInputError(f"no MCP server {server!r} is configured",
                                    hint="add it as [mcp.<name>] in config.toml (see `hiclaw mcp add --help`)")
        from hiclaw.plugins.gateways.embedded.mcp import McpUpstreamError

        try:
            tools = await self.mcp.offered(server, fresh=True)
        except McpUpstreamError as exc:
            raise InvalidInputError(str(exc), hint=f"check [mcp.{server}] and its log (logs/mcp-{server}.log)") from None
        return [{"name": t.name, "description": t.description or "", "input_schema": t.input_schema} for t in tools]

    async def mcp_calls(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest MCP requests (audit), newest first."""
        return self.store.mcp_calls(limit)

    async def egress_calls(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest egress calls (audit), newest first."""
        return self.store.egress_calls(limit)

    # ------------------------------------------------------------------ budgets and usage

    async def set_budget(self, *, consumer: str | None = None, project: str | None = None, usd: float | None) -> None:
        """Set (or with ``usd=None`` clear) the budget of one consumer or one project."""
        self.store.set_budget(consumer=consumer, project=project, usd=usd)

    async def list_budgets(self) -> list[dict[str, Any]]:
        return self.store.budgets()

    async def usage(self, by: str | Sequence[str] = "consumer", since: str | float | datetime | None = None,
                    until: str | float | datetime | None = None) -> list[dict[str, Any]]:
        """Ledger totals grouped by ``by`` (``"consumer"``, ``"task,model"``, ``["project"]``…), of the
        calls made from ``since`` (inclusive) to ``until`` (exclusive); the same forms for both."""
        dims = [d.strip() for d in by.split(",")] if isinstance(by, str) else list(by)
        return self.store.usage([d for d in dims if d], parse_since(since), parse_since(until))

    async def tool_usage(self, since: str | float | datetime | None = None,
                         until: str | float | datetime | None = None) -> list[dict[str, Any]]:
        """MCP tool calls and egress calls per consumer and server/route (calls, refused, failed)."""
        return self.store.tool_usage(parse_since(since), parse_since(until))

    async def ledger(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest ledger rows (one per call), newest first."""
        return self.store.ledger(limit)
