"""One view per meaning: a task (and a worker) has the same JSON keys in the CLI, in `hiclaw status`
(offline and from the control plane) and in the Manager's tool results."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from hiclaw.cli import cli
from hiclaw.control.plane import ControlPlane
from hiclaw.manager.tools import manager_tools
from hiclaw.models import ResultStatus, TaskState
from hiclaw.state import StateDB, Task, Worker

TASK_KEYS = {"id", "project", "title", "assignee", "state", "marker", "model", "depends_on", "revision_of",
             "result_status", "result_summary", "attempts", "stalled_at", "created_at", "updated_at"}


def seeded_state(home):
    state = StateDB(home / "state.db")
    state.upsert_worker(Worker(name="sam", role="writer", model="smart", skills=["docs"]))
    project = state.create_project("Docs", "write them")
    state.add_tasks(project.id, [Task(id="task-001", title="Outline", assignee="sam"),
                                 Task(id="task-002", title="Draft", assignee="sam", depends_on=["task-001"])])
    state.update_task("task-001", state=TaskState.DONE.value, result_status=ResultStatus.SUCCESS.value,
                      result_summary="outlined", stalled_at="2026-01-01T00:00:00+00:00")
    state.update_task("task-002", state=TaskState.IN_PROGRESS.value, stalled_at="2026-01-02T00:00:00+00:00")
    return state


def cli_json(*args):
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


async def test_a_task_has_the_same_keys_in_the_cli_the_status_and_the_manager_tools(hiclaw_home):
    state = seeded_state(hiclaw_home)
    listed = cli_json("task", "list")
    offline = cli_json("status")
    shown = cli_json("project", "show", "proj-001")

    tools = {t.name: t for t in manager_tools(SimpleNamespace(engine=None, state=state, provisioner=None,
                                                              config=None, extra_manager_tools=list))}
    from_tool = await tools["list_tasks"].handler({})

    async def no_usage(**_):
        return []

    plane = SimpleNamespace(state=state, gateway=SimpleNamespace(usage=no_usage, base_url="http://gw"),
                            supervisor=SimpleNamespace(status=lambda name: {}), bridge_urls=lambda: {},
                            api=SimpleNamespace(url="http://api"),
                            config=SimpleNamespace(channel=SimpleNamespace(plugin="matrix"),
                                                   storage=SimpleNamespace(plugin="local-storage"),
                                                   sandbox=SimpleNamespace(plugin="process")))
    live = await ControlPlane.status(plane)  # type: ignore[arg-type]
    for tasks in (listed, offline["tasks"], shown["tasks"], from_tool, live["tasks"]):
        assert [set(t) for t in tasks] == [TASK_KEYS, TASK_KEYS]
        done, running = tasks
        assert done["result_status"] == "SUCCESS" and done["result_summary"] == "outlined"
        assert done["stalled_at"] is None  # a stall stamp means something only while in progress
        assert running["stalled_at"] == "2026-01-02T00:00:00+00:00" and running["depends_on"] == ["task-001"]
        assert done["project"] == "proj-001" and done["state"] == "done" and done["marker"] == "[x]"
    assert listed == offline["tasks"] == from_tool == live["tasks"]
    worker_keys = {"name", "role", "model", "skills", "state"}
    assert [set(w) for w in offline["workers"]] == [worker_keys]
    assert offline["workers"][0] == {"name": "sam", "role": "writer", "model": "smart", "skills": ["docs"],
                                     "state": "active"}
    assert set(live["workers"][0]) >= {"name", "role", "model", "state"}
    state.close()


def test_task_status_table_reads_the_shared_keys(hiclaw_home):
    seeded_state(hiclaw_home).close()
    result = CliRunner().invoke(cli, ["status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "SUCCESS" in result.output and "in_progress (stalled)" in result.output


def test_worker_and_project_states_are_enums_that_stay_strings(hiclaw_home):
    from hiclaw.models import ProjectState, WorkerState

    state = seeded_state(hiclaw_home)
    worker, project = state.find_worker("sam"), state.project("proj-001")
    assert worker is not None and worker.state is WorkerState.ACTIVE and worker.state == "active"
    assert project.state is ProjectState.PLANNING and project.state == "planning"
    state.update_project(project.id, state=ProjectState.RUNNING)
    state.set_worker_state("sam", WorkerState.SLEEPING)
    # Stored as the bare strings (the database and older readers see what they always saw).
    rows = state._query("SELECT (SELECT state FROM workers) AS w, (SELECT state FROM projects) AS p")
    assert (rows[0]["w"], rows[0]["p"]) == ("sleeping", "running")
    with pytest.raises(ValueError, match="not a valid ProjectState"):
        state.update_project(project.id, state="active")
    state.close()
    shown = cli_json("project", "show", "proj-001")
    assert shown["state"] == "running"
    assert cli_json("status")["workers"][0]["state"] == "sleeping"
    listed = cli_json("project", "list")
    assert listed[0]["state"] == "running"
