"""Mentions of the Manager by anyone but the admin, and what workers' runtimes report.

Only the admin's mentions start Manager turns (the mention gate, :mod:`hiclaw.wakeup`); anyone
else's is handled here, by code: a worker's report is collected, its question about a task answered
by a judgement-only turn (:mod:`hiclaw.control.questions`), anything else noticed to the admin. A
worker's runtime notice (``/v1/notice`` of the control API) has a fixed vocabulary and is told to
the admin at most once per worker and hour.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hiclaw.agent.prompt import quote
from hiclaw.control.chat import ControlChat
from hiclaw.control.questions import WorkerQuestions
from hiclaw.errors import InvalidInputError
from hiclaw.manager.origin import ADMIN as ADMIN_ORIGIN
from hiclaw.manager.origin import Origin
from hiclaw.models import ChatMessage, WorkerState
from hiclaw.state import StateDB

log = logging.getLogger(__name__)


class Incoming:
    """``collect_results_of(worker)``: how many reported results of the worker were picked up;
    ``display`` names a user id; ``turn_limit``: ``[team] max_turns_per_room_per_minute``."""

    def __init__(self, *, state: StateDB, chat: ControlChat, channel: Any, questions: WorkerQuestions,
                 collect_results_of: Callable[[str], Awaitable[int]], display: Callable[[str], str],
                 turn_limit: int, admin: str = "admin") -> None:
        self.state, self.chat, self.channel, self.questions = state, chat, channel, questions
        self.collect_results_of, self.display, self.turn_limit, self.admin = collect_results_of, display, turn_limit, admin

    def is_worker(self, user_id: str) -> str | None:
        """The worker a user id belongs to (not a removed one), or None."""
        name = self.display(user_id)
        worker = self.state.find_worker(name)
        return name if worker is not None and worker.state != WorkerState.REMOVED else None

    async def untrusted_mention(self, message: ChatMessage) -> None:
        """Someone other than the admin mentioned the Manager. It starts no Manager turn of its own
        (the message stays in the room's context for the admin's next mention); code handles it: a
        worker's report is collected, its question about a task answered by a judgement-only turn
        (hiclaw.control.questions), anything else noticed to the admin."""
        worker = self.is_worker(message.sender)
        if worker is None:
            log.warning("a mention of the Manager by %s starts no turn (not the admin, not a worker)", message.sender)
            self.state.log_event("manager.mention_ignored", message.sender, room=message.room_id)
            return
        if await self.collect_results_of(worker):
            return  # a report: code picked its result up and queued the review
        if await self.questions.handle(worker, message):
            return  # a question about its task: a judgement-only Manager turn answers it
        self.state.log_event("manager.worker_mention", worker, room=message.room_id)
        excerpt = message.body if len(message.body) <= 200 else message.body[:200] + "…"
        await self.chat.post(
            self.chat.manager_room,
            f"@{self.admin} {worker} mentioned me in {await self.room_label(message.room_id, worker)}: {quote(excerpt)} "
            f"— only your messages start my turns; mention me there if it needs me.",
            mentions=[self.admin], key=f"worker-mention:{worker}:{int(time.time() // 600)}")

    async def room_label(self, room_id: str, worker: str | None = None) -> str:
        if room_id == self.chat.manager_room:
            return "the Manager room"
        for project in self.state.projects():
            if project.room_id == room_id:
                return f"the room of {project.id}"
        if worker is not None and room_id == await self.chat.worker_room(worker):
            return f"Worker: {worker}"
        return "another room"

    async def worker_notice(self, worker: str, body: dict[str, Any]) -> None:
        """A worker's runtime reports something the admin must know (control API ``/v1/notice``).
        A fixed vocabulary, no text of the worker's, at most one notice per worker and hour."""
        kind = body.get("kind")
        if kind != "turn-limit":
            raise InvalidInputError(f"unknown notice {kind!r}", hint="the only notice is 'turn-limit'")
        key = f"turn-limit:{worker}:{int(time.time() // 3600)}"
        if self.state.outbox_get(key) is not None:
            return  # told already this hour
        room = await self.room_label(str(body.get("room_id") or ""), worker)
        limit = self.turn_limit
        self.state.log_event("worker.turn_limit", worker, room=room)
        await self.chat.post(
            self.chat.manager_room,
            f"@{self.admin} {worker} stopped answering in {room}: more than {limit} turns in a minute were started there "
            f"by others than you (a loop?). Your own messages still reach it; the others wait as context.",
            mentions=[self.admin], key=key)

    def message_origin(self, message: ChatMessage) -> Origin:
        """The origin of a queued chat turn, from its real sender: only the admin's account is the admin."""
        if message.sender == self.channel.user_id(self.admin):
            return ADMIN_ORIGIN
        worker = self.is_worker(message.sender)
        return Origin.worker(worker, "a chat message") if worker else Origin.code("channel", f"a message by {message.sender}")
