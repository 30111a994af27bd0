"""MentionGate: wake only on mentions and DMs, buffer the rest as context, typing while working."""
from __future__ import annotations

import pytest

from hiclaw.models import ChatMessage
from hiclaw.wakeup import MentionGate

ME = "@alice:hiclaw.local"
BOB = "@bob:hiclaw.local"


def msg(n: int, *, room: str = "!r", mentions: tuple[str, ...] = (), direct: bool = False, sender: str = BOB):
    return ChatMessage(room_id=room, event_id=f"$e{n}", sender=sender, body=f"message {n}", mentions=mentions,
                       is_direct=direct)


class Turns:
    def __init__(self) -> None:
        self.turns: list[ChatMessage] = []

    async def __call__(self, message: ChatMessage) -> None:
        self.turns.append(message)


async def test_unmentioned_messages_wake_nobody_and_become_context():
    turns = Turns()
    gate = MentionGate(ME, turns)
    for n in range(100):
        await gate(msg(n))
    assert turns.turns == [] and gate.woken == 0 and gate.buffered == 100
    await gate(msg(100, mentions=(ME,)))
    (turn,) = turns.turns
    assert turn.event_id == "$e100"
    assert [m.event_id for m in turn.context] == [f"$e{n}" for n in range(50, 100)]  # the last 50, oldest first
    assert gate.pending("!r") == ()  # handed over once


async def test_mentions_of_others_and_own_messages_do_not_wake():
    turns = Turns()
    gate = MentionGate(ME, turns)
    await gate(msg(1, mentions=(BOB,)))
    await gate(msg(2, mentions=(ME,), sender=ME))
    assert turns.turns == []
    assert [m.event_id for m in gate.pending("!r")] == ["$e1"]


async def test_direct_messages_wake_and_buffers_are_per_room():
    turns = Turns()
    gate = MentionGate(ME, turns, buffer_size=2)
    await gate(msg(1, room="!a"))
    await gate(msg(2, room="!b"))
    await gate(msg(3, room="!b"))
    await gate(msg(4, room="!b"))
    await gate(msg(5, room="!b", direct=True))
    (turn,) = turns.turns
    assert [m.event_id for m in turn.context] == ["$e3", "$e4"]
    assert [m.event_id for m in gate.pending("!a")] == ["$e1"]


async def test_typing_is_on_while_the_handler_runs_and_off_after():
    events: list[tuple[str, bool]] = []
    seen_typing_during_turn = []

    async def typing(room_id: str, on: bool) -> None:
        events.append((room_id, on))

    async def handler(message: ChatMessage) -> None:
        seen_typing_during_turn.append(list(events))
        raise RuntimeError("the turn failed")

    gate = MentionGate(ME, handler, typing=typing)
    with pytest.raises(RuntimeError):
        await gate(msg(1, mentions=(ME,)))
    assert seen_typing_during_turn == [[("!r", True)]]
    assert events[-1] == ("!r", False)  # cleared even when the turn fails


async def test_failing_typing_does_not_stop_the_turn():
    async def typing(room_id: str, on: bool) -> None:
        raise ConnectionError("homeserver gone")

    turns = Turns()
    gate = MentionGate(ME, turns, typing=typing)
    await gate(msg(1, mentions=(ME,)))
    assert len(turns.turns) == 1


async def test_buffers_survive_a_restart_with_state_path(tmp_path):
    path = tmp_path / "gate.json"
    gate = MentionGate(ME, Turns(), state_path=path)
    for n in range(3):
        await gate(msg(n))
    turns = Turns()
    again = MentionGate(ME, turns, state_path=path)
    await again(msg(9, mentions=(ME,)))
    assert [m.event_id for m in turns.turns[0].context] == ["$e0", "$e1", "$e2"]
    assert MentionGate(ME, Turns(), state_path=path).pending("!r") == ()


MANAGER = "@manager:hiclaw.local"
ADMIN = "@admin:hiclaw.local"


async def test_mentions_by_untrusted_senders_start_no_turn_and_stay_as_context():
    """Issue 14, attack 4 at its root: another worker's mention (or DM) never wakes the agent."""
    turns, refused = Turns(), []

    async def on_refused(message: ChatMessage) -> None:
        refused.append(message.event_id)

    gate = MentionGate(ME, turns, trusted={ADMIN, MANAGER}, on_refused=on_refused)
    await gate(msg(1, mentions=(ME,)))  # bob is a worker: not trusted
    await gate(msg(2, direct=True))
    assert turns.turns == [] and gate.refused == 2 and refused == ["$e1", "$e2"]
    await gate(msg(3, mentions=(ME,), sender=MANAGER))
    (turn,) = turns.turns
    assert [m.event_id for m in turn.context] == ["$e1", "$e2"]  # handed over as context, never answered


async def test_turn_limit_per_room_keeps_the_agent_silent_and_tells_once():
    now = [0.0]
    turns, told = Turns(), []

    async def on_limited(message: ChatMessage) -> None:
        told.append(message.event_id)

    async def assignment(message: ChatMessage) -> bool:
        return "task-" in message.body

    from hiclaw.wakeup import TurnLimiter

    gate = MentionGate(ME, turns, limiter=TurnLimiter(2, 60, clock=lambda: now[0]), unlimited={ADMIN},
                       exempt=assignment, on_limited=on_limited)
    for n in range(5):
        await gate(msg(n, mentions=(ME,), sender=MANAGER))
    assert [t.event_id for t in turns.turns] == ["$e0", "$e1"] and gate.limited == 3 and told == ["$e2"]
    await gate(msg(10, mentions=(ME,), sender=ADMIN))  # the admin is never limited
    await gate(ChatMessage(room_id="!r", event_id="$a", sender=MANAGER, body="task-007 is yours", mentions=(ME,)))
    await gate(msg(11, room="!other", mentions=(ME,), sender=MANAGER))  # per room
    assert [t.event_id for t in turns.turns][2:] == ["$e10", "$a", "$e11"]
    assert [m.event_id for m in turns.turns[2].context] == ["$e2", "$e3", "$e4"]  # kept, not lost
    now[0] = 61.0  # the window has room again: turns run, and a new excess is reported again
    for n in range(20, 24):
        await gate(msg(n, mentions=(ME,), sender=MANAGER))
    assert [t.event_id for t in turns.turns][5:] == ["$e20", "$e21"] and told == ["$e2", "$e22"]
