"""Every state a task or plan can wait in has an owner in code: the heartbeat's checks beyond
in-progress work (those are :mod:`hiclaw.control.watchdog`'s).

Run on every heartbeat check (cheap: a few indexed reads per waiting task, the event log read
once per episode):

- **review** — reported, waiting for the Manager's judgement. While a judgement turn for it is
  queued or being retried (:mod:`hiclaw.control.turns`) that turn owns it. Still unjudged one
  interval after the report: the judgement is queued **again**, once (key
  ``review:<task>:<n>:again``); one more interval with no judgement: the admin is alerted in the
  Manager room (key ``review-stuck:<task>:<n>``) and plan.md notes it. If the turn itself failed
  for good, the admin was told by that (one alert, not two). A judgement turn still running or
  retrying two intervals after the report gets the same one alert (a slow or failing model).
- **planning** — a project created and no plan proposed (the model said it would, or that it
  did, and did not call ``propose_plan``): one interval after its creation the admin is told, once
  (key ``plan-missing:<project>``), so a request is never silently left half done — half an
  interval later if a Manager turn is going on (it may be planning it).
- **awaiting confirmation** — a proposed plan waiting for the admin: one reminder after an
  interval (key ``plan-reminder:<project>:<n>``, ``n`` the proposal), never more.
- **blocked** — the admin was told when it happened; a reminder at most once a day while it
  stays blocked (key ``blocked-reminder:<task>:<n>:<day>``).
- **paused** — a project the admin paused (:mod:`hiclaw.manager.steer`): nothing of it starts
  until they resume it, so a reminder at most once a day while it stays paused, naming what waits
  (key ``paused-reminder:<project>:<n>:<day>``, ``n`` the pause).

Every key is numbered per episode (from the event log), so a restarted control plane neither
repeats a message nor loses one.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from hiclaw.manager.plan import stuck_value
from hiclaw.models import ProjectState, TaskState
from hiclaw.state import ROOM_MANAGER, StateDB, Task
from hiclaw.storage import layout

log = logging.getLogger(__name__)

DAY = 86400.0


def span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY:.0f} days"


class Ownership:
    """Runs in the heartbeat watchdog: ``interval`` is its heartbeat, ``started_at()`` when it
    started (nothing is owed before a full interval of watching)."""

    def __init__(self, *, state: StateDB, chat: Any, engine: Any, admin: str, interval: float,
                 started_at: Callable[[], float], remind_blocked_every: float = DAY) -> None:
        self.state, self.chat, self.engine, self.admin = state, chat, engine, admin
        self.interval = interval
        self.started_at = started_at
        self.remind_blocked_every = remind_blocked_every
        self._episodes: dict[tuple[str, str, str], tuple[float, int]] = {}  # (kind, subject, version) -> (when, n)

    async def check(self, now: float, report: Any) -> None:
        seen: set[tuple[str, str, str]] = set()
        await self._reviews(now, report, seen)
        await self._plans(now, report, seen)
        await self._blocked(now, report, seen)
        await self._paused(now, report, seen)
        for stale in set(self._episodes) - seen:
            del self._episodes[stale]

    def _episode(self, kind: str, subject: str, version: str, seen: set[tuple[str, str, str]]) -> tuple[float, int]:
        """(when the latest ``kind`` event of ``subject`` happened, how many there were), read once per
        ``version`` (the record's ``updated_at``: it changes with each new episode)."""
        key = (kind, subject, version)
        seen.add(key)
        if key not in self._episodes:
            events = self.state.events(kind=kind, subject=subject)
            when = datetime.fromisoformat(events[-1]["ts"]).timestamp() if events else float("-inf")
            self._episodes[key] = (when, len(events))
        return self._episodes[key]

    def _happened(self, kind: str, task: Task) -> bool:
        return any(e["data"].get("dispatch") == task.dispatch_count
                   for e in self.state.events(kind=kind, subject=task.id))

    # ------------------------------------------------------------------ review

    async def _reviews(self, now: float, report: Any, seen: set[tuple[str, str, str]]) -> None:
        state = self.state
        for task in state.tasks(states=[TaskState.REVIEW]):
            first, again = f"wake:review:{task.id}:{task.dispatch_count}", f"wake:review:{task.id}:{task.dispatch_count}:again"
            reported, _ = self._episode("task.reported", task.id, task.updated_at, seen)
            waited = now - max(reported, self.started_at())
            if "pending" in (state.inbox_status(first), state.inbox_status(again)):
                # A judgement turn owns it (queued, running or being retried) — unless it has taken
                # two intervals: then the admin hears of it, once, while the turn goes on.
                if waited >= 2 * self.interval and not self._happened("task.review_stuck", task):
                    await self._review_stuck(task, waited, still_trying=True)
                    report.review_alerted.append(task.id)
                continue
            if waited < self.interval or self._happened("manager.turn_failed", task):
                continue  # not late yet; or its turn failed for good and the admin was told
            if state.inbox_status(again) is None:
                await self.engine.wake_for_review(task, again=True)
                state.log_event("task.review_requeued", task.id, dispatch=task.dispatch_count,
                                waited_seconds=round(waited, 1))
                report.requeued.append(task.id)
                continue
            requeued, _ = self._episode("task.review_requeued", task.id, task.updated_at, seen)
            if now - requeued >= self.interval and not self._happened("task.review_stuck", task):
                await self._review_stuck(task, now - reported)
                report.review_alerted.append(task.id)

    async def _review_stuck(self, task: Task, waited: float, *, still_trying: bool = False) -> None:
        state, admin = self.state, self.admin
        status = task.result_status.value if task.result_status else "?"
        if still_trying:
            note = f"reported {span(waited)} ago; the Manager's judgement turn has not finished (its model is slow or failing)"
            why = "my judgement turn has not finished — my model is slow or failing, and I keep trying"
        else:
            note = f"reported {span(waited)} ago; the Manager was asked twice and has not judged it"
            why = "I was asked twice and did not judge it"
        with state.transaction():
            state.update_task(task.id, stuck=stuck_value(task, note))
            state.log_event("task.review_stuck", task.id, dispatch=task.dispatch_count, waited_seconds=round(waited, 1))
            state.enqueue_message(
                f"review-stuck:{task.id}:{task.dispatch_count}", ROOM_MANAGER,
                f"@{admin} **{task.id}** ({task.title}) has waited {span(waited)} for my judgement of {task.assignee}'s "
                f"report ({status}): {why}. Result: `{layout.task_result(task.id)}` "
                "— tell me to accept it, what to change, or to block it.", [admin])
        await self.chat.flush()
        if task.project_id:
            await self.engine.render(task.project_id)

    # ------------------------------------------------------------------ plans awaiting confirmation

    async def _plans(self, now: float, report: Any, seen: set[tuple[str, str, str]]) -> None:
        state, admin = self.state, self.admin
        for project in state.projects():
            if project.state == ProjectState.PLANNING:
                await self._no_plan(project, now, report, seen)
            if project.state != ProjectState.AWAITING_CONFIRMATION:
                continue
            # The plan's version marks the episode too: a new proposal may share a millisecond.
            proposed, number = self._episode("plan.proposed", project.id, f"{project.updated_at}#{project.version}", seen)
            key = f"plan-reminder:{project.id}:{number}"
            if number == 0 or now - proposed < self.interval or state.outbox_get(key) is not None:
                continue
            await self.chat.post(
                self.chat.manager_room,
                f"@{admin} a reminder: the plan for **{project.title}** ({project.id}) has waited {span(now - proposed)} "
                f"for your confirmation. Reply to me with *confirm* to start it, or tell me what to change. "
                f"Plan: `{layout.project_plan(project.id)}`", mentions=[admin], key=key)
            state.log_event("plan.reminded", project.id, proposal=number)
            report.reminded.append(project.id)

    async def _no_plan(self, project: Any, now: float, report: Any, seen: set[tuple[str, str, str]]) -> None:
        state, admin = self.state, self.admin
        created, _ = self._episode("project.created", project.id, project.updated_at, seen)
        waited = now - max(created, self.started_at())
        key = f"plan-missing:{project.id}"
        if waited < self.interval or state.outbox_get(key) is not None:
            return  # not late yet, or told already
        if state.inbox_pending() and waited < 1.5 * self.interval:
            return  # a Manager turn may still be on it: half an interval more
        await self.chat.post(
            self.chat.manager_room,
            f"@{admin} **{project.title}** ({project.id}) has had no plan for {span(waited)}: I created the project "
            "but did not propose its tasks. Ask me again to plan it (or tell me what it should contain).",
            mentions=[admin], key=key)
        state.log_event("project.plan_missing", project.id, waited_seconds=round(waited, 1))
        report.reminded.append(project.id)

    # ------------------------------------------------------------------ blocked

    async def _blocked(self, now: float, report: Any, seen: set[tuple[str, str, str]]) -> None:
        state, admin = self.state, self.admin
        for task in state.tasks(states=[TaskState.BLOCKED]):
            blocked, number = self._episode("task.blocked", task.id, task.updated_at, seen)
            periods = int((now - blocked) // self.remind_blocked_every) if number else 0
            key = f"blocked-reminder:{task.id}:{number}:{periods}"
            if periods < 1 or state.outbox_get(key) is not None:
                continue
            why = f": {task.result_summary}" if task.result_summary else ""
            await self.chat.post(
                self.chat.manager_room,
                f"@{admin} a reminder: **{task.id}** ({task.title}, @{task.assignee}) has been blocked for "
                f"{span(now - blocked)}{why}. Tell me what to do with it: another assignee, a new task, or cancel it.",
                mentions=[admin], key=key)
            state.log_event("task.blocked_reminded", task.id, period=periods)
            report.reminded.append(task.id)

    # ------------------------------------------------------------------ paused

    async def _paused(self, now: float, report: Any, seen: set[tuple[str, str, str]]) -> None:
        state, admin = self.state, self.admin
        for project in state.projects():
            if project.state != ProjectState.PAUSED:
                continue
            paused, number = self._episode("project.paused", project.id, project.updated_at, seen)
            periods = int((now - paused) // self.remind_blocked_every) if number else 0
            key = f"paused-reminder:{project.id}:{number}:{periods}"
            if periods < 1 or state.outbox_get(key) is not None:
                continue
            waiting = [t.id for t in state.tasks(project_id=project.id, states=[TaskState.PENDING])]
            await self.chat.post(
                self.chat.manager_room,
                f"@{admin} a reminder: **{project.title}** ({project.id}) has been paused for {span(now - paused)}; "
                f"nothing of it starts until you resume it ({len(waiting)} task{'s' if len(waiting) != 1 else ''} "
                f"waiting{': ' + ', '.join(waiting) if waiting else ''}). Tell me to resume or cancel it, or run "
                f"`hiclaw project resume {project.id}`.", mentions=[admin], key=key)
            state.log_event("project.paused_reminded", project.id, period=periods)
            report.reminded.append(project.id)
