"""The heartbeat watchdog: code, not prompts, keeps an eye on every worker and its task.

Every ``[team] heartbeat_seconds`` (the *interval*) counts; checks run four times per interval,
so a threshold is acted on within a quarter interval of being crossed. For each worker:

- **process** (the sandbox supervisor's view). The supervisor restarts crashes with back-off; when
  such a restarted worker is ready again, its in-progress task is **re-notified** (the assignment
  mention is posted again, so the worker re-reads the spec). An *active* worker whose process is
  not running and will not be restarted by the supervisor (it exited cleanly, failed to start) is
  started again here, then re-notified. A **crash loop** (the supervisor stopped it) is never
  restarted here: the admin is told (by the control plane) and the Manager gets a summary.
- **progress** of its in-progress task — task progress only: the newest file of the task folder
  (``progress/`` notes, ``result.md``, ``workspace/``; not the Manager's ``spec.md``). Chatter and
  model calls are not progress (a worker answering "still on it" would be asked forever). None for
  **one interval** → the worker is asked in its room (at most :data:`MAX_ASKS` times per dispatch);
  for **two** → the admin is alerted in the ``Manager`` room, the task is marked *stalled*
  (``Task.stalled_at``; it stays ``in_progress``, plan.md notes it) and not asked again until it
  progresses. New progress clears the stall and says so in the ``Manager`` room.
- **the other waiting states** (review, a plan awaiting confirmation, blocked): see
  :mod:`hiclaw.control.ownership`.
- **idle sleep**: see :mod:`hiclaw.control.idle`.

The Manager is woken with ONE compact summary per check, and only when something needs its
judgement (a task newly stalled, a crash loop, a worker that cannot be started); never for
routine checks. Every message carries an idempotency key numbered per episode, so a restarted
control plane neither repeats nor loses one.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hiclaw.control.idle import ACTIVE, IdlePolicy
from hiclaw.control.ownership import Ownership
from hiclaw.control.ownership import span as _span
from hiclaw.models import ChatMessage, TaskState, WorkerState
from hiclaw.storage import layout

if TYPE_CHECKING:
    from hiclaw.control.chat import ControlChat
    from hiclaw.state import StateDB

log = logging.getLogger(__name__)

CHECKS_PER_INTERVAL = 4
STALL_INTERVALS = 2
MAX_START_FAILURES = 3
#: Heartbeat questions per task and dispatch; then only the stall alert.
MAX_ASKS = 3
#: Supervisor states in which the supervisor itself is (re)starting the process.
SUPERVISED = ("running", "starting", "backoff")


def epoch(value: str | None) -> float:
    if not value:
        return float("-inf")
    return datetime.fromisoformat(value).timestamp()


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")


@dataclass
class TaskWatch:
    """What the watchdog knows about one dispatch of one in-progress task."""

    dispatch: int
    last_progress: float
    asked: bool = False
    stalled: bool = False
    asks: int = 0  # heartbeat questions of this dispatch so far


@dataclass
class TickReport:
    """What one check did (for tests and logs)."""

    at: float
    asked: list[str] = field(default_factory=list)  # task ids
    stalled: list[str] = field(default_factory=list)
    unstalled: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)  # worker names
    renotified: list[str] = field(default_factory=list)  # task ids
    slept: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)  # reviews whose judgement was queued again
    review_alerted: list[str] = field(default_factory=list)  # reviews nobody judged: the admin was told
    reminded: list[str] = field(default_factory=list)  # plans awaiting confirmation, blocked tasks
    summary: str | None = None  # the text the Manager was woken with, if any


class Watchdog:
    def __init__(self, *, state: StateDB, chat: ControlChat, supervisor: Any, provisioner: Any, gateway: Any,
                 storage: Any, engine: Any, idle: IdlePolicy, wake_manager: Callable[..., Awaitable[Any]],
                 display: Callable[[str], str], interval: float, admin: str = "admin",
                 clock: Callable[[], float] = time.time) -> None:
        """``provisioner``: a :class:`hiclaw.control.provisioner.Provisioner` (its per-worker lock,
        ready times and ``start_process``); ``engine``: the task engine (plan.md rendering, review
        wake-ups); ``wake_manager(room_id, text, key)`` queues a Manager judgement; ``display``
        names a user id; ``interval``: ``[team] heartbeat_seconds``."""
        self.state, self.chat, self.supervisor, self.provisioner = state, chat, supervisor, provisioner
        self.gateway, self.storage, self.engine, self.idle = gateway, storage, engine, idle
        self.wake_manager, self.display, self.admin = wake_manager, display, admin
        self.interval = float(interval)
        self.clock = clock
        self.awaiting_approval: Callable[[str], bool] = lambda task_id: False  # set by the control plane
        self.check_every = max(0.05, min(self.interval, self.idle.idle_seconds) / CHECKS_PER_INTERVAL)
        self.started_at = clock()
        self.ownership = Ownership(state=state, chat=chat, engine=engine, admin=admin, interval=self.interval,
                                   started_at=lambda: self.started_at)
        self.watches: dict[str, TaskWatch] = {}
        self._crashed: dict[str, tuple[float, int | None]] = {}  # worker -> (when, exit code), until re-notified
        self._start_failures: dict[str, int] = {}
        self._judgement: list[tuple[str, str]] = []  # (key, line) for the next Manager summary
        self._usage_since: float | None = None
        self._loop: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._registered = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.register()
        if self._loop is None:
            self.started_at = self.clock()
            self._loop = asyncio.create_task(self._run(), name="heartbeat-watchdog")

    def register(self) -> None:
        """Subscribe to the supervisor's exit and crash-loop reports (once)."""
        if not self._registered:
            self.supervisor.on_exit(self._on_exit)
            self.supervisor.on_crash_loop(self._on_crash_loop)
            self._registered = True

    async def stop(self) -> None:
        tasks = [t for t in (self._loop, *self._background) if t is not None]
        self._loop = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_every)  # a periodic timer, not synchronisation
            try:
                await self.tick()
            except Exception:
                log.exception("heartbeat check failed")

    # ------------------------------------------------------------------ signals from the plane

    def observe(self, message: ChatMessage) -> None:
        """Called for every message the control plane sees (cheap; never blocks the sync loop)."""
        state = self.state
        sender = self.display(message.sender)
        when = message.timestamp.timestamp()
        worker = state.find_worker(sender)
        if worker is not None and worker.state != WorkerState.REMOVED:
            self.idle.touch(sender, when)  # activity (for idle sleep), not task progress
        for mention in message.mentions:
            name = self.display(mention)
            if name == sender:
                continue
            self.idle.touch(name, when)
            if self.idle.is_sleeping(name):
                self._spawn(self.idle.wake(name, reason=f"mentioned by {sender}"), f"wake-{name}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._background.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("%s failed: %s", name, finished.exception())

        task.add_done_callback(done)

    def _on_exit(self, name: str, code: int | None, will_restart: bool) -> None:
        # A restart the provisioner asked for holds its lock; only unplanned exits count here.
        if not will_restart or self.provisioner.lock(name).locked():
            return
        worker = self.state.find_worker(name)
        if worker is None or worker.state != ACTIVE:
            return
        self._crashed[name] = (time.time(), code)
        self.state.log_event("worker.crashed", name, exit_code=code)

    def _on_crash_loop(self, name: str, status: dict[str, Any]) -> None:
        self._crashed.pop(name, None)
        tasks = self.state.tasks(assignee=name, states=[TaskState.IN_PROGRESS])
        waiting = f"; {', '.join(t.id for t in tasks)} cannot progress" if tasks else ""
        number = self._count("worker.crash_loop", name)
        self._judgement.append((f"crash-loop:{name}:{number}",
                                f"worker {name} keeps crashing ({status.get('recent_crashes', '?')} crashes) and "
                                f"was stopped{waiting}. The admin was told. Decide whether to reassign its work."))

    # ------------------------------------------------------------------ one check

    async def tick(self) -> TickReport:
        now = self.clock()
        report = TickReport(at=now)
        state = self.state
        workers = [w for w in state.workers() if w.state != WorkerState.REMOVED]
        calls = await self._gateway_callers(now)
        for name in calls:
            self.idle.touch(name, now)
        await self._check_processes(workers, report)
        in_progress = state.tasks(states=[TaskState.IN_PROGRESS])
        for task in in_progress:
            await self._check_task(task, now, report)
        self._forget_finished({t.id for t in in_progress})
        await self.ownership.check(now, report)
        fresh = [w for w in state.workers() if w.state != WorkerState.REMOVED]
        report.slept = await self.idle.check(now, fresh, {t.assignee for t in in_progress})
        if self._judgement:
            items, self._judgement = self._judgement, []
            report.summary = "Heartbeat — needs your judgement:\n" + "\n".join(f"- {line}" for _, line in items)
            key = "heartbeat:" + "+".join(key for key, _ in items)
            await self.wake_manager(self.chat.manager_room, report.summary, key)
        return report

    async def _gateway_callers(self, now: float) -> set[str]:
        """Consumers with model calls since the previous check."""
        since, self._usage_since = self._usage_since, now
        if since is None:
            since = self.started_at
        try:
            rows = await self.gateway.usage(by="consumer", since=since)
        except Exception as exc:  # noqa: BLE001 - a gateway without usage: files and messages still count
            log.debug("heartbeat: no gateway usage (%s)", exc)
            return set()
        return {str(r.get("consumer")) for r in rows if int(r.get("calls") or 0) > 0}

    # ------------------------------------------------------------------ processes

    async def _check_processes(self, workers: list[Any], report: TickReport) -> None:
        restarts = []
        for worker in workers:
            name = worker.name
            status = self.supervisor.status(name)
            process = status.get("state")
            if name in self._crashed and process == "running":
                crashed_at, code = self._crashed[name]
                if self.provisioner.ready_at.get(name, float("-inf")) > crashed_at:
                    del self._crashed[name]
                    reason = f"your process stopped unexpectedly (exit code {code}) and was restarted"
                    report.renotified += await self.renotify(name, reason)
                continue
            # "absent": never started by this control plane (being created, or reconciliation
            # failed and said so); "crash-loop": stopped on purpose by the supervisor.
            if (worker.state != ACTIVE or process in (*SUPERVISED, "crash-loop", "absent")
                    or self.provisioner.lock(name).locked()
                    or self._start_failures.get(name, 0) >= MAX_START_FAILURES):
                continue
            restarts.append(self._restart(worker, process, report))
        await asyncio.gather(*restarts)

    async def _restart(self, worker: Any, process: str | None, report: TickReport) -> None:
        name = worker.name
        self.state.log_event("worker.restarting", name, process=process)
        try:
            await self.provisioner.start_process(worker, restart=True)
        except Exception as exc:  # noqa: BLE001 - counted; reported after a few attempts
            failures = self._start_failures[name] = self._start_failures.get(name, 0) + 1
            log.error("heartbeat: worker %s could not be started (%d/%d): %s", name, failures, MAX_START_FAILURES, exc)
            if failures >= MAX_START_FAILURES:
                await self.chat.post(
                    self.chat.manager_room,
                    f"@{self.admin} worker **{name}** is not running and could not be started "
                    f"{failures} times ({exc}). See `hiclaw worker logs {name}`.",
                    mentions=[self.admin], key=f"start-failed:{name}:{self._count('worker.start_failed', name)}")
                self.state.log_event("worker.start_failed", name, error=str(exc))
                self._judgement.append((f"start-failed:{name}:{self._count('worker.start_failed', name)}",
                                        f"worker {name} cannot be started ({exc}); the admin was told."))
            return
        self._start_failures.pop(name, None)
        report.restarted.append(name)
        report.renotified += await self.renotify(name, f"your process was not running ({process}) and was restarted")

    async def renotify(self, worker: str, reason: str) -> list[str]:
        """Post the assignment of each of ``worker``'s in-progress tasks again."""
        renotified = []
        for task in self.state.tasks(assignee=worker, states=[TaskState.IN_PROGRESS]):
            number = self._count("task.renotified", task.id) + 1
            await self.chat.post(
                await self._task_room(task),
                f"@{worker} {reason}. Please carry on with **{task.id}**: {task.title}\n"
                f"Spec: `{layout.task_spec(task.id)}` — report with `report_result` when done.",
                mentions=[worker], key=f"renotify:{task.id}:{number}")
            self.state.log_event("task.renotified", task.id, worker=worker, reason=reason)
            watch = self.watches.get(task.id)
            if watch is not None:
                watch.last_progress = max(watch.last_progress, self.clock())
                watch.asked = False
            renotified.append(task.id)
        return renotified

    # ------------------------------------------------------------------ task progress

    async def _check_task(self, task: Any, now: float, report: TickReport) -> None:
        watch = self.watches.get(task.id)
        if watch is None or watch.dispatch != task.dispatch_count:
            # First sight (or a new dispatch): the window starts at the latest of the task's last
            # recorded progress, its last change and this watchdog's start (signals sent while the
            # control plane was down were not observed).
            baseline = max(epoch(task.last_progress_at), epoch(task.updated_at), self.started_at)
            same_dispatch = watch is None and task.stalled_at is not None
            asks = sum(e["data"].get("dispatch") == task.dispatch_count
                       for e in self.state.events(kind="task.heartbeat_asked", subject=task.id))
            watch = self.watches[task.id] = TaskWatch(task.dispatch_count, baseline, stalled=same_dispatch,
                                                      asked=same_dispatch, asks=asks)
            if task.stalled_at is not None and not same_dispatch:
                self.state.update_task(task.id, stalled_at=None)
        latest = await self._latest_signal(task)
        if latest > watch.last_progress:
            watch.last_progress = latest
            watch.asked = False
            self.state.update_task(task.id, last_progress_at=iso(latest))
            if watch.stalled:
                await self._unstall(task, watch)
                report.unstalled.append(task.id)
            return
        if self.supervisor.status(task.assignee).get("state") != "running":
            return  # a dead or sleeping process is the process check's business
        if self.awaiting_approval(task.id):
            watch.last_progress = now  # it waits for the admin, who was told (and is reminded): not a stall
            return
        quiet = now - watch.last_progress
        if quiet >= self.interval and not watch.asked:
            if watch.asks < MAX_ASKS:  # past the cap: no question, the stall alert follows
                await self._ask(task, quiet)
                watch.asks += 1
                report.asked.append(task.id)
            watch.asked = True
        elif quiet >= STALL_INTERVALS * self.interval and not watch.stalled:
            await self._stall(task, quiet)
            watch.stalled = True
            report.stalled.append(task.id)

    async def _latest_signal(self, task: Any) -> float:
        """The newest task progress: a file of the task folder other than the Manager's spec."""
        try:
            items = await self.storage.list(layout.task_dir(task.id))
        except Exception as exc:  # noqa: BLE001 - storage hiccup: nothing seen this time, asked later
            log.warning("heartbeat: cannot list %s: %s", layout.task_dir(task.id), exc)
            return float("-inf")
        spec = layout.task_spec(task.id)
        return max((float(i["mtime"]) for i in items if i.get("key") != spec and i.get("mtime") is not None),
                   default=float("-inf"))

    async def _ask(self, task: Any, quiet: float) -> None:
        number = self._count("task.heartbeat_asked", task.id) + 1
        await self.chat.post(
            await self.chat.worker_room(task.assignee),
            f"@{task.assignee} how is **{task.id}** going? I have seen no progress for {_span(quiet)} "
            f"(no new files in `{layout.task_dir(task.id)}`). Add a `progress_note` (a chat reply is not "
            "progress), or call `report_result` if you are done or blocked.",
            mentions=[task.assignee], key=f"heartbeat:{task.id}:{number}")
        self.state.log_event("task.heartbeat_asked", task.id, worker=task.assignee, quiet_seconds=round(quiet, 1),
                                   dispatch=task.dispatch_count)

    async def _stall(self, task: Any, quiet: float) -> None:
        number = self._count("task.stalled", task.id) + 1
        admin = self.admin
        self.state.update_task(task.id, stalled_at=iso(self.clock()))
        self.state.log_event("task.stalled", task.id, worker=task.assignee, quiet_seconds=round(quiet, 1))
        await self._rerender(task)
        await self.chat.post(
            self.chat.manager_room,
            f"@{admin} **{task.id}** ({task.title}) looks stalled: {task.assignee} has shown no progress for "
            f"{_span(quiet)} and did not answer the heartbeat question. Files: `{layout.task_dir(task.id)}`.",
            mentions=[admin], key=f"stalled:{task.id}:{number}")
        self._judgement.append((f"stalled:{task.id}:{number}",
                                f"{task.id} ({task.title}) by {task.assignee}: no progress for {_span(quiet)}; "
                                "marked stalled, admin alerted. Wait, ask the worker, cancel or reassign it."))

    async def _unstall(self, task: Any, watch: TaskWatch) -> None:
        watch.stalled = False
        self.state.update_task(task.id, stalled_at=None)
        self.state.log_event("task.unstalled", task.id, worker=task.assignee)
        await self._rerender(task)
        await self.chat.post(self.chat.manager_room,
                                   f"**{task.id}** is moving again ({task.assignee} made progress).",
                                   key=f"unstalled:{task.id}:{self._count('task.unstalled', task.id)}")

    def _forget_finished(self, in_progress: set[str]) -> None:
        for task_id in [t for t in self.watches if t not in in_progress]:
            watch = self.watches.pop(task_id)
            if watch.stalled:  # reported, cancelled or blocked while stalled: the stall is over
                self.state.update_task(task_id, stalled_at=None)

    # ------------------------------------------------------------------ helpers

    def _count(self, kind: str, subject: str) -> int:
        return len(self.state.events(kind=kind, subject=subject))

    async def _task_room(self, task: Any) -> str:
        if task.project_id:
            project = self.state.project(task.project_id)
            if project.room_id:
                return str(project.room_id)
        return str(await self.chat.worker_room(task.assignee))

    async def _rerender(self, task: Any) -> None:
        if task.project_id:
            await self.engine.render(task.project_id)

