"""``hiclaw usage``: tokens and cost from the gateway's ledger."""
from __future__ import annotations

import asyncio

import click

from hiclaw.cli.app import App, emit_json, pass_app, table
from hiclaw.cli.gateway import gateway_component
from hiclaw.errors import InvalidInputError
from hiclaw.protocols import UsageLedger


@click.command("usage")
@click.option("--by", "by", default="consumer", show_default=True,
              help="Group by consumer, task, project, model (alias), upstream_model or status; "
                   "comma-separate several, e.g. --by consumer,task.")
@click.option("--since", help="Only calls since a duration ago (30m, 24h, 7d) or a date/time (2025-01-31T09:00).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows.")
@pass_app
def usage_command(app: App, by: str, since: str | None, as_json: bool) -> None:
    """Calls, tokens and cost per consumer, task, project or model."""
    gateway = gateway_component(app)
    if not isinstance(gateway, UsageLedger):
        raise InvalidInputError(f"the configured gateway ({app.config.gateway.plugin}) keeps no usage ledger")
    rows = asyncio.run(gateway.usage(by=by, since=since))
    tools = asyncio.run(gateway.tool_usage(since=since)) if hasattr(gateway, "tool_usage") else []
    if as_json:
        emit_json(rows)
        return
    if tools:
        table([[r["consumer"], r["kind"], r["name"], r["calls"], r["refused"], r["failed"]] for r in tools],
              ["consumer", "tool calls via", "server/route", "calls", "refused", "failed"])
        click.echo("(details: `hiclaw mcp calls`, `hiclaw egress calls`)\n")
    dims = [d.strip() for d in by.split(",") if d.strip()]
    if not rows:
        click.echo("no calls recorded" + (f" since {since}" if since else ""))
        return
    body = [[*(r[d] if r[d] is not None else "-" for d in dims), r["calls"], r["errors"], r["prompt_tokens"],
             r["completion_tokens"], f"${r['cost_usd']:.4f}"] for r in rows]
    total = ["total", *([""] * (len(dims) - 1)), sum(r["calls"] for r in rows), sum(r["errors"] for r in rows),
             sum(r["prompt_tokens"] for r in rows), sum(r["completion_tokens"] for r in rows),
             f"${sum(r['cost_usd'] for r in rows):.4f}"]
    table([*body, total], [*dims, "calls", "errors", "prompt", "completion", "cost"])
