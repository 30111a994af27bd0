"""Revision tasks: what the Manager asks to have fixed, for whom, from which inputs, how often.

:meth:`Rework.request_revision` (mixed into :class:`hiclaw.manager.engine.TaskEngine`) turns a
judgement into a linked task, all in code:

* its **title** is the Manager's (default: ``Fix: <the first sentence of the feedback>``) and its
  **spec** is the Manager's feedback, verbatim;
* its **inputs** are the rejected result first, then what the original worked from (its
  dependencies' results, or on a later round the previous fix) — recorded as the revision's
  ``depends_on``, so storage grants, plan.md and the spec's front matter all say the same;
* when it is accepted the original goes back to its worker for a **re-check**, whose inputs are
  the fix (the revision's result), not the input that was judged wanting;
* rounds are **capped** per task (``[team] max_revision_rounds``, counting every revision in the
  family of a planned task, revisions of revisions too): asking for one more blocks the task and
  tells the admin why, in one line, through the outbox.
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from hiclaw.errors import InvalidInputError
from hiclaw.models import ResultStatus, TaskState, WorkerState
from hiclaw.state import ROOM_MANAGER, StateDB, Task
from hiclaw.storage import layout

if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

#: Default of ``[team] max_revision_rounds``.
MAX_REVISION_ROUNDS = 3
TITLE_MAX = 80


def fixes_of(state: StateDB, task: Task) -> list[Task]:
    """The accepted revisions of ``task``, oldest first."""
    return [t for t in state.tasks(project_id=task.project_id)
            if t.revision_of == task.id and t.state is TaskState.DONE]


def input_ids(state: StateDB, task: Task) -> list[str]:
    """The tasks whose results are ``task``'s inputs now. A re-check (accepted fixes exist): the
    latest fix. A revision: the rejected task, then what its original worked from. Else: its
    dependencies."""
    fixes = fixes_of(state, task)
    if fixes:
        return [fixes[-1].id]
    if task.revision_of:
        return [task.revision_of, *task.depends_on]
    return list(task.depends_on)


def inputs_of(state: StateDB, task: Task) -> list[str]:
    """Paths of ``task``'s inputs (see :func:`input_ids`)."""
    return [layout.task_result(task_id) for task_id in input_ids(state, task)]


def spec_context(state: StateDB, task: Task) -> str:
    """What a spec says before the task's own text: what a revision revises, what a re-check checks."""
    if task.revision_of and not fixes_of(state, task):
        original = state.task(task.revision_of)
        return (f"This revises **{original.id}** ({original.title}): its result "
                f"`{layout.task_result(original.id)}` was not accepted. Change what the feedback below asks for; "
                "the other inputs are what it was made from.")
    fixes = fixes_of(state, task)
    if fixes:
        fix = fixes[-1]
        return (f"Re-check after the revision **{fix.id}** ({fix.title}): judge the fix, "
                f"`{layout.task_result(fix.id)}`, against this spec.")
    return ""


def revision_title(original: Task, feedback: str) -> str:
    """``Fix: <first sentence of the feedback>``, shortened at a word; ``Fix: <original title>``
    when the feedback has no usable first sentence."""
    first = next((line.strip() for line in feedback.splitlines() if line.strip()), "")
    first = re.sub(r"^(?:[-*•]|\d+[.)])\s*", "", first)  # a list marker
    first = re.split(r"(?<=[.!?;:])\s", first, maxsplit=1)[0].rstrip(".!?;: ")
    if not first:
        return f"Fix: {original.title}"[:TITLE_MAX]
    what = first[0].lower() + first[1:] if first[1:2].islower() else first  # "Add x" -> "add x"; "API x" stays
    if len(what) > TITLE_MAX - 5:
        what = what[:TITLE_MAX - 6].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return f"Fix: {what}"


def root_of(by_id: dict[str, Task], task: Task) -> str:
    seen = set()
    while task.revision_of and task.revision_of in by_id and task.id not in seen:
        seen.add(task.id)
        task = by_id[task.revision_of]
    return task.id


def revision_rounds(state: StateDB, task: Task) -> int:
    """How many revisions the family of ``task`` (its planned task and every revision under it) has had."""
    tasks = state.tasks(project_id=task.project_id)
    by_id = {t.id: t for t in tasks}
    root = root_of(by_id, task)
    return sum(1 for t in tasks if t.revision_of and root_of(by_id, t) == root)


