"""Two ad-hoc tasks in a row for one worker (bwrap, local storage: a new task's folder reaches the
sandbox only with a restart), the first still awaiting the Manager's review: the second is held —
pending, never posted, so the worker is not handed a task it cannot open — and dispatched once
the first is accepted; the worker reports both. Held across a control-plane restart too."""
from __future__ import annotations

import asyncio
import sys

from hiclaw.models import TaskState
from hiclaw.state import Task
from hiclaw.testing import clean_env
from hiclaw.testing.team import running_team, wait_until

SCENARIO = {"agents": {
    "bob": {"rules": [
        {"when": {"contains": "is yours", "regex": r"\*\*(?P<task>task-\d+)\*\*"},
         "tool_calls": [{"name": "report_result", "arguments": {"task_id": "{{task}}", "status": "SUCCESS",
                                                               "summary": "done {{task}}"}}]},
        {"when": {"tool_result": "report_result"}, "text": "reported"},
    ], "default": {"text": "bob: hm"}},
    "manager": {"default": {"text": "manager: noted"}},
}}


async def second_while_first_in_review(plane) -> tuple[Task, Task]:
    await plane.provisioner.create_worker("bob", role="helper")
    first = await plane.engine.assign_adhoc("bob", "First chore", "Do one thing.")
    await wait_until(lambda: plane.state.task(first.id).state is TaskState.REVIEW, timeout=30,
                     what="bob's first report")
    second = await plane.engine.assign_adhoc("bob", "Second chore", "Do another thing.")
    assert second.state is TaskState.PENDING
    return first, second


async def test_second_adhoc_task_while_the_first_awaits_review(tmp_path):
    async with running_team(tmp_path / "home", SCENARIO) as team:
        plane = team.plane
        first, second = await second_while_first_in_review(plane)
        held = plane.state.events(kind="task.held", subject=second.id)
        assert [(e["data"]["assignee"], e["data"]["until"]) for e in held] == [("bob", [first.id])]
        assert plane.state.outbox_get(f"assign:{second.id}:1") is None
        await plane.engine.accept_task(first.id)
        await wait_until(lambda: plane.state.task(second.id).state is TaskState.REVIEW, timeout=30,
                         what="bob's second report")
        assert plane.state.task(second.id).result_summary == f"done {second.id}"
        # From the CLI, while the second awaits review: held, and it says so.
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hiclaw", "task", "assign", "bob", "Third chore",
                                                    env=clean_env(team.home), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "task-003 assigned to bob: Third chore — held: bob is busy" in out.decode()
        assert plane.state.task("task-003").state is TaskState.PENDING


async def test_a_held_assignment_is_posted_once_after_a_control_plane_restart(tmp_path):
    """Held (pending) when the plane stops: the restarted plane cannot adopt bob's old run (its
    folders changed), starts him afresh with every folder, and posts the held task exactly once —
    the first task still awaits its review, untouched."""
    from hiclaw.testing.team import start_plane

    home = tmp_path / "home"
    async with running_team(home, SCENARIO) as team:
        plane = team.plane
        first, second = await second_while_first_in_review(plane)
        config = team.config
        await plane.stop()
        again = await start_plane(home, config)
        try:
            await wait_until(lambda: again.state.task(second.id).state is TaskState.REVIEW, timeout=30,
                             what="bob's second report")
            assert again.state.task(first.id).state is TaskState.REVIEW
            assert [e["data"]["attempt"] for e in again.state.events(kind="task.dispatched", subject=second.id)] == [1]
            assert again.state.task(second.id).result_summary == f"done {second.id}"
        finally:
            await again.stop()
