"""Scheduled work, started by code (no model call): a worker's recurring task, a reminder for the
admin, the Manager's daily report.

A schedule is a name, *when* — a cron expression of exactly 5 fields (minute hour day-of-month
month day-of-week, parsed by ``croniter``) or one time ``at`` (a one-shot run) — an IANA time
zone (``zoneinfo``), a message and its kind:

- ``task`` (the assignee is a worker): at each due time the :class:`Scheduler` (run by the
  control plane) writes the run record ``shared/schedules/<name>/run-<UTC stamp>.md`` (what was
  asked, when, for whom), then posts the message in the assignee's room mentioning it, telling it
  to write its output to ``agents/<assignee>/schedules/<name>/run-<UTC stamp>.md`` (its own home).
- ``remind``: the message is posted to the admin in the Manager room, mentioning them.
- ``report``: code gathers the day's facts and wakes the Manager to write the report for the
  admin (:mod:`hiclaw.manager.report`); if its model fails, code posts the facts itself.

A one-shot schedule runs once: afterwards it stays in the list with its last run and no next one.

Rules (user page: docs/schedules.md):

- **Missed runs.** When runs were missed while the control plane was down, the schedule runs
  ONCE at start-up — for the latest missed slot — not once per missed slot; then it continues on
  schedule. The run record says it was late and whether earlier slots were skipped.
- **Time.** Times are wall-clock times of the schedule's zone; the cron and daylight-saving
  rules are in :mod:`hiclaw.control.cron`.
- **Exactly once.** A run is keyed by schedule and slot: the record is written only if absent and
  the post goes through the control chat's outbox (key ``schedule:<name>:<stamp>``), so a crash
  between posting and bookkeeping never posts twice.
- **Changes are picked up.** The scheduler re-reads the state DB at least every ``tick_seconds``,
  so schedules written directly (``hiclaw schedule add`` while the team is down) are seen.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import yaml

from hiclaw.control.cron import SystemClock, local_text, parse_time, stamp
from hiclaw.control.schedule_book import (  # re-exported: the names of this module before the split
    KINDS,
    NAME,
    REPORT_MESSAGE,
    Rule,
    ScheduleBook,
    check_assignee,
    check_kind,
    check_message,
    check_name,
    rule_of,
    run_output,
    run_record,
    schedule_dir,
)
from hiclaw.errors import HiclawError, InvalidInputError
from hiclaw.models import WorkerState
from hiclaw.state import ROOM_MANAGER, Schedule, StateDB

if TYPE_CHECKING:
    from hiclaw.control.chat import ControlChat
    from hiclaw.manager.report import ReportSources

__all__ = ["KINDS", "LATE_AFTER", "NAME", "REPORT_MESSAGE", "Rule", "ScheduleBook", "Scheduler",
           "check_assignee", "check_kind", "check_message", "check_name", "render_post", "render_record",
           "render_reminder", "rule_of", "run_output", "run_record", "schedule_dir"]

log = logging.getLogger(__name__)

#: A run this much after its slot is reported as late (the control plane was not running).
LATE_AFTER = timedelta(minutes=2)


# --------------------------------------------------------------------------- the scheduler


class Scheduler:
    """Fires due schedules: a worker's task posted in its room, a reminder posted to ``admin``, or
    the daily report started through ``reports`` (None: report schedules are not run).
    ``timezone``: the team's (``[team] timezone``), for schedules given without one;
    ``progress(line)`` is told what a start ran."""

    def __init__(self, *, state: StateDB, storage: Any, chat: ControlChat, reports: ReportSources | None = None,
                 admin: str = "admin", timezone: str = "UTC", progress: Callable[[str], None] | None = None,
                 clock: Any = None, tick_seconds: float = 30.0) -> None:
        self.state, self.storage, self.chat, self.reports, self.admin = state, storage, chat, reports, admin
        self.timezone = timezone
        self.progress = progress or (lambda line: None)
        self.tick_seconds = tick_seconds
        self._clock: Any = None
        self.clock = clock or SystemClock()
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failed = False
        self._invalid: set[str] = set()

    @property
    def clock(self) -> Any:
        return self._clock

    @clock.setter
    def clock(self, clock: Any) -> None:
        self._clock = clock
        if hasattr(clock, "subscribe"):
            clock.subscribe(self.wake)

    @property
    def book(self) -> ScheduleBook:
        return ScheduleBook(self.state, self.clock)

    async def start(self) -> None:
        """Run what was missed while the control plane was down (once each), then keep time."""
        fired = await self.run_due()
        if fired:
            self.progress(f"schedules: ran {len(fired)} missed run(s): {', '.join(fired)}")
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """Look at the schedules now (after a change, or when a test moved the clock)."""
        self._wakeup.set()

    async def _loop(self) -> None:
        while True:
            # After a failed run, wait a whole tick before trying again (no busy loop on a broken store).
            timeout = self.tick_seconds if self._failed else self._seconds_to_next()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self.run_due()
            except Exception:
                log.exception("scheduler: reading the schedules failed")
                self._failed = True

    def _rules(self) -> list[tuple[Schedule, Rule]]:
        """Every schedule with its parsed rule; one written invalid by hand is reported once and skipped."""
        rules = []
        for schedule in self.state.schedules():
            try:
                rules.append((schedule, rule_of(schedule)))
            except HiclawError as exc:
                if schedule.name not in self._invalid:
                    self._invalid.add(schedule.name)
                    log.warning("schedule %s is invalid and never runs: %s", schedule.name, exc)
        return rules

    def _seconds_to_next(self) -> float:
        now = self.clock.now()
        wait = self.tick_seconds
        for schedule, rule in self._rules():
            upcoming = rule.next_after(parse_time(schedule.last_run or schedule.created_at))
            if upcoming is not None:
                wait = min(wait, (upcoming - now).total_seconds())
        return max(wait, 0.0)

    async def run_due(self) -> list[str]:
        """Fire every schedule with a slot due now (one run each); returns the run records written.
        A run that fails (storage or channel down) is logged and retried at the next tick."""
        fired = []
        async with self._lock:
            self._failed = False
            for schedule, rule in self._rules():
                now = self.clock.now()
                due = rule.due(parse_time(schedule.last_run or schedule.created_at), now)
                if due is None:
                    continue
                try:
                    fired.append(await self.fire(schedule, rule, slot=due[0], first_missed=due[1], now=now))
                except Exception:
                    log.exception("schedule %s: run of %s failed; retrying at the next tick", schedule.name, due[0])
                    self._failed = True
        return fired

    async def fire(self, schedule: Schedule, rule: Rule, *, slot: datetime, first_missed: datetime,
                   now: datetime) -> str:
        if schedule.kind != "task":
            return await self._fire_for_admin(schedule, rule, slot=slot, first_missed=first_missed, now=now)
        record = run_record(schedule.name, slot)
        worker = self.state.find_worker(schedule.assignee)
        present = worker is not None and worker.state != WorkerState.REMOVED
        if await self.storage.stat(record) is None:
            text = render_record(schedule, rule, slot=slot, first_missed=first_missed, now=now, present=present)
            await self.storage.put(record, text.encode())
        if present:
            room = await self.chat.worker_room(schedule.assignee)
            await self.chat.post(room, render_post(schedule, rule, slot), mentions=[schedule.assignee],
                                  key=f"schedule:{schedule.name}:{stamp(slot)}")
        else:
            log.warning("schedule %s: worker %s no longer exists; run skipped", schedule.name, schedule.assignee)
        self.state.set_schedule_last_run(schedule.name, slot.isoformat())
        self.state.log_event("schedule.run" if present else "schedule.skipped", schedule.name, slot=slot.isoformat(),
                              record=record, late=now - slot > LATE_AFTER)
        return record

    async def _fire_for_admin(self, schedule: Schedule, rule: Rule, *, slot: datetime, first_missed: datetime,
                              now: datetime) -> str:
        """A reminder posted to the admin, or the Manager woken to write its report."""
        record = run_record(schedule.name, slot)
        if await self.storage.stat(record) is None:
            text = render_record(schedule, rule, slot=slot, first_missed=first_missed, now=now, present=True)
            await self.storage.put(record, text.encode())
        late = now - slot > LATE_AFTER
        if schedule.kind == "remind":
            await self.chat.post(await self.chat.resolve(ROOM_MANAGER), render_reminder(schedule, rule, slot, late=late),
                                 mentions=[self.admin], key=f"schedule:{schedule.name}:{stamp(slot)}")
        elif self.reports is not None:
            from hiclaw.manager.report import start_report

            await start_report(self.reports, schedule, zone=rule.zone, slot=slot, now=now)
        self.state.set_schedule_last_run(schedule.name, slot.isoformat())
        self.state.log_event("schedule.run", schedule.name, slot=slot.isoformat(), record=record, late=late,
                              schedule_kind=schedule.kind)
        return record

    def team_timezone(self) -> str:
        return self.timezone

    async def admin_action(self, action: str, body: dict[str, Any]) -> Any:
        if action == "schedule-add":
            kind = str(body.get("kind") or "task")
            at = body.get("at") or None
            result = self.book.add(_arg(body, "name"), body.get("cron") if at else _arg(body, "cron"),
                                   body.get("timezone") or self.team_timezone(),
                                   (body.get("message") or "") if kind == "report" else _arg(body, "message"),
                                   body.get("assignee") if kind != "task" else _arg(body, "assignee"),
                                   replace=bool(body.get("replace")), at=str(at) if at else None, kind=kind)
        elif action == "schedule-list":
            return {"schedules": self.book.list()}
        elif action == "schedule-remove":
            result = self.book.remove(_arg(body, "name"))
        else:
            raise HiclawError(f"unknown admin action {action!r}")
        self.wake()
        return result


def _arg(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise InvalidInputError(f"schedule: '{key}' is missing", hint="give name, cron, timezone, message and assignee")
    return value


# --------------------------------------------------------------------------- texts

_FOR = {"remind": "the admin (a reminder, posted in the Manager room)",
        "report": "the Manager (it writes the report for the admin)"}


def _when(rule: Rule) -> str:
    return f"`{rule.cron}` in {rule.timezone}" if rule.cron else f"once, in {rule.timezone}"


def render_record(schedule: Schedule, rule: Rule, *, slot: datetime, first_missed: datetime, now: datetime,
                  present: bool) -> str:
    late = now - slot > LATE_AFTER
    task = schedule.kind == "task"
    meta = {"schedule": schedule.name, "kind": schedule.kind, "run": stamp(slot), "assignee": schedule.assignee,
            "cron": rule.cron or None, "at": schedule.at,
            "timezone": rule.timezone, "scheduled_for": slot.astimezone(rule.zone).isoformat(),
            "started_at": now.isoformat(timespec="seconds"), "late": late,
            "skipped_missed_runs": first_missed < slot,
            "output": run_output(schedule.assignee, schedule.name, slot) if present and task else None,
            "status": "posted" if present else "skipped: the assignee no longer exists"}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---",
             f"# {schedule.name} — run of {local_text(slot, rule.zone)}", "",
             f"- **For:** {_FOR.get(schedule.kind, schedule.assignee)}", f"- **When:** {_when(rule)}",
             f"- **Started:** {local_text(now, rule.zone)}"]
    if late:
        note = "the team was not running at that time; missed runs run once when it starts"
        if first_missed < slot:
            note += f" (runs from {local_text(first_missed, rule.zone)} on were folded into this one)"
        lines.append(f"- **Late:** {note}")
    if not present:
        lines.append(f"- **Skipped:** worker {schedule.assignee} no longer exists")
    elif task:
        lines.append(f"- **Output:** `{meta['output']}`")
    lines += ["", "## Asked", "", schedule.message, ""]
    return "\n".join(lines)


def render_post(schedule: Schedule, rule: Rule, slot: datetime) -> str:
    output = run_output(schedule.assignee, schedule.name, slot)
    return (f"@{schedule.assignee} scheduled task **{schedule.name}** ({local_text(slot, rule.zone)}): "
            f"{schedule.message}\n\nWrite your output to `{output}` and answer here with a short summary. "
            f"Run record: `{run_record(schedule.name, slot)}`.")


def render_reminder(schedule: Schedule, rule: Rule, slot: datetime, *, late: bool) -> str:
    note = " — late: the team was not running at that time" if late else ""
    return f"@admin reminder ({local_text(slot, rule.zone)}{note}): {schedule.message}"
