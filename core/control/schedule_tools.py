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

from typing import TYPE_CHECKING, Any

from hiclaw.control.schedule_book import NAME
from hiclaw.models import ToolSpec

if TYPE_CHECKING:
    from hiclaw.control.scheduler import Scheduler

TEXT = {"type": "string"}


def _obj(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def schedule_tools(scheduler: Scheduler) -> list[ToolSpec]:
    async def schedule_add(args: dict[str, Any]) -> Any:
        return await scheduler.admin_action("schedule-add", args)

    async def schedule_list(args: dict[str, Any]) -> Any:
        return scheduler.book.list()

    async def schedule_remove(args: dict[str, Any]) -> Any:
        return await scheduler.admin_action("schedule-remove", args)

    return [
        ToolSpec(name="schedule_add", handler=schedule_add,
                 description="Schedule recurring work for a worker: at each time of the cron expression (5 fields: "
                             "minute hour day-of-month month day-of-week, in the given IANA time zone) code posts "
                             "the message in the worker's room, mentioning it. Write the message like a task spec.",
                 parameters=_obj({"name": {"type": "string", "pattern": NAME.pattern},
                                  "cron": {"type": "string", "description": "e.g. '0 9 * * *' = 09:00 every day"},
                                  "timezone": {"type": "string", "description": "IANA zone, e.g. Europe/Paris"},
                                  "message": TEXT, "assignee": {"type": "string", "description": "a worker's name"}},
                                 ["name", "cron", "timezone", "message", "assignee"])),
        ToolSpec(name="schedule_list", handler=schedule_list,
                 description="List schedules (worker tasks, reminders, reports) with their next and last run "
                             "(UTC and the schedule's time zone).",
                 parameters=_obj({}, [])),
        ToolSpec(name="schedule_remove", handler=schedule_remove,
                 description="Remove a schedule (its run records stay in shared/schedules/<name>/).",
                 parameters=_obj({"name": TEXT}, ["name"])),
    ]


def _free_name(scheduler: Scheduler, base: str) -> str:
    taken = {s.name for s in scheduler.state.schedules()}
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    return name


def admin_schedule_tools(scheduler: Scheduler) -> list[ToolSpec]:
    async def remind_admin(args: dict[str, Any]) -> Any:
        from hiclaw.control.cron import check_timezone
        from hiclaw.manager.when import parse_at

        zone = str(args.get("timezone") or scheduler.team_timezone())
        due = parse_at(args.get("at"), check_timezone(zone), scheduler.clock.now())
        name = _free_name(scheduler, "remind-" + due.astimezone(check_timezone(zone)).strftime("%Y%m%d-%H%M"))
        view = await scheduler.admin_action("schedule-add", {"name": name, "kind": "remind", "at": due.isoformat(),
                                                             "timezone": zone, "message": args.get("text")})
        return {"reminder": name, "at_local": view["next_run_local"], "text": view["message"],
                "note": "code posts it to the admin in the Manager room at that time, once"}

    async def schedule_report(args: dict[str, Any]) -> Any:
        body = {"name": args.get("name") or _free_name(scheduler, "report"), "kind": "report",
                "cron": args.get("cron"), "at": args.get("at"), "timezone": args.get("timezone") or None,
                "message": args.get("message") or ""}
        return await scheduler.admin_action("schedule-add", body)

    zone = {"type": "string", "description": "IANA zone (default: the team's time zone)"}
    return [
        ToolSpec(name="remind_admin", handler=remind_admin,
                 description="Remind the admin of something once, at a given time: code posts the text to them in "
                             "the Manager room then (it survives restarts). Use it for 'remind me on …'.",
                 parameters=_obj({"at": {"type": "string", "description": "a date and time such as '2026-12-24 "
                                                                          "09:00' (the team's time zone; a date alone "
                                                                          "is 09:00) or 'in 2h'"},
                                  "text": TEXT, "timezone": zone}, ["at", "text"])),
        ToolSpec(name="schedule_report", handler=schedule_report,
                 description="Have a report written for the admin at each time of a cron expression (e.g. '0 18 * * "
                             "*' every day at 18:00) or once (at): code gathers the day's facts (tasks done, "
                             "blocked, in progress, stalled; spend) and wakes you to write it.",
                 parameters=_obj({"cron": TEXT, "at": TEXT, "timezone": zone, "name": TEXT,
                                  "message": {"type": "string", "description": "what else the report should cover"}},
                                 [])),
    ]
