"""``hiclaw mcp add|list|remove|tools|grant|revoke|calls`` and ``hiclaw egress list|grant|revoke|calls``:
the MCP servers and credentialed HTTP routes of the gateway, and who may use them (docs/mcp.md,
docs/egress.md).

Servers and routes live in config.toml (``add``/``remove`` edit it; a running team picks them up at
its next start). Grants are written to the state DB and, while the team runs, applied to the
gateway at once (through the control API) — a revocation holds from the worker's next call.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from hiclaw.cli.app import App, emit_json, offline_state, pass_app, table
from hiclaw.cli.mcp_serve import serve_commands
from hiclaw.cli.up import control_request, running_control
from hiclaw.errors import HiclawError, InvalidInputError


@contextmanager
def offline_access(app: App, *, readonly: bool = False) -> Iterator[Any]:
    """The grants in the state DB of a team that is not running."""
    from hiclaw.control.access import AccessBook

    with offline_state(app, readonly=readonly) as state:
        yield AccessBook(app.config, state)


def _change(app: App, action: str, worker: str, kind: str, name: str, tools: tuple[str, ...]) -> dict[str, Any]:
    wanted = sorted({t.strip() for item in tools for t in item.split(",") if t.strip()}) or None
    body = {"worker": worker, "kind": kind, "name": name, "tools": wanted}
    if running_control(app) is not None:
        return dict(control_request(app, "POST", f"/v1/admin/access-{action}", body))
    with offline_access(app) as book:
        if action == "grant":
            grant = book.grant(worker, kind, name, wanted)
            return {"granted": {"worker": worker, "kind": kind, "name": name, "tools": grant.tools or "every tool"}}
        return {"revoked": book.revoke(worker, kind, name, wanted)}


def _rows(app: App, kind: str) -> list[dict[str, Any]]:
    if running_control(app) is not None:
        return list(control_request(app, "POST", "/v1/admin/access-list", {"kind": kind}))
    if not (app.home / "state.db").exists():
        from hiclaw.control.access import AccessBook

        class NoState:
            def tool_grants(self, kind: str | None = None) -> list[Any]:
                return []

        return AccessBook(app.config, NoState()).rows(kind)  # type: ignore[arg-type]
    with offline_access(app, readonly=True) as book:
        return book.rows(kind)


def _say(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(result)
    elif "granted" in result:
        g = result["granted"]
        tools = g["tools"] if isinstance(g["tools"], str) else ", ".join(g["tools"])
        click.echo(f"granted {g['kind']} {g['name']} to {g['worker']} ({tools}); it applies from its next call")
    else:
        click.echo(str(result["revoked"]) + "; it applies from the next call")


def _calls(app: App, kind: str, limit: int, as_json: bool) -> None:
    """The latest audited calls, from the gateway's database."""
    gateway = app.host.create("gateway", app.config.gateway.plugin, app.config.gateway.settings,
                              _ctx(app), section="gateway.settings")
    getter = getattr(gateway, f"{kind}_calls", None)
    if getter is None:
        raise HiclawError(f"gateway {app.config.gateway.plugin!r} keeps no audit of {kind} calls")
    import asyncio

    try:
        rows = asyncio.run(getter(limit))
    finally:
        store = getattr(gateway, "store", None)
        if store is not None:
            store.close()
    if as_json:
        emit_json(rows)
        return
    from datetime import UTC, datetime

    def when(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")

    if kind == "mcp":
        table([[when(r["ts"]), r["consumer"], r["task"] or "-", r["server"], r["method"], r["tool"] or "-",
                r["outcome"] + (f" ({r['error']})" if r["error"] else ""), f"{r['latency_ms']:.0f} ms"] for r in rows],
              ["time (UTC)", "consumer", "task", "server", "method", "tool", "outcome", "latency"])
    else:
        table([[when(r["ts"]), r["consumer"], r["task"] or "-", r["route"] or "-", r["method"], r["path"], r["status"],
                f"{r['latency_ms']:.0f} ms"] for r in rows],
              ["time (UTC)", "consumer", "task", "route", "method", "path", "status", "latency"])


def _ctx(app: App) -> Any:
    from hiclaw.host import ComponentContext

    return ComponentContext(home=app.home, config=app.config)


def _grant_commands(group: click.Group, kind: str) -> None:
    noun = "MCP server" if kind == "mcp" else "egress route"

    @group.command("grant")
    @click.argument("worker")
    @click.argument("name")
    @click.option("--tools", multiple=True, help="Only these tools (comma-separated or repeated); default every tool."
                  if kind == "mcp" else "Not for egress routes (granted whole).", hidden=kind != "mcp")
    @click.option("--json", "as_json", is_flag=True)
    @pass_app
    def grant(app: App, worker: str, name: str, tools: tuple[str, ...], as_json: bool) -> None:
        _say(_change(app, "grant", worker, kind, name, tools), as_json)

    grant.help = f"Let WORKER use {noun} NAME (from its next call)."

    @group.command("revoke")
    @click.argument("worker")
    @click.argument("name")
    @click.option("--tools", multiple=True, help="Only these tools; default the whole server.", hidden=kind != "mcp")
    @click.option("--json", "as_json", is_flag=True)
    @pass_app
    def revoke(app: App, worker: str, name: str, tools: tuple[str, ...], as_json: bool) -> None:
        _say(_change(app, "revoke", worker, kind, name, tools), as_json)

    revoke.help = f"Take {noun} NAME back from WORKER (refused from its next call)."

    @group.command("calls")
    @click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
    @click.option("--json", "as_json", is_flag=True)
    @pass_app
    def calls(app: App, limit: int, as_json: bool) -> None:
        _calls(app, kind, limit, as_json)

    calls.help = f"The latest audited {noun} calls (who, task, what, outcome)."


@click.group("egress")
def egress_group() -> None:
    """Credentialed HTTP routes of the gateway ([egress.<name>] in config.toml) and their grants."""


@egress_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def egress_list(app: App, as_json: bool) -> None:
    """The routes and who may use them."""
    rows = _rows(app, "egress")
    routes = app.config.egress
    if as_json:
        emit_json({"routes": {n: {"base_url": r.base_url, "methods": r.methods, "paths": r.paths,
                                  "description": r.description} for n, r in sorted(routes.items())}, "grants": rows})
        return
    if not routes:
        click.echo("no egress routes: add [egress.<name>] to config.toml (docs/egress.md)")
        return
    table([[n, r.base_url, ",".join(r.methods), ",".join(r.paths),
            ", ".join(f"{g['worker']} ({g['source']})" for g in rows if g["name"] == n) or "nobody"]
           for n, r in sorted(routes.items())], ["route", "base URL", "methods", "paths", "granted to"])


_grant_commands(egress_group, "egress")


@click.group("mcp")
def mcp_group() -> None:
    """MCP servers behind the gateway ([mcp.<name>] in config.toml), their tools and grants."""


def _pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"{what} {item!r} is not KEY=VALUE", hint=f"write e.g. --{what} NAME=value")
        pairs[key] = value
    return pairs


