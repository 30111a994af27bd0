"""Restart = reconcile: `kill -9` of the control plane at points of the demo scenario, then
`hiclaw up` again. The project must end in exactly the state of an undisturbed run, with no
assignment posted twice in any room.

The control plane runs as a real `hiclaw up` process; the scripted model and the skill registry
run in the test process, so they survive the kills (as a real provider would).
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

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

SERVER = "hiclaw.chaos"
EXPECTED_ASSIGNMENTS = {"task-001": 1, "task-002": 1, "task-003": 1, "task-004": 2, "task-005": 1, "task-006": 1}


def read_state(home: Path) -> tuple[dict, list]:
    state = StateDB(home / "state.db", readonly=True)
    try:
        return {t.id: t for t in state.tasks()}, state.projects()
    finally:
        state.close()


async def run_chaos(tmp_path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    home = tmp_path / "home"
    home.mkdir()
    registry = RunningRegistry(REGISTRY_ROOT).start()
    up = UpProcess(home)
    admin: AdminClient | None = None
    with running_scripted_model(demo_scenario()) as model:
        try:
            save_config(team_config(model.base_url, registry_url=registry.url, server_name=SERVER), home)
            await up.start_and_wait_async()
            password = Secrets.load(home).get("matrix_admin_password").get_secret_value()
            homeserver = f"http://127.0.0.1:{load_config(home).channel.settings['port']}"
            admin = AdminClient(homeserver, "admin", password)
            await admin.login()
            await admin.start()
            manager = f"@manager:{SERVER}"
            manager_room = await admin.resolve(f"#hiclaw-manager:{SERVER}")

            def said(needle: str) -> bool:
                return any(m.sender == manager and needle in m.body for m in admin.messages)

            # Kill points: after the k-th message seen once the plan is confirmed (random k).
            kill_at = sorted(rng.sample(range(2, 30), kills))
            await admin.send(manager_room, ASK_WORKERS, mention=manager)
            await wait_until(lambda: said("Your team is ready"), timeout=180, what="the workers")
            await admin.send(manager_room, ASK_PROJECT, mention=manager)
            await wait_until(lambda: said("Reply *confirm*"), timeout=120, what="the plan")
            await admin.send(manager_room, CONFIRM, mention=manager)
            baseline = len(admin.messages)
            for point in kill_at:
                try:
                    await wait_until(lambda point=point: (len(admin.messages) - baseline >= point
                                                          or read_state(home)[1][0].state == "done"),
                                     timeout=120, what=f"message {point} after confirming")
                except TimeoutError:
                    break
                if read_state(home)[1][0].state == "done":
                    break
                up.kill()
                await up.start_and_wait_async()
            await wait_until(lambda: read_state(home)[1][0].state == "done" and said("is complete"), timeout=300,
                             what="the project to complete after the restarts")

            tasks, projects = read_state(home)
            assert sorted(tasks) == sorted(EXPECTED_ASSIGNMENTS)
            assert all(t.state is TaskState.DONE for t in tasks.values()), {t.id: t.state for t in tasks.values()}
            assert tasks["task-006"].revision_of == "task-004" and tasks["task-006"].assignee == "sam"
            assert tasks["task-004"].dispatch_count == 2
            project_room = projects[0].room_id
            events = await admin.room_messages(project_room, limit=1000)
            counts: dict[str, int] = {}
            for event in events:
                body = event["content"].get("body", "")
                for task_id in EXPECTED_ASSIGNMENTS:
                    if f"**{task_id}** is yours" in body:
                        counts[task_id] = counts.get(task_id, 0) + 1
            assert counts == EXPECTED_ASSIGNMENTS, f"assignments per task after {up.starts - 1} kills: {counts}"
            for room in await admin.joined_rooms():
                bodies = [e["event_id"] for e in await admin.room_messages(room, limit=1000)]
                assert len(bodies) == len(set(bodies))
        finally:
            if admin is not None:
                await admin.stop()
            up.stop()
            registry.stop()


async def test_kill_the_control_plane_twice_during_the_demo(tmp_path):
    await run_chaos(tmp_path, kills=2, seed=7)


@pytest.mark.parametrize("seed", [pytest.param(seed, marks=pytest.mark.slow) for seed in (1, 2, 3)]
                         + [pytest.param(seed, marks=pytest.mark.long) for seed in (4, 5)])
async def test_kill_the_control_plane_many_times_during_the_demo(tmp_path, seed):
    await run_chaos(tmp_path, kills=5, seed=seed)
