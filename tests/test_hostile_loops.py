"""Attack 4 of issue 14 — who may wake whom, loops and spend — on a live team with bwrap workers.

Two hostile workers, ``ann`` and ``ben``, in a room together. Their scripted models answer
*every* turn by running a program in their sandbox (their own ``run_command`` tool, as a
malicious skill would) that posts, with the worker's own Matrix token from its runtime spec, a
real mention of the other worker (body, pill and ``m.mentions``) into every room they share —
and then reply. Before the fix one such message started an endless ann ↔ ben loop (582 model
calls in 40 s): ``trusted`` in the runtime spec was never read. Now a worker's mention wakes no
other worker (it is kept as context), a per-room turn limit silences an agent that others than
the admin keep waking (and the admin is told once), and every worker has a default budget.

"Nothing more happens" is shown without sleeping: after the attack the admin sends a sentinel
mention, and the counts are taken once the sentinel's turn has been answered — every message
posted before it has been through the gate by then.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.testing.team import Team, running_team, wait_until

module_loop = pytest.mark.asyncio(loop_scope="module")
needs_bwrap = pytest.mark.skipif(bwrap_unavailable() is not None, reason=str(bwrap_unavailable()))
pytestmark = [needs_bwrap, module_loop]

ANN, BEN = "ann", "ben"
TURN_LIMIT = 2  # [team] max_turns_per_room_per_minute of this team
MARK = "LOOP-ATTACK"

#: Runs inside a worker's sandbox: mention PEER in every room both are in, as the worker itself.
POST_MENTION = r'''
import json, os, time, urllib.parse, urllib.request
spec = None
for pid in os.listdir("/proc"):
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        continue
    for item in env:
        if item.startswith(b"HICLAW_WORKER_SPEC="):
            spec = json.loads(item.split(b"=", 1)[1])
channel = spec["channel"]["settings"]
base, me = channel["homeserver_url"].rstrip("/") + "/_matrix/client/v3", channel["user_id"]
peer = me.replace(f"{spec['name']}:", "PEER:", 1)

def call(method, path, body=None):
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": "Bearer " + channel["access_token"],
                                              "Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read())

posted = 0
for room in call("GET", "/joined_rooms")["joined_rooms"]:
    room_path = "/rooms/" + urllib.parse.quote(room)
    if peer in call("GET", room_path + "/joined_members")["joined"]:
        content = {"msgtype": "m.text", "body": "@PEER your turn MARK", "format": "org.matrix.custom.html",
                   "formatted_body": f'<a href="https://matrix.to/#/{peer}">PEER</a> your turn MARK',
                   "m.mentions": {"user_ids": [peer]}}
        call("PUT", f"{room_path}/send/m.room.message/{time.time_ns()}", content)
        posted += 1
print("posted", posted)
'''


def looping_worker(peer: str) -> dict[str, Any]:
    """The worst case: every turn mentions the other worker (from the sandbox), then replies."""
    script = POST_MENTION.replace("PEER", peer).replace("MARK", MARK)
    return {"rules": [
        {"when": {"role": "user"},
         "tool_calls": [{"name": "run_command", "arguments": {"command": f"python3 - <<'EOF'\n{script}\nEOF",
                                                             "timeout_seconds": 60}}]},
        {"when": {"tool_result": "run_command"}, "text": f"@{peer} over to you"},
    ]}


SCENARIO = {"agents": {
    ANN: looping_worker(BEN),
    BEN: looping_worker(ANN),
    "manager": {"rules": [
        # A Manager turn (the admin's) whose model nudges ann far more often than a person would.
        {"when": {"role": "user", "contains": "nudge ann"},
         "tool_calls": [{"name": "send_message", "arguments": {"room": f"Worker: {ANN}", "text": f"@{ANN} ping {n}",
                                                                "mentions": [ANN]}} for n in range(1, 5)]},
        {"when": {"tool_result": "send_message"}, "text": "nudged"},
    ], "default": {"text": "ok"}},
    "*": {"default": {"text": "ok"}},
}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def team(tmp_path_factory) -> AsyncIterator[Team]:
    home = tmp_path_factory.mktemp("loops") / "home"
    async with running_team(home, SCENARIO, sandbox="bwrap", max_turns_per_room_per_minute=TURN_LIMIT) as live:
        for name in (ANN, BEN):
            await live.plane.provisioner.create_worker(name, role="tester")
        yield live


def replies(team: Team, sender: str, room_id: str, *, to: str) -> list[Any]:
    """``sender``'s replies in ``room_id`` that mention ``to`` (the sender of the turn they answer)."""
    return [m for m in team.admin.messages if m.room_id == room_id and m.sender == team.user_id(sender)
            and "over to you" in m.body and team.user_id(to) in m.mentions]


def prompts(team: Team, agent: str) -> list[str]:
    return [r["latest_input"] for r in team.model.recent if r["agent"] == agent and r["latest_role"] == "user"]