@mcp_group.command("add")
@click.argument("name")
@click.option("--command", "command", help="A stdio server: the program the gateway runs (outside every sandbox).")
@click.option("--arg", "args", multiple=True, help="An argument of --command (repeat).")
@click.option("--url", help="A remote server: its Streamable HTTP endpoint.")
@click.option("--env", "env", multiple=True, help="VAR=value for the command's environment (not a secret).")
@click.option("--secret-env", "secret_env", multiple=True,
              help="VAR=secret_name: the command gets the secret (from secrets.toml) in VAR.")
@click.option("--secret", help="Remote: the secret (its name in secrets.toml) sent in --header.")
@click.option("--header", default="Authorization", show_default=True, help="Remote: the header carrying --secret.")
@click.option("--format", "fmt", default="Bearer {secret}", show_default=True, help="Remote: the header's value.")
@click.option("--tools", help="Offer only these tools (comma-separated); default every tool.")
@click.option("--worker", "workers", multiple=True, help="Grant it to this worker in config.toml (repeat).")
@click.option("--description", default="", help="What it is for, shown to granted workers' models.")
@click.option("--replace", is_flag=True, help="Replace a server of the same name.")
@pass_app
def mcp_add(app: App, name: str, command: str | None, args: tuple[str, ...], url: str | None, env: tuple[str, ...],
            secret_env: tuple[str, ...], secret: str | None, header: str, fmt: str, tools: str | None,
            workers: tuple[str, ...], description: str, replace: bool) -> None:
    """Add MCP server NAME to config.toml (the team uses it from its next start)."""
    from hiclaw.config import update_config_file

    entry: dict[str, Any] = {"description": description} if description else {}
    if command is not None:
        entry |= {"command": command, "args": list(args)}
    if url is not None:
        entry["url"] = url
    if env:
        entry["env"] = _pairs(env, "env")
    if secret_env:
        entry["secret_env"] = _pairs(secret_env, "secret-env")
    if secret is not None:
        entry |= {"secret": secret, "header": header, "format": fmt}
    if tools:
        entry["tools"] = sorted({t.strip() for t in tools.split(",") if t.strip()})
    if workers:
        entry["workers"] = list(workers)

    def mutate(data: dict[str, Any]) -> None:
        servers = data.setdefault("mcp", {})
        if name in servers and not replace:
            raise InvalidInputError(f"MCP server {name!r} is already in config.toml", hint="pass --replace to replace it")
        servers[name] = entry

    path = update_config_file(app.home, mutate)
    missing = [s for s in app_secret_names(entry) if app.secrets.get(s) is None]
    click.echo(f"added MCP server {name} to {path}" + (f"; set the secret(s) {', '.join(missing)} in secrets.toml"
                                                       if missing else "")
               + ("; restart the team to use it" if running_control(app) is not None else ""))


