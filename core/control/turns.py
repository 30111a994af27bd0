"""The Manager's turns, from its durable inbox: one at a time, and a failed one tried again.

Every Manager turn is queued in the state DB first (``StateDB.inbox_add``: the admin's messages,
and the wake-ups code makes for a judgement — a report to review, a worker's question, a finished
project, a heartbeat finding), so a crash loses none. :class:`ManagerTurns` runs them in order.

A code-made turn (``wake``) whose model could not be used — the turn's last model call failed
for good after the client's own retries (``AgentTurn.failed``: ``model_error``, ``context``,
``budget``) — is **tried again with back-off**: after ``heartbeat × 1/8``, then ``heartbeat × 1/4``
(never sooner than a ``Retry-After`` the provider asked for). The attempts and the time of the
next one are stored with the queued turn, so a restarted control plane goes on where it was.
The failed attempts post nothing (no "I could not…" line per attempt). After
:data:`MAX_ATTEMPTS` the admin is told once, in the Manager room, what is stuck and why (one
line: the turn's account), the task shows it in plan.md (``Task.stuck``) and the turn is marked
``failed``. A turn that is no longer needed (the task was judged, cancelled, reassigned
meanwhile), or that posted something in its place (a fallback: the daily report's facts), is
done instead of retried.

The admin's own messages are not retried: a failed turn answers them with its account (why not),
which is the reply they asked for.

Whether a turn failed is seen by :class:`TurnProbe`, the Manager's gateway client wrapped: the
agent loop ends a turn at the first model call that fails for good, so the turn failed exactly
when its last model call raised.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hiclaw.agent.client import GatewayClient, GatewayError, ModelReply
from hiclaw.agent.guard import one_line
from hiclaw.errors import NotFoundError
from hiclaw.manager.origin import Origin
from hiclaw.manager.plan import stuck_value
from hiclaw.models import ChatMessage, TaskState
from hiclaw.state import ROOM_MANAGER, StateDB

log = logging.getLogger(__name__)

#: Attempts of a code-made turn whose model cannot be used, before the admin is told.
MAX_ATTEMPTS = 3
#: Wait before retry n (1, 2, …) as a fraction of the heartbeat interval (the last repeats).
RETRY_FRACTIONS = (1 / 8, 1 / 4)
TASK = re.compile(r"\btask-\d{3,}\b")


class TurnProbe(GatewayClient):
    """The Manager's gateway client, watched: ``error`` is the failure of the last model call
    (``None`` once a call succeeds). Delegates everything to ``client``."""

    def __init__(self, client: GatewayClient) -> None:  # no super().__init__: nothing of its own to open
        self.client = client
        self.base_url = client.base_url
        self.error: GatewayError | None = None

    def wake(self) -> None:
        self.client.wake()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def chat(self, *, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                   task_id: str | None = None, project_id: str | None = None) -> ModelReply:
        try:
            reply = await self.client.chat(model=model, messages=messages, tools=tools, task_id=task_id,
                                           project_id=project_id)
        except GatewayError as exc:
            self.error = exc
            raise
        self.error = None
        return reply


def what_of(key: str) -> str:
    """What a queued wake-up asked the Manager to do, in words (from its key)."""
    kind, _, rest = key.partition(":")
    task = TASK.search(rest)
    if kind == "review" and task:
        return f"judge the report of {task.group(0)}"
    if kind == "question" and task:
        return f"answer the worker's question about {task.group(0)}"
    if kind == "project-done":
        return f"write the final report of {rest}"
    if kind == "heartbeat":
        return "look at the heartbeat's findings"
    return f"finish a turn ({one_line(key, 80)})"


class ManagerTurns:
    """Runs the Manager's queued turns from the state DB's inbox: ``handle(message)`` for a chat
    message, ``wake(room_id, text, key, origin)`` for a judgement; ``probe`` sees the model's
    failures; ``wakeup`` is set when something is queued; ``interval``: ``[team] heartbeat_seconds``
    (retries back off in fractions of it)."""

    def __init__(self, *, state: StateDB, chat: Any, engine: Any, probe: TurnProbe, wakeup: asyncio.Event,
                 handle: Callable[[ChatMessage], Awaitable[Any]], wake: Callable[..., Awaitable[Any]],
                 interval: float, admin: str = "admin", clock: Callable[[], float] = time.time) -> None:
        self.state, self.chat, self.engine, self.admin = state, chat, engine, admin
        self.handle, self.wake = handle, wake
        self._interval = float(interval)
        self.probe = probe
        self.wakeup = wakeup
        self.clock = clock
        self._current: dict[str, Any] | None = None
        self._account: str | None = None  # what the failed turn would have posted
        self._instead = False  # the failed turn posted something else in its place (a fallback)

    @property
    def interval(self) -> float:
        return self._interval

    def retry_delay(self, failures: int, error: GatewayError | None) -> float:
        delay = self.interval * RETRY_FRACTIONS[min(failures, len(RETRY_FRACTIONS)) - 1]
        if error is not None and error.retry_after:
            delay = max(delay, float(error.retry_after))
        return delay

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        state = self.state
        while True:
            for item in state.inbox_pending():
                if self._due(item) <= self.clock():
                    await self._one(item)
            self.wakeup.clear()
            pending = state.inbox_pending()
            if pending and min(self._due(i) for i in pending) <= self.clock():
                continue
            timeout = min(self._due(i) for i in pending) - self.clock() if pending else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), None if timeout is None else max(timeout, 0.05))

    @staticmethod
    def _due(item: dict[str, Any]) -> float:
        return float(item.get("next_attempt_at") or 0.0)

    async def _one(self, item: dict[str, Any]) -> None:
        payload = item["payload"]
        self.probe.error, self._current, self._account, self._instead = None, item, None, False
        try:
            if item["kind"] == "message":
                message = ChatMessage.model_validate(payload)
                await self.handle(message)
            else:
                await self.wake(payload["room_id"], payload["text"], key=f"manager-{payload['key']}",
                                origin=Origin.from_dict(payload.get("origin")))
        except Exception:
            log.exception("manager turn for %s failed", item["key"])
        finally:
            self._current = None
        error = self.probe.error
        if item["kind"] != "wake" or error is None or self._instead:
            self.state.inbox_done(item["id"])
        elif not self.still_needed(str(payload.get("key", ""))):
            log.info("manager turn %s failed, and is no longer needed", item["key"])
            self.state.inbox_done(item["id"])
        else:
            await self._failed(item, error)

    def swallow(self, key: str, text: str) -> bool:
        """Called for each Manager post: True (do not post it) if it is the account of a failed
        code-made turn — that turn is tried again, or reported once when it cannot be."""
        item = self._current
        if item is None or item["kind"] != "wake" or self.probe.error is None:
            return False
        if key != f"manager-{item['payload'].get('key')}":
            self._instead = True  # e.g. a report's facts posted by code: that is the turn's outcome
            return False
        self._account = one_line(text)
        return True

    # ------------------------------------------------------------------ failures

    def still_needed(self, key: str) -> bool:
        """Whether the judgement a wake-up asked for is still open (else a failed turn is dropped)."""
        kind, _, rest = key.partition(":")
        parts = rest.split(":")
        if kind not in ("review", "question") or len(parts) < 2 or not parts[1].isdigit():
            return True
        found = self._task(parts[0])
        if found is None or found.dispatch_count != int(parts[1]):
            return False
        return found.state is (TaskState.REVIEW if kind == "review" else TaskState.IN_PROGRESS)

    def _task(self, task_id: str) -> Any:
        try:
            return self.state.task(task_id)
        except NotFoundError:
            return None

    async def _failed(self, item: dict[str, Any], error: GatewayError) -> None:
        state = self.state
        payload = item["payload"]
        key = str(payload.get("key", ""))
        failures = int(item.get("attempts") or 0) + 1
        account = self._account or one_line(f"I could not finish this turn: the model call failed ({error.detail}).")
        if failures < MAX_ATTEMPTS:
            delay = self.retry_delay(failures, error)
            state.inbox_retry(item["id"], error=account, next_attempt_at=self.clock() + delay)
            state.log_event("manager.turn_retry", key, attempt=failures, delay_seconds=round(delay, 2), account=account)
            log.warning("manager turn %s failed (attempt %d of %d); again in %.1fs: %s", key, failures, MAX_ATTEMPTS,
                        delay, account)
            return
        match = TASK.search(key)
        task = self._task(match.group(0)) if match else None
        what = what_of(key)
        admin = self.admin
        with state.transaction():
            state.inbox_failed(item["id"], error=account)
            state.log_event("manager.turn_failed", task.id if task else key, key=key, attempts=failures,
                            dispatch=task.dispatch_count if task else None, account=account)
            if task is not None:
                state.update_task(task.id, stuck=stuck_value(task, f"the Manager could not {what} "
                                                                  f"({failures} attempts): {account}"))
            state.enqueue_message(f"turn-failed:{key}", ROOM_MANAGER,
                                  f"@{admin} I could not {what}: {failures} attempts failed; the last: {account}",
                                  [admin])
        await self.chat.flush()
        if task is not None and task.project_id:
            await self.engine.render(task.project_id)
