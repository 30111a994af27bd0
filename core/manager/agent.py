"""The Manager agent: woken by a mention (or by code when something needs judgement).

It never does the work itself: its tools are management operations only. Simple requests it
answers directly (mode 1); complex ones become projects (mode 2). Turns are serialised: one at a
time, in arrival order, so two wake-ups cannot interleave their bookkeeping.

Every turn has an origin (:mod:`hiclaw.manager.origin`): only the admin's own messages get the
full set of tools; turns started by code for a worker's report, the engine or the watchdog get
the judgement tools only, whatever the text they carry says.

A turn's prompt is the system prompt (identity, rules, skills, memory, facts — the date and time
among them), then the recent exchange of the room it answers in (:mod:`hiclaw.manager.history`,
one user message, when there is one), then the turn's own message. A turn whose model could not
answer posts what ``fallback_for`` gives for its key instead of its one-line account, if anything
(the daily report: the facts code gathered, :mod:`hiclaw.manager.report`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hiclaw.agent import AgentLoop, GatewayClient
from hiclaw.agent.guard import one_line
from hiclaw.agent.prompt import system_prompt, user_turn
from hiclaw.manager.history import RoomHistory
from hiclaw.manager.origin import JUDGEMENT_TOOLS, Origin, tools_for, turn_origin
from hiclaw.models import ChatMessage, ModelRequest, ToolSpec

log = logging.getLogger(__name__)

IDENTITY = """You are the Manager of a team of AI worker agents, working for one human (the admin).
You never do the work yourself. You create workers with clear roles, break goals into tasks with
dependencies, assign them, judge results and report to the admin.

Mode 1 — simple questions (status, what a worker can do, a quick fact): answer directly.
Mode 2 — real work for one or more workers: create_project, then propose_plan with tasks
(assignee, depends_on, a model tier: `cheap` for collection/formatting, `smart` for design and code).
The code validates the plan, writes plan.md, asks the admin to confirm and dispatches tasks.
When a worker reports, judge the result: accept_task, or request_revision with concrete feedback.
Keep messages short; refer to files by path. The code already posts assignments and plan updates.
You see the room's recent messages before each request. Read a skill with skills_read before you
follow it. Keep what must outlast this conversation (the admin's preferences, decisions, dates) with
memory_append. "Remind me …": remind_admin; a regular report: schedule_report."""

Send = Callable[[str, str, Sequence[str], str], Awaitable[Any]]  # room, text, mentions, key
BeforeCall = Callable[[ModelRequest], Awaitable[None]]
#: (turn key, why it failed) → (text, key) to post instead, or None.
Fallback = Callable[[str, str], Awaitable[tuple[str, str] | None]]


class ManagerAgent:
    def __init__(self, *, client: GatewayClient, tools: Callable[[], list[ToolSpec]], send: Send, model: str,
                 read_text: Callable[[str], Awaitable[str]], facts: Callable[[], Awaitable[list[str]]],
                 skills: Callable[[], Awaitable[list[tuple[str, str]]]], display: Callable[[str], str],
                 admin: str = "admin", max_steps: int = 24, before_call: BeforeCall | None = None,
                 history: RoomHistory | None = None, fallback_for: Fallback | None = None) -> None:
        self.client = client
        self.tools = tools
        self.send = send
        self.model = model
        self.read_text = read_text
        self.facts = facts
        self.skills = skills
        self.display = display
        self.admin = admin
        self.max_steps = max_steps
        self.before_call = before_call
        self.history = history
        self.fallback_for = fallback_for
        self._lock = asyncio.Lock()
        self.turns = 0

    async def _system(self) -> str:
        rules = await self.read_text("AGENTS.md")
        memory = await self.read_text("MEMORY.md")
        soul = await self.read_text("SOUL.md")
        return system_prompt(identity=soul or IDENTITY, rules=rules, skills=await self.skills(), memory=memory,
                             facts=await self.facts(), read_memory="memory_read")

    async def _history(self, room_id: str, current: ChatMessage | None) -> list[dict[str, str]]:
        if self.history is None:
            return []
        try:
            text = await self.history.render(room_id, current=current)
        except Exception:  # a turn without its history beats no turn
            log.exception("manager: the history of %s could not be rendered", room_id)
            return []
        return [{"role": "user", "content": text}] if text else []

    async def _turn(self, room_id: str, user_text: str, *, reply_to: str, key: str, origin: Origin,
                    current: ChatMessage | None = None) -> str:
        async with self._lock:
            self.turns += 1
            if not origin.is_admin:
                user_text += (f"\n\n(This turn was started by {origin.describe()}, not by the admin: only "
                              f"{', '.join(sorted(JUDGEMENT_TOOLS))} work in it; tell the admin what else is needed.)")
            messages = [{"role": "system", "content": await self._system()}, *await self._history(room_id, current),
                        {"role": "user", "content": user_text}]
            loop = AgentLoop(self.client, tools_for(origin, self.tools()), agent="manager", max_steps=self.max_steps,
                             before_call=self.before_call)
            try:
                with turn_origin(origin):
                    turn = await loop.run(messages, model=self.model)
                text = turn.reply  # the answer, or one line saying why the turn ended early
                answered = turn.outcome == "done" and bool(turn.final_text.strip())
            except Exception as exc:
                log.exception("manager turn failed")
                text, answered = f"I could not complete that: {exc}", False
            if not answered and self.fallback_for is not None:
                instead = await self.fallback_for(key, one_line(text or "the model gave no answer", 200))
                if instead is not None:
                    await self.send(room_id, instead[0], [reply_to], instead[1])
                    return instead[0]
            if text:
                await self.send(room_id, text, [reply_to], key)
            return text

    async def handle(self, message: ChatMessage, *, origin: Origin) -> str:
        """A mention from the admin in a room the Manager is in (``origin``: who sent it, as the
        channel says — the control plane lets only the admin's mentions through)."""
        return await self._turn(message.room_id, user_turn(message, display=self.display),
                                reply_to=message.sender if origin.is_admin else self.admin,
                                key=f"manager-reply:{message.event_id}", origin=origin, current=message)

    async def wake(self, room_id: str, text: str, *, key: str, origin: Origin) -> str:
        """Code wakes the Manager for a judgement (a result to review, a finished project)."""
        return await self._turn(room_id, text, reply_to=self.admin, key=key, origin=origin)