class Rework:
    """Mixin of :class:`hiclaw.manager.engine.TaskEngine`: revision tasks."""

    if TYPE_CHECKING:
        state: StateDB
        access: Any
        admin: str
        max_revision_rounds: int
        chat: Any

        def _judgeable(self, task_id: str) -> Task: ...
        async def render(self, project_id: str) -> str: ...
        async def dispatch_ready(self, project_id: str) -> list[str]: ...
        async def dispatch(self, task: Task, project: Any) -> None: ...
        async def _rerender(self, task: Task) -> None: ...
        async def _after(self, task_id: str, status: ResultStatus, summary: str) -> None: ...
        async def release_held(self, worker: str) -> list[str]: ...

    def task_inputs(self, task: Task) -> list[str]:
        return inputs_of(self.state, task)

    async def request_revision(self, task_id: str, feedback: str, assignee: str | None = None,
                               title: str | None = None) -> Task:
        """A revision task for a reported task (``feedback`` becomes its spec), or — past the cap
        of rounds — the task blocked with the admin told. Returns the revision, or the blocked task."""
        original = self._judgeable(task_id)
        feedback = feedback.strip()
        if not feedback:
            raise InvalidInputError("a revision needs feedback", hint="say concretely what must change")
        who = assignee or original.assignee
        worker = self.state.worker(who)
        if worker.state == WorkerState.REMOVED:
            raise InvalidInputError(f"worker {who} was removed", hint="give the revision to an active worker")
        rounds = revision_rounds(self.state, original)
        if rounds >= self.max_revision_rounds:
            return await self._revisions_exhausted(original, rounds)
        title = " ".join((title or "").split())[:200] or revision_title(original, feedback)
        revision = Task(id=self.state.next_task_id(), title=title, assignee=who, spec=feedback,
                        revision_of=original.id, model=original.model,
                        depends_on=[i for i in input_ids(self.state, original)  # what the original worked from
                                    if i != original.id and self.state.task(i).state is TaskState.DONE])
        with self.state.transaction():
            self.state.add_tasks(original.project_id, [revision])
            self.state.update_task(original.id, state=TaskState.REVISION)
            self.state.log_event("task.revision", original.id, revision=revision.id, assignee=who, title=title,
                                 round=rounds + 1)
        if original.project_id:
            await self.render(original.project_id)
            await self.access.refresh_access(who)
            await self.dispatch_ready(original.project_id)
        else:  # an ad-hoc task's revision goes straight to its worker's room, as the task did
            await self.dispatch(self.state.task(revision.id), None)
        if original.assignee != who:
            await self.release_held(original.assignee)
        return self.state.task(revision.id)

    async def _revisions_exhausted(self, task: Task, rounds: int) -> Task:
        cap = self.max_revision_rounds
        reason = (f"no revision round left ({rounds} of [team] max_revision_rounds = {cap} used); "
                  "it needs your decision")
        with self.state.transaction():
            self.state.update_task(task.id, state=TaskState.BLOCKED, result_summary=reason)
            self.state.enqueue_message(
                f"revision-cap:{task.id}:{task.dispatch_count}", ROOM_MANAGER,
                f"@{self.admin} **{task.id}** ({task.title}) is blocked: it still needs changes after {rounds} "
                f"revision round{'s' if rounds != 1 else ''}, the most `[team] max_revision_rounds` allows. Result: "
                f"`{layout.task_result(task.id)}` — tell me how to go on (cancel it, or change the plan around it).",
                [self.admin])
            self.state.log_event("task.blocked", task.id, reason=reason, rounds=rounds)
        await self._rerender(task)
        await self.chat.flush()
        await self._after(task.id, ResultStatus.BLOCKED, reason)
        return self.state.task(task.id)

    async def recheck_adhoc(self, accepted: Task) -> None:
        """An accepted revision of a task outside any project: its original is re-checked in its
        worker's room (a project's tasks are dispatched by ``dispatch_ready``)."""
        if accepted.project_id or not accepted.revision_of:
            return
        original = self.state.task(accepted.revision_of)
        if original.state is TaskState.PENDING:
            await self.dispatch(original, None)

    async def dispatch_adhoc(self, worker: str | None = None) -> list[str]:
        """Dispatch every pending task outside any project (after a crash between recording one —
        a revision, a re-check, an ad-hoc task — and posting it, or held until its worker was free),
        of ``worker`` or of all; a project's are ``dispatch_ready``'s."""
        done = []
        for task in [t for t in self.state.tasks(states=[TaskState.PENDING], assignee=worker) if t.project_id is None]:
            assignee = self.state.find_worker(task.assignee)
            if assignee is None or assignee.state == WorkerState.REMOVED:
                continue
            try:
                await self.dispatch(task, None)
            except Exception:  # one task's trouble (its worker will not start) must not stop the boot
                log.exception("could not dispatch %s to %s", task.id, task.assignee)
                continue
            if self.state.task(task.id).state is not TaskState.PENDING:
                done.append(task.id)
        return done
