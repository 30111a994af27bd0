"""``hiclaw project list|show`` and ``hiclaw task list|show`` — read from the state DB (safe while
the team runs: SQLite WAL lets readers and the control plane's writer work side by side)."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from hiclaw.cli.app import App, echo_safe, emit_json, pass_app, table, terminal_safe
from hiclaw.cli.fs import open_storage, read_text
from hiclaw.errors import NotFoundError
from hiclaw.state import StateDB, Task


class _NoState:
    """A team that never ran: no projects, no tasks."""

    def projects(self) -> list[Any]:
        return []

    def tasks(self, **_: Any) -> list[Task]:
        return []

    def project(self, project_id: str) -> Any:
        raise NotFoundError(f"no project {project_id!r}", hint="the team has not run yet: start it with `hiclaw up`")

    def task(self, task_id: str) -> Any:
        raise NotFoundError(f"no task {task_id!r}", hint="the team has not run yet: start it with `hiclaw up`")

    def close(self) -> None:
        pass


@contextmanager
def state_of(app: App) -> Iterator[StateDB]:
    if not (app.home / "state.db").exists():
        yield _NoState()  # type: ignore[misc]
        return
    state = StateDB(app.home / "state.db", readonly=True)
    try:
        yield state
    finally:
        state.close()


@click.group("project")
def project_group() -> None:
    """Projects: their plans and state."""


@project_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def project_list(app: App, as_json: bool) -> None:
    """Every project with its state and progress."""
    with state_of(app) as state:
        rows = []
        for project in state.projects():
            tasks = state.tasks(project_id=project.id)
            done = sum(1 for t in tasks if t.state.value == "done")
            rows.append(project.model_dump() | {"tasks": len(tasks), "done": done})
    if as_json:
        emit_json(rows)
        return
    table([[r["id"], r["state"], f"{r['done']}/{r['tasks']}", r["title"]] for r in rows],
          ["project", "state", "done", "title"])


@project_group.command("show")
@click.argument("project_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--mermaid", is_flag=True, help="Print the plan as a Mermaid flowchart (tasks, dependencies, state colours).")
@pass_app
def project_show(app: App, project_id: str, as_json: bool, mermaid: bool) -> None:
    """A project's plan, with the markers of plan.md ([ ] [~] [x] [!] [→])."""
    from hiclaw.manager.plan import render_mermaid, render_plan

    with state_of(app) as state:
        project = state.project(project_id)
        tasks = state.tasks(project_id=project_id)
    if mermaid:
        click.echo(render_mermaid(project, tasks), nl=False)
        return
    if as_json:
        emit_json(project.model_dump() | {"tasks": [t.view() for t in tasks]})
        return
    echo_safe(render_plan(project, tasks).rstrip())  # titles and notes are the agents' words


@project_group.command("history")
@click.argument("project_id", metavar="PROJECT")
@click.option("--version", "version", type=int, help="Print the plan as it was at this version.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def project_history_command(app: App, project_id: str, version: int | None, as_json: bool) -> None:
    """The plan's versions (when, what changed, by whom) and the project's steering (confirmed,
    paused, resumed, cancelled, completed), oldest first."""
    from hiclaw.manager.steer import project_history

    with state_of(app) as state:
        if version is not None:
            state.project(project_id)
            found = [v for v in state.plan_versions(project_id) if v.version == version]
            known = [v.version for v in state.plan_versions(project_id)]
            if not found:
                raise NotFoundError(f"{project_id} has no recorded plan version {version}",
                                    hint=f"recorded versions: {', '.join(map(str, known)) or 'none'}")
        rows = [] if version is not None else project_history(state, project_id)
    if version is not None:
        if as_json:
            emit_json(found[0].model_dump())
        else:
            echo_safe(found[0].plan.rstrip())  # titles are the agents' words
        return
    if as_json:
        emit_json(rows)
        return
    table([[r["time"], r["event"], r["version"] if r["version"] is not None else "-", r["by"] or "-",
            terminal_safe(r["what"], one_line=True) or "-"] for r in rows], ["time", "event", "version", "by", "what"])


STEERING_HELP = {
    "confirm": "Confirm PROJECT's proposed plan, as replying *confirm* to the Manager does: it starts, its ready "
               "tasks are dispatched, and the Manager is told.",
    "pause": "Pause PROJECT: no new task starts; tasks under way finish and are judged as usual.",
    "resume": "Resume a paused PROJECT: every ready task starts at once.",
    "cancel": "Cancel PROJECT: every task not done is cancelled; workers with a task under way are told to stop.",
    "complete": "Complete PROJECT early: done work stays done, the rest is cancelled; the Manager writes the final "
                "report.",
}


def _steering_command(action: str) -> click.Command:
    @click.argument("project_id", metavar="PROJECT")
    @click.option("--version", "version", type=int,
                  help="The plan version you saw (`hiclaw project show`): refused if the plan changed since.")
    @click.option("--reason", default="", help="Why (in the notice posted to the project room).")
    @click.option("--json", "as_json", is_flag=True)
    @pass_app
    def command(app: App, project_id: str, version: int | None, reason: str, as_json: bool) -> None:
        result = steer_project(app, action, project_id, version, reason)
        if as_json:
            emit_json(result)
            return
        counts: dict[str, int] = {}
        for task_state in result["tasks"].values():
            counts[task_state] = counts.get(task_state, 0) + 1
        tally = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in sorted(counts.items()))
        click.echo(f"{result['project_id']} is {result['state']} (plan version {result['version']}; tasks: "
                   f"{tally or 'none'})")

    command.__doc__ = STEERING_HELP[action] + " The team must be running."
    return project_group.command(action)(command)


