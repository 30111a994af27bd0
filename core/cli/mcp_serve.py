"""``hiclaw mcp serve`` and ``hiclaw mcp token create|list|revoke``: the team as an MCP server
(docs/mcp-serve.md; the server itself is :mod:`hiclaw.mcpserve`). Added to the ``hiclaw mcp``
group of :mod:`hiclaw.cli.access` by :func:`serve_commands`."""
from __future__ import annotations

import logging
import os

import click

from hiclaw.cli.app import App, emit_json, pass_app, table


def serve_commands(group: click.Group) -> None:
    """Add ``serve`` and ``token`` to the ``hiclaw mcp`` group."""
    group.add_command(serve_command)
    group.add_command(token_group)


@click.command("serve")
@click.option("--http", "http", is_flag=True, help="Streamable HTTP at /mcp instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="--http: the address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="--http: the port.")
@pass_app
def serve_command(app: App, http: bool, host: str, port: int) -> None:
    """Serve the running team to MCP clients with an admin-issued token: over stdio (what desktop apps launch;
    the token in HICLAW_MCP_TOKEN), or with --http over Streamable HTTP (Authorization: Bearer …)."""
    from hiclaw.mcpserve.server import build_server, guarded_http_app
    from hiclaw.mcpserve.team import TeamTools
    from hiclaw.mcpserve.tokens import TOKEN_ENV, require_token

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per call to the control API is noise
    if http:
        import uvicorn

        server = build_server(TeamTools(app))
        click.echo(f"hiclaw MCP server on http://{host}:{port}/mcp (Authorization: Bearer <token>)", err=True)
        uvicorn.run(guarded_http_app(server, app.home, host=host), host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=5)  # an idle client's open stream must not hold the stop
        return
    token = os.environ.get(TOKEN_ENV)
    require_token(app.home, token)  # refuse to start; then again at every call (revocation)
    build_server(TeamTools(app, check=lambda: require_token(app.home, token))).run("stdio")


@click.group("token")
def token_group() -> None:
    """Tokens for `hiclaw mcp serve` (stored hashed; shown once)."""


@token_group.command("create")
@click.argument("name")
@pass_app
def token_create(app: App, name: str) -> None:
    """Create token NAME and print it (only now: keep it in the client's configuration)."""
    from hiclaw.mcpserve.tokens import create_token

    click.echo(create_token(app.home, name))


@token_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def token_list(app: App, as_json: bool) -> None:
    """The tokens, with when they were created and revoked (never their values)."""
    from hiclaw.mcpserve.tokens import list_tokens

    rows = list_tokens(app.home)
    if as_json:
        emit_json(rows)
        return
    table([[r["name"], r["created_at"], r["revoked_at"] or "-"] for r in rows], ["name", "created", "revoked"])


@token_group.command("revoke")
@click.argument("name")
@pass_app
def token_revoke(app: App, name: str) -> None:
    """Revoke token NAME (refused from its next request, also in sessions already open)."""
    from hiclaw.mcpserve.tokens import revoke_token

    revoke_token(app.home, name)
    click.echo(f"revoked {name}")
