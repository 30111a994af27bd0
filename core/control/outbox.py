"""The transactional outbox: no state change without its message, whatever is killed when.

Code that changes state *and* announces it (an assignment, a blocked notice, a plan) records the
message in the same SQLite transaction as the change::

    with state.transaction():
        state.update_task(task.id, state=TaskState.IN_PROGRESS, dispatch_count=attempt)
        state.enqueue_message(f"assign:{task.id}:{attempt}", room_of_project(project.id), text, [task.assignee])
    await chat.flush()

so a crash keeps both or neither. :class:`Outbox` delivers the pending messages in the order they
were recorded, each with its idempotency key: the channel never posts a key twice, so a crash
after the homeserver accepted a message but before it was marked delivered repeats nothing.
Rooms are resolved at delivery from stable keys (``manager``, ``worker:<name>``,
``project:<id>``), so a message may name a room that does not exist yet.

A message that fails is retried with back-off; the messages after it *in the same room* wait (a
room's order is kept), the other rooms' go on. One undelivered for :data:`ALERT_AFTER` seconds is
reported to the admin once, in the Manager room (logged if that room cannot be reached either).
At boot the control plane delivers what a crash left pending before anything else posts.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from hiclaw.state import ROOM_MANAGER, PendingMessage, StateDB

log = logging.getLogger(__name__)

#: Seconds before the n-th retry of a failed message (the last repeats).
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: Seconds a message may fail before the admin is told (once).
ALERT_AFTER = 300.0
#: Longest one delivery attempt may take (the channel retries network errors itself meanwhile).
SEND_TIMEOUT = 120.0
#: The loop looks for messages recorded without a flush this often (seconds).
POLL = 5.0

#: Test-only crash hook (see :func:`crash_hook_for_tests`).
CRASH_ENV = "HICLAW_TEST_CRASH_AFTER"
CRASH_FILE = Path("run") / "test-crash-after"


class Courier(Protocol):
    """How the outbox reaches rooms (:class:`hiclaw.control.chat.ControlChat`)."""

    async def resolve(self, room: str) -> str:
        """The room id of a room key (or the room id itself); raises if there is no such room yet."""

    async def send(self, room_id: str, text: str, *, mentions: Sequence[str] = (), key: str | None = None) -> str:
        """Post now with idempotency key ``key``; the event id."""


class Outbox:
    def __init__(self, state: StateDB, courier: Courier, *, admin: str = "admin", alert_after: float = ALERT_AFTER,
                 send_timeout: float = SEND_TIMEOUT, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.courier = courier
        self.admin = admin
        self.alert_after = alert_after
        self.send_timeout = send_timeout
        self.clock = clock
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[object] | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def deliver_pending(self) -> int:
        """Post every pending message that is due, in order; how many were delivered. Failures are
        recorded for a later attempt, never raised."""
        if self._holder is not None and self._holder is asyncio.current_task():
            self.wake()  # called from within a delivery (a post while a worker wakes): the loop goes on
            return 0
        async with self._lock:
            self._holder = asyncio.current_task()
            try:
                return await self._deliver()
            finally:
                self._holder = None

    async def _deliver(self) -> int:
        delivered = 0
        waiting: set[str] = set()  # rooms whose earlier message is not delivered: the later ones wait
        for message in self.state.pending_messages():
            if message.room in waiting:
                continue
            if message.next_attempt_at is not None and message.next_attempt_at > self.clock():
                waiting.add(message.room)
                continue
            try:
                async with asyncio.timeout(self.send_timeout):  # in this task (wait_for would start another)
                    room_id = await self.courier.resolve(message.room)
                    event_id = await self.courier.send(room_id, message.text, mentions=message.mentions,
                                                       key=message.key)
            except Exception as exc:  # noqa: BLE001 - any failure: kept, retried with back-off
                waiting.add(message.room)
                await self._failed(message, exc)
                continue
            self.state.message_delivered(message.id, message.key, room_id, event_id)
            if message.attempts:
                log.info("outbox: %s delivered after %d failed attempts", message.key, message.attempts)
            delivered += 1
        return delivered

    async def _failed(self, message: PendingMessage, exc: Exception) -> None:
        now = self.clock()
        since = message.failing_since if message.failing_since is not None else now
        delay = BACKOFF[min(message.attempts, len(BACKOFF) - 1)]
        error = f"{type(exc).__name__}: {exc}"[:500]
        self.state.message_failed(message.id, error=error, failing_since=since, next_attempt_at=now + delay)
        log.warning("outbox: %s for %s not delivered (attempt %d; next in %.0fs): %s",
                    message.key, message.room, message.attempts + 1, delay, error)
        if not message.alerted and now - since >= self.alert_after:
            await self._alert(message, now - since, error)
            self.state.message_alerted(message.id)

    async def _alert(self, message: PendingMessage, failing_for: float, error: str) -> None:
        text = (f"@{self.admin} a message for {message.room} (`{message.key}`) has not been delivered for "
                f"{failing_for / 60:.0f} min: {error}. I keep trying.")
        try:
            async with asyncio.timeout(self.send_timeout):
                room_id = await self.courier.resolve(ROOM_MANAGER)
                await self.courier.send(room_id, text, mentions=[self.admin], key=f"undelivered:{message.key}")
        except Exception as exc:  # noqa: BLE001 - the Manager room is unreachable too: the log is all that is left
            log.error("outbox: %s for %s has not been delivered for %.0fs (%s), and the Manager room cannot be "
                      "reached to say so: %s", message.key, message.room, failing_for, error, exc)

    # ------------------------------------------------------------------ the delivery loop

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox")

    def wake(self) -> None:
        self._wakeup.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                await self.deliver_pending()
            except Exception:
                log.exception("outbox: delivery pass failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._next_pass())

    def _next_pass(self) -> float | None:
        """Seconds until something pending is due (None: nothing pending, wait to be woken)."""
        pending = self.state.pending_messages()
        if not pending:
            return None
        now = self.clock()
        return max(min(POLL if m.next_attempt_at is None else m.next_attempt_at - now for m in pending), 0.05)


def crash_hook_for_tests(home: Path) -> Callable[[str], None] | None:
    """Test-only: a hook that SIGKILLs this process right after a named outbox entry commits — the
    window between a state change and its post, made deterministic (``hiclaw.testing.up.UpProcess.crash_after``).

    Armed only when ``HICLAW_TEST_CRASH_AFTER=outbox:<key>`` is set *and* ``$HICLAW_HOME/run/test-crash-after``
    holds the same value; it fires once, for the first entry whose key is ``<key>`` or starts with
    ``<key>:``, and removes that file first (a restart is not armed). Normal use sets neither."""
    point = os.environ.get(CRASH_ENV, "")
    marker = home / CRASH_FILE
    if not point.startswith("outbox:") or not marker.is_file() or marker.read_text().strip() != point:
        return None
    wanted = point.removeprefix("outbox:")
    log.warning("test hook armed: this process kills itself after committing outbox entry %s", wanted)

    def crash(key: str) -> None:
        if key != wanted and not key.startswith(f"{wanted}:"):
            return
        marker.unlink(missing_ok=True)
        log.warning("test hook: killing this process after committing outbox entry %s", key)
        for stream in (*(h for h in logging.getLogger().handlers), sys.stdout, sys.stderr):
            stream.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    return crash
