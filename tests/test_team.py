"""The team on real components: Synapse, the gateway with the scripted model, bwrap workers."""
from __future__ import annotations

import os
import subprocess
import sys

from hiclaw.testing.team import running_team, wait_until

CREATE_ALEX = {
    "manager": {"rules": [
        {"when": {"role": "user", "contains": "create alex"},
         "tool_calls": [{"name": "create_worker", "arguments": {"name": "alex", "role": "researcher"}}]},
        {"when": {"tool_result": "create_worker"}, "text": "alex is ready"},
    ], "default": {"text": "manager: {{input}}"}},
    "alex": {"default": {"text": "alex heard: {{input}}"}},
}


def test_demo_command_passes(tmp_path):
    """The README's main command, end to end: exit 0 only if the final state is exactly right."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HICLAW_")}
    result = subprocess.run([sys.executable, "-m", "hiclaw", "demo", "--home", str(tmp_path / "demo"), "--timeout", "120"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo PASSED" in result.stdout
    assert "FAIL" not in result.stdout


async def test_unmentioned_messages_cost_no_llm_call_and_come_back_as_context(tmp_path):
    async with running_team(tmp_path / "home", {"agents": CREATE_ALEX}) as team:
        await team.tell_manager("@manager please create alex")
        await team.wait_for_message("alex is ready")
        room = await team.plane.chat.worker_room("alex")
        await wait_until(lambda: room in team.admin.room_names, what="the admin to be in alex's room")
        for number in range(12):
            await team.admin.send(room, f"chatter number {number}")
        assert team.model_calls("alex") == 0
        await team.admin.send(room, "@alex what did we say?", mention=team.user_id("alex"))
        reply = await team.wait_for_message("alex heard", sender="alex")
        assert team.model_calls("alex") == 1
        assert "chatter number 0" in reply.body and "chatter number 11" in reply.body
        assert "what did we say?" in reply.body
        usage = {row["consumer"]: row for row in await team.plane.gateway.usage(by="consumer")}
        assert usage["alex"]["calls"] == 1
