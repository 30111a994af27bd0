"""The Matrix channel against a real Synapse: rooms, mentions, wake-up, formatting, idempotency.

The admin is played by an independent client (raw client-server API over httpx, not matrix-nio),
so what it sees is what Element or FluffyChat would see.
"""
from __future__ import annotations

import asyncio
import secrets

import pytest

from hiclaw.models import ChatMessage
from hiclaw.testing import wait_until
from hiclaw.testing.matrix import MatrixUser, start_worker_channel
from hiclaw.wakeup import MentionGate


class Agent:
    """A worker channel with a MentionGate, recording the turns it would run (its LLM calls)."""

    def __init__(self, channel) -> None:
        self.channel = channel
        self.turns: list[ChatMessage] = []
        self.gate = MentionGate(channel.me, self._turn)
        channel.on_message(self.gate)

    async def _turn(self, message: ChatMessage) -> None:
        self.turns.append(message)


@pytest.fixture
async def team(synapse, matrix_control, tmp_path):
    """Manager (control channel), admin (raw client), workers alice and bob, room per worker."""
    control = await matrix_control()
    password = secrets.token_urlsafe(12)
    creds = await control.ensure_account("admin", password=password, admin=True)
    admin = MatrixUser(creds["user_id"], creds["access_token"], creds["device_id"], password)
    started = []

    async def agent(name: str, **overrides) -> Agent:
        channel = await start_worker_channel(control, name, tmp_path / name, **overrides)
        started.append(channel)
        return Agent(channel)

    class Team:
        pass

    team = Team()
    team.control, team.admin, team.agent = control, admin, agent
    yield team
    for channel in started:
        await channel.stop()


async def shared_room(team, key: str = "project-p1", members=("admin", "alice", "bob")) -> str:
    return await team.control.ensure_room(key, name="Project: demo", members=list(members), admins=["admin"])


async def test_rooms_created_twice_stay_one_room(team, synapse):
    control = team.control
    await control.ensure_account("alice")
    first = await control.ensure_room("worker-alice", name="Worker: alice", members=["admin", "alice"], admins=["admin"])
    again = await control.ensure_room("worker-alice", name="Worker: alice", members=["admin", "alice"], admins=["admin"])
    concurrent = await asyncio.gather(*[control.ensure_room("project-x", name="Project: x", members=["admin"]) for _ in range(3)])
    assert first == again
    assert len(set(concurrent)) == 1
    assert synapse.joined_members(team.admin, first) == {control.me, team.admin.user_id, control.user_id("alice")}
    power = synapse.state(team.admin, first, "m.room.power_levels")
    assert power["users"].get(team.admin.user_id) == 100
    assert power["users"].get(control.user_id("alice"), power.get("users_default", 0)) == 0
    alias = synapse.http.get(f"/_matrix/client/v3/directory/room/%23hiclaw-{control.settings.user_prefix}worker-alice%3A"
                             f"{synapse.server_name}", headers=team.admin.headers).json()
    assert alias["room_id"] == first


async def test_each_mention_form_wakes_exactly_the_mentioned_agent(team, synapse):
    alice, bob = await team.agent("alice"), await team.agent("bob")
    room = await shared_room(team)
    alice_id = alice.channel.me
    forms = [
        {"msgtype": "m.text", "body": "please look", "m.mentions": {"user_ids": [alice_id]}},
        {"msgtype": "m.text", "body": "alice: please look", "format": "org.matrix.custom.html",
         "formatted_body": f'<a href="https://matrix.to/#/{alice_id}">alice</a>: please look'},
        {"msgtype": "m.text", "body": f"@{alice_id[1:].split(':')[0]} please look"},
    ]
    sent = [synapse.send(team.admin, room, content) for content in forms]
    await wait_until(lambda: bob.channel.counters["delivered"] >= 3, what="bob to see the three messages")
    await wait_until(lambda: len(alice.turns) >= 3, what="alice's three turns")
    assert [t.event_id for t in alice.turns] == sent
    assert bob.turns == [] and bob.gate.woken == 0
    assert all(alice_id in t.mentions for t in alice.turns)


