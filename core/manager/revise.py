"""Plans change: a proposal is replaced, never duplicated; a running plan is revised, in code.

Mixed into :class:`hiclaw.manager.engine.TaskEngine`. Every plan has a **version** (on the
project): 1 when first proposed, +1 at every replacement or revision, shown in plan.md and in
every plan message, so the Manager and the admin can tell versions apart.

* :meth:`PlanRevisions.propose_plan` on a project still awaiting confirmation **replaces** its
  plan: the old (never started) tasks are deleted, the new ones recorded, the old plan message
  dropped if it was not delivered yet, and one "please confirm" message for the new version is
  recorded — one transaction.
* :meth:`PlanRevisions.revise_plan` changes a plan awaiting confirmation or running: add tasks,
  remove, reassign or re-wire (``depends_on``) *pending* ones. Code re-validates the whole DAG
  first — known workers, no cycle, no dependency on a removed or cancelled task, nothing done or
  under way touched — and refuses with one line, writing nothing. Otherwise one transaction
  records the changes, the new version and its message (awaiting confirmation: a new "please
  confirm"; running: a notice in the project room); on a running project removed tasks are
  cancelled (kept in plan.md as ``[-]``), newly ready tasks are dispatched at once (unless the
  project is paused: :mod:`hiclaw.manager.steer`). ``expected_version``: the version the change
  was made on; another one is refused, nothing written.

Every version is kept as it was made (``plan_versions``: its tasks, plan.md, what changed and
who changed it), for ``hiclaw project history``.

Project rooms follow their assignees: :func:`room_members` is everyone who has (or had, before
a reassignment) a task in the project; the engine makes sure of them before each assignment.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hiclaw.errors import InvalidInputError
from hiclaw.manager.plan import PlannedTask, find_cycle, parse_plan, render_plan, validate_plan
from hiclaw.manager.steer import STARTED, check_version
from hiclaw.models import ProjectState, TaskState
from hiclaw.state import ROOM_MANAGER, PlanVersion, Project, StateDB, Task, room_of_project
from hiclaw.storage import layout

#: How a task's state reads in a refusal.
STATE_WORDS = {TaskState.IN_PROGRESS: "in progress", TaskState.REVIEW: "under review",
               TaskState.REVISION: "waiting for its revision"}


def plan_key(project_id: str, version: int) -> str:
    """Idempotency key of the message announcing a plan version."""
    return f"plan:{project_id}:v{version}"


def room_members(state: StateDB, project_id: str) -> list[str]:
    """Who belongs in the project room: every assignee of its tasks, and whoever a task was
    taken from while it ran (a room never loses members because a task moved)."""
    members = {t.assignee for t in state.tasks(project_id=project_id)}
    for event in state.events(kind="plan.revised", subject=project_id):
        if event["data"].get("running"):
            members.update(old for old, _new in (event["data"].get("reassigned") or {}).values())
    return sorted(members)


def _plan_lines(plan_text: str) -> str:
    return "\n".join(line for line in plan_text.splitlines() if line.startswith(("- ", "  - ")))


def _number(task_id: str) -> int:
    tail = task_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@dataclass
class Revision:
    """What :meth:`PlanRevisions.revise_plan` changed."""

    project: Project
    added: list[Task] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reassigned: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (from, to)
    rewired: dict[str, list[str]] = field(default_factory=dict)  # task -> its new dependencies

    def summary(self) -> str:
        parts = [f"added {t.id} {t.title} (@{t.assignee}" + (f", after {', '.join(t.depends_on)})" if t.depends_on
                                                             else ")") for t in self.added]
        parts += [f"removed {task_id}" for task_id in self.removed]
        parts += [f"{task_id} → @{new}" for task_id, (_old, new) in self.reassigned.items()]
        parts += [f"{task_id} now after {', '.join(deps)}" if deps else f"{task_id} no longer waits for other tasks"
                  for task_id, deps in self.rewired.items()]
        return "; ".join(parts)


class PlanRevisions:
    """Mixin of :class:`hiclaw.manager.engine.TaskEngine`: plan versions, replacement and revision."""

    if TYPE_CHECKING:
        state: StateDB
        chat: Any
        yolo: bool
        admin: str

        async def render(self, project_id: str) -> str: ...
        async def confirm_plan(self, project_id: str, version: int | None = None) -> Project: ...
        async def dispatch_ready(self, project_id: str) -> list[str]: ...
        async def _sync_assignments(self, worker: str) -> None: ...
        async def _maybe_finish(self, project_id: str) -> None: ...

    def _record_version(self, project: Project, change: str, summary: str, by: str) -> None:
        """Keep ``project``'s current plan version (in the caller's transaction)."""
        tasks = self.state.tasks(project_id=project.id)
        self.state.record_plan_version(PlanVersion(
            project_id=project.id, version=project.version, change=change, summary=summary, author=by,
            tasks=[{"id": t.id, "title": t.title, "assignee": t.assignee, "depends_on": t.depends_on,
                    "state": t.state.value, "model": t.model} for t in tasks],
            plan=render_plan(project, tasks)))

    def _announce_plan(self, project: Project, note: str = "") -> None:
        """Record the plan message of ``project``'s current version (in the caller's transaction)."""
        lines = _plan_lines(render_plan(project, self.state.tasks(project_id=project.id)))
        key = plan_key(project.id, project.version)
        if self.yolo:
            self.state.enqueue_message(key, ROOM_MANAGER, f"Plan for **{project.title}** (version {project.version}; "
                                                          f"YOLO mode, starting now):\n\n{lines}")
            return
        if project.version > 1:
            head = f"@{self.admin} here is version {project.version} of the plan for **{project.title}** ({project.id})"
            head += f" — {note}" if note else ""
        else:
            head = f"@{self.admin} here is the plan for **{project.title}** ({project.id}, version 1)"
        self.state.enqueue_message(key, ROOM_MANAGER, f"{head}. Reply to me with *confirm* to start it, or tell me "
                                                      f"what to change.\n\n{lines}\n\nFull plan: "
                                                      f"`{layout.project_plan(project.id)}`", [self.admin])

    async def propose_plan(self, project_id: str, tasks: Sequence[dict[str, Any] | PlannedTask], *,
                           by: str = "manager") -> list[Task]:
        """The project's plan: its first, or a replacement of one not confirmed yet (a new version)."""
        state = self.state
        project = state.project(project_id)
        if project.state in STARTED:
            raise InvalidInputError(f"{project_id} is {project.state}; its plan can no longer be replaced",
                                    hint="change its pending tasks with revise_plan (add, remove, reassign, depends_on)")
        if project.state not in (ProjectState.PLANNING, ProjectState.AWAITING_CONFIRMATION):
            raise InvalidInputError(f"{project_id} is {project.state}; its plan can no longer be changed",
                                    hint="start a new project for more work")
        old = state.tasks(project_id=project_id)
        if any(t.state is not TaskState.PENDING for t in old):
            raise InvalidInputError(f"{project_id} already has started tasks", hint="change it with revise_plan")
        old_ids = {t.id for t in old}
        planned = parse_plan([t.model_dump() if isinstance(t, PlannedTask) else t for t in tasks])
        others = [t for t in state.tasks() if t.id not in old_ids]
        leaning = sorted(t.id for t in others if old_ids & set(t.depends_on))
        if leaning:
            raise InvalidInputError(f"{', '.join(leaning)} of another project depend(s) on this plan's tasks",
                                    hint="change that project first")
        existing = [t.id for t in others]
        validated = validate_plan(planned, workers=[w.name for w in state.workers()],
                                  next_id=max(map(_number, existing), default=0) + 1, existing=existing)
        previous = max(project.version, 1) if old else project.version
        with state.transaction():
            if old:
                state.delete_tasks(sorted(old_ids))
                state.discard_message(plan_key(project_id, previous))  # not delivered yet: never shown
            created = state.add_tasks(project_id, validated)
            project = state.update_project(project_id, state=ProjectState.AWAITING_CONFIRMATION, version=previous + 1)
            state.log_event("plan.proposed", project_id, tasks=[t.id for t in created], version=project.version,
                            replaced=sorted(old_ids))
            self._record_version(project, "replaced" if old else "proposed",
                                 f"{len(created)} tasks" + (f", replacing version {previous}" if old else ""), by)
            self._announce_plan(project, f"it replaces version {previous}" if old else "")
        await self.render(project_id)
        await self.chat.flush()
        if self.yolo:
            await self.confirm_plan(project_id)
        return created

    async def revise_plan(self, project_id: str, *, add: Sequence[dict[str, Any] | PlannedTask] = (),
                          remove: Sequence[str] = (), reassign: Mapping[str, str] | None = None,
                          depends_on: Mapping[str, Sequence[str]] | None = None,
                          expected_version: int | None = None, by: str = "manager") -> Revision:
        """Add tasks; remove, reassign or re-wire pending ones — validated first, then one transaction."""
        state = self.state
        project = state.project(project_id)
        check_version(project, expected_version)
        if project.state not in (ProjectState.AWAITING_CONFIRMATION, *STARTED):
            hint = "propose one with propose_plan" if project.state == ProjectState.PLANNING else "start a new project for more work"
            raise InvalidInputError(f"{project_id} has no plan to revise (it is {project.state})", hint=hint)
        running = project.state in STARTED
        tasks = state.tasks(project_id=project_id)
        by_id = {t.id: t for t in tasks}
        removed = list(dict.fromkeys(remove))
        moves = {task_id: who for task_id, who in (reassign or {}).items() if by_id.get(task_id) is None
                 or by_id[task_id].assignee != who}
        rewired = {task_id: list(dict.fromkeys(deps)) for task_id, deps in (depends_on or {}).items()}
        if not (add or removed or moves or rewired):
            raise InvalidInputError("nothing to change", hint="give tasks to add, remove, reassign or re-wire")
        self._check_pending(by_id, [*removed, *moves, *rewired])
        revisions = [task_id for task_id in removed if by_id[task_id].revision_of]
        if revisions:
            task_id = revisions[0]
            raise InvalidInputError(f"{task_id} is the revision {by_id[task_id].revision_of} waits for: it cannot be "
                                    "removed from the plan", hint="reassign it, or block or cancel the original")
        both = sorted(set(removed) & (set(moves) | set(rewired)))
        if both:
            raise InvalidInputError(f"{', '.join(both)}: removed and changed at once", hint="do one or the other")
        workers = {w.name for w in state.workers()}
        for task_id, who in moves.items():
            if who not in workers:
                raise InvalidInputError(f"{task_id}: unknown worker {who!r} (workers: {', '.join(sorted(workers))})",
                                        hint="create the worker first with create_worker, or pick an existing one")
        # The tasks added: validated as a plan of their own, with ids after every existing one.
        keep = [t for t in tasks if t.id not in removed and t.state is not TaskState.CANCELLED]
        gone = set(removed) if not running else set()  # deleted (not cancelled) before confirmation: ids free
        existing = [t.id for t in state.tasks() if t.id not in gone]
        planned = parse_plan([t.model_dump() if isinstance(t, PlannedTask) else t for t in add])
        added = validate_plan(planned, workers=workers, next_id=max(map(_number, existing), default=0) + 1,
                              existing=existing) if planned else []
        if not keep and not added:
            raise InvalidInputError(f"{project_id} would have no tasks left",
                                    hint="keep at least one task, or cancel the project's tasks with cancel_task")
        allowed = {t.id for t in keep} | {t.id for t in added}
        changed = set(rewired) | {t.id for t in added}  # whose dependencies are new
        graph = {t.id: rewired.get(t.id, t.depends_on) for t in keep} | {t.id: t.depends_on for t in added}
        for task_id, deps in graph.items():
            for dep in deps:
                if dep == task_id:
                    raise InvalidInputError(f"{task_id} depends on itself", hint="remove that dependency")
                if dep in removed:
                    raise InvalidInputError(f"{task_id} depends on {dep}, which would be removed",
                                            hint=f"remove {task_id} too, or re-wire it with depends_on")
                if dep not in allowed and task_id in changed:
                    raise InvalidInputError(f"{task_id} depends on {dep}, which is not a live task of {project_id}",
                                            hint="use ids of this plan's tasks")
        cycle = find_cycle({task_id: [d for d in deps if d in graph] for task_id, deps in graph.items()})
        if cycle:
            raise InvalidInputError(f"the revised plan has a dependency cycle: {' -> '.join(cycle)}",
                                    hint="drop one of those dependencies")
        revision = Revision(project, removed=removed, reassigned={t: (by_id[t].assignee, w) for t, w in moves.items()},
                            rewired=rewired)
        with state.transaction():
            if running:
                for task_id in removed:
                    state.update_task(task_id, state=TaskState.CANCELLED)
            elif removed:
                state.delete_tasks(removed)
            for task_id, who in moves.items():
                state.update_task(task_id, assignee=who)
            for task_id, deps in rewired.items():
                state.set_dependencies(task_id, deps)
            revision.added = state.add_tasks(project_id, added) if added else []
            revision.project = project = state.update_project(project_id, version=max(project.version, 1) + 1)
            state.log_event("plan.revised", project_id, version=project.version, running=running,
                            added=[t.id for t in revision.added], removed=removed,
                            reassigned={t: list(pair) for t, pair in revision.reassigned.items()}, rewired=rewired)
            self._record_version(project, "revised", revision.summary(), by)
            if running:
                state.enqueue_message(plan_key(project_id, project.version), room_of_project(project_id),
                                      f"Plan of **{project.title}** changed (version {project.version}): "
                                      f"{revision.summary()}. Plan: `{layout.project_plan(project_id)}`")
            else:  # a new version to confirm: a new proposal (its own confirmation reminder, too)
                state.discard_message(plan_key(project_id, project.version - 1))
                state.log_event("plan.proposed", project_id, tasks=[t.id for t in state.tasks(project_id=project_id)],
                                version=project.version, revised=True)
                self._announce_plan(project, f"changed from version {project.version - 1}: {revision.summary()}")
        await self.render(project_id)
        await self.chat.flush()
        for worker in sorted({by_id[t].assignee for t in [*removed, *moves]} | set(moves.values())):
            await self._sync_assignments(worker)
        if running:
            await self.dispatch_ready(project_id)
            await self._maybe_finish(project_id)
        return revision

    @staticmethod
    def _check_pending(by_id: dict[str, Task], task_ids: Sequence[str]) -> None:
        """Only pending tasks of this plan change; done or started work stays as it is."""
        for task_id in task_ids:
            task = by_id.get(task_id)
            if task is None:
                raise InvalidInputError(f"{task_id} is not a task of this project", hint="see list_tasks")
            if task.state is not TaskState.PENDING:
                hint = {TaskState.DONE: "done work stays as it is", TaskState.CANCELLED: "it is cancelled already",
                        TaskState.REVIEW: "judge it first (accept_task or request_revision)",
                        TaskState.REVISION: "its revision is under way"}.get(task.state, "cancel_task stops it")
                raise InvalidInputError(f"{task_id} is {STATE_WORDS.get(task.state, task.state.value)}: only pending "
                                        "tasks can be removed, reassigned or re-wired", hint=hint)
