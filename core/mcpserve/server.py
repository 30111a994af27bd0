"""The MCP server: the official SDK's ``MCPServer`` with the team's tools (:mod:`.team`), served
over stdio or Streamable HTTP (``/mcp``) behind a bearer guard that checks the token on every
request."""
from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from hiclaw.errors import HiclawError
from hiclaw.mcpserve.team import TeamTools
from hiclaw.mcpserve.tokens import token_owner

INSTRUCTIONS = (
    "A hiclaw team of AI agents: a Manager that plans and delegates, and Workers that do the work. Read the team with "
    "team_status, list_projects, project_status, task_result and usage. Ask for work with run_task (give a worker to "
    "assign it directly, or let the Manager pick) or start_project (the Manager plans it; the human confirms the plan "
    "in the Manager room). Tasks run for a while: poll task_result until `reported` is true.")


def anticipated(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A user's mistake (team not running, unknown task, revoked token) reaches the client as one
    line in an error result; the SDK would show only "Error executing tool …" for other exceptions."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except HiclawError as exc:
            raise ToolError(" ".join(str(exc).split())) from None

    return wrapper


def build_server(team: TeamTools) -> Any:
    """An ``mcp.server.mcpserver.MCPServer`` whose tools call ``team``."""
    from mcp.server.mcpserver import MCPServer
    from mcp.types import ToolAnnotations

    server = MCPServer("hiclaw", instructions=INSTRUCTIONS)
    read = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
    work = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)

    @server.tool(annotations=read)
    @anticipated
    async def team_status() -> dict[str, Any]:
        """The team now: workers (state, model, process, tokens, cost), projects, and tasks (state, assignee, result)."""
        return await team.team_status()

    @server.tool(annotations=read)
    @anticipated
    async def list_projects() -> dict[str, Any]:
        """Every project with its state and progress (tasks done of all)."""
        return await team.list_projects()

    @server.tool(annotations=read)
    @anticipated
    async def project_status(
        project: Annotated[str, Field(description="a project id (proj-…) or its exact title")],
    ) -> dict[str, Any]:
        """One project: its state, its tasks (state, assignee, dependencies, result) and plan.md."""
        return await team.project_status(project)

    @server.tool(annotations=read)
    @anticipated
    async def task_result(task: Annotated[str, Field(description="a task id, e.g. task-001")]) -> dict[str, Any]:
        """One task: its state, whether it was reported, the status, summary and text of result.md, its spec.md,
        and the files in its folder (shared/tasks/<task>/)."""
        return await team.task_result(task)

    @server.tool(annotations=read)
    @anticipated
    async def usage(
        days: Annotated[int | None, Field(description="only the last N days (1-3650); all time if left out")] = None,
        by: Annotated[str, Field(description="consumer, task, project, model, upstream_model or status; "
                                             "comma-separate several")] = "consumer",
    ) -> dict[str, Any]:
        """Model calls, tokens and cost from the gateway's ledger, and MCP/egress tool calls per worker."""
        return await team.usage(days, by)

    @server.tool(annotations=work)
    @anticipated
    async def run_task(
        description: Annotated[str, Field(description="what to do; becomes the task's spec")],
        worker: Annotated[str | None, Field(description="the worker to do it; without, the Manager picks")] = None,
        title: Annotated[str | None, Field(description="a short title (default: the description's start)")] = None,
    ) -> dict[str, Any]:
        """One ad-hoc task outside any project. With `worker` it is assigned at once (the answer has its task id;
        the Manager reviews the result as usual); without, the Manager is asked and its first reply returned."""
        return await team.run_task(description, worker, title)

    @server.tool(annotations=work)
    @anticipated
    async def start_project(
        goal: Annotated[str, Field(description="what the project should achieve")],
        title: Annotated[str | None, Field(description="a title for it")] = None,
    ) -> dict[str, Any]:
        """Ask the Manager (in its room, as the admin) to start a project for `goal`; returns its first reply.
        The Manager proposes a plan, which the human confirms unless the team runs in YOLO mode."""
        return await team.start_project(goal, title)

    @server.tool(annotations=work)
    @anticipated
    async def ask_manager(message: Annotated[str, Field(description="what to tell or ask the Manager")]) -> dict[str, Any]:
        """Say something to the Manager (as the admin, in its room) and get its first reply."""
        return await team.ask_manager(message)

    return server


UNAUTHORIZED = json.dumps({"error": "unauthorized: send `Authorization: Bearer <token>` with a valid MCP token "
                                    "(`hiclaw mcp token create NAME`)"}).encode()


def guarded_http_app(server: Any, home: Path, *, host: str = "127.0.0.1") -> Callable[..., Awaitable[None]]:
    """The Streamable HTTP app at ``/mcp``, answering 401 to any request without a valid token
    (read afresh each time, so a revoked token is refused on its next request)."""
    inner = server.streamable_http_app(host=host)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not header.startswith("Bearer ") or token_owner(home, header[7:]) is None:
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": UNAUTHORIZED})
                return
        await inner(scope, receive, send)

    return app