async def test_chatter_wakes_nobody_and_the_next_mention_carries_it(team, synapse):
    alice, bob = await team.agent("alice"), await team.agent("bob")
    room = await shared_room(team)
    chatter = [synapse.send(team.admin, room, f"note {n}") for n in range(100)]
    await wait_until(lambda: alice.channel.counters["delivered"] >= 100 and bob.channel.counters["delivered"] >= 100,
                         timeout=30, what="100 messages delivered to both")
    assert alice.turns == [] and bob.turns == []  # 100 messages, zero LLM calls
    mention = synapse.send(team.admin, room, {"msgtype": "m.text", "body": "@alice summarise",
                                              "m.mentions": {"user_ids": [alice.channel.me]}})
    await wait_until(lambda: alice.turns, what="alice's turn")
    (turn,) = alice.turns
    assert turn.event_id == mention
    assert [m.event_id for m in turn.context] == chatter[-50:]
    assert bob.turns == []


async def test_an_independent_client_sees_html_pills_and_m_mentions(team, synapse):
    await team.control.ensure_account("alice")
    room = await shared_room(team, members=("admin", "alice"))
    event_id = await team.control.send(room, "**Review** the plan, @admin", mentions=["alice", "admin"])
    (event,) = [e for e in synapse.messages(team.admin, room) if e["event_id"] == event_id]
    content = event["content"]
    alice_id = team.control.user_id("alice")
    assert content["body"].startswith("@alice ") and "@admin" in content["body"]
    assert content["format"] == "org.matrix.custom.html"
    assert f'<a href="https://matrix.to/#/{alice_id}">alice</a>' in content["formatted_body"]
    assert f'<a href="https://matrix.to/#/{team.admin.user_id}">admin</a>' in content["formatted_body"]
    assert "<strong>Review</strong>" in content["formatted_body"]
    assert sorted(content["m.mentions"]["user_ids"]) == sorted([alice_id, team.admin.user_id])

    async def highlighted():  # Synapse's push rules flag it for the admin's phone
        resp = synapse.http.get("/_matrix/client/v3/notifications", headers=team.admin.headers)
        return any(n["event"]["event_id"] == event_id and {"set_tweak": "highlight"} in n["actions"]
                   for n in resp.json()["notifications"])

    await wait_until(highlighted, what="the mention to be a highlight")


async def test_long_messages_are_split_and_wake_once(team, synapse):
    alice = await team.agent("alice")
    room = await shared_room(team, members=("admin", "alice"))
    team.control.settings.max_message_chars = 300
    text = "\n\n".join(f"paragraph {n} " + "word " * 40 for n in range(4))
    await team.control.send(room, text, mentions=["alice"])
    await wait_until(lambda: alice.turns, what="alice's turn")
    parts = [e for e in synapse.messages(team.admin, room) if "org.hiclaw.part" in e["content"]]
    assert len(parts) >= 3 and all(len(e["content"]["body"]) <= 300 for e in parts)
    assert [e["content"]["m.mentions"] for e in parts[:-1]] == [{}] * (len(parts) - 1)
    (turn,) = alice.turns
    assert turn.event_id == parts[-1]["event_id"]
    assert [m.event_id for m in turn.context] == [e["event_id"] for e in parts[:-1]]


async def test_idempotency_key_never_posts_twice_even_after_a_restart(team, synapse, matrix_control):
    room = await shared_room(team, members=("admin",))
    first = await team.control.send(room, "dispatching task-7", idempotency_key="dispatch:task-7")
    assert await team.control.send(room, "dispatching task-7", idempotency_key="dispatch:task-7") == first
    await team.control.stop()
    restarted = await matrix_control(prefix=team.control.settings.user_prefix, home=team.control.home)
    assert await restarted.send(room, "dispatching task-7", idempotency_key="dispatch:task-7") == first
    bodies = [e["content"]["body"] for e in synapse.messages(team.admin, room)]
    assert bodies.count("dispatching task-7") == 1


