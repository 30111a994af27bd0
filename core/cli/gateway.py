"""``hiclaw gateway``: serve the AI gateway, manage consumer tokens and budgets.

Token and budget commands work directly on the configured gateway (for the embedded one: its
SQLite database), whether or not the server runs; a running server sees a revocation on the
next request.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from hiclaw.cli.app import App, emit_json, pass_app, table
from hiclaw.errors import InvalidInputError


def serve_until_signal(component: Any, banner: Callable[[], str], *, log_level: str = "info") -> None:
    """Start ``component``, print ``banner()`` (it may name the bound port), stop on SIGINT/SIGTERM."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await component.start()
        try:
            click.echo(banner())
            sys.stdout.flush()
            await stopping.wait()
        finally:
            await component.stop()

    asyncio.run(main())


def gateway_component(app: App) -> Any:
    """The configured gateway (``[gateway] plugin``), created with its settings and secrets."""
    from hiclaw.host import ComponentContext

    config = app.config
    ctx = ComponentContext(home=app.home, side="control", config=config)
    return app.host.create("gateway", config.gateway.plugin, config.gateway.settings, ctx, section="gateway.settings")


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _models_option(value: str | None) -> list[str] | None:
    if value is None:
        return None
    models = [m.strip() for m in value.split(",") if m.strip()]
    if not models:
        raise InvalidInputError("--models is empty", hint="give comma-separated aliases, e.g. --models smart,fast")
    return models


@click.group("gateway")
def gateway_group() -> None:
    """The AI gateway: the only holder of provider keys; agents hold consumer tokens."""


@gateway_group.command("serve")
@click.option("--host", help="Address to listen on (default: [gateway.settings] host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: [gateway.settings] port; 0 picks a free one).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True,
              help="`debug` logs every call (the ledger records them all anyway); `info` logs refusals and errors.")
@pass_app
def serve(app: App, host: str | None, port: int | None, log_level: str) -> None:
    """Serve the OpenAI-compatible gateway until interrupted."""
    settings = dict(app.config.gateway.settings)
    if host is not None:
        settings["host"] = host
    if port is not None:
        settings["port"] = port
    app.config.gateway.settings = settings
    gateway = gateway_component(app)
    serve_until_signal(gateway, lambda: f"gateway listening on {gateway.base_url}", log_level=log_level)


@gateway_group.group("token")
def token_group() -> None:
    """Consumer tokens (one per agent)."""


@token_group.command("mint")
@click.argument("name")
@click.option("--models", help="Comma-separated model aliases this consumer may use (default: all).")
@click.option("--budget", "budget_usd", type=click.FloatRange(min=0), help="Budget in USD (default: none).")
@pass_app
def token_mint(app: App, name: str, models: str | None, budget_usd: float | None) -> None:
    """Create consumer NAME (or replace its token) and print the token once."""
    gateway = gateway_component(app)
    token = _run(gateway.mint_token(name, models=_models_option(models), budget_usd=budget_usd))
    click.echo(token)
    click.echo(f"minted a token for {name!r}; it is shown only now — store it where the agent needs it", err=True)


@token_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def token_list(app: App, as_json: bool) -> None:
    """Consumers with their models, budget, spent, created, revoked (never token values)."""
    rows = _run(gateway_component(app).list_tokens())
    if as_json:
        emit_json(rows)
        return
    table([(r["name"], ",".join(r["models"]) if r.get("models") else "all",
            "-" if r.get("budget_usd") is None else f"${r['budget_usd']:.2f}",
            "-" if r.get("spent_usd") is None else f"${r['spent_usd']:.4f}",
            r.get("created") or "", "yes" if r.get("revoked") else "no") for r in rows],
          ["name", "models", "budget", "spent", "created", "revoked"])


@token_group.command("revoke")
@click.argument("name")
@pass_app
def token_revoke(app: App, name: str) -> None:
    """Revoke consumer NAME; its next request is refused (401)."""
    _run(gateway_component(app).revoke_token(name))
    click.echo(f"revoked {name!r}")


@gateway_group.group("budget")
def budget_group() -> None:
    """Budgets per consumer or per project (warn at 80 %, refuse at 100 %)."""


def _scope(consumer: str | None, project: str | None) -> dict[str, str]:
    if (consumer is None) == (project is None):
        raise click.UsageError("give exactly one of --consumer NAME or --project ID")
    return {"consumer": consumer} if consumer is not None else {"project": project}  # type: ignore[dict-item]


@budget_group.command("set")
@click.argument("usd", type=click.FloatRange(min=0))
@click.option("--consumer", help="Consumer (agent) name.")
@click.option("--project", help="Project id (calls tagged X-Hiclaw-Project).")
@pass_app
def budget_set(app: App, usd: float, consumer: str | None, project: str | None) -> None:
    """Set a budget of USD dollars for one consumer or project."""
    _run(_require(gateway_component(app), "set_budget")(usd=usd, **_scope(consumer, project)))
    click.echo(f"budget set to ${usd:.2f}")


@budget_group.command("clear")
@click.option("--consumer", help="Consumer (agent) name.")
@click.option("--project", help="Project id.")
@pass_app
def budget_clear(app: App, consumer: str | None, project: str | None) -> None:
    """Remove the budget of one consumer or project (unlimited again)."""
    _run(_require(gateway_component(app), "set_budget")(usd=None, **_scope(consumer, project)))
    click.echo("budget cleared")


@budget_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def budget_list(app: App, as_json: bool) -> None:
    """Every budget with what has been spent against it."""
    rows = _run(_require(gateway_component(app), "list_budgets")())
    if as_json:
        emit_json(rows)
        return
    table([(r["scope"], r["name"], f"${r['budget_usd']:.2f}", f"${r['spent_usd']:.4f}",
            f"{100 * r['spent_usd'] / r['budget_usd']:.0f}%" if r["budget_usd"] else "-") for r in rows],
          ["scope", "name", "budget", "spent", "used"])


def _require(gateway: Any, method: str) -> Callable[..., Any]:
    found = getattr(gateway, method, None)
    if found is None:
        raise InvalidInputError(f"the configured gateway ({type(gateway).__name__}) does not support `{method}`",
                                hint="use the embedded gateway, or manage this in your gateway's own console")
    return found
