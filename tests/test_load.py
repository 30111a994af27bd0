"""Load: 20 workers, 1,000 room messages, 200 concurrent gateway calls — nothing lost, nothing
woken that was not mentioned. Marked slow (about 1.5 minutes on 2 cores); `./dev.sh test` runs it, `HICLAW_SKIP_SLOW=1` skips it."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from hiclaw.testing.team import running_team, wait_until

pytestmark = pytest.mark.slow

WORKERS = [f"w{i:02d}" for i in range(20)]
SCENARIO = {"agents": {"*": {"default": {"text": "{{agent}} got {{input}}"}}}}


async def test_twenty_workers_thousand_messages_two_hundred_calls(tmp_path):
    async with running_team(tmp_path / "home", SCENARIO) as team:
        plane = team.plane
        results = await asyncio.gather(*(plane.provisioner.create_worker(n, role="load worker") for n in WORKERS),
                                       return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert all([await plane.provisioner.is_running(n) for n in WORKERS])

        # 1,000 unmentioned messages over five rooms: no model call at all.
        rooms = {n: await plane.chat.worker_room(n) for n in WORKERS[:5]}
        await wait_until(lambda: all(r in team.admin.room_names for r in rooms.values()), what="admin in the rooms")
        for number in range(1000):
            name = WORKERS[number % 5]
            await team.admin.send(rooms[name], f"note {number} for {name}")
        assert sum(team.model_calls(n) for n in WORKERS) == 0

        # One mention each: every worker answers once, with the last 50 notes of its room as context.
        for name, room in rooms.items():
            await team.admin.send(room, f"@{name} summarise", mention=team.user_id(name))
        for index, name in enumerate(rooms):
            reply = await team.wait_for_message(f"{name} got", sender=name, timeout=120)
            last = 995 + index  # the room's newest note
            assert f"note {last} for {name}" in reply.body and f"note {last - 5 * 49} for {name}" in reply.body
            assert f"note {last - 5 * 50} for {name}" not in reply.body  # capped at 50
        assert [team.model_calls(n) for n in rooms] == [1] * 5

        # 200 concurrent calls through the gateway, 20 consumers: all answered, all in the ledger.
        tokens = {n: await plane.gateway.mint_token(f"load-{n}") for n in WORKERS}
        async with httpx.AsyncClient(timeout=120) as client:
            async def call(index: int) -> int:
                name = WORKERS[index % 20]
                response = await client.post(f"{plane.gateway.base_url}/chat/completions",
                                             headers={"Authorization": f"Bearer {tokens[name]}",
                                                      "X-Hiclaw-Task": f"load-{index}"},
                                             json={"model": "cheap", "messages": [{"role": "user", "content": "hi"}]})
                return response.status_code

            statuses = await asyncio.gather(*(call(i) for i in range(200)))
        assert statuses == [200] * 200
        usage = await plane.gateway.usage(by="consumer")
        assert sum(row["calls"] for row in usage if row["consumer"].startswith("load-")) == 200
