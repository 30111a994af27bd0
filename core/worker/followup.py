"""The end of a worker's turn: what is posted, and what a turn about a task that did not report is owed.

The most common thing a real model does with a task is answer in chat ("I have finished, here
is …") instead of calling ``report_result``. Nothing would then move the task on: the worker
does nothing between turns. So at the end of a turn **the Manager started about task T** (its
assignment, a re-notice, a heartbeat question, the answer to a question) that left T
unreported — not in this turn's tool calls, and no ``result.md`` of T's current attempt —
the runtime, in code:

1. **nudges its own model once**, in the same conversation and within what is left of the
   turn's step budget: "You have not called report_result for T: call it now …";
2. if T is still not reported, **reports on the model's behalf** (``report_result`` itself, so
   result.md and the @manager mention are the usual ones):

   - ``SUCCESS_WITH_NOTES`` when the model answered in prose: it claims a result, and the text
     is that result. The Manager judges it like any report (accept, or a revision with
     feedback) — sending it to the admin as BLOCKED would make a person handle what is most
     often finished work that only missed its tool call;
   - ``BLOCKED`` when there is no answer to judge: the model could not be used (after the
     gateway client's own retries and back-off: ``model_error``, ``budget``, ``context``), or
     the turn was stopped (step limit, repeated or unrunnable calls) without a word. The engine
     then tells the admin why (the turn's account).

   Either way the summary says the model did not report, and the result quotes the turn's final
   text. That is at most one extra model call run (bounded by the remaining steps), never a loop.

A turn whose final text addresses the Manager (``@manager …``) is a **question**: it is posted
mentioning the Manager, and the control plane has the Manager answer it
(:mod:`hiclaw.control.questions`); it owes no report yet. Replies mention the admin when the admin
woke the turn — never the Manager otherwise, so the only mentions of the Manager a worker makes
are its reports and its questions.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from hiclaw.agent import AgentLoop
from hiclaw.agent.loop import AgentTurn
from hiclaw.agent.prompt import fence_for, quote
from hiclaw.models import ChatMessage
from hiclaw.registry.errors import UnsafeSkillError
from hiclaw.registry.frontmatter import split_frontmatter
from hiclaw.storage import layout

log = logging.getLogger(__name__)

#: How much of the model's last reply the on-behalf summary quotes (the result has all of it).
SUMMARY_QUOTE_CHARS = 200
ADMIN = "admin"


def nudge(task_id: str) -> str:
    return (f"You have not called report_result for {task_id}, and your turn is ending: call report_result now, "
            f"with task_id {task_id}. Status SUCCESS or SUCCESS_WITH_NOTES if it is done (put the result in "
            "result_markdown), REVISION_NEEDED or BLOCKED with the reason if it is not. An answer in chat does not "
            "reach the Manager.")


def addresses(text: str, name: str) -> bool:
    """Whether ``text`` mentions ``@name`` (as a word)."""
    return re.search(rf"(?<![\w.@/])@{re.escape(name)}(?![\w-])", text) is not None


def reported_in(turn: AgentTurn | None, task_id: str) -> bool:
    return turn is not None and any(c.name == "report_result" and not c.error and c.arguments.get("task_id") == task_id
                                    for c in turn.tool_calls)


class TurnEnd:
    """What happens when a worker's turn ends (``runtime``: a :class:`hiclaw.worker.runtime.WorkerRuntime`)."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime

    def mentions(self, sender: str, text: str) -> list[str]:
        """Whom a reply mentions: the admin if the admin woke the turn; the Manager if the text
        addresses it (a question). Never a worker, so two workers cannot keep waking each other."""
        channel, manager = self.rt.channel, self.rt.spec.manager
        found = [sender] if sender == channel.user_id(ADMIN) else []
        if addresses(text, manager) or addresses(text, channel.user_id(manager)):
            found.append(channel.user_id(manager))
        return found

    async def post(self, message: ChatMessage, text: str, kind: str) -> None:
        if text:
            await self.rt.channel.send(message.room_id, text, mentions=self.mentions(message.sender, text),
                                       idempotency_key=f"{kind}:{self.rt.name}:{message.event_id}")

    async def already_reported(self, task: Any) -> bool:
        """Whether the task's current attempt has a result.md (written by this turn, an earlier one,
        or the worker's own code)."""
        try:
            raw = await self.rt.storage.get(layout.task_result(task.task_id))
        except Exception:  # noqa: BLE001 - no result yet (or unreadable): not reported
            return False
        try:
            split = split_frontmatter(raw.decode("utf-8", errors="replace"))
        except UnsafeSkillError:
            return False
        meta = split[0] if split else {}
        try:
            return int(meta.get("attempt") or 0) >= task.attempt
        except (TypeError, ValueError):
            return False

    async def settle(self, message: ChatMessage, turn: AgentTurn, task: Any, *, model: str) -> None:
        """Post what the turn ended with, or carry out the follow-up its task is owed."""
        manager = self.rt.spec.manager
        any_report = any(c.name == "report_result" and not c.error for c in turn.tool_calls)
        owed = (task is not None and message.sender == self.rt.channel.user_id(manager)
                and not reported_in(turn, task.task_id))
        if (not owed or (turn.outcome == "done" and addresses(turn.final_text, manager))
                or await self.already_reported(task)):
            if not any_report:
                await self.post(message, turn.reply, "reply")  # the answer, or one line saying why the turn ended early
            return
        turns = [turn]
        remaining = self.rt.spec.max_steps - turn.steps
        if not turn.failed and remaining >= 1:
            log.info("worker %s: the turn about %s ended without report_result; nudging once", self.rt.name,
                     task.task_id)
            loop = AgentLoop(self.rt.gateway, self.rt.tools, agent=self.rt.name, max_steps=remaining,
                             before_call=self.rt.before_call)
            again = await loop.run([*turn.messages, {"role": "user", "content": nudge(task.task_id)}], model=model,
                                   task_id=task.task_id, project_id=task.project_id)
            turns.append(again)
            if reported_in(again, task.task_id) or await self.already_reported(task):
                return
            if again.outcome == "done" and addresses(again.final_text, self.rt.spec.manager):
                await self.post(message, again.final_text, "reply")  # it asks the Manager instead
                return
        await self.report_for_the_model(task, turns)

    async def report_for_the_model(self, task: Any, turns: Sequence[AgentTurn]) -> None:
        replies = list(dict.fromkeys(t.final_text.strip() for t in turns if t.outcome == "done" and t.final_text.strip()))
        last = turns[-1]
        if replies:
            status = "SUCCESS_WITH_NOTES"
            why = "the model answered in chat and did not call report_result, also when reminded"
            summary = f"reported by the runtime: {why}; its reply, quoted: {quote(replies[0][:SUMMARY_QUOTE_CHARS])}"
        else:
            status = "BLOCKED"
            why = last.account or "the model ended its turn without an answer"
            summary = f"reported by the runtime (the model did not report): {why}"
        lines = [f"**Reported by the worker runtime, not by the model**: the turn about {task.task_id} ended "
                 f"without `report_result` ({why}).", ""]
        texts = replies or [t.final_text.strip() for t in turns if t.final_text.strip()][-1:]
        if texts:
            lines += ["The model's replies, quoted, oldest first:" if len(texts) > 1 else "The model's reply, quoted:", ""]
            for text in texts:
                fence = fence_for(text)
                lines += [fence, text, fence, ""]
        if last.account and last.outcome != "done":
            lines += [f"How the turn ended: {last.account}", ""]
        tool = next((t for t in self.rt.tools if t.name == "report_result"), None)
        if tool is None:
            log.error("worker %s: no report_result tool; %s stays unreported", self.rt.name, task.task_id)
            return
        log.warning("worker %s: reporting %s as %s on the model's behalf (%s)", self.rt.name, task.task_id, status, why)
        await tool.handler({"task_id": task.task_id, "status": status, "summary": summary,
                            "result_markdown": "\n".join(lines)})
