"""Scheduled tasks: recurring work for a worker, started by code (no model call) with a mention.

A schedule is a name, a cron expression of exactly 5 fields (minute hour day-of-month month
day-of-week, parsed by ``croniter``), an IANA time zone (``zoneinfo``), a message and an assignee
(a worker). At each due time the :class:`Scheduler` (run by the control plane) writes the run
record ``shared/schedules/<name>/run-<UTC stamp>.md`` (what was asked, when, for whom), then
posts the message in the assignee's room mentioning it, telling it to write its output to
``agents/<assignee>/schedules/<name>/run-<UTC stamp>.md`` (its own home, which it may write).

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
import re
from datetime import datetime, timedelta
from typing import Any

import yaml

from hiclaw.control.cron import CronRule, SystemClock, local_text, parse_time, stamp
from hiclaw.errors import HiclawError, InvalidInputError
from hiclaw.models import ToolSpec
from hiclaw.state import Schedule, StateDB
from hiclaw.storage import layout

log = logging.getLogger(__name__)

SCHEDULES = "shared/schedules/"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
MAX_MESSAGE_CHARS = 4000
#: A run this much after its slot is reported as late (the control plane was not running).
LATE_AFTER = timedelta(minutes=2)


# --------------------------------------------------------------------------- validation


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInputError(f"invalid schedule name {name!r}",
                                hint="use lower-case letters, digits and '-' (at most 48, e.g. 'daily-metrics')")
    return name


def check_message(message: object) -> str:
    text = str(message or "").strip()
    if not text:
        raise InvalidInputError("the schedule's message is empty", hint="say what to do at each run, "
                                "e.g. --message \"post yesterday's metrics\"")
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidInputError(f"the schedule's message has {len(text)} characters (limit {MAX_MESSAGE_CHARS})",
                                hint="put the details in a file in the worker's home and point to it")
    return text


def check_assignee(state: StateDB, name: object) -> str:
    layout.check_agent(name)
    worker = state.find_worker(str(name))
    if worker is None or worker.state == "removed":
        raise InvalidInputError(f"no worker named {name!r} to assign the schedule to",
                                hint="create it first (`hiclaw worker create` or the Manager), see `hiclaw worker list`")
    return str(name)


# --------------------------------------------------------------------------- storage keys


def schedule_dir(name: str) -> str:
    """``shared/schedules/<name>/`` — the run records (written by the control plane)."""
    return f"{SCHEDULES}{check_name(name)}/"


def run_record(name: str, slot: datetime) -> str:
    """``shared/schedules/<name>/run-<UTC stamp>.md``."""
    return schedule_dir(name) + f"run-{stamp(slot)}.md"


def run_output(assignee: str, name: str, slot: datetime) -> str:
    """Where the assignee writes a run's output: in its own home, which it may write."""
    return layout.agent_file(assignee, f"schedules/{check_name(name)}/run-{stamp(slot)}.md")


# --------------------------------------------------------------------------- the schedules in the state DB


