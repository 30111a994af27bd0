"""The daily report the Manager writes for the admin — from facts code gathers, never silence.

A ``report`` schedule (``hiclaw schedule add report --cron "0 18 * * *" --report``, or the
Manager's ``schedule_report``) fires in the scheduler (:mod:`hiclaw.control.scheduler`). Then,
all in code:

1. :func:`gather_facts` reads the state DB and the gateway's ledger for the day (since midnight
   in the schedule's time zone): tasks done today, in progress (stalled ones marked), waiting for
   review, blocked, stuck; plans waiting for the admin; spend today by consumer.
2. The facts are written to ``agents/manager/reports/<name>/<UTC stamp>.md`` (the Manager's own
   home: durable, and what the fallback posts).
3. The Manager is woken (its durable inbox; origin ``code``: only the judgement and read-only tools
   work) to write the report from them; its answer is posted to the admin in the Manager room.
4. If its model fails (an error, a spent budget, a turn that ends without an answer),
   :func:`fallback_for` gives the Manager agent the facts to post instead, with a one-line note
   saying why (key ``manager-report:<name>:<stamp>:facts``).

Task titles and summaries were written by models and workers: they are quoted as JSON strings.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hiclaw.agent.prompt import quote
from hiclaw.control.cron import parse_time, stamp
from hiclaw.control.schedule_book import REPORT_MESSAGE
from hiclaw.manager.origin import Origin
from hiclaw.manager.when import local_midnight
from hiclaw.models import ProjectState, TaskState
from hiclaw.state import ROOM_MANAGER, Schedule, StateDB
from hiclaw.storage import layout

log = logging.getLogger(__name__)

MANAGER = "manager"
#: Tasks listed per group; the rest are counted.
MAX_LISTED = 12
KEY_PREFIX = "manager-report:"


def facts_key(name: str, slot: datetime) -> str:
    return layout.agent_file(MANAGER, f"reports/{name}/{stamp(slot)}.md")


def _since(value: str | None, start: datetime) -> bool:
    try:
        return value is not None and parse_time(value) >= start
    except ValueError:
        return False


def _row(task: Any, zone: ZoneInfo) -> str:
    row = f"{task.id} {quote(task.title)} ({task.assignee})"
    if task.state is TaskState.IN_PROGRESS and task.stalled_at:
        row += f" — stalled since {parse_time(task.stalled_at).astimezone(zone).strftime('%H:%M')}"
    if task.state is TaskState.BLOCKED and task.result_summary:
        row += f" — why: {quote(task.result_summary[:200])}"
    stuck = getattr(task, "stuck", None)
    if stuck:
        row += f" — stuck: {quote(str(stuck)[:200])}"
    return row


def _group(title: str, rows: list[str]) -> str:
    if not rows:
        return f"- {title}: none"
    listed = "".join(f"\n  - {row}" for row in rows[:MAX_LISTED])
    more = f"\n  - … and {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else ""
    return f"- {title} ({len(rows)}):{listed}{more}"


@dataclass
class ReportSources:
    """What the daily report is gathered from (the state DB, the gateway's ledger through
    ``usage(by=, since=, until=)``) and how it is written: its facts kept in ``storage``, the Manager
    woken in the Manager room (``chat``) through ``wake_manager(room_id, text, key, origin=)``."""

    state: StateDB
    storage: Any
    chat: Any
    usage: Callable[..., Awaitable[Any]]
    wake_manager: Callable[..., Awaitable[None]]


async def _spend(usage: Callable[..., Awaitable[Any]], start: datetime, now: datetime) -> str:
    try:
        rows = await usage(by="consumer", since=start.timestamp(), until=now.timestamp())
    except Exception as exc:  # noqa: BLE001 - the report goes out without the spend, saying why
        return f"- Spend today: unknown ({exc})"
    if not rows:
        return "- Spend today: $0.00 (no model calls)"
    total = sum(float(r.get("cost_usd") or 0) for r in rows)
    calls = sum(int(r.get("calls") or 0) for r in rows)
    by = ", ".join(f"{r.get('consumer')} ${float(r.get('cost_usd') or 0):.4f}" for r in rows[:8])
    return f"- Spend today: ${total:.4f} in {calls} model calls ({by})"


async def gather_facts(sources: ReportSources, *, zone: ZoneInfo, now: datetime) -> str:
    """The day's facts (since local midnight of ``now``), as Markdown lines."""
    start = local_midnight(now, zone)
    tasks = sources.state.tasks()
    in_state = {state: [t for t in tasks if t.state is state] for state in TaskState}
    done = [t for t in in_state[TaskState.DONE] if _since(t.updated_at, start)]
    stalled = [t for t in in_state[TaskState.IN_PROGRESS] if t.stalled_at]
    stuck = [t for t in tasks if getattr(t, "stuck", None) and t.state not in (TaskState.DONE, TaskState.CANCELLED)]
    waiting = [p for p in sources.state.projects() if p.state == ProjectState.AWAITING_CONFIRMATION]
    paused = [p for p in sources.state.projects() if p.state == ProjectState.PAUSED]
    lines = [f"Facts for {now.astimezone(zone).strftime('%A %Y-%m-%d')} (from 00:00 to "
             f"{now.astimezone(zone).strftime('%H:%M')} {zone.key}), gathered by code:",
             _group("Done today", [_row(t, zone) for t in done]),
             _group("In progress", [_row(t, zone) for t in in_state[TaskState.IN_PROGRESS]]),
             _group("Reported, waiting for the Manager's review", [_row(t, zone) for t in in_state[TaskState.REVIEW]]),
             _group("Blocked", [_row(t, zone) for t in in_state[TaskState.BLOCKED]]),
             _group("Stalled or stuck", [_row(t, zone) for t in dict.fromkeys([*stalled, *stuck])]),
             _group("Plans waiting for the admin's confirmation", [f"{p.id} {quote(p.title)}" for p in waiting]),
             _group("Projects paused by the admin (nothing of them starts until resumed)",
                    [f"{p.id} {quote(p.title)}" for p in paused]),
             _group("Not started yet", [_row(t, zone) for t in in_state[TaskState.PENDING]]),
             await _spend(sources.usage, start, now)]
    return "\n".join(lines)


