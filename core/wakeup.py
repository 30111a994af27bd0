"""Mention-only wake-up (anti-swarming), for any channel.

An agent's turn — and so its LLM call — runs only when a message mentions it or is a direct
message to it. Every other message in the room is kept (the last ``buffer_size`` per room) and
handed to the next turn in that room as :attr:`hiclaw.models.ChatMessage.context`, oldest first.
Chatter therefore costs zero model calls, and nothing said in the room is hidden from the agent.

    gate = MentionGate("@alice:hiclaw.local", run_turn, typing=channel.set_typing)
    channel.on_message(gate)

While the wrapped handler runs, ``typing(room_id, True)`` is sent (and refreshed), then
``typing(room_id, False)``. With ``state_path`` the buffers survive a restart (atomic JSON file).

Who may wake the agent is checked in code, not asked of the model:

- ``trusted`` (user ids): a mention or DM from anyone else starts no turn — the message is kept
  as context like unmentioned chatter (and ``on_refused`` is told), so one worker can never
  wake another (a worker ↔ worker mention loop cannot start);
- ``limiter`` (a :class:`TurnLimiter`): at most N turns per room per window started by senders
  outside ``unlimited`` (the admin) and not ``exempt`` (e.g. a worker's own assignments); beyond
  it the message is kept as context and ``on_limited`` is told once, until a turn fits again.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

from hiclaw.models import ChatMessage
from hiclaw.storage.files import write_text_atomically

log = logging.getLogger(__name__)

Handler = Callable[[ChatMessage], Awaitable[None]]
#: ``@name`` or ``@user:server`` as a person types a mention (``hiclaw chat``, the web console).
MENTION = re.compile(r"(?<![\w.@/])@([A-Za-z0-9._=/+-]+(?::[A-Za-z0-9.-]+(?::[0-9]+)?)?)")


def mentions_in(text: str, members: Collection[str], name_of: Callable[[str], str | None]) -> list[str]:
    """The user ids among ``members`` that ``text`` names as ``@name``, ``@localpart`` or
    ``@user:server`` (``name_of``: a user id's agent name, or None), in the order written."""
    found = []
    for token in MENTION.findall(text):
        for user_id in members:
            if token in (user_id[1:], user_id[1:].split(":", 1)[0]) or token == name_of(user_id):
                found.append(user_id)
    return list(dict.fromkeys(found))
Typing = Callable[[str, bool], Awaitable[None]]
Exempt = Callable[[ChatMessage], Awaitable[bool]]
DEFAULT_BUFFER = 50
TYPING_REFRESH_SECONDS = 20.0  # clients drop a typing notice after ~30 s unless renewed


class TurnLimiter:
    """At most ``max_turns`` turns per room in any ``window_seconds`` (a sliding window).

    A loop between agents that keep mentioning each other makes turns as fast as the models
    answer; a person, or a team doing real work, does not. Past the limit the agent stays silent
    in that room until the window has room again."""

    def __init__(self, max_turns: int, window_seconds: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_turns < 1 or window_seconds <= 0:
            raise ValueError("max_turns must be >= 1 and window_seconds > 0")
        self.max_turns = max_turns
        self.window_seconds = window_seconds
        self.clock = clock
        self._turns: dict[str, deque[float]] = {}

    def allow(self, room_id: str) -> bool:
        """Count a turn in ``room_id`` if it fits in the window; False (nothing counted) if not."""
        now = self.clock()
        turns = self._turns.setdefault(room_id, deque())
        while turns and turns[0] <= now - self.window_seconds:
            turns.popleft()
        if len(turns) >= self.max_turns:
            return False
        turns.append(now)
        return True


class MentionGate:
    """A message handler that wakes ``handler`` only for mentions of ``agent_user_id`` and DMs."""

    def __init__(
        self,
        agent_user_id: str,
        handler: Handler,
        *,
        buffer_size: int = DEFAULT_BUFFER,
        typing: Typing | None = None,
        state_path: Path | None = None,
        trusted: Collection[str] | None = None,
        on_refused: Handler | None = None,
        limiter: TurnLimiter | None = None,
        unlimited: Collection[str] = (),
        exempt: Exempt | None = None,
        on_limited: Handler | None = None,
    ) -> None:
        if buffer_size < 0:
            raise ValueError("buffer_size must be >= 0")
        self.agent_user_id = agent_user_id
        self.handler = handler
        self.buffer_size = buffer_size
        self.typing = typing
        self.state_path = state_path
        #: User ids whose mentions and DMs wake the agent (``None``: everyone's).
        self.trusted = frozenset(trusted) if trusted is not None else None
        self.on_refused = on_refused
        self.limiter = limiter
        self.unlimited = frozenset(unlimited)
        self.exempt = exempt
        self.on_limited = on_limited
        self.buffers: dict[str, deque[ChatMessage]] = {}
        self.woken = 0  # turns run
        self.buffered = 0  # messages kept as context instead of waking the agent
        self.refused = 0  # mentions from senders not trusted to wake the agent
        self.limited = 0  # mentions past the per-room turn limit
        self._silenced: set[str] = set()  # rooms over the limit whose admin notice was given
        self._load()

    def wakes_for(self, message: ChatMessage) -> bool:
        return message.is_direct or self.agent_user_id in message.mentions

    def trusts(self, sender: str) -> bool:
        return self.trusted is None or sender in self.trusted

    async def __call__(self, message: ChatMessage) -> None:
        if message.sender == self.agent_user_id:
            return
        if not self.wakes_for(message):
            self._keep(message)
            return
        if not self.trusts(message.sender):
            self._keep(message)
            self.refused += 1
            log.info("%s: a mention by %s in %s starts no turn (not a trusted sender)", self.agent_user_id,
                     message.sender, message.room_id)
            await self._tell(self.on_refused, message)
            return
        if not await self._within_limit(message):
            self._keep(message)
            self.limited += 1
            if message.room_id not in self._silenced:
                self._silenced.add(message.room_id)
                log.warning("%s: turn limit reached in %s; staying silent there", self.agent_user_id, message.room_id)
                await self._tell(self.on_limited, message)
            return
        context = tuple(self.buffers.pop(message.room_id, ()))
        self._save()
        self.woken += 1
        turn = message.model_copy(update={"context": context})
        if self.typing is None:
            await self.handler(turn)
            return
        await self._typing(message.room_id, True)
        refresher = asyncio.create_task(self._keep_typing(message.room_id))
        try:
            await self.handler(turn)
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await self._typing(message.room_id, False)

    async def _within_limit(self, message: ChatMessage) -> bool:
        """Whether this turn fits the room's turn limit (counting it if it is one that counts)."""
        if self.limiter is None or message.sender in self.unlimited:
            return True
        if self.exempt is not None and await self.exempt(message):
            return True
        if not self.limiter.allow(message.room_id):
            return False
        self._silenced.discard(message.room_id)  # under the limit again: a new excess is reported again
        return True

    def _keep(self, message: ChatMessage) -> None:
        self._buffer(message.room_id).append(message)
        self.buffered += 1
        self._save()

    async def _tell(self, callback: Handler | None, message: ChatMessage) -> None:
        if callback is None:
            return
        try:
            await callback(message)
        except Exception:  # a notice failing must not stop the channel's sync loop
            log.exception("%s: handling a message that started no turn failed", self.agent_user_id)

    def pending(self, room_id: str) -> tuple[ChatMessage, ...]:
        """Messages buffered for the next turn in ``room_id``."""
        return tuple(self.buffers.get(room_id, ()))

    def _buffer(self, room_id: str) -> deque[ChatMessage]:
        if room_id not in self.buffers:
            self.buffers[room_id] = deque(maxlen=self.buffer_size)
        return self.buffers[room_id]

    async def _keep_typing(self, room_id: str) -> None:
        while True:
            await asyncio.sleep(TYPING_REFRESH_SECONDS)
            await self._typing(room_id, True)

    async def _typing(self, room_id: str, on: bool) -> None:
        assert self.typing is not None
        try:
            await self.typing(room_id, on)
        except Exception as exc:  # noqa: BLE001 - a typing notice is cosmetic; the turn goes on
            log.warning("typing notification failed in %s: %s", room_id, exc)

    # -- persistence ------------------------------------------------------------------------
    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            for room_id, items in data.items():
                buffer = self._buffer(room_id)
                buffer.extend(ChatMessage.model_validate(item) for item in items)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable mention-gate state %s: %s", self.state_path, exc)

    def _save(self) -> None:
        if self.state_path is None:
            return
        data = {room: [m.model_dump(mode="json") for m in buf] for room, buf in self.buffers.items() if buf}
        write_text_atomically(self.state_path, json.dumps(data), mode=0o600)
