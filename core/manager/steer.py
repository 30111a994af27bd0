"""Steering a project: confirm its plan outside chat; while it runs pause, resume, cancel,
complete early — conflict-safe.

Mixed into :class:`hiclaw.manager.engine.TaskEngine`; reached from the Manager's tools (admin
turns only: :mod:`hiclaw.manager.steer_tools`), the control API's admin actions
(``project-pause`` …) and ``hiclaw project confirm|pause|resume|cancel|complete``.

* **pause** (running → ``paused``): nothing new starts. ``dispatch_ready`` dispatches nothing for
  a paused project — so neither do the held-assignment release and the boot's reconciliation,
  which go through it. Tasks under way finish, are reported, judged and accepted as usual; a
  paused project never finishes on its own (its last acceptance leaves it paused).
* **resume** (``paused`` → running): every ready task is dispatched at once; a project with
  nothing left finishes (the Manager is woken for its report).
* **cancel**: every task not done or cancelled is cancelled; the worker of each task under way is
  told in a message to stop; the project is ``cancelled``; a notice goes to the project room.
* **complete** early: the project is ``done`` now. What is done stays done; every other task is
  cancelled — one under way too, its worker told to stop (a done project has nothing running,
  and nobody would judge its result); a reported result still waiting for judgement stays in
  storage, unjudged. The Manager is woken for the final report, as when the last task is accepted.

None of these changes the plan, so none bumps its version: each is an event
(``project.paused``, ``project.resumed``, ``project.cancelled``, ``project.completed``) that
``hiclaw project history`` lists beside the plan versions (:func:`project_history`).

**Conflict-safe writes**: each of them, ``revise_plan`` and ``confirm_plan`` take the plan
version the caller saw (``expected_version``); if the project is at another version, the change
is refused with one line naming both versions, and nothing is written (:func:`check_version`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hiclaw.errors import InvalidInputError
from hiclaw.models import ProjectState, TaskState
from hiclaw.state import ROOM_MANAGER, Project, StateDB, Task, room_of_project, room_of_worker
from hiclaw.storage import layout

#: A project in one of these states has started: its plan is revised in place, its tasks run.
STARTED = (ProjectState.RUNNING, ProjectState.PAUSED)
#: What ``hiclaw project history`` lists beside the plan versions.
STEERING_EVENTS = ("plan.confirmed", "project.paused", "project.resumed", "project.cancelled", "project.completed",
                   "project.done")


def check_version(project: Project, expected: int | None, *, hint: str | None = None) -> None:
    """Refuse a change made on an older (or newer) view of the plan than the project's."""
    if expected is None or expected == project.version:
        return
    raise InvalidInputError(
        f"{project.id}'s plan is version {project.version}, not {expected} (the version you saw): nothing was changed",
        hint=hint or f"look at version {project.version} (`hiclaw project show {project.id}`), then retry with "
                     f"version {project.version} if it still makes sense")


def project_history(state: StateDB, project_id: str) -> list[dict[str, Any]]:
    """The project's plan versions and steering events in the order they happened (the event log's):
    ``time``, ``event``, ``version``, ``by``, ``what``."""
    state.project(project_id)  # NotFoundError names it
    versions = {v.version: v for v in state.plan_versions(project_id)}
    rows: list[dict[str, Any]] = []
    for event in state.events(subject=project_id, limit=100_000):
        data = event["data"]
        if event["kind"] in ("plan.proposed", "plan.revised"):  # each version is logged with its change
            version = versions.pop(data.get("version"), None)
            if version is not None:
                rows.append({"time": version.created_at, "event": f"plan.{version.change}", "version": version.version,
                             "by": version.author, "what": version.summary})
        elif event["kind"] in STEERING_EVENTS:
            what = data.get("reason") or ""
            if data.get("cancelled"):
                what = "; ".join(filter(None, [what, "cancelled " + ", ".join(data["cancelled"])]))
            rows.append({"time": event["ts"], "event": event["kind"], "version": data.get("version"),
                         "by": data.get("by") or "", "what": what})
    return rows


#: The control API's admin actions (``POST /v1/admin/<action>``) and the engine method of each.
ACTIONS = {"project-confirm": "confirm_project", "project-pause": "pause_project", "project-resume": "resume_project",
           "project-cancel": "cancel_project", "project-complete": "complete_project"}