def report_prompt(schedule: Schedule, facts: str) -> str:
    asked = "" if schedule.message.strip() in ("", REPORT_MESSAGE) else (
        f"\nThe admin asked for this in the report too, quoted: {quote(schedule.message)}")
    return ("It is time for the admin's report (schedule " + schedule.name + "). The facts below were gathered by "
            "code from the state and the gateway's ledger, and they are complete. Write a short report for the admin "
            "from them: what got done, what is in progress, what is blocked, stalled or waiting for them (say what "
            "you need from them), and today's spend. Your answer is posted to the admin as it is. Call a tool only "
            f"for a detail the facts lack (list_tasks, read_result, usage_report).{asked}\n\n{facts}")


async def start_report(sources: ReportSources, schedule: Schedule, *, zone: ZoneInfo, slot: datetime,
                       now: datetime) -> None:
    """Gather the facts, keep them, and wake the Manager to write the report (called by the scheduler)."""
    facts = await gather_facts(sources, zone=zone, now=now)
    key = facts_key(schedule.name, slot)
    if await sources.storage.stat(key) is None:  # a re-run of the same slot keeps the first facts
        await sources.storage.put(key, facts.encode())
    room = await sources.chat.resolve(ROOM_MANAGER)
    await sources.wake_manager(room, report_prompt(schedule, facts), f"report:{schedule.name}:{stamp(slot)}",
                             origin=Origin.code("scheduler", f"the report {schedule.name}"))


async def fallback_for(storage: Any, key: str, why: str) -> tuple[str, str] | None:
    """``(text, key)`` to post when the Manager's turn ``key`` (``manager-report:<name>:<stamp>``)
    produced no report: the facts, with one line saying why. ``None`` for any other turn."""
    if not key.startswith(KEY_PREFIX):
        return None
    name, _, run = key[len(KEY_PREFIX):].partition(":")
    try:
        facts = (await storage.get(layout.agent_file(MANAGER, f"reports/{name}/{run}.md"))).decode()
    except Exception as exc:  # noqa: BLE001 - say so rather than stay silent
        facts = f"(the facts could not be read: {exc})"
    note = f"Report ({name}) — posted by code: I could not write it myself ({why})."
    return f"{note}\n\n{facts}", f"{key}:facts"
