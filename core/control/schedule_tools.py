"""The Manager's scheduling tools, over :class:`hiclaw.control.scheduler.Scheduler`.

- :func:`schedule_tools` (registered by the scheduler itself): a worker's recurring work —
  ``schedule_add``, ``schedule_list``, ``schedule_remove``.
- :func:`admin_schedule_tools` (among the Manager's tools): ``remind_admin(at, text)``, a one-shot
  reminder posted to the admin at that time, and ``schedule_report(cron | at)``, the report the
  Manager writes for the admin (:mod:`hiclaw.manager.report`).

Times without a zone are the team's (``[team] timezone``). Everything but ``schedule_list`` is
refused in a turn the admin did not start (:mod:`hiclaw.manager.origin`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from hiclaw.agent.functions import function_tool, schema_hint
from hiclaw.control.schedule_book import NAME
from hiclaw.models import ToolSpec

if TYPE_CHECKING:
    from hiclaw.control.scheduler import Scheduler

def schedule_tools(scheduler: Scheduler) -> list[ToolSpec]:
    async def schedule_add(name: Annotated[str, schema_hint(pattern=NAME.pattern)], cron: str, timezone: str,
                           message: str, assignee: str) -> Any:
        """Schedule recurring work for a worker: at each time of the cron expression (5 fields: minute hour
        day-of-month month day-of-week, in the given IANA time zone) code posts the message in the worker's room,
        mentioning it. Write the message like a task spec.

        Args:
            cron: e.g. '0 9 * * *' = 09:00 every day
            timezone: IANA zone, e.g. Europe/Paris
            assignee: a worker's name
        """
        return await scheduler.admin_action("schedule-add", {"name": name, "cron": cron, "timezone": timezone,
                                                             "message": message, "assignee": assignee})

    async def schedule_list() -> Any:
        """List schedules (worker tasks, reminders, reports) with their next and last run (UTC and the schedule's
        time zone)."""
        return scheduler.book.list()

    async def schedule_remove(name: str) -> Any:
        """Remove a schedule (its run records stay in shared/schedules/<name>/)."""
        return await scheduler.admin_action("schedule-remove", {"name": name})

    return [function_tool(schedule_add), function_tool(schedule_list), function_tool(schedule_remove)]


def _free_name(scheduler: Scheduler, base: str) -> str:
    taken = {s.name for s in scheduler.state.schedules()}
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    return name


def admin_schedule_tools(scheduler: Scheduler) -> list[ToolSpec]:
    async def remind_admin(at: str, text: str, timezone: str | None = None) -> Any:
        """Remind the admin of something once, at a given time: code posts the text to them in the Manager room
        then (it survives restarts). Use it for 'remind me on …'.

        Args:
            at: a date and time such as '2026-12-24 09:00' (the team's time zone; a date alone is 09:00) or 'in 2h'
            timezone: IANA zone (default: the team's time zone)
        """
        from hiclaw.control.cron import check_timezone
        from hiclaw.manager.when import parse_at

        zone = str(timezone or scheduler.team_timezone())
        due = parse_at(at, check_timezone(zone), scheduler.clock.now())
        name = _free_name(scheduler, "remind-" + due.astimezone(check_timezone(zone)).strftime("%Y%m%d-%H%M"))
        view = await scheduler.admin_action("schedule-add", {"name": name, "kind": "remind", "at": due.isoformat(),
                                                             "timezone": zone, "message": text})
        return {"reminder": name, "at_local": view["next_run_local"], "text": view["message"],
                "note": "code posts it to the admin in the Manager room at that time, once"}

    async def schedule_report(cron: str | None = None, at: str | None = None, timezone: str | None = None,
                              name: str | None = None, message: str | None = None) -> Any:
        """Have a report written for the admin at each time of a cron expression (e.g. '0 18 * * *' every day at
        18:00) or once (at): code gathers the day's facts (tasks done, blocked, in progress, stalled; spend) and
        wakes you to write it.

        Args:
            timezone: IANA zone (default: the team's time zone)
            message: what else the report should cover
        """
        body = {"name": name or _free_name(scheduler, "report"), "kind": "report", "cron": cron, "at": at,
                "timezone": timezone or None, "message": message or ""}
        return await scheduler.admin_action("schedule-add", body)

    return [function_tool(remind_admin), function_tool(schedule_report)]
