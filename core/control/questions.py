"""A worker's question to the Manager gets an answer, from a turn code makes that may only judge.

Workers cannot instruct the Manager: a worker's mention starts no Manager turn of its own (the
Manager's mention gate trusts only the admin). But a worker asking about its task must not be
left waiting. Code — not the model — recognises a **question**: a worker's mention of the
Manager, in the room of one of its in-progress tasks (the project room, or its own room for a
task outside a project), that is not its report. Then:

- the Manager is woken with a turn of origin ``Origin.worker(name, "its question about T")`` —
  judgement tools only, whatever the question says — carrying the task's context: id, title,
  spec path and the spec as the Manager wrote it, the task folder, and the question quoted as one
  JSON string (it cannot pass for anything else);
- the Manager's answer is posted in the room where it was asked, mentioning the worker and naming
  the task (so the worker's next turn is about it);
- at most :data:`MAX_QUESTIONS` questions are answered per task and dispatch; past that the admin
  is told once (the latest question quoted), and further questions wait for the admin.

The wake-up is queued in the Manager's durable inbox (key ``question:<task>:<dispatch>:<n>``), so
it survives a crash, and a failed turn is retried like any judgement (:mod:`hiclaw.control.turns`).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hiclaw.agent.prompt import quote
from hiclaw.errors import NotFoundError
from hiclaw.manager.origin import Origin
from hiclaw.models import ChatMessage, TaskState
from hiclaw.state import ROOM_MANAGER, StateDB, Task
from hiclaw.storage import layout

log = logging.getLogger(__name__)

#: Questions answered per task and dispatch; then the admin is told.
MAX_QUESTIONS = 3
SPEC_CHARS = 1500
QUESTION_CHARS = 2000
#: The key prefix of the Manager's answers (``manager-`` + the wake-up key).
ANSWER_KEY = "manager-question:"
TASK = re.compile(r"\btask-\d{3,}\b")


class WorkerQuestions:
    """Workers' questions to the Manager about their tasks: each wakes a judgement turn through
    ``wake_manager(room_id, text, key, origin=)``; ``admin`` is told when the answers run out."""

    def __init__(self, *, state: StateDB, chat: Any, wake_manager: Callable[..., Awaitable[Any]],
                 admin: str = "admin") -> None:
        self.state, self.chat, self.wake_manager, self.admin = state, chat, wake_manager, admin

    async def room_of(self, task: Task) -> str:
        if task.project_id:
            project = self.state.project(task.project_id)
            if project.room_id:
                return str(project.room_id)
        return str(await self.chat.worker_room(task.assignee))

    async def task_asked_about(self, worker: str, message: ChatMessage) -> Task | None:
        """The in-progress task of ``worker`` whose room the message is in (the one it names, if several)."""
        here = [task for task in self.state.tasks(assignee=worker, states=[TaskState.IN_PROGRESS])
                if await self.room_of(task) == message.room_id]
        named = set(TASK.findall(message.body))
        return next((task for task in here if task.id in named), here[-1] if here else None)

    async def handle(self, worker: str, message: ChatMessage) -> bool:
        """True when the mention is a question about one of the worker's tasks (answered, or the
        admin told that it is over the limit); False when it is not (the caller tells the admin)."""
        task = await self.task_asked_about(worker, message)
        if task is None:
            return False
        state = self.state
        asked = [e for e in state.events(kind="task.question", subject=task.id)
                 if e["data"].get("dispatch") == task.dispatch_count]
        number = len(asked) + 1
        question = message.body if len(message.body) <= QUESTION_CHARS else message.body[:QUESTION_CHARS] + "…"
        if number > MAX_QUESTIONS:
            await self._over_limit(worker, task, question)
            return True
        spec = task.spec if len(task.spec) <= SPEC_CHARS else task.spec[:SPEC_CHARS] + "…"
        text = (f"{worker} asks you a question about **{task.id}** ({task.title}), which it is working on. "
                f"Its question, quoted: {quote(question)}\n"
                f"The task's spec (`{layout.task_spec(task.id)}`), as you wrote it, quoted: {quote(spec)}\n"
                f"Task folder: `{layout.task_dir(task.id)}`"
                + (f"; plan: `{layout.project_plan(task.project_id)}`" if task.project_id else "") + ".\n"
                f"Answer the question in one short message: your reply is posted to {worker} in the room where it "
                f"asked (the admin is there too). If only the admin can decide, say so. This is question {number} "
                f"of at most {MAX_QUESTIONS} answered for this task.")
        await self.wake_manager(message.room_id, text, f"question:{task.id}:{task.dispatch_count}:{number}",
                                      origin=Origin.worker(worker, f"its question about {task.id}"))
        state.log_event("task.question", task.id, worker=worker, dispatch=task.dispatch_count, number=number,
                        room=message.room_id)
        return True

    async def _over_limit(self, worker: str, task: Task, question: str) -> None:
        state = self.state
        key = f"questions-capped:{task.id}:{task.dispatch_count}"
        admin = self.admin
        short = question if len(question) <= 300 else question[:300] + "…"
        with state.transaction():
            if state.enqueue_message(
                    key, ROOM_MANAGER,
                    f"@{admin} {worker} keeps asking about **{task.id}** ({task.title}): I answered {MAX_QUESTIONS} "
                    f"of its questions and answer no more; its latest, quoted: {quote(short)}. It may need your "
                    f"help, a clearer spec, or another assignee.", [admin]):
                state.log_event("task.questions_capped", task.id, worker=worker, dispatch=task.dispatch_count)
        await self.chat.flush()

    def route_answer(self, key: str, text: str, mentions: Sequence[str]) -> tuple[str, list[str]]:
        """The Manager's answer to a question goes to the worker who asked, naming the task."""
        if not key.startswith(ANSWER_KEY):
            return text, list(mentions)
        task_id = key[len(ANSWER_KEY):].split(":", 1)[0]
        try:
            task = self.state.task(task_id)
        except NotFoundError:
            return text, list(mentions)
        return (text if task.id in text else f"**{task.id}** — {text}"), [task.assignee]