for _action in STEERING_HELP:
    _steering_command(_action)


def steer_project(app: App, action: str, project_id: str, version: int | None = None,
                  reason: str = "") -> dict[str, Any]:
    """Confirm, pause, resume, cancel or complete a project through the running control plane."""
    from hiclaw.cli.up import control_request

    return dict(control_request(app, "POST", f"/v1/admin/project-{action}",
                                {"project": project_id, "expected_version": version, "reason": reason}))


@click.group("task")
def task_group() -> None:
    """Tasks: who does what, and how it went."""


@task_group.command("list")
@click.option("--project", "project_id", help="Only this project's tasks.")
@click.option("--assignee", help="Only this worker's tasks.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def task_list(app: App, project_id: str | None, assignee: str | None, as_json: bool) -> None:
    """Tasks with their state, assignee and result."""
    with state_of(app) as state:
        tasks = state.tasks(project_id=project_id, assignee=assignee)
    if as_json:
        emit_json([t.view() for t in tasks])
        return
    table([[t.state.marker, t.id, t.project_id or "-", t.assignee, t.model or "-",
            t.result_status.value if t.result_status else "-", t.title] for t in tasks],
          ["", "task", "project", "assignee", "model", "result", "title"])


@task_group.command("show")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def task_show(app: App, task_id: str, as_json: bool) -> None:
    """A task, its spec.md and its result.md (from the shared storage)."""
    from hiclaw.storage import layout

    with state_of(app) as state:
        task = state.task(task_id)
    async def both() -> tuple[str | None, str | None]:
        async with open_storage(app) as storage:
            spec = await read_text(storage, layout.task_spec(task_id))
            return spec, await read_text(storage, layout.task_result(task_id))

    spec, result = asyncio.run(both())
    if as_json:
        emit_json(task.view() | {"spec": spec, "result_markdown": result})
        return
    echo_safe(f"{task.state.marker} {task.id}: {terminal_safe(task.title, one_line=True)}")
    click.echo(f"  assignee {task.assignee} · state {task.state.value} · model {task.model or 'default'} · "
               f"attempts {task.dispatch_count}")
    if task.depends_on:
        click.echo(f"  after {', '.join(task.depends_on)}")
    if task.revision_of:
        click.echo(f"  revision of {task.revision_of}")
    for title, text, key in (("spec", spec, layout.task_spec(task_id)), ("result", result, layout.task_result(task_id))):
        click.echo(f"\n── {title} ({key}) " + "─" * 20)
        echo_safe(text.rstrip() if text else "(not written yet)")  # result.md is the worker's


@task_group.command("assign")
@click.argument("worker")
@click.argument("title")
@click.option("--spec", default="", help="What exactly to do (the task's spec.md; default: the title).")
@click.option("--model", help="Model alias for this task (default: the worker's).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def task_assign(app: App, worker: str, title: str, spec: str, model: str | None, as_json: bool) -> None:
    """Give WORKER one task outside any project, as the Manager's assign_task does (the team must be running)."""
    task = assign_task(app, worker, title, spec, model)
    if as_json:
        emit_json(task)
        return
    echo_safe(f"{task['id']} assigned to {task['assignee']}: {terminal_safe(task['title'], one_line=True)}"
              + (f" — held: {task['assignee']} is busy with another task; it is posted when that one is finished"
                 if task.get("state") == "pending" else ""))


def assign_task(app: App, worker: str, title: str, spec: str = "", model: str | None = None) -> dict[str, Any]:
    """An ad-hoc task for ``worker`` through the running control plane (its view)."""
    from hiclaw.cli.up import control_request

    return dict(control_request(app, "POST", "/v1/admin/assign-task",
                                {"assignee": worker, "title": title, "spec": spec, "model": model}))
