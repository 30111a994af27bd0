"""The Manager's tool for changing a plan: ``revise_plan`` (see :mod:`hiclaw.manager.revise`).

Separate from :mod:`hiclaw.manager.tools` so the plan-revision surface stays in one place; the
tool list there appends these.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hiclaw.errors import InvalidInputError
from hiclaw.models import ProjectState, ToolSpec

STRING = {"type": "string"}
TASK_ID = {"type": "string", "pattern": "^task-[0-9]{3,}$"}


def planned_task_schema() -> dict[str, Any]:
    """One task as the Manager plans it (propose_plan's tasks, revise_plan's add)."""
    return {"type": "object", "additionalProperties": False, "required": ["title", "assignee"], "properties": {
        "id": TASK_ID, "title": STRING, "assignee": STRING, "depends_on": {"type": "array", "items": STRING},
        "model": {"type": "string", "description": "model alias for this task (e.g. cheap for collection)"},
        "spec": {"type": "string", "description": "what to do and what done looks like"}}}


def _str_map(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be an object of task id to value")
    return value


def plan_tools(plane: Any, task_dict: Callable[[Any], dict[str, Any]]) -> list[ToolSpec]:
    engine = plane.engine

    async def revise_plan(args: dict[str, Any]) -> Any:
        reassign = {str(k): str(v) for k, v in _str_map(args.get("reassign"), "reassign").items()}
        depends_on = {}
        for task_id, deps in _str_map(args.get("depends_on"), "depends_on").items():
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                raise InvalidInputError(f"depends_on[{task_id}] must be a list of task ids")
            depends_on[str(task_id)] = deps
        revision = await engine.revise_plan(args["project_id"], add=args.get("add") or [],
                                            remove=[str(t) for t in args.get("remove") or []],
                                            reassign=reassign, depends_on=depends_on)
        project = revision.project
        status = ("applied; newly ready tasks are dispatched" if project.state == ProjectState.RUNNING
                  else "posted to the admin as a new version; wait for their confirmation")
        return {"project_id": project.id, "version": project.version, "changes": revision.summary(),
                "added": [task_dict(t) for t in revision.added], "status": status}

    return [
        ToolSpec(name="revise_plan", handler=revise_plan,
                 description="Change a plan awaiting confirmation or running, without duplicating it: add tasks; "
                             "remove, reassign or re-wire (depends_on) pending ones. Code re-validates the whole plan "
                             "(known workers, no cycles, nothing depending on a removed task) and refuses changes to "
                             "tasks that are done or under way; the plan gets a new version.",
                 parameters={"type": "object", "additionalProperties": False, "required": ["project_id"], "properties": {
                     "project_id": STRING,
                     "add": {"type": "array", "items": planned_task_schema(), "description": "new tasks"},
                     "remove": {"type": "array", "items": STRING, "description": "ids of pending tasks to drop"},
                     "reassign": {"type": "object", "additionalProperties": STRING,
                                  "description": "pending task id -> worker name"},
                     "depends_on": {"type": "object", "additionalProperties": {"type": "array", "items": STRING},
                                    "description": "pending task id -> its new dependencies (replacing the old)"}}}),
    ]
