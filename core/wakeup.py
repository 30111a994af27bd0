"""Mention-only wake-up (anti-swarming), for any channel.

An agent's turn — and so its LLM call — runs only when a message mentions it or is a direct
message to it. Every other message in the room is kept (the last ``buffer_size`` per room) and
handed to the next turn in that room as :attr:`hiclaw.models.ChatMessage.context`, oldest first.
Chatter therefore costs zero model calls, and nothing said in the room is hidden from the agent.

    gate = MentionGate("@alice:hiclaw.local", run_turn, typing=channel.set_typing)
    channel.on_message(gate)

While the wrapped handler runs, ``typing(room_id, True)`` is sent (and refreshed), then
``typing(room_id, False)``. With ``state_path`` the buffers survive a restart (atomic JSON file).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from hiclaw.models import ChatMessage

log = logging.getLogger(__name__)

Handler = Callable[[ChatMessage], Awaitable[None]]
Typing = Callable[[str, bool], Awaitable[None]]
DEFAULT_BUFFER = 50
TYPING_REFRESH_SECONDS = 20.0  # clients drop a typing notice after ~30 s unless renewed


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
    ) -> None:
        if buffer_size < 0:
            raise ValueError("buffer_size must be >= 0")
        self.agent_user_id = agent_user_id
        self.handler = handler
        self.buffer_size = buffer_size
        self.typing = typing
        self.state_path = state_path
        self.buffers: dict[str, deque[ChatMessage]] = {}
        self.woken = 0  # turns run
        self.buffered = 0  # messages kept as context instead of waking the agent
        self._load()

    def wakes_for(self, message: ChatMessage) -> bool:
        return message.is_direct or self.agent_user_id in message.mentions

    async def __call__(self, message: ChatMessage) -> None:
        if message.sender == self.agent_user_id:
            return
        if not self.wakes_for(message):
            self._buffer(message.room_id).append(message)
            self.buffered += 1
            self._save()
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
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self.state_path)
