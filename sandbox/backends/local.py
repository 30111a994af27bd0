"""Backends that run workers as local child processes of the control plane (bwrap, process).

:class:`LocalSandboxBackend` does everything but the command line: host bridges, the worker's
log, the launcher's readiness handshake (``--ready-fd``: one byte once the worker program runs,
EOF if the sandbox could not be set up), graceful stop (SIGTERM to the launcher, which passes it
on; SIGKILL to the whole session after the timeout), status and exit codes. A subclass
implements :meth:`LocalSandboxBackend._plan` (and may override the other hooks).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from hiclaw.sandbox.base import (
    BackendBase,
    SandboxError,
    SandboxHandle,
    check_mounts_safe,
    last_error,
    launcher_argv,
    status_dict,
    worker_environment,
)
from hiclaw.sandbox.bridge import HostBridges
from hiclaw.sandbox.logs import open_log, utcnow
from hiclaw.sandbox.settings import BackendSettings
from hiclaw.sandbox.spec import WorkerSpec

#: Seconds a sandbox may take from spawn to "the worker program runs".
READY_TIMEOUT = 60.0
T = TypeVar("T")


def read_fd_async(fd: int, parse: Callable[[bytes], T | None], *, timeout: float) -> Awaitable[T | None]:
    """Read ``fd`` (a pipe) without blocking the loop until ``parse(data so far)`` returns a
    value; ``None`` on EOF or timeout."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T | None] = loop.create_future()
    buffer = bytearray()
    os.set_blocking(fd, False)

    def on_readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if future.done():
            return
        if not data:
            future.set_result(None)
            return
        buffer.extend(data)
        value = parse(bytes(buffer))
        if value is not None:
            future.set_result(value)

    loop.add_reader(fd, on_readable)
    future.add_done_callback(lambda _: loop.remove_reader(fd))

    async def result() -> T | None:
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return None

    return result()


