"""What the MCP tools do, against the running team: the admin's reads and requests, through the
same client code as the CLI (``control_request`` for the control API, ``open_storage`` for the
shared files, the gateway's ledger for usage, the Manager room for what only the Manager decides).
Every method raises :class:`hiclaw.errors.HiclawError` with one line for the user on a mistake."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from hiclaw.cli.app import App
from hiclaw.errors import HiclawError, InvalidInputError, NotFoundError

REPLY_WAIT_SECONDS = 120.0
_TASK_KEYS = ("id", "project", "title", "assignee", "state", "result_status", "result_summary", "attempts")


def _text(value: object, what: str, fix: str) -> str:
    text = " ".join(str(value or "").split())
    if not text:
        raise InvalidInputError(f"{what} is empty", hint=fix)
    return text


class TeamTools:
    """``check``: called before every operation (stdio: re-checks the environment's token, so a
    revoked one fails on the next call; HTTP checks the bearer token per request instead)."""

    def __init__(self, app: App, *, check: Callable[[], object] | None = None) -> None:
        self.app = app
        self._check = check or (lambda: None)

    async def _call(self, client: Callable[..., Any], *args: Any) -> Any:
        """``client(app, *args)``, one of the CLI's functions that ask the control API."""
        self._check()
        try:
            return await asyncio.to_thread(client, self.app, *args)
        except httpx.HTTPError:  # control.json is there but the plane is gone or stopping
            raise HiclawError("the team is not running", hint="start it with `hiclaw up` (in another terminal)") from None

    async def _status(self) -> dict[str, Any]:
        from hiclaw.cli.up import control_request

        return dict(await self._call(control_request, "GET", "/v1/status"))

    # ------------------------------------------------------------------ reads

    async def team_status(self) -> dict[str, Any]:
        data = await self._status()
        return {"workers": [{k: w.get(k) for k in ("name", "role", "model", "state", "process", "tokens", "cost_usd")}
                            for w in data.get("workers", [])],
                "projects": [{k: p.get(k) for k in ("id", "title", "state", "goal")} for p in data.get("projects", [])],
                "tasks": [{k: t.get(k) for k in _TASK_KEYS} for t in data.get("tasks", [])]}

    async def list_projects(self) -> dict[str, Any]:
        data = await self._status()
        rows = []
        for project in data.get("projects", []):
            tasks = [t for t in data.get("tasks", []) if t.get("project") == project.get("id")]
            rows.append({k: project.get(k) for k in ("id", "title", "state", "goal", "version")}
                        | {"tasks": len(tasks), "done": sum(1 for t in tasks if t.get("state") == "done")})
        return {"projects": rows}

    async def project_status(self, project: str) -> dict[str, Any]:
        from hiclaw.cli.fs import open_storage, read_text
        from hiclaw.storage import layout

        wanted = _text(project, "the project", "give a project id from list_projects, e.g. proj-…")
        data = await self._status()
        found = next((p for p in data.get("projects", []) if wanted in (p.get("id"), p.get("title"))), None)
        if found is None:
            raise NotFoundError(f"no project {wanted!r}", hint="see list_projects for the ids")
        async with open_storage(self.app) as storage:
            plan = await read_text(storage, layout.project_plan(str(found["id"])))
        tasks = [{k: t.get(k) for k in (*_TASK_KEYS, "depends_on")}
                 for t in data.get("tasks", []) if t.get("project") == found["id"]]
        return {"project": found, "tasks": tasks, "plan_md": plan}

    async def task_result(self, task: str) -> dict[str, Any]:
        from hiclaw.cli.fs import open_storage, read_text
        from hiclaw.manager.engine import parse_result
        from hiclaw.storage import layout

        wanted = _text(task, "the task", "give a task id from team_status, e.g. task-001")
        data = await self._status()
        view = next((t for t in data.get("tasks", []) if t.get("id") == wanted), None)
        if view is None:
            raise NotFoundError(f"no task {wanted!r}", hint="see team_status for the task ids")
        folder = layout.task_dir(wanted)
        async with open_storage(self.app) as storage:
            spec = await read_text(storage, layout.task_spec(wanted))
            result = await read_text(storage, layout.task_result(wanted))
            files = [{"path": e["key"], "size": e.get("size")} for e in await storage.list(folder)
                     if not e.get("is_dir")]
        meta, body = parse_result(result) if result is not None else ({}, None)
        return {"task": view, "reported": result is not None, "status": meta.get("status"),
                "summary": meta.get("summary"), "result_md": body, "spec_md": spec, "files": files}

    async def usage(self, days: int | None = None, by: str = "consumer") -> dict[str, Any]:
        from hiclaw.cli.gateway import gateway_component
        from hiclaw.protocols import UsageLedger

        if days is not None and not 1 <= days <= 3650:
            raise InvalidInputError(f"days must be 1 to 3650, not {days}", hint="e.g. days=7; leave it out for all time")
        await self._status()  # the team is running, and the token is still good
        gateway = gateway_component(self.app)
        if not isinstance(gateway, UsageLedger):
            raise InvalidInputError(f"the configured gateway ({self.app.config.gateway.plugin}) keeps no usage ledger")
        since = f"{days}d" if days else None
        rows = list(await gateway.usage(by=by, since=since))
        tools = list(await gateway.tool_usage(since=since)) if hasattr(gateway, "tool_usage") else []
        return {"by": by, "since": since, "rows": rows, "tool_calls": tools,
                "total_cost_usd": round(sum(float(r.get("cost_usd") or 0) for r in rows), 6)}

    # ------------------------------------------------------------------ work

    async def run_task(self, description: str, worker: str | None = None, title: str | None = None) -> dict[str, Any]:
        """With ``worker``: the task is assigned in code (``hiclaw task assign``, the Manager's
        assign_task); without: the Manager is asked, and picks (or creates) the worker."""
        from hiclaw.cli.projects import assign_task

        text = _text(description, "the description", "say what the task is")
        if not worker:
            return await self.ask_manager(f"please get this task done (pick the worker): {text}")
        name = (" ".join((title or "").split()) or text)[:80]
        task = await self._call(assign_task, worker.strip(), name, description.strip())
        return {"task": task, "next": f"poll task_result(task={task['id']!r}) until reported is true"}

    async def start_project(self, goal: str, title: str | None = None) -> dict[str, Any]:
        text = _text(goal, "the goal", "say what the project should achieve")
        return await self.ask_manager(f"please start a project{f' titled {title!r}' if title else ''}: {text}")

    async def ask_manager(self, message: str, wait_seconds: float = 60.0) -> dict[str, Any]:
        """Post ``message`` to the Manager in its room as the admin; its first reply, if one comes in time."""
        from hiclaw.demo.admin import AdminClient
        from hiclaw.waiting import wait_until

        text = _text(message, "the message", "say what you want the team to do")
        data = await self._status()
        homeserver = data.get("components", {}).get("services", {}).get("homeserver")
        password = self.app.secrets.get("matrix_admin_password")
        if homeserver is None or password is None:
            raise HiclawError("the Manager room is out of reach (no Matrix homeserver or no matrix_admin_password)",
                              hint="talk to the Manager in your chat client; the read tools still work")
        admin = AdminClient(homeserver, "admin", password.get_secret_value())
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
