"""Keep workers running: restart with exponential back-off, detect crash loops, report exits.

::

    supervisor = Supervisor(backend, on_exit=..., on_crash_loop=...)
    await supervisor.start(spec)          # start and watch
    await supervisor.adopt(spec)          # or take over the run a crashed control plane left (None: start it)
    await supervisor.restart("alice")     # now, counters reset (optionally with a new spec)
    await supervisor.stop("alice")        # stop watching, stop the sandbox (state "stopped")
    supervisor.status()                   # every worker; status("alice") for one
    await supervisor.close()              # clean shutdown of every worker, in parallel

Policy: a run that ends with a non-zero exit code is a crash (``restart_policy="on-failure"``;
``"always"`` also restarts after exit code 0, ``"never"`` restarts nothing). The n-th crash in a
row waits ``min(backoff_base * 2**(n-1), backoff_max)`` seconds before the restart; a run that
lasted ``stable_after`` seconds resets n. ``crash_loop_count`` crashes within
``crash_loop_window`` seconds stop the worker (state ``crash-loop``) and call ``on_crash_loop``.

Callbacks may be plain functions or coroutines; one that raises is logged and ignored:
``on_exit(name, exit_code, will_restart)`` after every run, ``on_crash_loop(name, status)``.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from hiclaw.errors import HiclawError, NotFoundError
from hiclaw.protocols import AdoptingSandbox, SignallingSandbox
from hiclaw.sandbox.spec import WorkerSpec

log = logging.getLogger(__name__)

RestartPolicy = Literal["on-failure", "always", "never"]
ExitCallback = Callable[[str, "int | None", bool], Any]
CrashLoopCallback = Callable[[str, dict[str, Any]], Any]


@dataclass
class _Worker:
    spec: WorkerSpec
    state: str = "starting"  # starting | running | backoff | crash-loop | exited | stopped
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)
    consecutive: int = 0
    last_exit_code: int | None = None
    last_error: str | None = None
    next_restart_at: float | None = None
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set whenever the worker is not between runs (running, or supervision ended).
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    restart_now: bool = False


class Supervisor:
    def __init__(
        self,
        backend: Any,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        stable_after: float = 60.0,
        crash_loop_count: int = 5,
        crash_loop_window: float = 120.0,
        restart_policy: RestartPolicy = "on-failure",
        stop_timeout: float = 10.0,
        on_exit: ExitCallback | None = None,
        on_crash_loop: CrashLoopCallback | None = None,
    ) -> None:
        if backoff_base <= 0 or backoff_max < backoff_base:
            raise ValueError("need 0 < backoff_base <= backoff_max")
        if crash_loop_count < 1 or crash_loop_window <= 0:
            raise ValueError("need crash_loop_count >= 1 and crash_loop_window > 0")
        self.backend = backend
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.crash_loop_count = crash_loop_count
        self.crash_loop_window = crash_loop_window
        self.restart_policy = restart_policy
        self.stop_timeout = stop_timeout
        self._on_exit: list[ExitCallback] = [on_exit] if on_exit else []
        self._on_crash_loop: list[CrashLoopCallback] = [on_crash_loop] if on_crash_loop else []
        self._workers: dict[str, _Worker] = {}

    # ------------------------------------------------------------------ callbacks

    def on_exit(self, callback: ExitCallback) -> None:
        self._on_exit.append(callback)

    def on_crash_loop(self, callback: CrashLoopCallback) -> None:
        self._on_crash_loop.append(callback)

    async def _call(self, callbacks: list[Callable[..., Any]], *args: Any) -> None:
        for callback in callbacks:
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("supervisor callback %r failed", callback)

    # ------------------------------------------------------------------ API

    async def start(self, spec: WorkerSpec) -> dict[str, Any]:
        """Start ``spec`` and keep it running. Raises if the first start fails."""
        current = self._workers.get(spec.name)
        if current is not None and current.task is not None and not current.task.done():
            raise HiclawError(f"worker {spec.name!r} is already supervised (state {current.state})",
                              hint="use restart to apply a new spec, or stop it first")
        worker = _Worker(spec)
        self._workers[spec.name] = worker
        try:
            await self.backend.start(spec)
        except BaseException as exc:
            worker.state = "stopped"
            worker.last_error = str(exc)
            raise
        worker.state = "running"
        worker.settled.set()
        worker.task = asyncio.create_task(self._supervise_safely(worker), name=f"supervise-{spec.name}")
        return self.status(spec.name)

    async def adopt(self, spec: WorkerSpec) -> dict[str, Any] | None:
        """Supervise the run of ``spec`` that a crashed control plane left running, if the backend
        can adopt it (same fingerprint, still alive); ``None`` if there is nothing to adopt (what
        was left is stopped) — then :meth:`start` it."""
        current = self._workers.get(spec.name)
        if not isinstance(self.backend, AdoptingSandbox) or (
                current is not None and current.task is not None and not current.task.done()):
            return None
        if await self.backend.adopt(spec) is None:
            return None
        worker = _Worker(spec, state="running")
        worker.settled.set()
        self._workers[spec.name] = worker
        worker.task = asyncio.create_task(self._supervise_safely(worker), name=f"supervise-{spec.name}")
        return self.status(spec.name)

    async def signal(self, name: str, signum: int) -> bool:
        """Send ``signum`` to a running worker, if the backend can; True if it was sent."""
        return bool(isinstance(self.backend, SignallingSandbox) and self.status(name).get("state") == "running"
                    and await self.backend.signal(name, signum))

    async def stop(self, name: str, timeout: float | None = None) -> None:
        """Stop supervising ``name`` and stop its sandbox (absent is fine)."""
        worker = self._workers.get(name)
        if worker is None:
            return
        worker.stopping = True
        worker.wake.set()
        await self.backend.stop(name, self.stop_timeout if timeout is None else timeout)
        if worker.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await worker.task
        worker.state = "stopped"
        worker.next_restart_at = None

    async def restart(self, name: str, spec: WorkerSpec | None = None) -> dict[str, Any]:
        """Restart now (crash counters reset), optionally with a new spec."""
        worker = self._workers.get(name)
        if worker is None:
            raise NotFoundError(f"no supervised worker named {name!r}", hint="start it first")
        new_spec = spec or worker.spec
        if worker.task is not None and not worker.task.done():
            worker.spec = new_spec
            worker.restart_now = True
            worker.settled.clear()
            worker.wake.set()
            await self.backend.stop(name, self.stop_timeout)  # the loop sees restart_now and starts again
            await worker.settled.wait()
            return self.status(name)
        restarts = worker.restarts + 1
        status = await self.start(new_spec)
        self._workers[name].restarts = restarts
        return {**status, "restarts": restarts}

    def status(self, name: str | None = None) -> Any:
        """One worker's status dict, or (no name) a list of all, sorted by name."""
        if name is None:
            return [self.status(n) for n in sorted(self._workers)]
        worker = self._workers.get(name)
        if worker is None:
            return {"name": name, "state": "absent", "restarts": 0}
        next_in = None if worker.next_restart_at is None else max(0.0, worker.next_restart_at - time.monotonic())
        return {
            "name": name,
            "state": worker.state,
            "restarts": worker.restarts,
            "exit_code": worker.last_exit_code,
            "error": worker.last_error,
            "recent_crashes": len(worker.crashes),
            "next_restart_in": next_in,
        }

    async def backend_status(self, name: str) -> dict[str, Any]:
        """The supervisor's view merged over the backend's (pid, started_at, ...)."""
        return {**await self.backend.status(name), **self.status(name)}

    def names(self) -> list[str]:
        return sorted(self._workers)

    async def close(self, timeout: float | None = None) -> None:
        """Stop every worker, in parallel."""
        await asyncio.gather(*(self.stop(name, timeout) for name in list(self._workers)))

    # ------------------------------------------------------------------ the loop

    def _delay(self, worker: _Worker) -> float:
        return min(self.backoff_base * 2 ** max(worker.consecutive - 1, 0), self.backoff_max)

    def _record_crash(self, worker: _Worker) -> bool:
        """Count a crash; True if this makes a crash loop."""
        now = time.monotonic()
        worker.crashes.append(now)
        while worker.crashes and now - worker.crashes[0] > self.crash_loop_window:
            worker.crashes.popleft()
        return len(worker.crashes) >= self.crash_loop_count

    async def _supervise_safely(self, worker: _Worker) -> None:
        try:
            await self._supervise(worker)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("supervising worker %s failed", worker.spec.name)
            worker.state = "exited"
            worker.last_error = f"supervisor error: {exc}"
        finally:
            worker.settled.set()

    def _reset(self, worker: _Worker) -> None:
        """A manual restart: start now, crash counters cleared."""
        worker.restart_now = False
        worker.consecutive = 0
        worker.crashes.clear()
        worker.state = "starting"

    async def _supervise(self, worker: _Worker) -> None:
        name = worker.spec.name
        while True:
            started = time.monotonic()
            code = await self.backend.wait(name)
            worker.last_exit_code = code
            if worker.stopping:
                await self._call(self._on_exit, name, code, False)
                return
            if worker.restart_now:
                await self._call(self._on_exit, name, code, True)
                self._reset(worker)
            else:
                crashed = code != 0
                will_restart = self.restart_policy == "always" or (self.restart_policy == "on-failure" and crashed)
                loop_detected = crashed and self._record_crash(worker)
                await self._call(self._on_exit, name, code, will_restart and not loop_detected)
                if loop_detected:
                    worker.state = "crash-loop"
                    log.error("worker %s is crash-looping (%d crashes in %.0fs); stopped", name,
                              len(worker.crashes), self.crash_loop_window)
                    await self._call(self._on_crash_loop, name, self.status(name))
                    return
                if not will_restart:
                    worker.state = "exited"
                    return
                worker.consecutive = 1 if time.monotonic() - started >= self.stable_after else worker.consecutive + 1
                if not await self._backoff(worker):
                    return
            if not await self._start_again(worker):
                return

    async def _backoff(self, worker: _Worker) -> bool:
        """Wait before restarting; False if stopped meanwhile."""
        delay = self._delay(worker)
        worker.state = "backoff"
        worker.next_restart_at = time.monotonic() + delay
        worker.wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(worker.wake.wait(), delay)
        worker.next_restart_at = None
        if worker.restart_now:  # a manual restart during back-off
            self._reset(worker)
        return not worker.stopping

    async def _start_again(self, worker: _Worker) -> bool:
        """Start the next run; start failures count as crashes. False if the loop should end."""
        name = worker.spec.name
        while True:
            try:
                await self.backend.start(worker.spec)
            except HiclawError as exc:
                worker.last_error = str(exc)
                log.error("worker %s could not be restarted: %s", name, exc)
                if self._record_crash(worker):
                    worker.state = "crash-loop"
                    await self._call(self._on_crash_loop, name, self.status(name))
                    return False
                worker.consecutive += 1
                if not await self._backoff(worker):
                    return False
                continue
            worker.restarts += 1
            worker.last_error = None
            worker.state = "running"
            worker.settled.set()
            return True

