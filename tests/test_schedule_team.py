"""A scheduled task on the real team: the Manager schedules it with its tool, the clock (injected,
moved by the test) reaches 09:00 Paris, code posts the message mentioning the worker in its room,
the worker (scripted model, real sandbox) writes its output and answers; the CLI talks to the
running plane through the control API."""
from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from hiclaw.control.cron import ManualClock
from hiclaw.testing import clean_env
from hiclaw.testing.team import running_team

SCENARIO = {"agents": {
    "manager": {"rules": [
        {"when": {"role": "user", "contains": "every morning"},
         "tool_calls": [{"name": "schedule_add", "arguments": {
             "name": "metrics", "cron": "0 9 * * *", "timezone": "Europe/Paris", "assignee": "jordan",
             "message": "post yesterday's metrics"}}]},
        {"when": {"tool_result": "schedule_add", "regex": r'"next_run_local": "(?P<next>[^"]+)"'},
         "text": "scheduled; next run {{next}}"},
    ], "default": {"text": "manager: {{input}}"}},
    "jordan": {"rules": [
        {"when": {"role": "user", "regex": r"Write your output to `(?P<out>[^`]+)`"},
         "tool_calls": [{"name": "write_file", "arguments": {"path": "{{out}}", "content": "visits: 42\n"}}]},
        {"when": {"tool_result": "write_file"}, "text": "metrics posted: 42 visits"},
    ]},
}}


async def hiclaw(cli, home, *args):
    """The real console script, without blocking the event loop the control plane runs on."""
    env = clean_env(home)
    proc = await asyncio.create_subprocess_exec(str(cli), "schedule", *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_a_schedule_fires_with_a_mention_and_the_worker_answers(tmp_path, hiclaw_cli):
    async with running_team(tmp_path / "home", SCENARIO) as team:
        plane = team.plane
        clock = ManualClock(datetime(2030, 6, 3, 6, 58, tzinfo=UTC))  # 08:58 in Paris
        plane.scheduler.clock = clock
        await plane.provisioner.create_worker("jordan", role="analyst", model="smart")

        await team.tell_manager("@manager every morning at 9 Paris time, have jordan post yesterday's metrics")
        await team.wait_for_message("scheduled; next run 2030-06-03T09:00:00+02:00")
        listed = json.loads(await hiclaw(hiclaw_cli, team.home, "list", "--json"))  # through the control API
        assert [(s["name"], s["assignee"], s["next_run"], s["last_run"]) for s in listed] == [
            ("metrics", "jordan", "2030-06-03T07:00:00+00:00", None)]
        assert team.model_calls("jordan") == 0

        clock.advance(minutes=2)  # 09:00 in Paris: the scheduler's loop wakes and fires
        room = await plane.chat.worker_room("jordan")
        post = await team.wait_for_message("scheduled task **metrics**")
        assert post.room_id == room and post.mentions == [team.user_id("jordan")]
        assert post.body.startswith("@jordan scheduled task **metrics** (2030-06-03 09:00 CEST): post yesterday's metrics")
        assert team.user_id("jordan") in post.content["formatted_body"]  # a pill, not just text

        reply = await team.wait_for_message("metrics posted: 42 visits", sender="jordan")
        assert reply.room_id == room
        assert team.model_calls("jordan") == 2
        record = (await plane.storage.get("shared/schedules/metrics/run-20300603T070000Z.md")).decode()
        assert "assignee: jordan" in record and "late: false" in record and "post yesterday's metrics" in record
        output = await plane.storage.get("agents/jordan/schedules/metrics/run-20300603T070000Z.md")
        assert output == b"visits: 42\n"
        assert plane.state.schedule("metrics").last_run == "2030-06-03T07:00:00+00:00"

        table = await hiclaw(hiclaw_cli, team.home, "list")
        assert "2030-06-04 09:00 CEST" in table and "2030-06-03 09:00 CEST" in table
        assert "removed schedule metrics" in await hiclaw(hiclaw_cli, team.home, "remove", "metrics")
        assert plane.state.schedules() == []
        clock.advance(days=1)
        assert await plane.scheduler.run_due() == []  # removed: nothing fires any more
        assert [m.body for m in team.admin.messages if "scheduled task" in m.body] == [post.body]