def steered(state: StateDB, project: Project) -> dict[str, Any]:
    """What a steering action answers: the project's state and version, and its tasks' states."""
    return {"project_id": project.id, "state": project.state.value, "version": project.version,
            "tasks": {t.id: t.state.value for t in state.tasks(project_id=project.id)}}


async def admin_steer(engine: Steering, action: str, body: dict[str, Any]) -> dict[str, Any]:
    """An admin action of :data:`ACTIONS`: ``{"project": …, "expected_version": N, "reason": …}``."""
    project_id, expected = body.get("project"), body.get("expected_version")
    if not isinstance(project_id, str) or not project_id:
        raise InvalidInputError(f"{action} needs a project id", hint='send {"project": "proj-001"}')
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
        raise InvalidInputError(f"expected_version must be a plan version number, not {expected!r}")
    method = getattr(engine, ACTIONS[action])
    project = await method(project_id, expected_version=expected, by="admin", reason=str(body.get("reason") or ""))
    return steered(engine.state, project)


class Steering:
    """Mixin of :class:`hiclaw.manager.engine.TaskEngine`: pause, resume, cancel and complete projects."""

    if TYPE_CHECKING:
        state: StateDB
        chat: Any
        admin: str

        async def render(self, project_id: str) -> str: ...
        async def dispatch_ready(self, project_id: str) -> list[str]: ...
        async def release_held(self, worker: str) -> list[str]: ...
        async def wake_for_report(self, project_id: str) -> None: ...
        async def _sync_assignments(self, worker: str) -> None: ...
        async def _maybe_finish(self, project_id: str) -> None: ...
        async def confirm_plan(self, project_id: str, version: int | None = None, *, by: str = "manager",
                               where: str = "") -> Project: ...

    def _steerable(self, project_id: str, expected_version: int | None, action: str,
                   allowed: tuple[ProjectState, ...]) -> Project:
        project = self.state.project(project_id)
        check_version(project, expected_version)
        if project.state not in allowed:
            hint = {ProjectState.DONE: "start a new project for more work",
                    ProjectState.CANCELLED: "start a new project for more work",
                    ProjectState.PLANNING: "it has not started; cancel it, or propose and confirm a plan",
                    ProjectState.AWAITING_CONFIRMATION: "it has not started; confirm its plan or cancel it",
                    ProjectState.PAUSED: "resume it first", ProjectState.RUNNING: "pause it first"}[project.state]
            raise InvalidInputError(f"{project_id} is {project.state.replace('_', ' ')}: it cannot be {action}",
                                    hint=hint)
        return project

    def _notice(self, project: Project, kind: str, text: str) -> None:
        """A steering notice in the project's room (the Manager room before it has one); in the
        caller's transaction, keyed by how many such events came before."""
        count = len(self.state.events(kind=kind, subject=project.id, limit=100_000))
        room = room_of_project(project.id) if project.room_id else ROOM_MANAGER
        self.state.enqueue_message(f"{kind}:{project.id}:{count + 1}", room, text)

    def _tell_to_stop(self, task: Task, why: str) -> None:
        """Ask the worker of a task under way to stop it (in the caller's transaction)."""
        project = self.state.project(task.project_id) if task.project_id else None
        room = room_of_project(project.id) if project and project.room_id else room_of_worker(task.assignee)
        self.state.enqueue_message(
            f"stop:{task.id}:{task.dispatch_count}", room,
            f"@{task.assignee} stop working on **{task.id}** ({task.title}): {why}. Do not report it; what you wrote "
            f"stays in `{layout.task_workspace(task.id)}`.", [task.assignee])

    async def confirm_project(self, project_id: str, *, expected_version: int | None = None, by: str = "admin",
                              reason: str = "") -> Project:
        """Start the project on its proposed plan from outside chat (`hiclaw project confirm`, the
        console's button): what the admin's *confirm* has the Manager do. The Manager's room is told
        once, so nobody there waits for a confirmation already given. Idempotent."""
        return await self.confirm_plan(project_id, expected_version, by=by, where=reason)

    async def pause_project(self, project_id: str, *, expected_version: int | None = None, by: str = "admin",
                            reason: str = "") -> Project:
        """Stop dispatching the project's tasks; those under way finish (idempotent)."""
        return await self._switch(project_id, expected_version, ProjectState.RUNNING, ProjectState.PAUSED, by, reason,
                                  "No new task starts until it is resumed; tasks under way finish and are judged "
                                  "as usual.")

    async def resume_project(self, project_id: str, *, expected_version: int | None = None, by: str = "admin",
                             reason: str = "") -> Project:
        """Dispatch again: every ready task at once (idempotent)."""
        await self._switch(project_id, expected_version, ProjectState.PAUSED, ProjectState.RUNNING, by,
                           reason, "Ready tasks start now.")
        await self.dispatch_ready(project_id)
        await self._maybe_finish(project_id)
        return self.state.project(project_id)

    async def _switch(self, project_id: str, expected_version: int | None, old: ProjectState, new: ProjectState,
                      by: str, reason: str, what_now: str) -> Project:
        """Pause (running → paused) or resume (paused → running); nothing if it is ``new`` already."""
        project = self.state.project(project_id)
        word = "paused" if new == ProjectState.PAUSED else "resumed"
        if project.state == new:
            check_version(project, expected_version)
            return project
        project = self._steerable(project_id, expected_version, word, (old,))
        kind = f"project.{word}"
        with self.state.transaction():
            self._notice(project, kind, f"Project **{project.title}** is {word} by {by}"
                                        + (f": {reason}" if reason else "") + f". {what_now}")
            project = self.state.update_project(project_id, state=new)
            self.state.log_event(kind, project_id, by=by, reason=reason, version=project.version)
        await self.render(project_id)
        await self.chat.flush()
        return project

    async def cancel_project(self, project_id: str, *, expected_version: int | None = None, by: str = "admin",
                             reason: str = "") -> Project:
        """Cancel every open task (workers under way told to stop) and the project."""
        project = self._steerable(project_id, expected_version, "cancelled",
                                  (ProjectState.PLANNING, ProjectState.AWAITING_CONFIRMATION, *STARTED))
        return await self._close(project, ProjectState.CANCELLED, "project.cancelled", by, reason)

    async def complete_project(self, project_id: str, *, expected_version: int | None = None, by: str = "admin",
                               reason: str = "") -> Project:
        """Done now: what is done stays done, the rest is cancelled; the Manager writes the final report."""
        project = self._steerable(project_id, expected_version, "completed", STARTED)
        project = await self._close(project, ProjectState.DONE, "project.completed", by, reason)
        await self.wake_for_report(project_id)
        return project

    async def _close(self, project: Project, final: ProjectState, kind: str, by: str, reason: str) -> Project:
        from hiclaw.manager.revise import plan_key

        tasks = self.state.tasks(project_id=project.id)
        open_tasks = [t for t in tasks if t.state not in (TaskState.DONE, TaskState.CANCELLED)]
        word = "cancelled" if final == ProjectState.CANCELLED else "completed early"
        because = f": {reason}" if reason else ""
        done = sum(1 for t in tasks if t.state is TaskState.DONE)
        with self.state.transaction():
            for task in open_tasks:
                self.state.update_task(task.id, state=TaskState.CANCELLED)
                if task.state is TaskState.IN_PROGRESS:
                    self._tell_to_stop(task, f"project **{project.title}** was {word}")
            if project.state == ProjectState.AWAITING_CONFIRMATION:  # its plan message, if still undelivered
                self.state.discard_message(plan_key(project.id, project.version))
            self._notice(project, kind, f"Project **{project.title}** was {word} by {by}{because}. {done} of "
                                        f"{len(tasks)} tasks done; cancelled: "
                                        f"{', '.join(t.id for t in open_tasks) or 'none'}. "
                                        f"Plan: `{layout.project_plan(project.id)}`")
            project = self.state.update_project(project.id, state=final)
            self.state.log_event(kind, project.id, by=by, reason=reason, version=project.version,
                                 cancelled=[t.id for t in open_tasks],
                                 stopped=[t.id for t in open_tasks if t.state is TaskState.IN_PROGRESS])
        await self.render(project.id)
        await self.chat.flush()
        for worker in sorted({t.assignee for t in open_tasks}):
            await self._sync_assignments(worker)
            await self.release_held(worker)  # its held work of other projects may start now
        return project
