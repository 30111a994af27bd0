"""``hiclaw mcp serve`` and ``hiclaw mcp token create|list|revoke``: the team as an MCP server
(docs/mcp-serve.md).

Outside MCP clients — an IDE assistant, a desktop chat app — drive a *running* team with an
admin-issued token: read its status, tasks, results and usage, and ask the Manager for work
(a project, an ad-hoc task) exactly as the admin would in its room, so the human sees it there
too. ``serve`` speaks stdio (what desktop apps launch; the token in ``HICLAW_MCP_TOKEN``) or, with
``--http``, Streamable HTTP at ``/mcp`` (``Authorization: Bearer …``). Either way the token is
checked on every request, so a revoked one stops working on the next call. Tokens are stored
hashed in ``$HICLAW_HOME/run/mcp-tokens.json`` (0600; ``run/`` is never mounted into a sandbox).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from hiclaw.cli.app import App, emit_json, pass_app, table
from hiclaw.errors import HiclawError, InvalidInputError, NotFoundError

TOKEN_ENV = "HICLAW_MCP_TOKEN"  # noqa: S105 - a variable name
TOKEN_PREFIX = "hcmcp_"  # noqa: S105 - a prefix
REPLY_WAIT_SECONDS = 120.0


# --------------------------------------------------------------------------- tokens


def tokens_file(home: Path) -> Path:
    return home / "run" / "mcp-tokens.json"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(home: Path) -> dict[str, dict[str, Any]]:
    path = tokens_file(home)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise HiclawError(f"{path} is not valid JSON", hint="remove it and create the tokens again") from None
    return {str(k): v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def save_tokens(home: Path, tokens: dict[str, dict[str, Any]]) -> None:
    from hiclaw.storage.files import write_text_atomically

    path = tokens_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(tokens, indent=2, sort_keys=True), mode=0o600, fsync=True)


def token_owner(home: Path, token: str | None) -> str | None:
    """The name of the valid (not revoked) token ``token``, read afresh; None if it is not one."""
    if not token:
        return None
    wanted = _digest(token.strip())
    for name, entry in load_tokens(home).items():
        if entry.get("revoked_at") is None and hmac.compare_digest(str(entry.get("sha256", "")), wanted):
            return name
    return None


# --------------------------------------------------------------------------- the team, as tools


class TeamTools:
    """What an MCP client may do: the admin's reads, and requests to the Manager in its room."""

    def __init__(self, app: App, *, token: str | None = None) -> None:
        self.app = app
        self.token = token  # stdio: the one of the environment; HTTP: checked per request instead

    def check(self) -> None:
        if self.token is not None and token_owner(self.app.home, self.token) is None:
            raise InvalidInputError("the MCP token was revoked or is unknown",
                                    hint="ask the admin for a new one: `hiclaw mcp token create NAME`")

    async def status(self) -> dict[str, Any]:
        from hiclaw.cli.up import control_request

        self.check()
        return dict(await asyncio.to_thread(control_request, self.app, "GET", "/v1/status"))

    async def team_status(self) -> dict[str, Any]:
        """The team now: workers (state, model, tokens, cost), projects and tasks (state, assignee, result)."""
        data = await self.status()
        return {"workers": [{k: w.get(k) for k in ("name", "role", "model", "state", "process", "tokens", "cost_usd")}
                            for w in data.get("workers", [])],
                "projects": [{k: p.get(k) for k in ("id", "title", "state", "goal")} for p in data.get("projects", [])],
                "tasks": [{k: t.get(k) for k in ("id", "project_id", "title", "assignee", "state", "result_status",
                                                 "result_summary")} for t in data.get("tasks", [])]}

    async def task_result(self, task_id: str) -> dict[str, Any]:
        """A task's state, its spec.md and its result.md (from the shared storage)."""
        data = await self.status()
        task = next((t for t in data.get("tasks", []) if t.get("id") == task_id), None)
        if task is None:
            raise NotFoundError(f"no task {task_id!r}", hint="see team_status for the task ids")
        spec, result = await self._read_task(task_id)
        return {"task": task, "spec_md": spec, "result_md": result}

    async def _read_task(self, task_id: str) -> tuple[str | None, str | None]:
        from hiclaw.host import ComponentContext
        from hiclaw.protocols import Stoppable
        from hiclaw.storage import layout

        storage = self.app.host.create("storage", self.app.config.storage.plugin, self.app.config.storage.settings,
                                       ComponentContext(home=self.app.home, side="control", config=self.app.config,
                                                        host=self.app.host), section="storage.settings")

        async def read(key: str) -> str | None:
            try:
                return (await storage.get(key)).decode("utf-8", errors="replace")
            except Exception:  # noqa: BLE001 - not written yet
                return None

        try:
            return await read(layout.task_spec(task_id)), await read(layout.task_result(task_id))
        finally:
            if isinstance(storage, Stoppable):
                await storage.stop()

    async def usage(self, by: str = "consumer", since: str | None = None) -> list[dict[str, Any]]:
        """Tokens and cost from the gateway's ledger (by consumer, task, project or model)."""
        from hiclaw.cli.gateway import gateway_component
        from hiclaw.protocols import UsageLedger

        self.check()
        gateway = gateway_component(self.app)
        if not isinstance(gateway, UsageLedger):
            raise InvalidInputError(f"the configured gateway ({self.app.config.gateway.plugin}) keeps no usage ledger")
        return list(await gateway.usage(by=by, since=since))

    async def ask_manager(self, message: str, wait_seconds: float = 60.0) -> dict[str, Any]:
        """Post ``message`` to the Manager in its room as the admin and return its first reply."""
        from hiclaw.demo.admin import AdminClient
        from hiclaw.waiting import wait_until

        data = await self.status()
        text = " ".join(message.split())
        if not text:
            raise InvalidInputError("the message is empty", hint="say what you want the team to do")
        password = self.app.secrets.get("matrix_admin_password")
        if password is None:
            raise HiclawError("secret 'matrix_admin_password' is not set", hint="run `hiclaw up` once")
        admin = AdminClient(data["components"]["services"]["homeserver"], "admin", password.get_secret_value())
        await admin.login()
        try:
            await admin.start()
            room = next((rid for rid, name in admin.room_names.items() if name == "Manager"), None)
            if room is None:
                raise HiclawError("the admin is in no room named Manager", hint="is the team started with `hiclaw up`?")
            manager = "@manager:" + admin.user_id.split(":", 1)[1]
            before = len(admin.messages)
            sent = await admin.send(room, f"@manager {text}", mention=manager)

            def reply() -> Any:
                return next((m for m in admin.messages[before:] if m.sender == manager and m.room_id == room), None)

            try:
                answer = await wait_until(reply, timeout=max(1.0, min(wait_seconds, REPLY_WAIT_SECONDS)),
                                          what="the Manager's reply")
            except TimeoutError:
                return {"sent": sent, "reply": None, "note": "no reply yet: see team_status, or the Manager room"}
            return {"sent": sent, "reply": answer.body}
        finally:
            await admin.stop()


