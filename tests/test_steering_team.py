"""Steering running projects on a live team (Synapse, the gateway with the scripted model,
sandboxed workers): pause and resume through the control API and the CLI, conflict-safe
versions, cancel and complete early with the workers under way told to stop, the history of
plan versions, one-line CLI errors, a pause across a control-plane restart, and the Manager
pausing a project for the admin — never for a worker. Observed from the outside: the state DB, the rooms and the CLI's output."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from hiclaw.control.api import control_file
from hiclaw.demo.scenario import call, generic_worker_rules
from hiclaw.models import ProjectState, TaskState
from hiclaw.testing import clean_env
from hiclaw.testing.team import running_team, wait_until

CHAIN = [{"id": "task-001", "title": "Draft copy", "assignee": "alex"},
         {"id": "task-002", "title": "Review copy", "assignee": "sam", "depends_on": ["task-001"]}]


async def admin_action(home: Path, action: str, body: dict[str, Any]) -> tuple[int, Any]:
    """``POST /v1/admin/<action>`` with the admin's token, as the CLI sends it."""
    info = json.loads(control_file(home).read_text())
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{info['url']}/v1/admin/{action}", json=body,
                                     headers={"Authorization": f"Bearer {info['token']}"}, timeout=30)
    return response.status_code, response.json()


