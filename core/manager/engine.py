"""Projects and tasks as code: every state change, file, mention and notification happens here.

The Manager *agent* only decides (plan, assignee, accept or revise); its tools call these
methods. Each method is one step of the flow of DESIGN section 6:

propose → (admin confirms | YOLO) → project room → dispatch ready tasks (spec.md + mention) →
worker reports (result.md) → Manager judges → accept (dispatch newly ready) | revision task |
blocked (escalate) → all done → report.

Restart safety: state lives in the DB; a message that announces a state change is recorded in
the same transaction as the change (the transactional outbox, :mod:`hiclaw.control.outbox`) and
posted by ``chat.flush()`` — or, after a crash, at the next boot — so neither is ever lost without
the other. Every message carries an idempotency key derived from what it announces
(``assign:<task>:<n>``), so re-running a step after a crash never posts twice.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import yaml

from hiclaw.agent.prompt import quote
from hiclaw.errors import InvalidInputError
from hiclaw.manager.origin import Origin
from hiclaw.manager.plan import render_plan
from hiclaw.manager.revise import PlanRevisions, room_members
from hiclaw.manager.rework import MAX_REVISION_ROUNDS, Rework, spec_context
from hiclaw.manager.steer import STARTED, Steering, check_version
from hiclaw.models import ProjectState, ResultStatus, TaskRecord, TaskResult, TaskState
from hiclaw.state import ROOM_MANAGER, Project, StateDB, Task, room_of_project, room_of_worker
from hiclaw.storage import layout

log = logging.getLogger(__name__)

#: Tasks in these states occupy their worker (one task at a time per worker).
BUSY = (TaskState.IN_PROGRESS, TaskState.REVIEW)
FINAL = (TaskState.DONE, TaskState.CANCELLED)


class TeamChat(Protocol):
    """What the engine needs from the channel (implemented by the control plane)."""

    manager_room: str

    async def post(self, room_id: str, text: str, *, mentions: Sequence[str] = (), key: str | None = None) -> str: ...

    async def flush(self) -> None:
        """Post the messages recorded with state changes (``StateDB.enqueue_message``), in order."""

    async def project_room(self, project: Project, members: Sequence[str]) -> str: ...

    async def worker_room(self, worker: str) -> str: ...


class WorkerAccess(Protocol):
    """What the engine needs from the provisioner."""

    async def refresh_access(self, worker: str) -> bool | None:
        """Grant the worker its tasks' folders (and restart its sandbox if mounts changed).
        ``False``: the new folders reach its sandbox only once its current task is finished (a
        restart now would cut that turn short) — an assignment is held until then."""


@runtime_checkable
class AssignmentSync(Protocol):
    """Optional on the provisioner: keeps the gateway's view of a worker's tasks current (it
    attributes and budgets the worker's model calls by them, never by the worker's headers)."""

    async def sync_assignments(self, worker: str) -> None:
        """Tell the gateway the worker's current tasks and their projects."""


class WakeManager(Protocol):
    """Queue a Manager turn for a judgement: ``(room_id, text, idempotency key)`` and who caused it."""

    async def __call__(self, room_id: str, text: str, key: str, *, origin: Origin | None = None) -> None: ...


