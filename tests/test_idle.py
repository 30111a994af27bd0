"""Idle sleep on a real team: an idle worker's process stops; a mention or an assignment wakes it
(ready before the assignment is posted); a message posted while it slept still reaches it; the
CLI shows it sleeping; a restarted control plane leaves it asleep."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from urllib.parse import quote

from hiclaw.models import TaskState
from hiclaw.scripted import parse_scenario
from hiclaw.scripted.server import ScriptedModelServer
from hiclaw.testing import clean_env
from hiclaw.testing.team import running_team, start_plane, wait_until

IDLE = 1.5

SCENARIO = {"agents": {
    "bob": {"rules": [
        {"when": {"contains": "are you awake"}, "text": "bob: awake and listening"},
        {"when": {"contains": "is yours", "regex": r"\*\*(?P<task>task-\d+)\*\*"},
         "tool_calls": [{"name": "report_result", "arguments": {"task_id": "{{task}}", "status": "SUCCESS",
                                                               "summary": "named them"}}]},
        {"when": {"tool_result": "report_result"}, "text": "reported"},
    ], "default": {"text": "bob: hm"}},
    "manager": {"default": {"text": "manager: noted"}},
}}


def asleep(plane, name: str) -> bool:
    return (plane.state.worker(name).state == "sleeping"
            and plane.supervisor.status(name)["state"] in ("stopped", "absent"))


async def cli_json(home: Path, *args: str) -> object:
    env = clean_env(home)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hiclaw", *args, "--json", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_idle_workers_sleep_and_wake_on_mention_and_assignment(tmp_path):
    home = tmp_path / "home"
    async with running_team(home, SCENARIO, idle_sleep_seconds=IDLE) as team:
        plane = team.plane
        await plane.provisioner.create_worker("bob", role="astronomer")
        await wait_until(lambda: asleep(plane, "bob"), timeout=IDLE * 4, what="bob to fall asleep")
        listed = await cli_json(home, "worker", "list")
        assert [(w["name"], w["state"], w["process"]) for w in listed] == [("bob", "sleeping", "stopped")]

        # A message posted while bob sleeps wakes him, and he still receives it (persisted sync token).
        room = await plane.chat.worker_room("bob")
        await team.admin.send(room, "@bob are you awake?", mention=team.user_id("bob"))
        await team.wait_for_message("bob: awake and listening", sender="bob", timeout=30)
        woken = plane.state.events(kind="worker.woken", subject="bob")
        assert [e["data"]["reason"] for e in woken] == ["mentioned by admin"]
        assert plane.state.worker("bob").state == "active"

        # Asleep again, an assignment wakes him — ready before the assignment is posted.
        await wait_until(lambda: asleep(plane, "bob"), timeout=IDLE * 4, what="bob to fall asleep again")
        task = await plane.engine.assign_adhoc("bob", "Name the stars", "Name three.")
        assert plane.state.events(kind="worker.woken", subject="bob")[-1]["data"]["reason"] == "assignment"
        event_id = plane.state.outbox_get(f"assign:{task.id}:1")
        event = await team.admin._call("GET", f"/rooms/{quote(room)}/event/{quote(event_id)}")
        assert plane.provisioner.ready_at["bob"] < event["origin_server_ts"] / 1000
        await wait_until(lambda: plane.state.task(task.id).state is TaskState.REVIEW, timeout=30,
                         what="bob's report")
        await wait_until(lambda: asleep(plane, "bob"), timeout=IDLE * 4, what="bob to sleep after his task")
        config = team.config

    # A restarted control plane does not wake him.
    model = ScriptedModelServer(parse_scenario(SCENARIO))
    await model.start()
    config = config.model_copy(deep=True)
    for alias in config.models.values():
        alias.api_base = model.base_url
    plane = await start_plane(home, config)
    try:
        assert asleep(plane, "bob") and plane.supervisor.status("bob")["state"] == "absent"
        report = await plane.watchdog.tick()
        assert report.restarted == [] and asleep(plane, "bob")
        status = await plane.status()
        assert [(w["name"], w["state"]) for w in status["workers"]] == [("bob", "sleeping")]
        assert len(plane.state.events(kind="worker.woken", subject="bob")) == 2
    finally:
        await plane.stop()
        await model.stop()