async def test_rate_limited_sends_are_retried_after_the_server_says(team, synapse):
    room = await shared_room(team, members=("admin",))
    # One message per second: the second of two back-to-back sends is certainly refused with 429.
    synapse.override_ratelimit(team.control.me, messages_per_second=1, burst_count=1)
    ids = [await team.control.send(room, f"burst {n}") for n in range(2)]
    assert team.control.counters["rate_limited"] >= 1
    seen = {e["event_id"] for e in synapse.messages(team.admin, room)}
    assert set(ids) <= seen


async def test_only_allowed_senders_reach_the_agent(team, synapse):
    control = team.control
    room = await shared_room(team, members=("admin",))
    turns: list[ChatMessage] = []

    async def record(message: ChatMessage) -> None:
        turns.append(message)

    control.on_message(record)
    stranger = synapse.register(f"eve-{secrets.token_hex(3)}")  # on the server, but not one of ours
    synapse.http.post(f"/_matrix/client/v3/rooms/{room}/invite", headers=team.admin.headers,
                      json={"user_id": stranger.user_id}).raise_for_status()
    synapse.join(stranger, room)
    synapse.send(stranger, room, {"msgtype": "m.text", "body": "@manager obey", "m.mentions": {"user_ids": [control.me]}})
    admins = synapse.send(team.admin, room, "hello manager")
    await wait_until(lambda: any(t.event_id == admins for t in turns), what="the admin's message")
    assert [t.sender for t in turns] == [team.admin.user_id]
    assert control.counters["dropped_sender"] == 1


async def test_workers_accept_invites_from_the_manager_only(team, synapse):
    alice = await team.agent("alice")
    stranger = synapse.register(f"eve-{secrets.token_hex(3)}")
    untrusted = synapse.create_room(stranger, name="trap", join=False)
    synapse.http.post(f"/_matrix/client/v3/rooms/{untrusted}/invite", headers=stranger.headers,
                      json={"user_id": alice.channel.me}).raise_for_status()
    resp = await team.control.client.room_create(name="side room", invite=[alice.channel.me])
    await wait_until(lambda: resp.room_id in {r["room_id"] for r in alice.channel.rooms()}, what="alice to join")
    assert untrusted not in {r["room_id"] for r in alice.channel.rooms()}


async def test_typing_shows_while_an_agent_works(team, synapse):
    release = asyncio.Event()
    channel = await start_worker_channel(team.control, "alice", team.control.home / "alice-worker")
    working = []

    async def slow_turn(message: ChatMessage) -> None:
        working.append(message)
        await release.wait()

    channel.on_message(MentionGate(channel.me, slow_turn, typing=channel.set_typing))
    room = await shared_room(team, members=("admin", "alice"))
    sync = {"since": synapse.http.get("/_matrix/client/v3/sync", headers=team.admin.headers,
                                      params={"timeout": 0}).json()["next_batch"], "typing": []}

    def typing_users() -> list[str]:
        # Each call moves the sync token on (Synapse caches identical /sync requests for a while).
        resp = synapse.http.get("/_matrix/client/v3/sync", headers=team.admin.headers,
                                params={"since": sync["since"], "timeout": 0}).json()
        sync["since"] = resp["next_batch"]
        ephemeral = resp.get("rooms", {}).get("join", {}).get(room, {}).get("ephemeral", {}).get("events", [])
        for event in ephemeral:
            if event["type"] == "m.typing":
                sync["typing"] = event["content"]["user_ids"]
        return sync["typing"]

    try:
        synapse.send(team.admin, room, {"msgtype": "m.text", "body": "@alice go", "m.mentions": {"user_ids": [channel.me]}})
        await wait_until(lambda: working, what="alice's turn to start")
        await wait_until(lambda: channel.me in typing_users(), what="alice typing")
        release.set()
        await wait_until(lambda: channel.me not in typing_users(), what="alice to stop typing")
    finally:
        release.set()
        await channel.stop()
