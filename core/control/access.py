"""Who may use which MCP server (``[mcp.<name>]``, docs/mcp.md) and egress route (``[egress.<name>]``,
docs/egress.md).

Two sources, joined: the ``workers`` lists of config.toml (the admin's standing grants, changed by
editing the file) and the run-time grants of the state DB (``hiclaw mcp grant``, ``hiclaw egress
grant``, the Manager's grant tools — see :class:`AccessBook`). The gateway gets the joined map
(:func:`apply_access`) at start and after every change, and checks it on every request, so a
revocation applies on the next call. A worker is told names and rules only (:func:`worker_mcp`,
:func:`worker_routes`), never a URL with a credential or a secret.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hiclaw.config import HiclawConfig, Secrets
from hiclaw.errors import ConfigError, InvalidInputError, NotFoundError, PluginError
from hiclaw.protocols import EgressRoutes, McpServers
from hiclaw.state import StateDB, ToolGrant

KINDS = ("mcp", "egress")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")


@dataclass
class Access:
    """The joined grants: ``mcp`` ``{worker: {server: tool names or None (every offered tool)}}``,
    ``egress`` ``{worker: [route names]}``."""

    mcp: dict[str, dict[str, list[str] | None]] = field(default_factory=dict)
    egress: dict[str, list[str]] = field(default_factory=dict)


def joined(config: HiclawConfig, grants: Sequence[ToolGrant]) -> Access:
    """Config's standing grants with the run-time ones; grants of servers or routes no longer
    configured are left out (kept in the DB: they apply again if the name comes back)."""
    mcp = {worker: dict(per) for worker, per in config.mcp_grants().items()}
    egress = {worker: list(names) for worker, names in config.egress_grants().items()}
    for grant in grants:
        if grant.kind == "mcp" and grant.name in config.mcp:
            per = mcp.setdefault(grant.worker, {})
            if grant.name not in per:
                per[grant.name] = None if grant.tools is None else sorted(grant.tools)
            elif per[grant.name] is not None:
                current = per[grant.name] or []
                per[grant.name] = None if grant.tools is None else sorted({*current, *grant.tools})
        elif grant.kind == "egress" and grant.name in config.egress:
            names = egress.setdefault(grant.worker, [])
            if grant.name not in names:
                names.append(grant.name)
    return Access(mcp=mcp, egress={worker: sorted(names) for worker, names in egress.items()})


def check_access(config: HiclawConfig, secrets: Secrets) -> None:
    """Every route's and server's secret is set (one line naming the fix otherwise)."""
    needs = [(f"egress route {name!r}", route.secret) for name, route in sorted(config.egress.items())]
    needs += [(f"MCP server {name!r}", secret) for name, server in sorted(config.mcp.items())
              for secret in server.secret_names()]
    for what, secret in needs:
        if secrets.get(secret) is None:
            raise ConfigError(f"{what} needs the secret {secret!r}, which is not set",
                              hint=f"add `{secret} = \"…\"` to {secrets.path} or export {secret.upper()}")


async def apply_access(config: HiclawConfig, gateway: Any, plugin: str, access: Access) -> None:
    """Give the gateway the routes, the servers and who may use them; a gateway that cannot serve
    them stops the start when any is configured (``plugin``: the gateway's plugin, for the message)."""
    if isinstance(gateway, EgressRoutes):
        await gateway.set_egress(config.egress, access.egress)
    elif config.egress:
        raise PluginError(f"gateway {config.gateway.plugin!r} (plugin {plugin}) cannot serve [egress] routes "
                          f"({', '.join(sorted(config.egress))}): it lacks set_egress",
                          hint="use the embedded-gateway, or remove the [egress.*] tables from config.toml")
    if isinstance(gateway, McpServers):
        await gateway.set_mcp(config.mcp, access.mcp)
    elif config.mcp:
        raise PluginError(f"gateway {config.gateway.plugin!r} (plugin {plugin}) cannot serve [mcp] servers "
                          f"({', '.join(sorted(config.mcp))}): it lacks set_mcp",
                          hint="use the embedded-gateway, or remove the [mcp.*] tables from config.toml")


def worker_routes(config: HiclawConfig, worker: str, access: Access | None = None) -> list[dict[str, Any]]:
    """The routes granted to ``worker``, as its tool describes them to its model."""
    granted = set((access or joined(config, ())).egress.get(worker, ()))
    return [{"name": name, "description": route.description, "methods": list(route.methods),
             "paths": list(route.paths)}
            for name, route in sorted(config.egress.items()) if name in granted]


def worker_mcp(config: HiclawConfig, worker: str, access: Access | None = None) -> list[dict[str, Any]]:
    """The MCP servers granted to ``worker`` (names, descriptions, granted tools or None)."""
    per = (access or joined(config, ())).mcp.get(worker, {})
    return [{"server": name, "description": config.mcp[name].description, "tools": tools}
            for name, tools in sorted(per.items()) if name in config.mcp and tools != []]


class AccessBook:
    """Run-time grants, in the state DB: the control plane's (live) and the CLI's (team stopped)."""

    def __init__(self, config: HiclawConfig, state: StateDB) -> None:
        self.config = config
        self.state = state

    def access(self) -> Access:
        return joined(self.config, self.state.tool_grants())

    def _configured(self, kind: str, name: str) -> Any:
        if kind not in KINDS:
            raise InvalidInputError(f"unknown grant kind {kind!r}", hint="use mcp or egress")
        table = self.config.mcp if kind == "mcp" else self.config.egress
        if name not in table:
            noun = "MCP server" if kind == "mcp" else "egress route"
            raise NotFoundError(f"no {noun} {name!r} is configured (configured: {', '.join(sorted(table)) or 'none'})",
                                hint=f"add it as [{kind}.{name}] in config.toml first"
                                     + (" (`hiclaw mcp add`)" if kind == "mcp" else ""))
        return table[name]

    def _worker(self, worker: str) -> None:
        found = self.state.find_worker(worker)
        if found is None or found.state == "removed":
            raise NotFoundError(f"no worker {worker!r}", hint="see `hiclaw worker list`")

    def grant(self, worker: str, kind: str, name: str, tools: Sequence[str] | None = None, *,
              by: str = "admin") -> ToolGrant:
        """Grant ``name`` (every offered tool, or ``tools`` of an MCP server, added to those
        already granted) to ``worker``. ``by``: admin | manager."""
        entry = self._configured(kind, name)
        self._worker(worker)
        if by == "manager" and not entry.manager_grants:
            raise InvalidInputError(f"only the admin may grant {kind} {name!r} ([{kind}.{name}] manager_grants = false)",
                                    hint="ask the admin to run `hiclaw " + kind + f" grant {worker} {name}`")
        wanted = None if tools is None else sorted(set(tools))
        if wanted is not None:
            if kind == "egress":
                raise InvalidInputError("egress routes are granted whole (--tools is for MCP servers)")
            bad = [t for t in wanted if not TOOL_NAME.match(t)]
            if bad or not wanted:
                raise InvalidInputError(f"{bad[0]!r} is not a tool name" if bad else "give at least one tool name")
            offered = entry.tools
            outside = [t for t in wanted if offered is not None and t not in offered]
            if outside:
                raise InvalidInputError(f"[mcp.{name}] offers only {', '.join(offered)}; not {', '.join(outside)}",
                                        hint=f"add them to `tools` under [mcp.{name}] first")
        existing = next((g for g in self.state.tool_grants(kind=kind) if g.worker == worker and g.name == name), None)
        if existing is not None and wanted is not None:
            wanted = None if existing.tools is None else sorted({*existing.tools, *wanted})
        return self.state.put_tool_grant(ToolGrant(worker=worker, kind=kind, name=name, tools=wanted, granted_by=by))

    def revoke(self, worker: str, kind: str, name: str, tools: Sequence[str] | None = None) -> str:
        """Take ``name`` (or only ``tools`` of it) back from ``worker``; a sentence saying what was done."""
        entry = self._configured(kind, name)
        if worker in entry.workers:
            raise InvalidInputError(f"{worker!r} is granted {kind} {name!r} in config.toml ([{kind}.{name}] workers)",
                                    hint=f"remove {worker!r} from `workers` under [{kind}.{name}] and restart the team")
        existing = next((g for g in self.state.tool_grants(kind=kind) if g.worker == worker and g.name == name), None)
        if existing is None:
            raise NotFoundError(f"{worker!r} has no grant of {kind} {name!r}", hint=f"see `hiclaw {kind} list`")
        if tools is None:
            self.state.delete_tool_grant(worker, kind, name)
            return f"revoked {kind} {name} from {worker}"
        if existing.tools is None:
            raise InvalidInputError(f"{worker!r} is granted every tool of {name!r}",
                                    hint="revoke it whole, then grant the tools to keep with --tools")
        left = sorted(set(existing.tools) - set(tools))
        if not left:
            self.state.delete_tool_grant(worker, kind, name)
            return f"revoked {kind} {name} from {worker} (no tool left)"
        self.state.put_tool_grant(existing.model_copy(update={"tools": left}))
        return f"revoked {', '.join(sorted(set(tools) & set(existing.tools))) or 'nothing'} of {name} from {worker}"

    def rows(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every grant, standing and run-time: worker, kind, name, tools, source."""
        rows: list[dict[str, Any]] = []
        for k in KINDS if kind is None else (kind,):
            table: dict[str, Any] = dict(self.config.mcp if k == "mcp" else self.config.egress)
            for name, entry in sorted(table.items()):
                rows += [{"worker": w, "kind": k, "name": name, "tools": None, "source": "config"} for w in entry.workers]
        rows += [{"worker": g.worker, "kind": g.kind, "name": g.name, "tools": g.tools, "source": g.granted_by}
                 for g in self.state.tool_grants(kind=kind)]
        return sorted(rows, key=lambda r: (r["kind"], r["name"], r["worker"], r["source"]))


class LiveAccess:
    """The running team's grants: each change is written to the state DB, then the gateway gets
    the joined map at once (so it holds from the next call)."""

    def __init__(self, book: AccessBook, *, gateway: Any, plugin: str) -> None:
        self.book, self.gateway, self.plugin = book, gateway, plugin

    async def apply(self) -> Access:
        access = self.book.access()
        await apply_access(self.book.config, self.gateway, self.plugin, access)
        return access

    async def grant(self, worker: str, kind: str, name: str, tools: Sequence[str] | None = None, *,
                    by: str = "admin") -> dict[str, Any]:
        grant = self.book.grant(worker, kind, name, tools, by=by)
        await self.apply()
        self.book.state.log_event("access_granted", worker, grant_kind=kind, name=name, tools=grant.tools, by=by)
        return {"granted": {"worker": worker, "kind": kind, "name": name, "tools": grant.tools or "every tool"}}

    async def revoke(self, worker: str, kind: str, name: str, tools: Sequence[str] | None = None, *,
                     by: str = "admin") -> dict[str, Any]:
        done = self.book.revoke(worker, kind, name, tools)
        await self.apply()
        self.book.state.log_event("access_revoked", worker, grant_kind=kind, name=name, tools=list(tools or []), by=by)
        return {"revoked": done}

    async def tools(self, server: str) -> list[dict[str, Any]]:
        if not isinstance(self.gateway, McpServers):
            raise PluginError(f"gateway plugin {self.plugin} serves no MCP servers")
        return await self.gateway.mcp_tools(server)

    async def admin_action(self, action: str, body: dict[str, Any]) -> Any:
        """``access-grant``, ``access-revoke``, ``access-list``, ``access-tools`` (the CLI's, live)."""
        if action == "access-list":
            return self.book.rows(body.get("kind"))
        if action == "access-tools":
            return await self.tools(str(body.get("server")))
        args = (str(body.get("worker")), str(body.get("kind")), str(body.get("name")), body.get("tools"))
        if action == "access-grant":
            return await self.grant(*args)
        if action == "access-revoke":
            return await self.revoke(*args)
        raise InvalidInputError(f"unknown access action {action!r}")


def access_tools(live: LiveAccess) -> list[Any]:
    """The Manager's tools for the same (admin-started turns only: not judgement tools)."""
    from hiclaw.agent.functions import function_tool

    async def grant_access(worker: str, kind: Literal["mcp", "egress"], name: str, tools: list[str] | None = None) -> Any:
        """Grant a worker an MCP server (every tool it offers, or only `tools`) or an egress route, as the admin
        configured them. Applies from the worker's next call. Only when the admin asked for it.

        Args:
            kind: mcp (an MCP server) or egress (a credentialed HTTP route)
            name: the server or route, as configured
            tools: MCP only: the tools to grant (default: every tool)
        """
        return await live.grant(worker, kind, name, tools, by="manager")

    async def revoke_access(worker: str, kind: Literal["mcp", "egress"], name: str, tools: list[str] | None = None) -> Any:
        """Take an MCP server (or only some of its tools) or an egress route back from a worker; refused on its next
        call.

        Args:
            kind: mcp or egress
            name: the server or route
            tools: MCP only: the tools to take back (default: the whole server)
        """
        return await live.revoke(worker, kind, name, tools, by="manager")

    async def list_access() -> Any:
        """The MCP servers and egress routes configured, and who is granted what."""
        config = live.book.config
        return {"mcp": {n: s.description for n, s in sorted(config.mcp.items())},
                "egress": {n: r.description for n, r in sorted(config.egress.items())},
                "grants": live.book.rows()}

    return [function_tool(tool) for tool in (grant_access, revoke_access, list_access)]
