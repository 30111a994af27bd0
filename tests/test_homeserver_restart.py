"""Homeserver restart: agents reconnect on their own and mentions sent once it is back, while
they are still reconnecting, are handled (their sync tokens make sure nothing is skipped)."""
from __future__ import annotations

import httpx

from hiclaw.testing.team import running_team, wait_until

SCENARIO = {"agents": {
    "manager": {"rules": [
        {"when": {"role": "user", "contains": "create alex"},
         "tool_calls": [{"name": "create_worker", "arguments": {"name": "alex", "role": "researcher"}}]},
        {"when": {"tool_result": "create_worker"}, "text": "alex is ready"},
    ], "default": {"text": "manager heard: {{input}}"}},
    "alex": {"default": {"text": "alex heard: {{input}}"}},
}}


async def test_agents_reconnect_after_a_homeserver_restart(tmp_path):
    async with running_team(tmp_path / "home", SCENARIO) as team:
        await team.tell_manager("@manager please create alex")
        await team.wait_for_message("alex is ready")
        room = await team.plane.chat.worker_room("alex")
        url = team.plane.bridge_urls()["homeserver"]

        await team.plane.channel.stop_services()  # Synapse goes away under every agent

        async def down() -> bool:
            try:
                httpx.get(f"{url}/health", timeout=0.5)
            except httpx.HTTPError:
                return True
            return False

        await wait_until(down, what="the homeserver to be down")
        await team.plane.channel.start_services()
        await team.admin.send(room, "@alex are you back?", mention=team.user_id("alex"))
        await team.tell_manager("@manager and you?")
        reply = await team.wait_for_message("alex heard", sender="alex", timeout=90)
        assert "are you back?" in reply.body
        await team.wait_for_message("manager heard", timeout=90)
        assert team.model_calls("alex") == 1
