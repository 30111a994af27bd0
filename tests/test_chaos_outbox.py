"""`kill -9` of a real `hiclaw up` in the window between a dispatch's state change and its post.

The control plane kills itself right after it commits task-002's assignment (state: in progress,
dispatched once; message: recorded, not posted) — the test-only hook of
hiclaw.testing.up.UpProcess.crash_after makes that exact point deterministic, no sleeps. Started
again, it posts the recorded "is yours" message before anything else; the task is not dispatched
a second time and the demo project ends exactly as an undisturbed run does. (Before the outbox,
this crash lost the message for good: the state said dispatched, so nothing posted it again.)
"""
from __future__ import annotations

import signal

from test_chaos import EXPECTED_ASSIGNMENTS, read_state

from hiclaw.config import Secrets, load_config, save_config
from hiclaw.demo import REGISTRY_ROOT
from hiclaw.demo.admin import AdminClient
from hiclaw.demo.runner import ASK_PROJECT, ASK_WORKERS, CONFIRM
from hiclaw.demo.scenario import demo_scenario
from hiclaw.models import TaskState
from hiclaw.state import StateDB
from hiclaw.testing.gateway import running_scripted_model
from hiclaw.testing.registry import RunningRegistry
from hiclaw.testing.team import team_config, wait_until
from hiclaw.testing.up import UpProcess

SERVER = "hiclaw.outbox"


async def assignments(admin: AdminClient, room_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in await admin.room_messages(room_id, limit=1000):
        body = event["content"].get("body", "")
        for task_id in EXPECTED_ASSIGNMENTS:
            if f"**{task_id}** is yours" in body:
                counts[task_id] = counts.get(task_id, 0) + 1
    return counts


async def test_a_kill_between_a_dispatch_and_its_post_loses_no_message(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    registry = RunningRegistry(REGISTRY_ROOT).start()
    up = UpProcess(home)
    admin: AdminClient | None = None
    with running_scripted_model(demo_scenario()) as model:
        try:
            save_config(team_config(model.base_url, registry_url=registry.url, server_name=SERVER), home)
            up.crash_after("outbox:assign:task-002")
            await up.start_and_wait_async()
            password = Secrets.load(home).get("matrix_admin_password").get_secret_value()
            admin = AdminClient(f"http://127.0.0.1:{load_config(home).channel.settings['port']}", "admin", password)
            await admin.login()
            await admin.start()
            manager = f"@manager:{SERVER}"
            manager_room = await admin.resolve(f"#hiclaw-manager:{SERVER}")

            def said(needle: str) -> bool:
                return any(m.sender == manager and needle in m.body for m in admin.messages)

            await admin.send(manager_room, ASK_WORKERS, mention=manager)
            await wait_until(lambda: said("Your team is ready"), timeout=180, what="the workers")
            await admin.send(manager_room, ASK_PROJECT, mention=manager)
            await wait_until(lambda: said("Reply *confirm*"), timeout=120, what="the plan")
            await admin.send(manager_room, CONFIRM, mention=manager)

            # task-001 is done and accepted; dispatching task-002 commits, and the process dies.
            assert await up.wait_for_crash(timeout=240) == -signal.SIGKILL
            assert "killing this process after committing outbox entry assign:task-002:1" in up.log.read_text()
            tasks, projects = read_state(home)
            assert tasks["task-002"].state is TaskState.IN_PROGRESS and tasks["task-002"].dispatch_count == 1
            project_room = projects[0].room_id
            assert (await assignments(admin, project_room)).get("task-002") is None  # recorded, not posted
            state = StateDB(home / "state.db", readonly=True)
            try:
                assert "assign:task-002:1" in [m.key for m in state.pending_messages()]
            finally:
                state.close()

            await up.start_and_wait_async()
            assert "outbox: delivered" in up.log.read_text()
            await wait_until(lambda: read_state(home)[1][0].state == "done" and said("is complete"), timeout=300,
                             what="the project to complete after the crash")

            tasks, _ = read_state(home)
            assert all(t.state is TaskState.DONE for t in tasks.values()), {t.id: t.state for t in tasks.values()}
            assert {t.id: t.dispatch_count for t in tasks.values()} == EXPECTED_ASSIGNMENTS
            assert await assignments(admin, project_room) == EXPECTED_ASSIGNMENTS
            state = StateDB(home / "state.db", readonly=True)
            try:
                assert len(state.events(kind="task.dispatched", subject="task-002")) == 1
                assert state.pending_messages() == []
            finally:
                state.close()
        finally:
            if admin is not None:
                await admin.stop()
            up.stop()
            registry.stop()
