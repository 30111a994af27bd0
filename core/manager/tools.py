"""The Manager agent's tools: management operations only (no files, no shell, no environment).

Registered by the default plugin ``manager-tools`` (:mod:`hiclaw.manager.plugin`). Every tool is a thin call into code (the
provisioner, the task engine, the state DB); the model decides *what* to call, code does it.
The tools reach the control plane through ``ctx.runtime`` (a :class:`hiclaw.control.plane.ControlPlane`).
The :class:`hiclaw.manager.agent.ManagerAgent` hands a turn not started by the admin only the
judgement tools (:data:`hiclaw.manager.origin.JUDGEMENT_TOOLS`); the others refuse in that turn.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from hiclaw.agent.functions import function_tool, schema_hint
from hiclaw.control.access import access_tools
from hiclaw.control.schedule_tools import admin_schedule_tools
from hiclaw.manager.memory import memory_tools
from hiclaw.manager.plan_tools import PlannedTask, plan_tools
from hiclaw.models import TaskState, ToolSpec
from hiclaw.storage.layout import AGENT_NAME

#: A worker's name (the provisioner checks it and says how to fix it; the model is shown the pattern).
WORKER_NAME = AGENT_NAME.pattern


def _worker_dict(worker: Any) -> dict[str, Any]:
    return dict(worker.view())


def _task_dict(task: Any) -> dict[str, Any]:
    return dict(task.view())


def manager_tools(plane: Any) -> list[ToolSpec]:
    engine, state, provisioner = plane.engine, plane.state, plane.provisioner

    async def create_worker(name: Annotated[str, schema_hint(pattern=WORKER_NAME)], role: str, model: str | None = None,
                            skills: list[str] | None = None,
                            budget_usd: Annotated[float, schema_hint(minimum=0)] | None = None) -> Any:
        """Create a worker agent (Matrix account, room, model token, home, sandboxed process). Idempotent.

        Args:
            role: role and responsibilities, becomes SOUL.md
            model: model alias, e.g. smart, fast, cheap
            budget_usd: spending limit in USD (default: the team's worker_budget_usd)
        """
        worker = await provisioner.create_worker(
            name, role=role, model=model or plane.config.team.worker_model, skills=skills or [], budget_usd=budget_usd,
        )
        return {"created": _worker_dict(worker), "room": f"Worker: {worker.name}"}

    async def list_workers() -> Any:
        """List workers with role, model and state."""
        return [_worker_dict(w) | {"running": await provisioner.is_running(w.name)} for w in state.workers()]

    async def remove_worker(name: str) -> Any:
        """Remove a worker: stop it, revoke its token and storage access."""
        await provisioner.remove_worker(name)
        return {"removed": name}

    async def set_worker_model(name: str, model: str) -> Any:
        """Change a worker's default model alias."""
        worker = await provisioner.set_model(name, model)
        return {"worker": worker.name, "model": worker.model}

    async def create_project(title: str, goal: str = "") -> Any:
        """Start a project (mode 2: complex work for several workers). Then propose_plan."""
        project = await engine.create_project(title, goal)
        return {"project_id": project.id, "title": project.title,
                "next": "call propose_plan with the tasks (assignee, depends_on, model tier)"}

    async def propose_plan(project_id: str, tasks: list[PlannedTask]) -> Any:
        """Propose the project's tasks as a DAG. Code validates it (known workers, no cycles), writes plan.md and
        asks the admin to confirm (unless YOLO mode). Proposing again before confirmation replaces the plan (a new
        version); change a running plan with revise_plan.
        """
        made = await engine.propose_plan(project_id, [t.model_dump(exclude_none=True) for t in tasks])
        waiting = "started (YOLO mode)" if engine.yolo else "posted to the admin; wait for their confirmation"
        return {"tasks": [_task_dict(t) for t in made], "version": state.project(project_id).version,
                "status": waiting}

    async def confirm_plan(project_id: str, version: int | None = None) -> Any:
        """Start a proposed project after the admin confirmed it: creates the project room and dispatches every
        task whose dependencies are done.

        Args:
            version: the plan version the admin confirmed (refused if it changed)
        """
        project = await engine.confirm_plan(project_id, version)
        return {"project_id": project.id, "state": project.state, "version": project.version,
                "tasks": [_task_dict(t) for t in state.tasks(project_id=project.id)]}

    async def assign_task(assignee: str, title: str, spec: str = "", model: str | None = None) -> Any:
        """Give one worker a single task outside any project (it is posted in the worker's room)."""
        task = await engine.assign_adhoc(assignee, title, spec, model)
        if task.state is TaskState.PENDING:  # held: posted once its worker's current task is finished
            return {**_task_dict(task), "note": f"{assignee} is busy with another task; this one is posted to "
                                                "it as soon as that is finished"}
        return _task_dict(task)

    async def read_result(task_id: str) -> Any:
        """Read a task's reported result.md."""
        task = state.task(task_id)
        found = await engine.read_result(task.id)
        if found is None:
            return {"task": _task_dict(task), "result": None}
        meta, body = found
        return {"task": _task_dict(task), "status": meta.get("status"), "summary": meta.get("summary"),
                "result_markdown": body}

    async def accept_task(task_id: str, note: str = "") -> Any:
        """Accept a reported task: it is done; dependent tasks are dispatched."""
        return _task_dict(await engine.accept_task(task_id, note))

    async def request_revision(task_id: str, feedback: str, assignee: str | None = None,
                               title: str | None = None) -> Any:
        """Ask for a revision of a reported task: a linked revision task (for the given worker, default the same)
        with your title and your feedback as its spec; its inputs are the rejected result and what the task worked
        from; the original is re-checked on the fix afterwards. Rounds are capped: past the cap the task is blocked
        and the admin told.

        Args:
            feedback: what to change, concretely (the revision's spec)
            title: short title of the fix (default: 'Fix: ' and the feedback's first sentence)
        """
        revision = await engine.request_revision(task_id, feedback, assignee, title)
        if revision.id == task_id:  # no revision round left: code blocked it and told the admin
            return {"blocked": _task_dict(revision), "reason": revision.result_summary,
                    "next": "the admin was told; do not ask for another revision of it"}
        return {"revision_task": _task_dict(revision)}

    async def block_task(task_id: str, reason: str) -> Any:
        """Mark a task blocked and alert the admin."""
        return _task_dict(await engine.block_task(task_id, reason))

    async def cancel_task(task_id: str) -> Any:
        """Cancel a task that is not done."""
        return _task_dict(await engine.cancel_task(task_id))

    async def list_tasks(project_id: str | None = None) -> Any:
        """List tasks (optionally of one project)."""
        return [_task_dict(t) for t in state.tasks(project_id=project_id)]

    async def send_message(room: str, text: str, mentions: list[str] | None = None) -> Any:
        """Post a message in a room ('Manager', 'Worker: <name>' or a project id), mentioning agents by name."""
        return {"sent": await plane.send_to_room(room, text, mentions=mentions or [])}

    async def usage_report(by: Literal["consumer", "task", "project", "model"] | None = None,
                           since: str | None = None, until: str | None = None) -> Any:
        """Model usage and cost from the gateway ledger, optionally of a time range (times without a zone are the
        team's).

        Args:
            since: the range's start: today, yesterday, a duration back from now (24h, 7d) or an ISO date/time
            until: the range's end (default now); a date means the end of that day
        """
        by = by or "consumer"
        if not since and not until:
            return await plane.usage(by=by)
        from hiclaw.manager.when import parse_moment

        zone, now = plane.team_zone(), plane.now()
        start = parse_moment(since, zone, now) if since else None
        end = parse_moment(until, zone, now, end=True, what="until") if until else None
        rows = await plane.usage(by=by, since=start.timestamp() if start else None,
                                 until=end.timestamp() if end else None)
        return {"since": start.astimezone(zone).isoformat(timespec="minutes") if start else None,
                "until": (end or now).astimezone(zone).isoformat(timespec="minutes"), "rows": rows,
                "total_cost_usd": round(sum(float(r.get("cost_usd") or 0) for r in rows), 6),
                "calls": sum(int(r.get("calls") or 0) for r in rows)}

    tools = [function_tool(tool) for tool in (
        create_worker, list_workers, remove_worker, set_worker_model, create_project, propose_plan, confirm_plan,
        assign_task, read_result, accept_task, request_revision, block_task, cancel_task, list_tasks, send_message,
        usage_report)]
    tools.extend(plan_tools(plane, _task_dict))  # revise_plan
    tools.extend(memory_tools(plane))  # memory_append, memory_read, skills_read
    if getattr(plane, "scheduler", None) is not None:
        tools.extend(admin_schedule_tools(plane.scheduler))  # remind_admin, schedule_report
    access = getattr(plane, "access", None)
    if access is not None and (plane.config.mcp or plane.config.egress):
        tools.extend(access_tools(access))  # grant_access, revoke_access, list_access
    tools.extend(plane.extra_manager_tools())
    return tools

