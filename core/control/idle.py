"""Idle sleep: a worker with nothing to do stops its process and starts again when it is needed.

A worker *sleeps* when it has no in-progress task and has shown no activity (its messages, a
message mentioning it, a model call, a task of its changing state) for
``[team] idle_sleep_seconds``: its process is stopped and its state becomes ``sleeping``; its
account, room, token, storage and persistent state directory are kept. It *wakes* — state
``active``, process started and **ready** — before anything reaches it:

- an assignment: the engine calls ``Provisioner.refresh_access`` before posting it, and that
  wakes a sleeping worker first;
- any control-side post mentioning it (``ControlChat.post``: the Manager's messages, re-notices);
- a message from someone else mentioning it (seen by the control plane's channel). That message
  was posted while the worker slept; the worker still receives it after it starts, because its
  sync token lives in its persistent state directory.

Reconciliation at boot starts only ``active`` workers, so sleeping workers stay asleep.
The watchdog (:mod:`hiclaw.control.watchdog`) calls :meth:`IdlePolicy.check` on every tick.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from hiclaw.models import WorkerState

if TYPE_CHECKING:
    from hiclaw.state import StateDB

log = logging.getLogger(__name__)

SLEEPING = WorkerState.SLEEPING
ACTIVE = WorkerState.ACTIVE


class IdlePolicy:
    """Tracks each worker's last activity; puts idle workers to sleep and wakes them on demand."""

    def __init__(self, *, state: StateDB, supervisor: Any, provisioner: Any, display: Callable[[str], str],
                 idle_seconds: float, clock: Callable[[], float] = time.time) -> None:
        """``provisioner``: a :class:`hiclaw.control.provisioner.Provisioner` (its per-worker lock,
        mounts and ``start_process``); ``display`` names a user id; ``idle_seconds``: ``[team]
        idle_sleep_seconds``."""
        self.state, self.supervisor, self.provisioner, self.display = state, supervisor, provisioner, display
        self.idle_seconds = float(idle_seconds)
        self.clock = clock
        self.last_active: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def touch(self, name: str, when: float | None = None) -> None:
        """Record activity of ``name`` at ``when`` (default: now); never moves backwards."""
        when = self.clock() if when is None else when
        if when > self.last_active.get(name, float("-inf")):
            self.last_active[name] = when

    def is_sleeping(self, name: str) -> bool:
        worker = self.state.find_worker(name)
        return worker is not None and worker.state == SLEEPING

    # ------------------------------------------------------------------ sleep

    async def check(self, now: float, workers: Iterable[Any], busy: set[str]) -> list[str]:
        """Put every idle worker to sleep; returns the names that fell asleep."""
        slept = []
        for worker in workers:
            name = worker.name
            if name in busy:
                self.touch(name, now)
                continue
            process = self.supervisor.status(name).get("state")
            if worker.state == SLEEPING and process == "running":
                # Started by someone else meanwhile (e.g. a model change): it is awake.
                self.state.set_worker_state(name, ACTIVE)
                self.touch(name, now)
                continue
            if worker.state != ACTIVE or process != "running":
                continue
            self.last_active.setdefault(name, now)
            if now - self.last_active[name] >= self.idle_seconds and await self.sleep(name):
                slept.append(name)
        return slept

    async def sleep(self, name: str) -> bool:
        """Stop an idle worker's process and mark it sleeping; False if it is no longer idle."""
        provisioner = self.provisioner
        async with self._lock(name), provisioner.lock(name):  # never while it is started or removed
            worker = self.state.find_worker(name)
            if worker is None or worker.state != ACTIVE or self._has_work(name):
                return False
            # State first: the watchdog restarts stopped *active* workers, never sleeping ones.
            self.state.set_worker_state(name, SLEEPING)
            await self.supervisor.stop(name)
            provisioner.mounts.pop(name, None)
            idle_for = self.clock() - self.last_active.get(name, self.clock())
            self.state.log_event("worker.sleeping", name, idle_seconds=round(idle_for, 1))
            log.info("worker %s is asleep after %.0fs without activity", name, idle_for)
            return True

    def _has_work(self, name: str) -> bool:
        from hiclaw.models import TaskState

        return bool(self.state.tasks(assignee=name, states=[TaskState.IN_PROGRESS]))

    # ------------------------------------------------------------------ wake

    async def wake(self, name: str, *, reason: str) -> bool:
        """Start a sleeping worker and wait until it is ready; False if it was not asleep."""
        async with self._lock(name):
            worker = self.state.find_worker(name)
            if worker is None or worker.state != SLEEPING:
                return False
            self.state.set_worker_state(name, ACTIVE)
            self.state.log_event("worker.woken", name, reason=reason)
            self.touch(name)
            log.info("waking worker %s (%s)", name, reason)
            await self.provisioner.start_process(self.state.worker(name))
            return True

    async def wake_mentioned(self, mentions: Sequence[str], *, reason: str = "mention") -> None:
        """Wake every sleeping worker among ``mentions`` (names or user ids) before a post."""
        for mention in mentions:
            name = self.display(mention) if mention.startswith("@") else mention
            if self.is_sleeping(name):
                await self.wake(name, reason=reason)
