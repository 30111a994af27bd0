"""``hiclaw worker ...`` — workers. This module holds ``logs``; create/list/remove/run join it."""
from __future__ import annotations

import click

from hiclaw.cli.app import App, echo_safe, pass_app
from hiclaw.errors import NotFoundError


@click.group("worker")
def worker_group() -> None:
    """Manage workers and read their logs."""


def _agent_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from hiclaw.sandbox.spec import AGENT_NAME

    if not AGENT_NAME.match(value):
        raise click.BadParameter(f"{value!r} is not a worker name (a-z, 0-9 and '-', starting with a letter)")
    return value


@worker_group.command("logs")
@click.argument("name", callback=_agent_name)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option("-n", "--lines", type=click.IntRange(min=1), default=None, metavar="N", help="Only the last N lines.")
@pass_app
def logs_command(app: App, name: str, follow: bool, lines: int | None) -> None:
    """Print a worker's log (its output and the supervisor's start/exit lines)."""
    from hiclaw.sandbox.logs import read_log_lines, worker_log_path

    path = worker_log_path(app.home, name)
    if not path.is_file():
        raise NotFoundError(f"no log for worker {name!r} (looked for {path})",
                            hint="check the name with `hiclaw worker list`; a worker has a log once it has started")
    for line in read_log_lines(path, follow=follow, tail=lines):
        if line is not None:
            echo_safe(line)  # the worker writes its log: no escape sequences reach the terminal
