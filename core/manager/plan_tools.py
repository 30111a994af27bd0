"""The Manager's tool for changing a plan: ``revise_plan`` (see :mod:`hiclaw.manager.revise`).

Separate from :mod:`hiclaw.manager.tools` so the plan-revision surface stays in one place; the
tool list there appends these.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, Field

from hiclaw.agent.functions import function_tool, schema_hint
from hiclaw.models import ProjectState, ToolSpec

#: A task id (the engine checks it and says how to fix it; the model is shown the pattern).
TASK_ID = r"^task-[0-9]{3,}$"


class PlannedTask(BaseModel):
    # The shape the model writes (propose_plan's tasks, revise_plan's add); the engine receives it
    # as a dict and checks it (hiclaw.manager.plan.PlannedTask). No docstring: it would not be shown.
    id: Annotated[str, schema_hint(pattern=TASK_ID)] | None = None
    title: str
    assignee: str
    depends_on: list[str] | None = None
    model: str | None = Field(None, description="model alias for this task (e.g. cheap for collection)")
    spec: str | None = Field(None, description="what to do and what done looks like")


def plan_tools(plane: Any, task_dict: Callable[[Any], dict[str, Any]]) -> list[ToolSpec]:
    engine = plane.engine

    async def revise_plan(project_id: str, add: list[PlannedTask] | None = None, remove: list[str] | None = None,
                          reassign: dict[str, str] | None = None,
                          depends_on: dict[str, list[str]] | None = None) -> Any:
        """Change a plan awaiting confirmation or running, without duplicating it: add tasks; remove, reassign or
        re-wire (depends_on) pending ones. Code re-validates the whole plan (known workers, no cycles, nothing
        depending on a removed task) and refuses changes to tasks that are done or under way; the plan gets a new
        version.

        Args:
            add: new tasks
            remove: ids of pending tasks to drop
            reassign: pending task id -> worker name
            depends_on: pending task id -> its new dependencies (replacing the old)
        """
        revision = await engine.revise_plan(project_id, add=[t.model_dump(exclude_none=True) for t in add or []],
                                            remove=list(remove or []), reassign=dict(reassign or {}),
                                            depends_on=dict(depends_on or {}))
        project = revision.project
        status = ("applied; newly ready tasks are dispatched" if project.state == ProjectState.RUNNING
                  else "posted to the admin as a new version; wait for their confirmation")
        return {"project_id": project.id, "version": project.version, "changes": revision.summary(),
                "added": [task_dict(t) for t in revision.added], "status": status}

    return [function_tool(revise_plan)]
