"""The schedules in the state DB: validation, storage keys and :class:`ScheduleBook` (add, list,
remove) — shared by the running control plane (:mod:`hiclaw.control.scheduler`, which fires them)
and by ``hiclaw schedule`` when the team is down. User page: docs/schedules.md."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from hiclaw.control.cron import CronRule, OneShot, SystemClock, check_timezone, parse_time, stamp
from hiclaw.errors import InvalidInputError
from hiclaw.models import WorkerState
from hiclaw.state import Schedule, StateDB
from hiclaw.storage import layout

SCHEDULES = "shared/schedules/"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
MAX_MESSAGE_CHARS = 4000
KINDS = ("task", "remind", "report")
#: The message of a report schedule given none.
REPORT_MESSAGE = "Write today's report for the admin."
Rule = CronRule | OneShot



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


def check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise InvalidInputError(f"unknown schedule kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    return str(kind)


def rule_of(schedule: Schedule) -> Rule:
    """The schedule's time rule: its cron expression, or its one time ``at``."""
    return OneShot(schedule.at, schedule.timezone) if schedule.at else CronRule(schedule.cron, schedule.timezone)


def check_assignee(state: StateDB, name: object) -> str:
    layout.check_agent(name)
    worker = state.find_worker(str(name))
    if worker is None or worker.state == WorkerState.REMOVED:
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

    def add(self, name: str, cron: str | None, tz: str, message: str, assignee: str | None, *, replace: bool = False,
            at: str | None = None, kind: str = "task") -> dict[str, Any]:
        """``cron`` or ``at`` (a one-shot run: a time of ``tz`` — see :func:`hiclaw.manager.when.parse_at`);
        ``kind`` ``task`` needs a worker as ``assignee``; ``remind`` and ``report`` have none."""
        check_name(name)
        check_kind(kind)
        if bool(cron) == bool(at):
            raise InvalidInputError("give either a cron expression or one time (at), not both" if cron else
                                    "give a cron expression (repeated runs) or one time (at)",
                                    hint="e.g. --cron \"0 9 * * *\" or --at \"2026-12-24 09:00\"")
        if at:
            from hiclaw.manager.when import parse_at

            rule: Rule = OneShot(parse_at(at, check_timezone(tz), self.clock.now()), tz)
        else:
            rule = CronRule(str(cron), tz)
        text = REPORT_MESSAGE if kind == "report" and not str(message or "").strip() else check_message(message)
        assignee = {"remind": "admin", "report": "manager"}.get(kind) or check_assignee(self.state, assignee)
        existing = next((s for s in self.state.schedules() if s.name == name), None)
        if existing is not None and not replace:
            raise InvalidInputError(f"a schedule named {name!r} exists",
                                    hint="pick another name, remove it first, or replace it (--replace)")
        one_time = rule.at.isoformat() if isinstance(rule, OneShot) else None
        schedule = Schedule(name=name, cron=rule.cron, timezone=rule.timezone, message=text, assignee=assignee,
                            created_at=self.clock.now().isoformat(timespec="milliseconds"), kind=kind, at=one_time)
        self.state.upsert_schedule(schedule)
        self.state.log_event("schedule.added", name, cron=rule.cron, at=one_time, timezone=rule.timezone,
                             assignee=assignee, schedule_kind=kind)
        return self.view(self.state.schedule(name))

    def remove(self, name: str) -> dict[str, Any]:
        self.state.delete_schedule(check_name(name))
        self.state.log_event("schedule.removed", name)
        return {"removed": name, "records_kept": schedule_dir(name)}

    def list(self) -> list[dict[str, Any]]:
        return [self.view(s) for s in self.state.schedules()]

    def view(self, schedule: Schedule) -> dict[str, Any]:
        now = self.clock.now()
        rule = rule_of(schedule)
        anchor = parse_time(schedule.last_run or schedule.created_at)
        upcoming = rule.next_after(max(anchor, now))
        if upcoming is None and rule.due(anchor, now) is not None:
            upcoming = rule.latest_at_or_before(now)  # a one-shot run missed while the team was down
        last = parse_time(schedule.last_run) if schedule.last_run else None
        return {
            "name": schedule.name, "kind": schedule.kind, "cron": schedule.cron, "at": schedule.at,
            "timezone": schedule.timezone,
            "assignee": schedule.assignee, "message": schedule.message, "created_at": schedule.created_at,
            "next_run": upcoming.isoformat() if upcoming else None,
            "next_run_local": upcoming.astimezone(rule.zone).isoformat() if upcoming else None,
            "last_run": last.isoformat() if last else None,
            "last_run_local": last.astimezone(rule.zone).isoformat() if last else None,
            # A slot passed without a run (the team was down): it runs once when the team starts.
            "missed": rule.due(anchor, now) is not None,
            "records": schedule_dir(schedule.name),
        }