def parse_result(text: str) -> tuple[dict[str, Any], str]:
    """Split result.md into its front matter and body."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            try:
                meta = yaml.safe_load(text[4:end]) or {}
            except yaml.YAMLError:
                meta = {}
            if isinstance(meta, dict):
                return meta, text[end + 4:].lstrip("\n")
    return {}, text


def render_spec(task: Task, project: Project | None, inputs: Sequence[str], *, attempt: int = 1,
                context: str = "") -> str:
    meta = {"task": task.id, "title": task.title, "assignee": task.assignee, "project": task.project_id,
            "model": task.model, "depends_on": task.depends_on, "revision_of": task.revision_of, "attempt": attempt}
    lines = ["---", yaml.safe_dump({k: v for k, v in meta.items() if v}, sort_keys=False).strip(), "---", "",
             f"# {task.id}: {task.title}", ""]
    if project is not None:
        lines += [f"Project: **{project.title}** ({project.id}) — plan: `{layout.project_plan(project.id)}`", ""]
    if context:  # what a revision revises, what a re-check checks (hiclaw.manager.rework)
        lines += [context, ""]
    lines += [task.spec.strip() or "(no further details)", ""]
    if inputs:
        lines += ["## Inputs", *[f"- `{path}`" for path in inputs], ""]
    lines += ["## When you are done",
              f"Write your deliverable into `{layout.task_workspace(task.id)}` (or reference files there), then call "
              f"`report_result` with task_id `{task.id}`, a status (SUCCESS, SUCCESS_WITH_NOTES, REVISION_NEEDED, "
              "BLOCKED), a one-line summary and the result in Markdown.", ""]
    return "\n".join(lines)


class TaskEngine(PlanRevisions, Rework, Steering):
    """Plans (proposed, replaced, revised: :mod:`hiclaw.manager.revise`), dispatch, results and
    judgements (revision tasks: :mod:`hiclaw.manager.rework`), steering (pause, resume, cancel,
    complete: :mod:`hiclaw.manager.steer`)."""

    def __init__(self, *, state: StateDB, storage: Any, chat: TeamChat, access: WorkerAccess,
                 wake_manager: WakeManager, yolo: bool = False, admin: str = "admin",
                 after_task: Callable[[TaskRecord, TaskResult], Awaitable[None]] | None = None,
                 max_revision_rounds: int = MAX_REVISION_ROUNDS) -> None:
        self.state = state
        self.storage = storage
        self.chat = chat
        self.access = access
        self.wake_manager = wake_manager
        self.yolo = yolo
        self.admin = admin
        self.after_task = after_task
        self.max_revision_rounds = max_revision_rounds
        self._dispatching: dict[str, asyncio.Lock] = {}  # project id -> one dispatch_ready at a time

    # ------------------------------------------------------------------ plan files

    async def render(self, project_id: str) -> str:
        project = self.state.project(project_id)
        text = render_plan(project, self.state.tasks(project_id=project_id))
        await self.storage.put(layout.project_plan(project_id), text.encode())
        return text

    # ------------------------------------------------------------------ projects

    async def create_project(self, title: str, goal: str = "") -> Project:
        if not title.strip():
            raise InvalidInputError("a project needs a title", hint="give it a short title")
        project = self.state.create_project(title.strip(), goal.strip())
        meta = project.model_dump_json(indent=2).encode()
        await self.storage.put(layout.project_meta(project.id), meta)
        await self.render(project.id)
        self.state.log_event("project.created", project.id, title=project.title)
        return project

    async def confirm_plan(self, project_id: str, version: int | None = None, *, by: str = "manager",
                           where: str = "") -> Project:
        """Start the project on its proposed plan. Confirmed by someone else than the Manager (the
        admin's `hiclaw project confirm` or console button; ``where`` says which), the Manager's
        room is told in the same transaction, so nobody there waits for a confirmation given."""
        project = self.state.project(project_id)
        check_version(project, version, hint=f"show the admin version {project.version} and confirm that one")
        if project.state in STARTED:
            return project
        if project.state != ProjectState.AWAITING_CONFIRMATION:
            raise InvalidInputError(f"{project_id} has no plan waiting for confirmation (it is {project.state})",
                                    hint="propose a plan first with propose_plan")
        assignees = sorted({t.assignee for t in self.state.tasks(project_id=project_id)})
        room_id = await self.chat.project_room(project, assignees)
        with self.state.transaction():
            project = self.state.update_project(project_id, state=ProjectState.RUNNING, room_id=room_id)
            self.state.log_event("plan.confirmed", project_id, version=project.version, by=by)
            if by != "manager":
                self.state.enqueue_message(f"plan-confirmed:{project_id}", ROOM_MANAGER,
                                           f"The {by} confirmed {project.id}'s plan (version {project.version}) "
                                           f"outside chat{f' ({where})' if where else ''}; it has started.")
            self.state.enqueue_message(f"project-start:{project_id}", room_of_project(project_id),
                                       f"Project **{project.title}** started. Plan: `{layout.project_plan(project_id)}`")
        await asyncio.gather(*(self.access.refresh_access(worker) for worker in assignees))
        await self.chat.flush()
        await self.dispatch_ready(project_id)
        return project

    # ------------------------------------------------------------------ dispatch

    def ready_tasks(self, project_id: str) -> list[Task]:
        tasks = self.state.tasks(project_id=project_id)
        by_id = {t.id: t for t in tasks}
        busy = {t.assignee for t in tasks if t.state in BUSY}
        ready = []
        for task in tasks:
            if task.state is not TaskState.PENDING or task.assignee in busy:
                continue
            if all(by_id.get(dep) is None or by_id[dep].state is TaskState.DONE for dep in task.depends_on):
                ready.append(task)
                busy.add(task.assignee)
        return ready

    async def dispatch_ready(self, project_id: str) -> list[str]:
        """Dispatch every task of the project whose dependencies are done. One call at a time per
        project: two at once (say, reconciliation at boot and an acceptance) would both see a task
        ready, and the slower one would set it back to in progress after its worker reported."""
        async with self._dispatching.setdefault(project_id, asyncio.Lock()):
            project = self.state.project(project_id)
            if project.state != ProjectState.RUNNING:
                return []
            dispatched = []
            for task in self.ready_tasks(project_id):
                await self.dispatch(task, project)
                dispatched.append(task.id)
            if dispatched:
                await self.render(project_id)
            return dispatched

    async def assign_adhoc(self, assignee: str, title: str, spec: str = "", model: str | None = None) -> Task:
        """A single task outside any project, posted in the worker's own room."""
        self.state.worker(assignee)
        if not title.strip():
            raise InvalidInputError("a task needs a title")
        (task,) = self.state.add_tasks(None, [Task(id=self.state.next_task_id(), title=title.strip(),
                                                   assignee=assignee, spec=spec, model=model)])
        await self.dispatch(task, None)
        return self.state.task(task.id)

    async def dispatch(self, task: Task, project: Project | None) -> None:
        attempt = task.dispatch_count + 1
        spec = render_spec(task, project, self.task_inputs(task), attempt=attempt,
                           context=spec_context(self.state, task))
        await self.storage.put(layout.task_spec(task.id), spec.encode())
        if await self.access.refresh_access(task.assignee) is False:
            # Its sandbox cannot see the task's folder before a restart, and a restart now would cut
            # its current task short: the assignment waits, pending, until that task is finished
            # (release_held), so the worker is never handed a task it cannot open.
            if not [e for e in self.state.events(kind="task.held", subject=task.id) if e["data"].get("attempt") == attempt]:
                busy = [t.id for t in self.state.tasks(assignee=task.assignee, states=list(BUSY))]
                self.state.log_event("task.held", task.id, assignee=task.assignee, attempt=attempt, until=busy)
            return
        lines = [f"@{task.assignee} **{task.id}** is yours: {task.title}" + (" (re-check)" if attempt > 1 else ""),
                 f"Spec: `{layout.task_spec(task.id)}`"]
        inputs = self.task_inputs(task)
        if inputs:
            lines.append("Inputs: " + ", ".join(f"`{p}`" for p in inputs))
        lines.append(f"Report with `report_result` when done (writes `{layout.task_result(task.id)}`).")
        room = room_of_project(project.id) if project and project.room_id else room_of_worker(task.assignee)
        if project is not None and project.room_id:  # the room follows its assignees: in it before the mention
            await self.chat.project_room(project, room_members(self.state, project.id))
        with self.state.transaction():
            self.state.update_task(task.id, state=TaskState.IN_PROGRESS, dispatch_count=attempt,
                                   result_status=None, result_summary=None)
            self.state.enqueue_message(f"assign:{task.id}:{attempt}", room, "\n".join(lines), [task.assignee])
            self.state.log_event("task.dispatched", task.id, assignee=task.assignee, attempt=attempt)
        await self._sync_assignments(task.assignee)  # before the mention wakes the worker
        await self.chat.flush()

    async def release_held(self, worker: str) -> list[str]:
        """Dispatch what was held for ``worker`` (pending and ready) once it has no task in hand."""
        if self.state.tasks(assignee=worker, states=list(BUSY)):
            return []
        pending = self.state.tasks(assignee=worker, states=[TaskState.PENDING])
        done = []
        for project_id in sorted({t.project_id for t in pending if t.project_id}):
            done += await self.dispatch_ready(project_id)
        if any(t.project_id is None for t in pending):
            done += await self.dispatch_adhoc(worker)
        return done

    async def _sync_assignments(self, worker: str) -> None:
        if isinstance(self.access, AssignmentSync):
            await self.access.sync_assignments(worker)

    # ------------------------------------------------------------------ results

    async def read_result(self, task_id: str) -> tuple[dict[str, Any], str] | None:
        try:
            raw = await self.storage.get(layout.task_result(task_id))
        except Exception:  # noqa: BLE001 - absent or unreadable result: nothing reported yet
            return None
        return parse_result(raw.decode("utf-8", errors="replace"))

    async def collect_result(self, task_id: str) -> bool:
        """Pick up a reported result for an in-progress task; wake the Manager to judge it.

        Called when a worker's report message arrives and, at boot, for every in-progress task
        (a result written while the control plane was down is picked up then)."""
        task = self.state.task(task_id)
        if task.state is not TaskState.IN_PROGRESS:
            return False
        found = await self.read_result(task_id)
        if found is None:
            return False
        meta, body = found
        if int(meta.get("attempt", task.dispatch_count) or 0) < task.dispatch_count:
            return False  # an older attempt's result; the current one has not reported yet
        try:
            status = ResultStatus(str(meta.get("status", "")).upper())
        except ValueError:
            status = ResultStatus.SUCCESS_WITH_NOTES
        summary = str(meta.get("summary") or (body.strip().splitlines()[0] if body.strip() else ""))[:300]
        if status is ResultStatus.BLOCKED:
            with self.state.transaction():
                self.state.update_task(task_id, state=TaskState.BLOCKED, result_status=status, result_summary=summary)
                self.state.enqueue_message(f"blocked:{task_id}:{task.dispatch_count}", ROOM_MANAGER,
                                           f"@{self.admin} **{task_id}** ({task.title}) is blocked — {task.assignee} "
                                           f"says: {summary}\nResult: `{layout.task_result(task_id)}`", [self.admin])
                self.state.log_event("task.blocked", task_id, summary=summary)
            await self._rerender(task)
            await self.chat.flush()
            await self._after(task_id, status, summary)
            return True
        self.state.update_task(task_id, state=TaskState.REVIEW, result_status=status, result_summary=summary)
        await self._rerender(task)
        self.state.log_event("task.reported", task_id, status=status.value)
        await self.wake_for_review(self.state.task(task_id))
        return True

    async def wake_for_review(self, task: Task, *, again: bool = False) -> None:
        """Queue the Manager's judgement of a reported task (once per dispatch; ``again``: once
        more, when the heartbeat finds it still unjudged — hiclaw.control.ownership)."""
        project = self.state.project(task.project_id) if task.project_id else None
        room = project.room_id if project and project.room_id else await self.chat.worker_room(task.assignee)
        status = task.result_status.value if task.result_status else "?"
        reminder = ("You were asked to judge this report before and it is still waiting: judge it now. "
                    if again else "")
        # The summary is the worker's text: quoted as one JSON string, it cannot pass for anything else.
        await self.wake_manager(room, (
            f"{reminder}{task.assignee} reported **{task.id}** ({task.title}): {status} — its summary, quoted: "
            f"{quote(task.result_summary or '')}\n"
            f"Result: `{layout.task_result(task.id)}`. Judge it: call `accept_task` if it is good enough, or "
            f"`request_revision` with concrete feedback (and the worker who should revise)."
        ), f"review:{task.id}:{task.dispatch_count}" + (":again" if again else ""),
            origin=Origin.worker(task.assignee, f"its report of {task.id}"))

    async def _rerender(self, task: Task) -> None:
        if task.project_id:
            await self.render(task.project_id)

    async def _after(self, task_id: str, status: ResultStatus, summary: str) -> None:
        if self.after_task is None:
            return
        task = self.state.task(task_id)
        record = TaskRecord(id=task.id, project_id=task.project_id, title=task.title, assignee=task.assignee,
                            depends_on=tuple(task.depends_on), model=task.model, state=task.state,
                            revision_of=task.revision_of)
        await self.after_task(record, TaskResult(task_id=task_id, status=status, summary=summary))

    # ------------------------------------------------------------------ judgement outcomes

    def _judgeable(self, task_id: str) -> Task:
        task = self.state.task(task_id)
        if task.state is TaskState.DONE:
            raise InvalidInputError(f"{task_id} is already done")
        if task.state is TaskState.CANCELLED:  # e.g. its project was cancelled while its report waited
            raise InvalidInputError(f"{task_id} is cancelled", hint="there is nothing to judge")
        if task.state is not TaskState.REVIEW:
            raise InvalidInputError(f"{task_id} has no result to judge yet (it is {task.state.value})",
                                    hint="wait for the worker's report")
        return task

    async def accept_task(self, task_id: str, note: str = "") -> Task:
        task = self._judgeable(task_id)
        with self.state.transaction():
            task = self.state.update_task(task_id, state=TaskState.DONE)
            self.state.log_event("task.accepted", task_id, note=note)
            # A finished revision sends its original back for a re-check.
            for original in [t for t in self.state.tasks() if t.id == task.revision_of and t.state is TaskState.REVISION]:
                if not [t for t in self.state.tasks() if t.revision_of == original.id and t.state not in FINAL]:
                    self.state.update_task(original.id, state=TaskState.PENDING)
        await self._sync_assignments(task.assignee)
        await self._after(task_id, task.result_status or ResultStatus.SUCCESS, task.result_summary or "")
        if task.project_id:
            await self.render(task.project_id)
            await self.dispatch_ready(task.project_id)
            await self._maybe_finish(task.project_id)
        await self.recheck_adhoc(task)
        await self.release_held(task.assignee)
        return self.state.task(task_id)

    async def block_task(self, task_id: str, reason: str) -> Task:
        task = self.state.task(task_id)
        if task.state in FINAL:
            raise InvalidInputError(f"{task_id} is already {task.state.value}")
        with self.state.transaction():
            self.state.update_task(task_id, state=TaskState.BLOCKED, result_summary=reason[:300])
            self.state.enqueue_message(f"blocked-by-manager:{task_id}:{task.dispatch_count}", ROOM_MANAGER,
                                       f"@{self.admin} **{task_id}** ({task.title}) is blocked: {reason}", [self.admin])
            self.state.log_event("task.blocked", task_id, reason=reason)
        await self._rerender(task)
        await self.chat.flush()
        await self._after(task_id, ResultStatus.BLOCKED, reason)
        await self.release_held(task.assignee)
        return self.state.task(task_id)

    async def cancel_task(self, task_id: str) -> Task:
        task = self.state.task(task_id)
        if task.state in FINAL:
            raise InvalidInputError(f"{task_id} is already {task.state.value}")
        with self.state.transaction():
            self.state.update_task(task_id, state=TaskState.CANCELLED)
            if task.state is TaskState.IN_PROGRESS:
                self._tell_to_stop(task, "it was cancelled")
            self.state.log_event("task.cancelled", task_id)
        await self._sync_assignments(task.assignee)
        await self._rerender(task)
        await self.chat.flush()
        if task.project_id:
            await self.dispatch_ready(task.project_id)
            await self._maybe_finish(task.project_id)
        await self.release_held(task.assignee)
        return self.state.task(task_id)

    async def _maybe_finish(self, project_id: str) -> None:
        """Done once every task is: only a running project (a paused one finishes when resumed)."""
        tasks = self.state.tasks(project_id=project_id)
        project = self.state.project(project_id)
        if project.state != ProjectState.RUNNING or not tasks or any(t.state not in FINAL for t in tasks):
            return
        with self.state.transaction():
            self.state.update_project(project_id, state=ProjectState.DONE)
            self.state.log_event("project.done", project_id)
        await self.render(project_id)
        await self.wake_for_report(project_id)

    async def wake_for_report(self, project_id: str) -> None:
        project = self.state.project(project_id)
        tasks = self.state.tasks(project_id=project_id)
        rows = "\n".join(f"- [x] {t.id} {t.title} — @{t.assignee}: {t.result_status.value if t.result_status else '-'}"
                         for t in tasks if t.state is TaskState.DONE)
        early = self.state.events(kind="project.completed", subject=project_id)
        if early:  # completed by the admin before every task was done (hiclaw.manager.steer)
            cancelled = [t for t in tasks if t.id in early[-1]["data"].get("cancelled", [])]
            head = (f"Project **{project.title}** ({project_id}) was completed early by {early[-1]['data'].get('by')}: "
                    f"{sum(t.state is TaskState.DONE for t in tasks)} of {len(tasks)} tasks done, the rest cancelled.")
            rows += "".join(f"\n- [-] {t.id} {t.title} — @{t.assignee}: cancelled" for t in cancelled)
        else:
            head = f"Project **{project.title}** ({project_id}) is complete: every task is accepted."
        await self.wake_manager(self.chat.manager_room, (
            f"{head}\n{rows}\n"
            f"Plan: `{layout.project_plan(project_id)}`. Write the final report to {self.admin} now."
        ), f"project-done:{project_id}", origin=Origin.code("task engine", f"{project_id} is complete"))

    # ------------------------------------------------------------------ after a restart

    async def reconcile(self) -> None:
        """Finish every step a crash may have interrupted. Each step is keyed, so whatever had
        already happened is not done again: a queued review is not queued twice, a ready task is
        dispatched once. (Messages recorded with a state change — assignments, escalations, plans
        — need nothing here: the outbox delivered them before this runs.)"""
        for task in self.state.tasks(states=[TaskState.REVIEW]):
            await self.wake_for_review(task)
        for project in self.state.projects():
            if project.state in (ProjectState.AWAITING_CONFIRMATION, ProjectState.PAUSED):
                await self.render(project.id)  # a paused project's ready tasks wait for its resumption
            elif project.state == ProjectState.RUNNING:
                await self.render(project.id)
                await self.dispatch_ready(project.id)
                await self._maybe_finish(project.id)
            elif project.state == ProjectState.DONE:
                await self.wake_for_report(project.id)
        await self.dispatch_adhoc()