async def cli(home: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hiclaw", *args, env=clean_env(home),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


def snapshot(plane: Any, project_id: str) -> Any:
    """What a refused change must leave alone: tasks, project, messages, its events, plan versions."""
    state = plane.state
    tasks = state.tasks(project_id=project_id)
    subjects = {project_id, *(t.id for t in tasks)}
    return ([t.model_dump(exclude={"updated_at", "last_progress_at"}) for t in tasks],
            state.project(project_id).model_dump(exclude={"updated_at"}), [m.key for m in state.pending_messages()],
            len([e for e in state.events(limit=100_000) if e["subject"] in subjects]), len(state.plan_versions(project_id)))


REPORTING = {"agents": {
    "alex": {"rules": generic_worker_rules("alex")},
    "sam": {"rules": generic_worker_rules("sam")},
    "manager": {"default": {"text": "manager: noted"}},  # judgements are the test's (accept_task below)
}}


async def test_pause_holds_dispatch_until_resumed_and_stale_versions_are_refused(tmp_path):
    home = tmp_path / "home"
    async with running_team(home, REPORTING, yolo=True) as team:
        plane = team.plane
        for name in ("alex", "sam"):
            await plane.provisioner.create_worker(name, role="writer")
        project = await plane.engine.create_project("Launch")
        await plane.engine.propose_plan(project.id, CHAIN)  # YOLO: starts at once
        await wait_until(lambda: plane.state.task("task-001").state is TaskState.REVIEW, what="alex's report")

        started = time.monotonic()
        status, paused = await admin_action(home, "project-pause", {"project": project.id, "expected_version": 1,
                                                                    "reason": "legal review"})
        assert status == 200 and paused["state"] == "paused" and time.monotonic() - started < 1.0
        notice = await team.wait_for_message("is paused by admin: legal review")
        assert notice.room_id == plane.state.project(project.id).room_id

        # The task under way is accepted as usual; its dependant is not dispatched — not by the
        # acceptance, not by the held-assignment release, not by a reconciliation.
        await plane.engine.accept_task("task-001")
        await plane.engine.release_held("sam")
        await plane.engine.reconcile()
        assert plane.state.task("task-002").state is TaskState.PENDING
        assert not plane.state.events(kind="task.dispatched", subject="task-002")
        assert plane.state.project(project.id).state == ProjectState.PAUSED

        # The plan changes meanwhile (version 2): a resume made on version 1 is refused, nothing written.
        await plane.engine.revise_plan(project.id, add=[{"title": "Press kit", "assignee": "alex",
                                                         "depends_on": ["task-002"]}], by="admin")
        before = snapshot(plane, project.id)
        code, out, err = await cli(home, "project", "resume", project.id, "--version", "1")
        assert (code, out) == (1, "")
        assert err == (f"error: {project.id}'s plan is version 2, not 1 (the version you saw): nothing was changed — "
                       f"look at version 2 (`hiclaw project show {project.id}`), then retry with version 2 if it still "
                       "makes sense\n")
        assert snapshot(plane, project.id) == before
        status, refused = await admin_action(home, "project-cancel", {"project": project.id, "expected_version": 1})
        assert status == 400 and "is version 2, not 1" in refused["error"] and snapshot(plane, project.id) == before

        code, out, err = await cli(home, "project", "resume", project.id, "--version", "2")
        assert code == 0, err
        assert out == f"{project.id} is running (plan version 2; tasks: 1 done, 1 in progress, 1 pending)\n"
        await wait_until(lambda: plane.state.task("task-002").state is TaskState.REVIEW, what="sam's report")
        assert [e["data"]["attempt"] for e in plane.state.events(kind="task.dispatched", subject="task-002")] == [1]
        assert len([m for m in team.admin.messages if "**task-002** is yours" in m.body]) == 1

        code, out, err = await cli(home, "project", "history", project.id, "--json")
        assert code == 0, err
        assert [(r["event"], r["version"], r["by"]) for r in json.loads(out)] == [
            ("plan.proposed", 1, "manager"), ("plan.confirmed", 1, "manager"), ("project.paused", 1, "admin"),
            ("plan.revised", 2, "admin"), ("project.resumed", 2, "admin")]
        code, out, _ = await cli(home, "project", "history", project.id, "--version", "1")
        assert code == 0 and "**Version:** 1" in out and "Press kit" not in out

        for args, line in ((("project", "pause", "proj-404"), "error: no project 'proj-404' — see `hiclaw project list`"),
                           (("project", "history", project.id, "--version", "9"),
                            f"error: {project.id} has no recorded plan version 9 — recorded versions: 1, 2")):
            code, out, err = await cli(home, *args)
            assert (code, out, err) == (1, "", line + "\n"), args
    code, out, err = await cli(home, "project", "pause", project.id)
    assert (code, err) == (1, "error: the team is not running — start it with `hiclaw up` (in another terminal)\n")
    code, out, _ = await cli(home, "project", "history", project.id)  # read from the state DB, no team needed
    assert code == 0 and "project.resumed" in out


THINKING_MS = 3000  # long enough to steer the project meanwhile


async def started(plane: Any, task_id: str) -> bool:
    try:
        await plane.storage.get(f"shared/tasks/{task_id}/workspace/started.md")
    except Exception:  # not written yet
        return False
    return plane.state.task(task_id).state is TaskState.IN_PROGRESS


async def test_a_pause_survives_a_control_plane_restart(tmp_path):
    """Stored durably: the restarted plane's reconciliation dispatches nothing of a paused project;
    resuming it then does, once."""
    from hiclaw.testing.team import start_plane

    home = tmp_path / "home"
    async with running_team(home, REPORTING, yolo=True) as team:
        plane = team.plane
        for name in ("alex", "sam"):
            await plane.provisioner.create_worker(name, role="writer")
        project = await plane.engine.create_project("Launch")
        await plane.engine.propose_plan(project.id, CHAIN)
        await wait_until(lambda: plane.state.task("task-001").state is TaskState.REVIEW, what="alex's report")
        await plane.engine.pause_project(project.id)
        await plane.engine.accept_task("task-001")
        await plane.stop()
        again = await start_plane(home, team.config)
        try:
            assert again.state.project(project.id).state == ProjectState.PAUSED
            assert again.state.task("task-002").state is TaskState.PENDING
            assert not again.state.events(kind="task.dispatched", subject="task-002")
            status, resumed = await admin_action(home, "project-resume", {"project": project.id, "expected_version": 1})
            assert status == 200 and resumed["tasks"]["task-002"] == "in_progress"
            await wait_until(lambda: again.state.task("task-002").state is TaskState.REVIEW, what="sam's report")
            assert [e["data"]["attempt"] for e in again.state.events(kind="task.dispatched", subject="task-002")] == [1]
        finally:
            await again.stop()


def slow_worker(agent: str) -> list[dict[str, Any]]:
    """Reports a "Quick" task at once; on a "Long" one it writes ``started.md``, then thinks for a
    while (its task stays in progress: a turn that ends without a report is reported by the
    runtime) — and stops when told to."""
    return [
        {"when": {"role": "user", "regex": rf"@{agent} stop working on \*\*(?P<task>task-\d+)\*\*"},
         "text": f"{agent} stopped {{{{task}}}}"},
        {"when": {"role": "user", "regex": rf"@{agent} \*\*(?P<task>task-\d+)\*\* is yours: Quick"},
         "tool_calls": [call("report_result", task_id="{{task}}", status="SUCCESS", summary="quick work done")]},
        {"when": {"tool_result": "report_result"}, "text": "reported"},
        {"when": {"role": "user", "regex": rf"@{agent} \*\*(?P<task>task-\d+)\*\* is yours: Long"},
         "tool_calls": [call("write_file", path="shared/tasks/{{task}}/workspace/started.md", content="started")]},
        {"when": {"tool_result": "write_file"}, "text": "still on it", "delay_ms": THINKING_MS},
    ]


STOPPING = {"agents": {
    "alex": {"rules": slow_worker("alex")},
    "sam": {"rules": slow_worker("sam")},
    "manager": {"rules": [
        {"when": {"role": "user", "regex": r"reported \*\*(?P<task>task-\d+)\*\*"},
         "tool_calls": [call("accept_task", task_id="{{task}}")]},
        {"when": {"tool_result": "accept_task"}, "text": "accepted"},
        {"when": {"role": "user", "regex": r"\((?P<project>proj-\d+)\) was completed early by admin: (?P<n>\d) of"},
         "text": "final report for {{project}}: {{n}} done"},
    ], "default": {"text": "manager: noted"}},
}}


async def test_cancel_and_complete_early_tell_the_workers_under_way_to_stop(tmp_path):
    home = tmp_path / "home"
    async with running_team(home, STOPPING, yolo=True) as team:
        plane, engine = team.plane, team.plane.engine
        for name in ("alex", "sam"):
            await plane.provisioner.create_worker(name, role="writer")
        doomed = await engine.create_project("Doomed")
        await engine.propose_plan(doomed.id, [{"title": "Long essay", "assignee": "alex"},
                                              {"title": "Long survey", "assignee": "sam"}])
        await wait_until(lambda: started(plane, "task-001"), what="alex at work")
        await wait_until(lambda: started(plane, "task-002"), what="sam at work")
        status, cancelled = await admin_action(home, "project-cancel", {"project": doomed.id, "reason": "no budget"})
        assert status == 200 and cancelled == {"project_id": doomed.id, "state": "cancelled", "version": 1,
                                               "tasks": {"task-001": "cancelled", "task-002": "cancelled"}}
        room = plane.state.project(doomed.id).room_id
        for worker, task in (("alex", "task-001"), ("sam", "task-002")):
            stop = await team.wait_for_message(f"@{worker} stop working on **{task}**")
            assert stop.room_id == room and stop.mentions == [team.user_id(worker)]
            await team.wait_for_message(f"{worker} stopped {task}", sender=worker)
        notice = await team.wait_for_message("was cancelled by admin: no budget")
        assert notice.room_id == room and "0 of 2 tasks done; cancelled: task-001, task-002" in notice.body

        # Complete early: the quick task is done, the long one stops; the Manager writes the report.
        early = await engine.create_project("Early")
        await engine.propose_plan(early.id, [{"title": "Quick note", "assignee": "alex"},
                                             {"title": "Long study", "assignee": "sam"}])
        await wait_until(lambda: plane.state.task("task-003").state is TaskState.DONE, what="the quick task accepted")
        await wait_until(lambda: started(plane, "task-004"), what="sam at work")
        status, completed = await admin_action(home, "project-complete", {"project": early.id, "expected_version": 1})
        assert status == 200 and completed["state"] == "done"
        assert completed["tasks"] == {"task-003": "done", "task-004": "cancelled"}
        await team.wait_for_message("@sam stop working on **task-004** (Long study)")
        await team.wait_for_message("sam stopped task-004", sender="sam")
        await team.wait_for_message(f"final report for {early.id}: 1 done")
        status, refused = await admin_action(home, "project-pause", {"project": early.id})
        assert status == 400 and refused["error"] == f"{early.id} is done: it cannot be paused — start a new project for more work"


STEER_RULES = [
    {"when": {"role": "user", "contains": "pause the launch"},
     "tool_calls": [call("pause_project", project_id="proj-001", expected_version=1, reason="the admin asked")]},
    {"when": {"role": "user", "regex": r"reported \*\*task-"}, "tool_calls": [call("pause_project", project_id="proj-001")]},
    {"when": {"tool_result": "pause_project", "regex": r"error: (?P<err>[^\n]+)"}, "text": "refused: {{err}}"},
    {"when": {"tool_result": "pause_project", "regex": r'"state": "(?P<state>\w+)"'}, "text": "project now {{state}}"},
]
ORIGINS = {"agents": {
    "alex": {"rules": generic_worker_rules("alex")},
    "sam": {"rules": generic_worker_rules("sam")},
    "manager": {"rules": STEER_RULES, "default": {"text": "manager: noted"}},
}}


async def test_the_manager_pauses_for_the_admin_never_for_a_worker(tmp_path):
    async with running_team(tmp_path / "home", ORIGINS, yolo=True) as team:
        plane = team.plane
        for name in ("alex", "sam"):
            await plane.provisioner.create_worker(name, role="writer")
        project = await plane.engine.create_project("Launch")
        await plane.engine.propose_plan(project.id, CHAIN)
        # alex's report starts a Manager turn for it (a worker's): the model calls pause_project; code refuses.
        await team.wait_for_message("refused: pause_project refused: this turn was started by worker alex")
        assert plane.state.project(project.id).state == ProjectState.RUNNING

        await team.tell_manager("@manager pause the launch, please")
        await team.wait_for_message("project now paused")
        (paused,) = plane.state.events(kind="project.paused", subject=project.id)
        assert paused["data"] == {"by": "manager", "reason": "the admin asked", "version": 1}
        await plane.engine.accept_task("task-001")
        assert plane.state.task("task-002").state is TaskState.PENDING


async def test_the_admin_confirms_a_plan_outside_chat_from_the_cli_and_the_console(tmp_path):
    """`hiclaw project confirm` and the console's Confirm button start a proposed plan, as the
    admin's *confirm* in chat has the Manager do: a stale version changes nothing, the Manager's
    room is told once, and a second confirmation is a no-op."""
    import re

    from test_console import client, log_in

    home = tmp_path / "home"
    async with running_team(home, REPORTING) as team:
        plane = team.plane
        for name in ("alex", "sam"):
            await plane.provisioner.create_worker(name, role="writer")
        first = await plane.engine.create_project("Launch")
        await plane.engine.propose_plan(first.id, CHAIN)
        second = await plane.engine.create_project("Docs")
        await plane.engine.propose_plan(second.id, [{"id": "task-003", "title": "Write docs", "assignee": "alex"}])
        version = plane.state.project(first.id).version

        before = snapshot(plane, first.id)
        code, out, err = await cli(home, "project", "confirm", first.id, "--version", str(version + 1))
        assert code == 1 and "nothing was changed" in err and not out, (out, err)
        assert snapshot(plane, first.id) == before
        code, out, err = await cli(home, "project", "confirm", first.id, "--version", str(version))
        assert code == 0 and f"{first.id} is running" in out, (out, err)
        assert plane.state.project(first.id).room_id
        await wait_until(lambda: plane.state.task("task-001").state is not TaskState.PENDING, timeout=30,
                         what="task-001 dispatched")
        code, out, _ = await cli(home, "project", "confirm", first.id)
        assert code == 0 and "is running" in out  # confirmed already: nothing more
        assert [e["data"]["by"] for e in plane.state.events(kind="plan.confirmed", subject=first.id)] == ["admin"]

        console = plane.console
        async with client(console.url) as http:
            csrf = await log_in(http, console)
            async with http.get(f"/projects/{second.id}") as response:
                page = await response.text()
            assert f'action="/projects/{second.id}/confirm"' in page
            shown = int(re.search(r'name="version" value="(\d+)"', page).group(1))
            origin = {"Origin": console.url}
            async with http.post(f"/projects/{second.id}/confirm", data={"csrf": csrf, "version": shown - 1},
                                 headers=origin) as response:
                assert response.status == 409 and "nothing was changed" in await response.text()
            assert plane.state.project(second.id).state is ProjectState.AWAITING_CONFIRMATION
            async with http.post(f"/projects/{second.id}/confirm", data={"version": shown}, headers=origin) as response:
                assert response.status == 403  # no CSRF token
            async with http.post(f"/projects/{second.id}/confirm", data={"csrf": csrf, "version": shown},
                                 headers=origin, allow_redirects=False) as response:
                assert response.status == 303
            assert plane.state.project(second.id).state is ProjectState.RUNNING
            async with http.get(f"/projects/{second.id}") as response:
                assert f'action="/projects/{second.id}/confirm"' not in await response.text()
            async with http.post(f"/projects/{second.id}/confirm", data={"csrf": csrf, "version": shown},
                                 headers=origin, allow_redirects=False) as response:
                assert response.status == 303  # a second click: nothing more
        for project in (first, second):
            await team.wait_for_message(f"The admin confirmed {project.id}'s plan")
        await plane.chat.flush()
        notices = sorted(m.body for m in team.admin.messages if "outside chat" in m.body)
        assert notices == [f"The admin confirmed {first.id}'s plan (version {version}) outside chat; it has started.",
                           f"The admin confirmed {second.id}'s plan (version {shown}) outside chat (from the console); "
                           "it has started."], notices
