"""The Manager's tools for changing a plan and steering a project: ``revise_plan`` (see
:mod:`hiclaw.manager.revise`), ``pause_project``, ``resume_project``, ``cancel_project`` and
``complete_project`` (see :mod:`hiclaw.manager.steer`).

Separate from :mod:`hiclaw.manager.tools` so the plan-changing surface stays in one place; the
tool list there appends these. None is a judgement tool; the steering ones also check, in their
own code, that the admin started the turn (:func:`hiclaw.manager.origin.require_admin`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, Field

from hiclaw.agent.functions import function_tool, schema_hint
from hiclaw.manager import steer
from hiclaw.manager.origin import require_admin
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


#: The steering tools (the engine's methods of the same names) and what the model is told of each.
STEERING = {
    "pause_project": "Pause a running project, only when the admin asked: no new task starts; tasks under way "
                     "finish, are reported and judged as usual. resume_project starts the ready ones again.",
    "resume_project": "Resume a paused project, only when the admin asked: every ready task is dispatched at once.",
    "cancel_project": "Cancel a whole project, only when the admin asked: every task not done is cancelled, workers "
                      "with a task under way are told to stop. To cancel one task, use cancel_task.",
    "complete_project": "Complete a started project now, only when the admin asked: done work stays done, every "
                        "other task is cancelled (workers under way told to stop); then write the final report.",
}
STEERING_ARGS = """

Args:
    expected_version: the plan version the admin saw (refused if the plan changed since)
    reason: why, for the notice in the project room
"""


def plan_tools(plane: Any, task_dict: Callable[[Any], dict[str, Any]]) -> list[ToolSpec]:
    engine = plane.engine

    async def revise_plan(project_id: str, add: list[PlannedTask] | None = None, remove: list[str] | None = None,
                          reassign: dict[str, str] | None = None,
                          depends_on: dict[str, list[str]] | None = None,
                          expected_version: int | None = None) -> Any:
        """Change a plan awaiting confirmation or running, without duplicating it: add tasks; remove, reassign or
        re-wire (depends_on) pending ones. Code re-validates the whole plan (known workers, no cycles, nothing
        depending on a removed task) and refuses changes to tasks that are done or under way; the plan gets a new
        version.

        Args:
            add: new tasks
            remove: ids of pending tasks to drop
            reassign: pending task id -> worker name
            depends_on: pending task id -> its new dependencies (replacing the old)
            expected_version: the plan version the change was made on (refused if the plan changed since)
        """
        revision = await engine.revise_plan(project_id, add=[t.model_dump(exclude_none=True) for t in add or []],
                                            remove=list(remove or []), reassign=dict(reassign or {}),
                                            depends_on=dict(depends_on or {}), expected_version=expected_version)
        project = revision.project
        status = {ProjectState.RUNNING: "applied; newly ready tasks are dispatched",
                  ProjectState.PAUSED: "applied; the project is paused: nothing new starts until it is resumed",
                  }.get(project.state, "posted to the admin as a new version; wait for their confirmation")
        return {"project_id": project.id, "version": project.version, "changes": revision.summary(),
                "added": [task_dict(t) for t in revision.added], "status": status}

    def steering(name: str, summary: str) -> ToolSpec:
        async def steer_project(project_id: str, expected_version: int | None = None, reason: str = "") -> Any:
            require_admin(name)  # the admin's turns only, checked here too (not only by tools_for)
            change = getattr(engine, name)
            project = await change(project_id, expected_version=expected_version, by="manager", reason=reason)
            return steer.steered(plane.state, project)

        steer_project.__doc__ = summary + STEERING_ARGS
        return function_tool(steer_project, name=name)

    return [function_tool(revise_plan), *(steering(name, summary) for name, summary in STEERING.items())]