def app_secret_names(entry: dict[str, Any]) -> list[str]:
    return sorted({*entry.get("secret_env", {}).values(), *([entry["secret"]] if entry.get("secret") else [])})


@mcp_group.command("remove")
@click.argument("name")
@pass_app
def mcp_remove(app: App, name: str) -> None:
    """Remove MCP server NAME from config.toml (run-time grants of it stay, unused)."""
    from hiclaw.config import update_config_file

    def mutate(data: dict[str, Any]) -> None:
        if name not in data.get("mcp", {}):
            raise InvalidInputError(f"no MCP server {name!r} in config.toml", hint="see `hiclaw mcp list`")
        del data["mcp"][name]

    path = update_config_file(app.home, mutate)
    click.echo(f"removed MCP server {name} from {path}"
               + ("; restart the team to stop it" if running_control(app) is not None else ""))


@mcp_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def mcp_list(app: App, as_json: bool) -> None:
    """The MCP servers and who may use them."""
    rows = _rows(app, "mcp")
    servers = app.config.mcp
    if as_json:
        emit_json({"servers": {n: {"transport": "stdio" if s.command else "http", "target": s.command or s.url,
                                   "tools": s.tools, "description": s.description} for n, s in sorted(servers.items())},
                   "grants": rows})
        return
    if not servers:
        click.echo("no MCP servers: add one with `hiclaw mcp add NAME --command … | --url …` (docs/mcp.md)")
        return

    def who(name: str) -> str:
        return ", ".join(f"{g['worker']}" + (f" [{', '.join(g['tools'])}]" if g["tools"] else "") + f" ({g['source']})"
                         for g in rows if g["name"] == name) or "nobody"

    table([[n, "stdio" if s.command else "http", " ".join([s.command, *s.args]) if s.command else s.url,
            ",".join(s.tools) if s.tools else "all", who(n)] for n, s in sorted(servers.items())],
          ["server", "transport", "target", "tools", "granted to"])


@mcp_group.command("tools")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def mcp_tools(app: App, name: str, as_json: bool) -> None:
    """The tools MCP server NAME offers (asks the server: starts it if the team is not running)."""
    if running_control(app) is not None:
        tools = control_request(app, "POST", "/v1/admin/access-tools", {"server": name})
    else:
        tools = _tools_offline(app, name)
    if as_json:
        emit_json(tools)
        return
    table([[t["name"], (t["description"] or "").split("\n")[0][:80]] for t in tools], ["tool", "description"])


def _tools_offline(app: App, name: str) -> list[dict[str, Any]]:
    import asyncio

    from hiclaw.control.access import check_access

    if name not in app.config.mcp:
        raise InvalidInputError(f"no MCP server {name!r} is configured", hint="see `hiclaw mcp list`")
    check_access(app.config, app.secrets)
    gateway = app.host.create("gateway", app.config.gateway.plugin, app.config.gateway.settings, _ctx(app),
                              section="gateway.settings")
    lister = getattr(gateway, "set_mcp", None)
    if lister is None:
        raise HiclawError(f"gateway {app.config.gateway.plugin!r} serves no MCP servers")

    async def ask() -> list[dict[str, Any]]:
        await gateway.set_mcp(app.config.mcp, {})
        try:
            return list(await gateway.mcp_tools(name))
        finally:
            await gateway.stop()

    try:
        return asyncio.run(ask())
    finally:
        store = getattr(gateway, "store", None)
        if store is not None:
            store.close()


_grant_commands(mcp_group, "mcp")
serve_commands(mcp_group)  # serve, token (hiclaw.cli.mcp_serve)
