"""The Manager agent's tools: management operations only (no files, no shell, no environment).

Registered by the default plugin ``manager-tools`` (:mod:`hiclaw.manager.plugin`). Every tool is a thin call into code (the
provisioner, the task engine, the state DB); the model decides *what* to call, code does it.
The tools reach the control plane through ``ctx.runtime`` (a :class:`hiclaw.control.plane.ControlPlane`).
The :class:`hiclaw.manager.agent.ManagerAgent` hands a turn not started by the admin only the
judgement tools (:data:`hiclaw.manager.origin.JUDGEMENT_TOOLS`); the others refuse in that turn.
"""
from __future__ import annotations

from typing import Any

from hiclaw.control.schedule_tools import admin_schedule_tools
from hiclaw.manager.memory import memory_tools
from hiclaw.manager.plan_tools import plan_tools
from hiclaw.models import ToolSpec

STRING = {"type": "string"}
RANGE = "the range's start: today, yesterday, a duration back from now (24h, 7d) or an ISO date/time"


def _obj(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _worker_dict(worker: Any) -> dict[str, Any]:
    return dict(worker.view())


def _task_dict(task: Any) -> dict[str, Any]:
    return dict(task.view())


def manager_tools(plane: Any) -> list[ToolSpec]:
    engine, state, provisioner = plane.engine, plane.state, plane.provisioner

    async def create_worker(args: dict[str, Any]) -> Any:
        worker = await provisioner.create_worker(
            args["name"], role=args["role"], model=args.get("model") or plane.config.team.worker_model,
            skills=args.get("skills") or [], budget_usd=args.get("budget_usd"),
        )
        return {"created": _worker_dict(worker), "room": f"Worker: {worker.name}"}

    async def list_workers(args: dict[str, Any]) -> Any:
        return [_worker_dict(w) | {"running": await provisioner.is_running(w.name)} for w in state.workers()]

    async def remove_worker(args: dict[str, Any]) -> Any:
        await provisioner.remove_worker(args["name"])
        return {"removed": args["name"]}

    async def set_worker_model(args: dict[str, Any]) -> Any:
        worker = await provisioner.set_model(args["name"], args["model"])
        return {"worker": worker.name, "model": worker.model}

    async def create_project(args: dict[str, Any]) -> Any:
        project = await engine.create_project(args["title"], args.get("goal", ""))
        return {"project_id": project.id, "title": project.title,
                "next": "call propose_plan with the tasks (assignee, depends_on, model tier)"}

    async def propose_plan(args: dict[str, Any]) -> Any:
        tasks = await engine.propose_plan(args["project_id"], args["tasks"])
        waiting = "started (YOLO mode)" if engine.yolo else "posted to the admin; wait for their confirmation"
        return {"tasks": [_task_dict(t) for t in tasks], "version": state.project(args["project_id"]).version,
                "status": waiting}

    async def confirm_plan(args: dict[str, Any]) -> Any:
        project = await engine.confirm_plan(args["project_id"], args.get("version"))
        return {"project_id": project.id, "state": project.state, "version": project.version,
                "tasks": [_task_dict(t) for t in state.tasks(project_id=project.id)]}

    async def assign_task(args: dict[str, Any]) -> Any:
        task = await engine.assign_adhoc(args["assignee"], args["title"], args.get("spec", ""), args.get("model"))
        return _task_dict(task)

    async def read_result(args: dict[str, Any]) -> Any:
        task = state.task(args["task_id"])
        found = await engine.read_result(task.id)
        if found is None:
            return {"task": _task_dict(task), "result": None}
        meta, body = found
        return {"task": _task_dict(task), "status": meta.get("status"), "summary": meta.get("summary"),
                "result_markdown": body}

    async def accept_task(args: dict[str, Any]) -> Any:
        return _task_dict(await engine.accept_task(args["task_id"], args.get("note", "")))

    async def request_revision(args: dict[str, Any]) -> Any:
        revision = await engine.request_revision(args["task_id"], args["feedback"], args.get("assignee"),
                                                 args.get("title"))
        if revision.id == args["task_id"]:  # no revision round left: code blocked it and told the admin
            return {"blocked": _task_dict(revision), "reason": revision.result_summary,
                    "next": "the admin was told; do not ask for another revision of it"}
        return {"revision_task": _task_dict(revision)}

    async def block_task(args: dict[str, Any]) -> Any:
        return _task_dict(await engine.block_task(args["task_id"], args["reason"]))

    async def cancel_task(args: dict[str, Any]) -> Any:
        return _task_dict(await engine.cancel_task(args["task_id"]))

    async def list_tasks(args: dict[str, Any]) -> Any:
        return [_task_dict(t) for t in state.tasks(project_id=args.get("project_id"))]

    async def send_message(args: dict[str, Any]) -> Any:
        event_id = await plane.send_to_room(args["room"], args["text"], mentions=args.get("mentions") or [])
        return {"sent": event_id}

    async def usage_report(args: dict[str, Any]) -> Any:
        by = args.get("by") or "consumer"
        if not args.get("since") and not args.get("until"):
            return await plane.usage(by=by)
        from hiclaw.manager.when import parse_moment

        zone, now = plane.team_zone(), plane.now()
        since = parse_moment(args["since"], zone, now) if args.get("since") else None
        until = parse_moment(args["until"], zone, now, end=True, what="until") if args.get("until") else None
        rows = await plane.usage(by=by, since=since.timestamp() if since else None,
                                 until=until.timestamp() if until else None)
        return {"since": since.astimezone(zone).isoformat(timespec="minutes") if since else None,
                "until": (until or now).astimezone(zone).isoformat(timespec="minutes"), "rows": rows,
                "total_cost_usd": round(sum(float(r.get("cost_usd") or 0) for r in rows), 6),
                "calls": sum(int(r.get("calls") or 0) for r in rows)}

    tools = [
        ToolSpec(name="create_worker", handler=create_worker,
                 description="Create a worker agent (Matrix account, room, model token, home, sandboxed process). "
                             "Idempotent.",
                 parameters=_obj({"name": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,30}$"},
                                  "role": {"type": "string", "description": "role and responsibilities, becomes SOUL.md"},
                                  "model": {"type": "string", "description": "model alias, e.g. smart, fast, cheap"},
                                  "skills": {"type": "array", "items": STRING},
                                  "budget_usd": {"type": "number", "minimum": 0,
                                                 "description": "spending limit in USD (default: the team's "
                                                                "worker_budget_usd)"}}, ["name", "role"])),
        ToolSpec(name="list_workers", handler=list_workers, description="List workers with role, model and state.",
                 parameters=_obj({}, [])),
        ToolSpec(name="remove_worker", handler=remove_worker,
                 description="Remove a worker: stop it, revoke its token and storage access.",
                 parameters=_obj({"name": STRING}, ["name"])),
        ToolSpec(name="set_worker_model", handler=set_worker_model, description="Change a worker's default model alias.",
                 parameters=_obj({"name": STRING, "model": STRING}, ["name", "model"])),
        ToolSpec(name="create_project", handler=create_project,
                 description="Start a project (mode 2: complex work for several workers). Then propose_plan.",
                 parameters=_obj({"title": STRING, "goal": STRING}, ["title"])),
        ToolSpec(name="propose_plan", handler=propose_plan,
                 description="Propose the project's tasks as a DAG. Code validates it (known workers, no cycles), "
                             "writes plan.md and asks the admin to confirm (unless YOLO mode). Proposing again "
                             "before confirmation replaces the plan (a new version); change a running plan with "
                             "revise_plan.",
                 parameters=_obj({"project_id": STRING, "tasks": {"type": "array", "items": _obj({
                     "id": {"type": "string", "pattern": "^task-[0-9]{3,}$"}, "title": STRING, "assignee": STRING,
                     "depends_on": {"type": "array", "items": STRING},
                     "model": {"type": "string", "description": "model alias for this task (e.g. cheap for collection)"},
                     "spec": {"type": "string", "description": "what to do and what done looks like"},
                 }, ["title", "assignee"])}}, ["project_id", "tasks"])),
        ToolSpec(name="confirm_plan", handler=confirm_plan,
                 description="Start a proposed project after the admin confirmed it: creates the project room and "
                             "dispatches every task whose dependencies are done.",
                 parameters=_obj({"project_id": STRING, "version": {
                     "type": "integer", "description": "the plan version the admin confirmed (refused if it changed)"}},
                     ["project_id"])),
        ToolSpec(name="assign_task", handler=assign_task,
                 description="Give one worker a single task outside any project (it is posted in the worker's room).",
                 parameters=_obj({"assignee": STRING, "title": STRING, "spec": STRING, "model": STRING},
                                 ["assignee", "title"])),
        ToolSpec(name="read_result", handler=read_result, description="Read a task's reported result.md.",
                 parameters=_obj({"task_id": STRING}, ["task_id"])),
        ToolSpec(name="accept_task", handler=accept_task,
                 description="Accept a reported task: it is done; dependent tasks are dispatched.",
                 parameters=_obj({"task_id": STRING, "note": STRING}, ["task_id"])),
        ToolSpec(name="request_revision", handler=request_revision,
                 description="Ask for a revision of a reported task: a linked revision task (for the given worker, "
                             "default the same) with your title and your feedback as its spec; its inputs are the "
                             "rejected result and what the task worked from; the original is re-checked on the fix "
                             "afterwards. Rounds are capped: past the cap the task is blocked and the admin told.",
                 parameters=_obj({"task_id": STRING, "feedback": {"type": "string", "description": "what to change, "
                                  "concretely (the revision's spec)"}, "assignee": STRING,
                                  "title": {"type": "string", "description": "short title of the fix (default: "
                                            "'Fix: ' and the feedback's first sentence)"}}, ["task_id", "feedback"])),
        ToolSpec(name="block_task", handler=block_task, description="Mark a task blocked and alert the admin.",
                 parameters=_obj({"task_id": STRING, "reason": STRING}, ["task_id", "reason"])),
        ToolSpec(name="cancel_task", handler=cancel_task, description="Cancel a task that is not done.",
                 parameters=_obj({"task_id": STRING}, ["task_id"])),
        ToolSpec(name="list_tasks", handler=list_tasks, description="List tasks (optionally of one project).",
                 parameters=_obj({"project_id": STRING}, [])),
        ToolSpec(name="send_message", handler=send_message,
                 description="Post a message in a room ('Manager', 'Worker: <name>' or a project id), mentioning "
                             "agents by name.",
                 parameters=_obj({"room": STRING, "text": STRING, "mentions": {"type": "array", "items": STRING}},
                                 ["room", "text"])),
        ToolSpec(name="usage_report", handler=usage_report,
                 description="Model usage and cost from the gateway ledger, optionally of a time range (times "
                             "without a zone are the team's).",
                 parameters=_obj({"by": {"type": "string", "enum": ["consumer", "task", "project", "model"]},
                                  "since": {"type": "string", "description": RANGE},
                                  "until": {"type": "string", "description": "the range's end (default now); a "
                                                                             "date means the end of that day"}}, [])),
    ]
    tools.extend(plan_tools(plane, _task_dict))  # revise_plan
    tools.extend(memory_tools(plane))  # memory_append, memory_read, skills_read
    if getattr(plane, "scheduler", None) is not None:
        tools.extend(admin_schedule_tools(plane.scheduler))  # remind_admin, schedule_report
    tools.extend(plane.extra_manager_tools())
    return tools