class ScheduleBook:
    """Add, list and remove schedules in the state DB — shared by the running control plane and
    by ``hiclaw schedule`` when the team is down."""

    def __init__(self, state: StateDB, clock: Any = None) -> None:
        self.state = state
        self.clock = clock or SystemClock()

    def add(self, name: str, cron: str, tz: str, message: str, assignee: str, *, replace: bool = False) -> dict[str, Any]:
        check_name(name)
        rule = CronRule(cron, tz)
        text = check_message(message)
        check_assignee(self.state, assignee)
        existing = next((s for s in self.state.schedules() if s.name == name), None)
        if existing is not None and not replace:
            raise InvalidInputError(f"a schedule named {name!r} exists",
                                    hint="pick another name, remove it first, or replace it (--replace)")
        schedule = Schedule(name=name, cron=rule.cron, timezone=rule.timezone, message=text, assignee=assignee,
                            created_at=self.clock.now().isoformat(timespec="milliseconds"))
        self.state.upsert_schedule(schedule)
        self.state.log_event("schedule.added", name, cron=rule.cron, timezone=rule.timezone, assignee=assignee)
        return self.view(self.state.schedule(name))

    def remove(self, name: str) -> dict[str, Any]:
        self.state.delete_schedule(check_name(name))
        self.state.log_event("schedule.removed", name)
        return {"removed": name, "records_kept": schedule_dir(name)}

    def list(self) -> list[dict[str, Any]]:
        return [self.view(s) for s in self.state.schedules()]

    def view(self, schedule: Schedule) -> dict[str, Any]:
        now = self.clock.now()
        rule = CronRule(schedule.cron, schedule.timezone)
        anchor = parse_time(schedule.last_run or schedule.created_at)
        upcoming = rule.next_after(max(anchor, now))
        last = parse_time(schedule.last_run) if schedule.last_run else None
        return {
            "name": schedule.name, "cron": schedule.cron, "timezone": schedule.timezone,
            "assignee": schedule.assignee, "message": schedule.message, "created_at": schedule.created_at,
            "next_run": upcoming.isoformat(), "next_run_local": upcoming.astimezone(rule.zone).isoformat(),
            "last_run": last.isoformat() if last else None,
            "last_run_local": last.astimezone(rule.zone).isoformat() if last else None,
            # A slot passed without a run (the team was down): it runs once when the team starts.
            "missed": rule.due(anchor, now) is not None,
            "records": schedule_dir(schedule.name),
        }


# --------------------------------------------------------------------------- the scheduler


class Scheduler:
    """Fires due schedules for a running :class:`hiclaw.control.plane.ControlPlane`."""

    def __init__(self, plane: Any, *, clock: Any = None, tick_seconds: float = 30.0) -> None:
        self.plane = plane
        self.tick_seconds = tick_seconds
        self._clock: Any = None
        self.clock = clock or SystemClock()
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failed = False
        self._invalid: set[str] = set()
        plane.add_manager_tools(lambda: schedule_tools(self))

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
        return ScheduleBook(self.plane.state, self.clock)

    async def start(self) -> None:
        """Run what was missed while the control plane was down (once each), then keep time."""
        fired = await self.run_due()
        if fired:
            self.plane.progress(f"schedules: ran {len(fired)} missed run(s): {', '.join(fired)}")
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

    def _rules(self) -> list[tuple[Schedule, CronRule]]:
        """Every schedule with its parsed rule; one written invalid by hand is reported once and skipped."""
        rules = []
        for schedule in self.plane.state.schedules():
            try:
                rules.append((schedule, CronRule(schedule.cron, schedule.timezone)))
            except HiclawError as exc:
                if schedule.name not in self._invalid:
                    self._invalid.add(schedule.name)
                    log.warning("schedule %s is invalid and never runs: %s", schedule.name, exc)
        return rules

    def _seconds_to_next(self) -> float:
        now = self.clock.now()
        wait = self.tick_seconds
        for schedule, rule in self._rules():
            wait = min(wait, (rule.next_after(parse_time(schedule.last_run or schedule.created_at)) - now).total_seconds())
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

    async def fire(self, schedule: Schedule, rule: CronRule, *, slot: datetime, first_missed: datetime,
                   now: datetime) -> str:
        plane = self.plane
        record = run_record(schedule.name, slot)
        worker = plane.state.find_worker(schedule.assignee)
        present = worker is not None and worker.state != "removed"
        if await plane.storage.stat(record) is None:
            text = render_record(schedule, rule, slot=slot, first_missed=first_missed, now=now, present=present)
            await plane.storage.put(record, text.encode())
        if present:
            room = await plane.chat.worker_room(schedule.assignee)
            await plane.chat.post(room, render_post(schedule, rule, slot), mentions=[schedule.assignee],
                                  key=f"schedule:{schedule.name}:{stamp(slot)}")
        else:
            log.warning("schedule %s: worker %s no longer exists; run skipped", schedule.name, schedule.assignee)
        plane.state.set_schedule_last_run(schedule.name, slot.isoformat())
        plane.state.log_event("schedule.run" if present else "schedule.skipped", schedule.name, slot=slot.isoformat(),
                              record=record, late=now - slot > LATE_AFTER)
        return record

    async def admin_action(self, action: str, body: dict[str, Any]) -> Any:
        if action == "schedule-add":
            result = self.book.add(_arg(body, "name"), _arg(body, "cron"), body.get("timezone") or "UTC",
                                   _arg(body, "message"), _arg(body, "assignee"), replace=bool(body.get("replace")))
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