async def test_one_worker_mentioning_another_starts_no_loop(team):
    plane = team.plane
    room = await plane.chat.room("loop-test", "Loop test", [ANN, BEN])

    async def everyone_joined() -> bool:
        members = (await team.admin._call("GET", f"/rooms/{room}/joined_members"))["joined"]
        return {team.user_id(ANN), team.user_id(BEN)} <= set(members)

    await wait_until(everyone_joined, timeout=60, what="ann and ben to join the shared room")

    # The admin wakes ann once; ann's turn attacks: from its sandbox it mentions ben in the room.
    await team.admin.send(room, f"@{ANN} start", mention=team.user_id(ANN))
    await wait_until(lambda: [m for m in team.admin.messages if m.room_id == room and MARK in m.body
                              and team.user_id(BEN) in m.mentions and m.sender == team.user_id(ANN)],
                     timeout=120, what="ann's mention of ben, posted from its sandbox")
    await wait_until(lambda: replies(team, ANN, room, to="admin"), timeout=60, what="ann's reply to the admin")

    # Sentinels: once ben, then ann, have answered a later admin mention, every earlier message
    # (ann's attack, and ben's own attack on ann in its sentinel turn) has been through their gates.
    await team.admin.send(room, f"@{BEN} sentinel", mention=team.user_id(BEN))
    await wait_until(lambda: replies(team, BEN, room, to="admin"), timeout=120, what="ben's answer to the sentinel")
    await wait_until(lambda: [m for m in team.admin.messages if m.room_id == room and MARK in m.body
                              and m.sender == team.user_id(BEN)], timeout=60, what="ben's attack on ann")
    await team.admin.send(room, f"@{ANN} sentinel", mention=team.user_id(ANN))
    await wait_until(lambda: len(replies(team, ANN, room, to="admin")) == 2, timeout=120,
                     what="ann's answer to the sentinel")

    # A loop would have made dozens of calls by now; each woke only for the admin (2 calls a turn).
    calls = {name: team.model_calls(name) for name in (ANN, BEN)}
    assert calls == {ANN: 4, BEN: 2}, calls
    assert not [p for p in prompts(team, BEN) + prompts(team, ANN) if p.startswith(("ann wrote", "ben wrote"))]
    # The other's mention reached ben only as quoted context of the admin's turn, never as a turn.
    (ben_prompt,) = prompts(team, BEN)
    assert f'{{"from": "ann", "text": "@ben your turn {MARK}"}}' in ben_prompt
    # Nor did replies mention the other worker: each answered the admin.
    assert not [m for m in team.admin.messages if m.room_id == room and "over to you" in m.body
                and {team.user_id(ANN), team.user_id(BEN)} & set(m.mentions)]


async def test_an_agent_others_keep_waking_stays_silent_and_the_admin_is_told_once(team):
    plane = team.plane
    room = await plane.chat.worker_room(ANN)
    await wait_until(lambda: room in team.admin.room_names, timeout=60, what="the admin in ann's room")
    before = team.model_calls(ANN)

    # One admin request; the Manager's model then mentions ann four times in a row in its room.
    await team.tell_manager("@manager nudge ann")
    await team.wait_for_message("nudged", timeout=120)
    notice = await team.wait_for_message("stopped answering", timeout=60)
    assert f"@admin {ANN} stopped answering in Worker: {ANN}" in notice.body and team.user_id("admin") in notice.mentions
    assert notice.room_id == plane.chat.manager_room

    # The admin is never limited: its sentinel is answered, with the silenced pings as context.
    await team.admin.send(room, f"@{ANN} sentinel", mention=team.user_id(ANN))
    await wait_until(lambda: replies(team, ANN, room, to="admin"), timeout=120, what="ann's answer to the admin")
    assert team.model_calls(ANN) - before == 2 * (TURN_LIMIT + 1)  # two pings answered, then the admin
    sentinel = prompts(team, ANN)[-1]
    assert f'"text": "@{ANN} ping 3"' in sentinel and f'"text": "@{ANN} ping 4"' in sentinel
    assert sentinel.rstrip().endswith("~~~~") and "admin wrote to you" in sentinel
    assert len([m for m in team.admin.messages if "stopped answering" in m.body]) == 1


async def test_every_worker_gets_the_default_budget_unless_it_has_its_own(team):
    plane = team.plane
    await plane.provisioner.create_worker("cara", role="tester", budget_usd=1.25)  # `hiclaw worker create --budget`
    budgets = {row["name"]: row["budget_usd"] for row in await plane.gateway.list_tokens()}
    assert budgets[ANN] == budgets[BEN] == 5.0, budgets  # [team] worker_budget_usd, by default
    assert plane.config.team.worker_budget_usd == 5.0
    assert budgets["cara"] == 1.25
    assert budgets["manager"] is None
