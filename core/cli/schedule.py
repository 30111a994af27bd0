"""``hiclaw schedule add|list|remove``: a worker's recurring work, a reminder for the admin, the
Manager's report (see docs/schedules.md).

When the team runs, the commands go through the control API (the scheduler sees the change at
once); when it does not, they edit the state DB directly and the control plane picks the
schedules up when it starts (a run missed meanwhile runs once at start-up).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click

from hiclaw.cli.app import App, emit_json, offline_state, pass_app, table
from hiclaw.cli.up import control_request, running_control


@click.group("schedule")
def schedule_group() -> None:
    """Scheduled work: a cron time or one time (--at) in a time zone; for a worker, the admin or the Manager."""


@contextmanager
def offline_book(app: App, *, readonly: bool = False) -> Iterator[Any]:
    """The schedules in the state DB of a team that is not running."""
    from hiclaw.control.scheduler import ScheduleBook

    with offline_state(app, readonly=readonly) as state:
        yield ScheduleBook(state)


def _when(iso: str | None, tz: str) -> str:
    from hiclaw.control.cron import check_timezone, local_text

    return local_text(datetime.fromisoformat(iso), check_timezone(tz)) if iso else "-"


@schedule_group.command("add")
@click.argument("name")
@click.option("--cron", help="Repeated runs, 5 fields: minute hour day-of-month month day-of-week, e.g. \"0 9 * * *\".")
@click.option("--at", "at", help="One run, e.g. \"2026-12-24 09:00\" (a date alone is 09:00) or \"in 2h\".")
@click.option("--tz", "tz", help="IANA time zone of the times, e.g. Europe/Paris (default: [team] timezone).")
@click.option("--assignee", help="The worker that does the work (without it, and without --report: a reminder "
                                 "posted to you in the Manager room).")
@click.option("--report", is_flag=True, help="The Manager writes you a report of the day from the facts code gathers.")
@click.option("--message", help="What to do at each run (posted to the worker); the reminder's text; for --report, "
                                "what else the report should cover.")
@click.option("--replace", is_flag=True, help="Replace a schedule of the same name.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def add_command(app: App, name: str, cron: str | None, at: str | None, tz: str | None, assignee: str | None,
                report: bool, message: str | None, replace: bool, as_json: bool) -> None:
    """Add a schedule: a worker's recurring work, a reminder for you, or the Manager's report.

    Examples: hiclaw schedule add metrics --cron "0 9 * * *" --tz Europe/Paris --assignee jordan
    --message "post yesterday's metrics"; hiclaw schedule add launch --at "2026-12-24 09:00" --message
    "launch day"; hiclaw schedule add report --cron "0 18 * * *" --report
    """
    if not cron and not at:
        raise click.UsageError("Missing option '--cron' (repeated runs) or '--at' (one run).")
    kind = "report" if report else "task" if assignee else "remind"
    zone = tz or app.config.team.timezone
    body = {"name": name, "cron": cron, "at": at, "timezone": zone, "assignee": assignee, "message": message or "",
            "replace": replace, "kind": kind}
    if running_control(app) is not None:
        view = control_request(app, "POST", "/v1/admin/schedule-add", body)
    else:
        with offline_book(app) as book:
            view = book.add(name, cron, zone, message or "", assignee, replace=replace, at=at, kind=kind)
    if as_json:
        emit_json(view)
        return
    when = f"`{view['cron']}`" if view["cron"] else "once"
    click.echo(f"schedule {view['name']}: {when} in {view['timezone']} {_FOR[view['kind']] or 'for ' + view['assignee']}; "
               f"next run {_when(view['next_run'], view['timezone'])}")


_FOR = {"task": "", "remind": "(a reminder for you)", "report": "(the Manager's report for you)"}


@schedule_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_command(app: App, as_json: bool) -> None:
    """Schedules with their next run (in the schedule's time zone) and last run."""
    running = running_control(app) is not None
    if running:
        views = control_request(app, "POST", "/v1/admin/schedule-list", {})["schedules"]
    elif not (app.home / "state.db").exists():
        views = []
    else:
        with offline_book(app, readonly=True) as book:
            views = book.list()
    if as_json:
        emit_json(views)
        return
    table([[v["name"], v["cron"] or "once", v["timezone"], v["assignee"],
            _when(v["next_run"], v["timezone"]) + (" (a run was missed: runs once at start-up)"
                                                    if v["missed"] and not running else ""),
            _when(v["last_run"], v["timezone"]), v["message"] if len(v["message"]) <= 50 else v["message"][:47] + "..."]
           for v in views], ["name", "cron", "tz", "assignee", "next run", "last run", "message"])


@schedule_group.command("remove")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def remove_command(app: App, name: str, as_json: bool) -> None:
    """Remove a schedule (its run records stay in storage)."""
    if running_control(app) is not None:
        result = control_request(app, "POST", "/v1/admin/schedule-remove", {"name": name})
    else:
        with offline_book(app) as book:
            result = book.remove(name)
    if as_json:
        emit_json(result)
        return
    click.echo(f"removed schedule {name} (run records kept in {result['records_kept']})")