def child_pids(pid: int) -> list[int]:
    """Host pids of ``pid``'s children (Linux ``/proc``; empty if unknown)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


@dataclass
class LaunchPlan:
    """A command line for the sandbox, with the fds it inherits and the ones the host keeps."""

    argv: list[str]
    cwd: str = "/"
    pass_fds: tuple[int, ...] = ()  # the child's ends: closed in the parent once spawned
    keep_fds: tuple[int, ...] = ()  # the host's ends (e.g. bwrap's status pipe)

    def close_child_ends(self) -> None:
        for fd in self.pass_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pass_fds = ()

    def close(self) -> None:
        self.close_child_ends()
        for fd in self.keep_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.keep_fds = ()


@dataclass
class _Run:
    """One run of one worker (a local child process)."""

    spec: WorkerSpec
    process: asyncio.subprocess.Process
    signal_pid: int  # where SIGTERM goes (the launcher)
    started_at: datetime
    log_path: Path
    bridges: HostBridges | None
    starts: int
    plan: LaunchPlan  # its host-side fds stay open until the process exits (bwrap writes its exit status)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    watcher: asyncio.Task[None] | None = None


class LocalSandboxBackend(BackendBase):
    """Base of the backends that run workers as local child processes."""

    name: ClassVar[str] = "local"
    #: Appended to the "starting worker" line of the worker's log.
    log_note: ClassVar[str] = ""

    def __init__(self, settings: BackendSettings | None = None, ctx: Any = None) -> None:
        super().__init__(settings, ctx)
        self.python = sys.executable
        self._starts: dict[str, int] = {}

    # ------------------------------------------------------------------ subclass hooks

    def _launcher_args(self, forwards: list[str], ready_fd: int | None = None) -> list[str]:
        extra = ("--ready-fd", str(ready_fd)) if ready_fd is not None else ()
        return launcher_argv(self.python, forwards, self.settings, extra)

    def _environment(self, spec: WorkerSpec) -> dict[str, str]:
        path = os.pathsep.join([str(Path(self.python).parent), "/usr/local/bin", "/usr/bin", "/bin"])
        return worker_environment(spec, {"PATH": path})

    def _plan(self, spec: WorkerSpec, run_dir: Path, bridges: dict[str, Path], ready_fd: int) -> LaunchPlan:
        """How to run the launcher for ``spec`` (it reports on ``ready_fd``). Subclasses implement."""
        raise NotImplementedError

    async def _signal_pid(self, process: asyncio.subprocess.Process, plan: LaunchPlan, log_path: Path) -> int:
        """The host pid that should get SIGTERM (default: the spawned process itself)."""
        return process.pid

    def _start_failed_hint(self) -> str:
        return "see the worker's log"

    def _prepare(self, spec: WorkerSpec) -> None:
        """Validate before anything is started (raise :class:`SandboxError`)."""
        check_mounts_safe(spec, self.control_home)

    def _uses_bridges(self, spec: WorkerSpec) -> bool:
        return True

    async def _before_start(self, spec: WorkerSpec) -> None:
        """Slow preparation, off the event loop's thread (subclasses)."""

    # ------------------------------------------------------------------ API

    async def start(self, spec: WorkerSpec) -> SandboxHandle:
        self._refuse_running(spec.name)
        self._prepare(spec)
        await self._before_start(spec)
        for path in [spec.home, *(m.host_path for m in spec.mounts)]:
            if path is not None and not path.exists():
                raise SandboxError(f"worker {spec.name!r}: {path} does not exist", hint="create it before starting the worker")
        log_path = self.log_path(spec.name, spec)
        run_dir = self._socket_dir(spec.name)
        host_bridges = HostBridges(run_dir, spec.bridges) if spec.bridges and self._uses_bridges(spec) else None
        sockets = await host_bridges.start() if host_bridges else {}
        log_fd = open_log(log_path, f"starting worker {spec.name} ({self.name} sandbox){self.log_note}")
        plan: LaunchPlan | None = None
        ready_read, ready_write = os.pipe()  # the launcher writes one byte once the worker runs
        try:
            plan = self._plan(spec, run_dir, sockets, ready_write)
            plan.pass_fds += (ready_write,)
            plan.keep_fds += (ready_read,)
            process = await asyncio.create_subprocess_exec(
                *plan.argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                env=self._environment(spec), cwd=plan.cwd, start_new_session=True, pass_fds=plan.pass_fds,
            )
        except BaseException:
            if plan is not None:
                plan.close()
            else:
                os.close(ready_read)
                os.close(ready_write)
            if host_bridges:
                await host_bridges.close()
            raise
        finally:
            os.close(log_fd)
            if plan is not None:
                plan.close_child_ends()
        self._starts[spec.name] = self._starts.get(spec.name, 0) + 1
        try:
            signal_pid = await self._signal_pid(process, plan, log_path)
            if not await read_fd_async(ready_read, bytes, timeout=READY_TIMEOUT):
                code = await asyncio.wait_for(process.wait(), READY_TIMEOUT)
                raise SandboxError(f"worker {spec.name!r} did not start (exit code {code}): {last_error(log_path)}",
                                   hint=self._start_failed_hint())
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            plan.close()
            if host_bridges:
                await host_bridges.close()
            raise
        run = _Run(spec, process, signal_pid, utcnow(), log_path, host_bridges, self._starts[spec.name], plan)
        run.watcher = asyncio.create_task(self._watch(run), name=f"sandbox-{spec.name}")
        self._runs[spec.name] = run
        return SandboxHandle(name=spec.name, backend=self.name, pid=process.pid, started_at=run.started_at, log_path=log_path)

    async def _watch(self, run: _Run) -> None:
        code = await run.process.wait()
        run.plan.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.process.pid, signal.SIGKILL)  # leftovers of the worker's session
        if run.bridges:
            await run.bridges.close()
        run.exit_code = code
        self._finished(run)

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        """SIGTERM to the launcher (it passes it on to the worker); SIGKILL after ``timeout``."""
        run = self._runs.get(name)
        if run is None or run.done.is_set():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.signal_pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(run.done.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGKILL)
            await run.done.wait()

    async def status(self, name: str) -> dict[str, Any]:
        """``pid``: the sandbox's outermost host process (killing it kills the sandbox);
        ``launcher_pid``: the launcher; ``worker_pid``: the worker program, as host pids."""
        run = self._runs.get(name)
        if run is None:
            return status_dict(name, self.name, "absent")
        running = not run.done.is_set()
        workers = child_pids(run.signal_pid) if running else []
        return status_dict(
            name, self.name, "running" if running else "exited",
            pid=run.process.pid, launcher_pid=run.signal_pid, worker_pid=workers[0] if workers else None,
            exit_code=run.exit_code, started_at=run.started_at.isoformat(), restarts=run.starts - 1,
            log_path=str(run.log_path),
        )