def anticipated(fn: Any) -> Any:
    """A user error (team not running, unknown task, revoked token) reaches the client as one line
    (the SDK would show only "Error executing tool …")."""
    import functools

    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except HiclawError as exc:
            raise ToolError(" ".join(str(exc).split())) from None

    return wrapper


def build_server(tools: TeamTools) -> Any:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("hiclaw", instructions=(
        "A hiclaw team of AI agents: a Manager that plans and delegates, and Workers that do the work. Read the team "
        "with team_status, task_result and usage; ask for work with start_project or run_task (the Manager answers "
        "in its room, which the human follows)."))

    @server.tool()
    @anticipated
    async def team_status() -> dict[str, Any]:
        """The team now: workers (state, model, tokens, cost), projects and tasks (state, assignee, result)."""
        return await tools.team_status()

    @server.tool()
    @anticipated
    async def task_result(task_id: str) -> dict[str, Any]:
        """One task: its state, spec.md and result.md."""
        return await tools.task_result(task_id)

    @server.tool()
    @anticipated
    async def usage(by: str = "consumer", since: str | None = None) -> list[dict[str, Any]]:
        """Tokens and cost per consumer, task, project or model (`by`; comma-separate several); `since` e.g. 24h."""
        return await tools.usage(by, since)

    @server.tool()
    @anticipated
    async def start_project(goal: str, title: str | None = None) -> dict[str, Any]:
        """Ask the Manager to start a project for `goal` (it proposes a plan for the admin to confirm)."""
        what = f"start a project{f' titled {title!r}' if title else ''}: {goal}"
        return await tools.ask_manager(what)

    @server.tool()
    @anticipated
    async def run_task(description: str, worker: str | None = None) -> dict[str, Any]:
        """Ask the Manager for one ad-hoc task (for `worker`, if given)."""
        return await tools.ask_manager(f"please have {worker} do this task: {description}" if worker
                                       else f"please get this task done: {description}")

    @server.tool()
    @anticipated
    async def ask_manager(message: str) -> dict[str, Any]:
        """Say something to the Manager (as the admin, in its room) and get its first reply."""
        return await tools.ask_manager(message)

    return server