async def admin_action(plane: Any, action: str, body: dict[str, Any]) -> Any:
    """``POST /v1/admin/schedule-*`` of the control API (``hiclaw schedule`` when the team runs)."""
    scheduler = getattr(plane, "scheduler", None)
    if scheduler is None:
        raise HiclawError("the team is still starting", hint="retry in a few seconds")
    return await scheduler.admin_action(action, body)


# --------------------------------------------------------------------------- texts


def render_record(schedule: Schedule, rule: CronRule, *, slot: datetime, first_missed: datetime, now: datetime,
                  present: bool) -> str:
    late = now - slot > LATE_AFTER
    meta = {"schedule": schedule.name, "run": stamp(slot), "assignee": schedule.assignee, "cron": rule.cron,
            "timezone": rule.timezone, "scheduled_for": slot.astimezone(rule.zone).isoformat(),
            "started_at": now.isoformat(timespec="seconds"), "late": late,
            "skipped_missed_runs": first_missed < slot,
            "output": run_output(schedule.assignee, schedule.name, slot) if present else None,
            "status": "posted" if present else "skipped: the assignee no longer exists"}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---",
             f"# {schedule.name} — run of {local_text(slot, rule.zone)}", "",
             f"- **For:** {schedule.assignee}", f"- **When:** `{rule.cron}` in {rule.timezone}",
             f"- **Started:** {local_text(now, rule.zone)}"]
    if late:
        note = "the team was not running at that time; missed runs run once when it starts"
        if first_missed < slot:
            note += f" (runs from {local_text(first_missed, rule.zone)} on were folded into this one)"
        lines.append(f"- **Late:** {note}")
    if present:
        lines.append(f"- **Output:** `{meta['output']}`")
    else:
        lines.append(f"- **Skipped:** worker {schedule.assignee} no longer exists")
    lines += ["", "## Asked", "", schedule.message, ""]
    return "\n".join(lines)


def render_post(schedule: Schedule, rule: CronRule, slot: datetime) -> str:
    output = run_output(schedule.assignee, schedule.name, slot)
    return (f"@{schedule.assignee} scheduled task **{schedule.name}** ({local_text(slot, rule.zone)}): "
            f"{schedule.message}\n\nWrite your output to `{output}` and answer here with a short summary. "
            f"Run record: `{run_record(schedule.name, slot)}`.")


# --------------------------------------------------------------------------- the Manager's tools


def _obj(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def schedule_tools(scheduler: Scheduler) -> list[ToolSpec]:
    async def schedule_add(args: dict[str, Any]) -> Any:
        return await scheduler.admin_action("schedule-add", args)

    async def schedule_list(args: dict[str, Any]) -> Any:
        return scheduler.book.list()

    async def schedule_remove(args: dict[str, Any]) -> Any:
        return await scheduler.admin_action("schedule-remove", args)

    text = {"type": "string"}
    return [
        ToolSpec(name="schedule_add", handler=schedule_add,
                 description="Schedule recurring work for a worker: at each time of the cron expression (5 fields: "
                             "minute hour day-of-month month day-of-week, in the given IANA time zone) code posts "
                             "the message in the worker's room, mentioning it. Write the message like a task spec.",
                 parameters=_obj({"name": {"type": "string", "pattern": NAME.pattern},
                                  "cron": {"type": "string", "description": "e.g. '0 9 * * *' = 09:00 every day"},
                                  "timezone": {"type": "string", "description": "IANA zone, e.g. Europe/Paris"},
                                  "message": text, "assignee": {"type": "string", "description": "a worker's name"}},
                                 ["name", "cron", "timezone", "message", "assignee"])),
        ToolSpec(name="schedule_list", handler=schedule_list,
                 description="List schedules with their next and last run (UTC and the schedule's time zone).",
                 parameters=_obj({}, [])),
        ToolSpec(name="schedule_remove", handler=schedule_remove,
                 description="Remove a schedule (its run records stay in shared/schedules/<name>/).",
                 parameters=_obj({"name": text}, ["name"])),
    ]
