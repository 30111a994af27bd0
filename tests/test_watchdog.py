"""The heartbeat watchdog on a real team (Synapse, gateway + scripted model, bwrap workers),
with a 2-second heartbeat: the issue's acceptance scenario."""
from __future__ import annotations

import os
import signal
import time
from datetime import datetime

from hiclaw.models import TaskState
from hiclaw.testing.team import running_team, wait_until

HEARTBEAT = 2.0
QUARTER = HEARTBEAT / 4  # checks run four times per interval
SLACK = 1.0  # scheduling on a loaded 2-core machine

SCENARIO = {"agents": {
    # bob starts a command that never finishes in time: no files, no messages, no model calls.
    "bob": {"rules": [{"when": {"contains": "is yours"}, "times": 1,
                       "tool_calls": [{"name": "run_command", "arguments": {"command": "sleep 120",
                                                                            "timeout_seconds": 300}}]}],
            "default": {"text": "bob: still here"}},
    # alice does the same, is killed, and finishes once she is told to carry on.
    "alice": {"rules": [
        {"when": {"contains": "is yours"}, "times": 1,
         "tool_calls": [{"name": "run_command", "arguments": {"command": "sleep 120", "timeout_seconds": 300}}]},
        {"when": {"contains": "carry on", "regex": r"\*\*(?P<task>task-\d+)\*\*"},
         "tool_calls": [{"name": "report_result", "arguments": {"task_id": "{{task}}", "status": "SUCCESS",
                                                               "summary": "done after a restart"}}]},
        {"when": {"tool_result": "report_result"}, "text": "reported"},
    ], "default": {"text": "alice: hello"}},
    "manager": {"default": {"text": "manager: noted"}},
}}


def event_time(plane, kind: str, subject: str) -> float | None:
    events = plane.state.events(kind=kind, subject=subject)
    return datetime.fromisoformat(events[-1]["ts"]).timestamp() if events else None


async def busy_worker(team, name: str, title: str):
    """Create ``name``, assign it a task and wait until it is working on it (its first model call)."""
    await team.plane.provisioner.create_worker(name, role="astronomer")
    task = await team.plane.engine.assign_adhoc(name, title, f"{title}, please.")
    await wait_until(lambda: team.model_calls(name) >= 1, timeout=30, what=f"{name} to start working")
    return task


async def test_a_worker_without_progress_is_asked_after_one_interval_and_the_admin_alerted_after_two(tmp_path):
    async with running_team(tmp_path / "home", SCENARIO, heartbeat_seconds=HEARTBEAT) as team:
        plane = team.plane
        task = await busy_worker(team, "bob", "Count the stars")

        asked = await wait_until(lambda: event_time(plane, "task.heartbeat_asked", task.id), timeout=10,
                                 what="the heartbeat question")
        # Bob's last sign of progress was his model call (seen at the check after it, or dispatch).
        last = plane.state.task(task.id).last_progress_at
        progress = datetime.fromisoformat(last).timestamp() if last else datetime.fromisoformat(task.updated_at).timestamp()
        assert HEARTBEAT <= asked - progress <= HEARTBEAT + QUARTER + SLACK
        question = await team.wait_for_message(f"how is **{task.id}** going?", timeout=10)
        assert question.room_id == await plane.chat.worker_room("bob") and team.user_id("bob") in question.mentions

        stalled = await wait_until(lambda: event_time(plane, "task.stalled", task.id), timeout=10,
                                   what="the stall alert")
        assert plane.state.task(task.id).last_progress_at == last  # nothing happened in between
        assert 2 * HEARTBEAT <= stalled - progress <= 2 * HEARTBEAT + QUARTER + SLACK
        alert = await team.wait_for_message(f"**{task.id}** (Count the stars) looks stalled", timeout=10)
        assert alert.room_id == plane.chat.manager_room and team.user_id("admin") in alert.mentions
        current = plane.state.task(task.id)
        assert current.state is TaskState.IN_PROGRESS and current.stalled_at is not None
        status = await plane.status()
        assert next(t for t in status["tasks"] if t["id"] == task.id)["stalled_at"] == current.stalled_at

        # One compact summary for the Manager (the stall needs judgement), and the Manager answers.
        await team.wait_for_message("manager: noted", timeout=20)
        wakes = plane.state.events(kind="manager.wake")
        assert [w["subject"] for w in wakes] == [f"heartbeat:stalled:{task.id}:1"]
        await wait_until(lambda: time.time() - stalled > HEARTBEAT + QUARTER, timeout=10, what="another interval")
        assert len(plane.state.events(kind="task.heartbeat_asked", subject=task.id)) == 1  # no nagging
        assert len(plane.state.events(kind="manager.wake")) == 1  # no summary for routine checks


async def test_a_killed_worker_is_back_within_one_interval_and_its_task_is_renotified(tmp_path):
    async with running_team(tmp_path / "home", SCENARIO, heartbeat_seconds=HEARTBEAT) as team:
        plane = team.plane
        task = await busy_worker(team, "alice", "Map the moon")
        before = await plane.supervisor.backend_status("alice")
        assert before["state"] == "running" and before["worker_pid"]

        os.kill(before["worker_pid"], signal.SIGKILL)
        killed = time.monotonic()

        async def running_again():
            status = await plane.supervisor.backend_status("alice")
            return status["state"] == "running" and status["restarts"] > before["restarts"]

        await wait_until(running_again, timeout=HEARTBEAT, what="alice to run again within one interval")
        assert time.monotonic() - killed <= HEARTBEAT
        assert plane.state.events(kind="worker.crashed", subject="alice")

        notice = await team.wait_for_message(f"Please carry on with **{task.id}**", timeout=30)
        assert "stopped unexpectedly" in notice.body and team.user_id("alice") in notice.mentions
        after = await plane.supervisor.backend_status("alice")
        assert after["worker_pid"] != before["worker_pid"]
        # She re-reads the spec and reports: the task reaches review.
        await wait_until(lambda: plane.state.task(task.id).state is TaskState.REVIEW, timeout=30,
                         what="alice's report after the restart")
        assert plane.state.task(task.id).result_summary == "done after a restart"
        assert len(plane.state.events(kind="task.renotified", subject=task.id)) == 1