# --------------------------------------------------------------------------- CLI


def serve_commands(group: click.Group) -> None:
    """Add ``serve`` and ``token`` to the ``hiclaw mcp`` group."""

    @group.command("serve")
    @click.option("--http", "http", is_flag=True, help="Streamable HTTP at /mcp instead of stdio.")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
    @pass_app
    def serve(app: App, http: bool, host: str, port: int) -> None:
        """Serve the running team to MCP clients (stdio; --http for Streamable HTTP), with an admin-issued token."""
        if http:
            _serve_http(app, host, port)
            return
        token = os.environ.get(TOKEN_ENV)
        if token_owner(app.home, token) is None:
            raise InvalidInputError(f"{TOKEN_ENV} is {'not set' if not token else 'not a valid MCP token'}",
                                    hint="create one with `hiclaw mcp token create NAME` and put it in the client's "
                                         f"environment as {TOKEN_ENV}")
        build_server(TeamTools(app, token=token)).run("stdio")

    @group.group("token")
    def token_group() -> None:
        """Tokens for `hiclaw mcp serve` (stored hashed; shown once)."""

    @token_group.command("create")
    @click.argument("name")
    @pass_app
    def create(app: App, name: str) -> None:
        """Create token NAME and print it (only now)."""
        import re

        if not re.match(r"^[a-z0-9][a-z0-9._-]{0,63}$", name):
            raise InvalidInputError(f"token name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
        tokens = load_tokens(app.home)
        if name in tokens and tokens[name].get("revoked_at") is None:
            raise InvalidInputError(f"token {name!r} exists", hint=f"revoke it first: `hiclaw mcp token revoke {name}`")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        tokens[name] = {"sha256": _digest(token), "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        "revoked_at": None}
        save_tokens(app.home, tokens)
        click.echo(token)

    @token_group.command("list")
    @click.option("--json", "as_json", is_flag=True)
    @pass_app
    def list_tokens(app: App, as_json: bool) -> None:
        """The tokens (never their values)."""
        rows = [{"name": n, "created_at": e.get("created_at"), "revoked_at": e.get("revoked_at")}
                for n, e in sorted(load_tokens(app.home).items())]
        if as_json:
            emit_json(rows)
            return
        table([[r["name"], r["created_at"], r["revoked_at"] or "-"] for r in rows], ["name", "created", "revoked"])

    @token_group.command("revoke")
    @click.argument("name")
    @pass_app
    def revoke(app: App, name: str) -> None:
        """Revoke token NAME (refused from its next request)."""
        tokens = load_tokens(app.home)
        if name not in tokens or tokens[name].get("revoked_at") is not None:
            raise NotFoundError(f"no valid token {name!r}", hint="see `hiclaw mcp token list`")
        tokens[name]["revoked_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        save_tokens(app.home, tokens)
        click.echo(f"revoked {name}")


def _serve_http(app: App, host: str, port: int) -> None:
    import uvicorn

    server = build_server(TeamTools(app))
    inner = server.streamable_http_app()

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not header.startswith("Bearer ") or token_owner(app.home, header[7:]) is None:
                body = json.dumps({"error": "unauthorized: send `Authorization: Bearer <token>` "
                                            "(`hiclaw mcp token create NAME`)"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await inner(scope, receive, send)

    click.echo(f"hiclaw MCP server on http://{host}:{port}/mcp", err=True)
    uvicorn.run(guarded, host=host, port=port, log_level="warning")
