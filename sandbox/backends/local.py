"""Backends that run workers as local child processes of the control plane (bwrap, process).

:class:`LocalSandboxBackend` does everything but the command line: host bridges, the worker's
log, the launcher's readiness handshake (``--ready-fd``: one byte once the worker program runs,
EOF if the sandbox could not be set up), graceful stop (SIGTERM to the launcher, which passes it
on; SIGKILL to the whole session after the timeout), status and exit codes. A subclass
implements :meth:`LocalSandboxBackend._plan` (and may override the other hooks).

A backend with ``adoptable = True`` (bwrap) lets its sandboxes outlive a crash of the control
plane: each run is recorded in ``<run dir>/<name>.run.json`` (pids with their kernel start times,
so a reused pid is never mistaken for the worker, and the spec's fingerprint), and the next
control plane adopts (:meth:`~LocalSandboxBackend.adopt`) a run whose fingerprint still matches — new
host bridges on the same socket paths, exit watched through a pidfd — or stops it.
:meth:`~LocalSandboxBackend.stop_leftovers` stops the runs nobody adopted (``hiclaw down``).

Limits (:mod:`hiclaw.sandbox.limits`): each run gets its own cgroup where the control plane can
create one — its first process enters it before it runs anything, and whatever is left in it
when the run ends is killed — and rlimits through the launcher otherwise.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
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
from hiclaw.sandbox.limits import LimitPlan, WorkerCgroup, plan_limits
from hiclaw.sandbox.logs import append_log, open_log, utcnow
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
        except TimeoutError:
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


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot; Linux ``/proc``), ``None`` if it is gone or a
    zombie. With the pid, the identity of a process: a pid reused later has another start time."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def same_process(pid: int, start_time: int | None) -> bool:
    return start_time is not None and process_start_time(pid) == start_time


async def wait_foreign_exit(pid: int, start_time: int | None) -> None:
    """Until ``pid`` (not our child: no exit code to collect) has exited."""
    if not same_process(pid, start_time):
        return
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):  # no pidfds (kernel < 5.3): poll instead
        while same_process(pid, start_time):  # noqa: ASYNC110 - no pidfd: nothing to wait on but polling
            await asyncio.sleep(0.5)  # watching a process we cannot wait for
        return
    try:
        if not same_process(pid, start_time):  # the pid was reused before we opened it
            return
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


def kill_process(pid: int, start_time: int | None, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` only if it is still the process that started at ``start_time``."""
    if same_process(pid, start_time):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@dataclass
class RunRecord:
    """What a later control plane needs to find (and adopt or stop) a run: ``<name>.run.json``."""

    name: str
    pid: int  # the sandbox's outermost process (bwrap)
    pid_start: int | None
    signal_pid: int  # the launcher (PID 1 of the sandbox: killing it ends the sandbox)
    signal_start: int | None
    fingerprint: str | None
    log_path: str
    started_at: str
    starts: int = 1

    def alive(self) -> bool:
        return same_process(self.pid, self.pid_start) and same_process(self.signal_pid, self.signal_start)

    def kill(self) -> None:
        for pid, start in ((self.signal_pid, self.signal_start), (self.pid, self.pid_start)):
            kill_process(pid, start)


@dataclass
class _Run:
    """One run of one worker (a local child process, or a run adopted after a crash)."""

    spec: WorkerSpec
    pid: int  # the sandbox's outermost host process
    signal_pid: int  # where SIGTERM goes (the launcher)
    started_at: datetime
    log_path: Path
    bridges: HostBridges | None
    starts: int
    #: The child process (``None`` for an adopted run: its exit code is unknown).
    process: asyncio.subprocess.Process | None = None
    plan: LaunchPlan | None = None  # host-side fds stay open until the process exits (bwrap's exit status)
    record: RunRecord | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    watcher: asyncio.Task[None] | None = None
    cgroup: WorkerCgroup | None = None


class LocalSandboxBackend(BackendBase):
    """Base of the backends that run workers as local child processes."""

    name: ClassVar[str] = "local"
    #: Appended to the "starting worker" line of the worker's log.
    log_note: ClassVar[str] = ""
    #: Whether runs outlive a control-plane crash and can be adopted by the next one.
    adoptable: ClassVar[bool] = False
    #: Whether a sandbox has its own user namespace (``RLIMIT_NPROC`` then counts only its processes).
    user_namespace: ClassVar[bool] = False

    def __init__(self, settings: BackendSettings | None = None, ctx: Any = None) -> None:
        super().__init__(settings, ctx)
        self.python = sys.executable
        self._starts: dict[str, int] = {}
        self._limits: LimitPlan | None = None

    @property
    def limits(self) -> LimitPlan:
        """How memory, processes and open files are limited here (decided once per backend)."""
        if self._limits is None:
            self._limits = plan_limits(self.settings, self.control_home, user_namespace=self.user_namespace)
        return self._limits

    # ------------------------------------------------------------------ subclass hooks

    def confinement(self) -> dict[str, str]:
        """How a worker is limited here, one line per limit (``hiclaw sandbox check`` prints them)."""
        return dict(self.limits.how)

    def _launcher_args(self, forwards: list[str], ready_fd: int | None = None) -> list[str]:
        extra = ("--ready-fd", str(ready_fd)) if ready_fd is not None else ()
        return launcher_argv(self.python, forwards, self.settings, extra, rlimits=self.limits.rlimits)

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

    def _relayed_bridges(self, spec: WorkerSpec) -> list[Any]:
        """The bridges that need a host relay (a unix socket the sandbox connects to)."""
        return list(spec.bridges) if self._uses_bridges(spec) else []

    def _cgroup(self, spec: WorkerSpec) -> WorkerCgroup | None:
        """The run's cgroup, created with its limits (``None``: rlimits only)."""
        tree = self.limits.tree
        if tree is None:
            return None
        cgroup = tree.worker(spec.name)
        try:
            tree.ensure()
            cgroup.create(self.limits.memory_bytes, self.limits.processes)
        except OSError as exc:
            raise SandboxError(f"cannot set the limits of worker {spec.name!r} in its cgroup "
                               f"{cgroup.paths[0]}: {exc.strerror or exc}",
                               hint="set [sandbox.settings] cgroups = false to use rlimits instead") from None
        return cgroup

    async def _remove_cgroup(self, cgroup: WorkerCgroup | None, timeout: float = 5.0) -> None:
        """Kill what a finished run left in its cgroup, then remove it."""
        if cgroup is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while cgroup.processes() and loop.time() < deadline:
            cgroup.kill()
            await asyncio.sleep(0.02)  # SIGKILLed processes leave their cgroup as they exit
        if cgroup.remove() and self.limits.tree is not None:
            self.limits.tree.remove()  # the last worker's: nothing is left behind

    async def _before_start(self, spec: WorkerSpec) -> None:
        """Slow preparation, off the event loop's thread (subclasses)."""

    # ------------------------------------------------------------------ API

    async def start(self, spec: WorkerSpec) -> SandboxHandle:
        self._refuse_running(spec.name)
        self._prepare(spec)
        await self._before_start(spec)
        left = self._read_record(spec.name) if spec.name not in self._runs else None
        if left is not None:  # a run a crash left that was not adopted: never two of one worker
            await self._stop_record(left)
        for path in [spec.home, *(m.host_path for m in spec.mounts)]:
            if path is not None and not path.exists():
                raise SandboxError(f"worker {spec.name!r}: {path} does not exist", hint="create it before starting the worker")
        log_path = self.log_path(spec.name, spec)
        run_dir = self._socket_dir(spec.name)
        relayed = self._relayed_bridges(spec)
        host_bridges = HostBridges.from_settings(run_dir, relayed, self.settings) if relayed else None
        cgroup = self._cgroup(spec)
        try:
            sockets = await host_bridges.start() if host_bridges else {}
        except BaseException:
            await self._remove_cgroup(cgroup)
            raise
        log_fd = open_log(log_path, f"starting worker {spec.name} ({self.name} sandbox){self.log_note}")
        plan: LaunchPlan | None = None
        ready_read, ready_write = os.pipe()  # the launcher writes one byte once the worker runs
        try:
            plan = self._plan(spec, run_dir, sockets, ready_write)
            if cgroup is not None:
                plan.argv = cgroup.wrap(plan.argv)
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
            await self._remove_cgroup(cgroup)
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
            await self._remove_cgroup(cgroup)
            raise
        run = _Run(spec, process.pid, signal_pid, utcnow(), log_path, host_bridges, self._starts[spec.name],
                   process=process, plan=plan, cgroup=cgroup)
        if self.adoptable:
            run.record = RunRecord(
                name=spec.name, pid=process.pid, pid_start=process_start_time(process.pid), signal_pid=signal_pid,
                signal_start=process_start_time(signal_pid), fingerprint=spec.fingerprint, log_path=str(log_path),
                started_at=run.started_at.isoformat(), starts=run.starts)
            self._write_record(run.record)
        run.watcher = asyncio.create_task(self._watch(run), name=f"sandbox-{spec.name}")
        self._runs[spec.name] = run
        return self._handle(run)

    def bridge_stats(self, name: str) -> dict[str, dict[str, int]] | None:
        """Per bridge of worker ``name``'s current run: connections ``open`` now, ``refused`` over
        the cap, ``timed_out`` (:attr:`HostBridges.stats`); ``None`` if it has no host bridges."""
        run = self._runs.get(name)
        return None if run is None or run.bridges is None else run.bridges.stats

    def _handle(self, run: _Run) -> SandboxHandle:
        return SandboxHandle(name=run.spec.name, backend=self.name, pid=run.pid, started_at=run.started_at,
                             log_path=run.log_path)

    async def _watch(self, run: _Run) -> None:
        if run.process is not None:
            code: int | None = await run.process.wait()
        else:
            assert run.record is not None
            await wait_foreign_exit(run.pid, run.record.pid_start)
            code = None  # not our child: its exit code went to its new parent
        if run.plan is not None:
            run.plan.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, signal.SIGKILL)  # leftovers of the worker's session
        if run.record is not None:
            run.record.kill()  # a sandbox whose bwrap died (it no longer takes the sandbox with it)
            self._remove_record(run.record)
        if run.bridges:
            await run.bridges.close()
        await self._remove_cgroup(run.cgroup)
        run.exit_code = code
        self._finished(run)

    # ------------------------------------------------------------------ crash survival

    def _records_dir(self) -> Path:
        return self.settings.run_dir or self.control_home / "run" / "sandbox"

    def _record_path(self, name: str) -> Path:
        return self._records_dir() / f"{name}.run.json"

    def _write_record(self, record: RunRecord) -> None:
        from hiclaw.storage.files import write_text_atomically

        write_text_atomically(self._record_path(record.name), json.dumps(record.__dict__), mode=0o600, fsync=True)

    def _read_record(self, name: str) -> RunRecord | None:
        try:
            return RunRecord(**json.loads(self._record_path(name).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _remove_record(self, record: RunRecord) -> None:
        current = self._read_record(record.name)
        if current is not None and (current.pid, current.pid_start) == (record.pid, record.pid_start):
            self._record_path(record.name).unlink(missing_ok=True)

    def recorded(self) -> list[str]:
        """Names of runs a previous control plane left recorded (alive or not)."""
        return sorted(p.name[:-len(".run.json")] for p in self._records_dir().glob("*.run.json"))

    async def adopt(self, spec: WorkerSpec) -> SandboxHandle | None:
        """Take over the run of ``spec.name`` a crashed control plane left running, if it is
        alive and was started from the same fingerprint; otherwise stop what is left of it and
        return ``None`` (start it afresh)."""
        if not self.adoptable:
            return None
        self._refuse_running(spec.name)
        record = self._read_record(spec.name)
        if record is None:
            return None
        if not record.alive() or spec.fingerprint is None or record.fingerprint != spec.fingerprint:
            await self._stop_record(record)
            return None
        relayed = self._relayed_bridges(spec)
        host_bridges = HostBridges.from_settings(self._socket_dir(spec.name), relayed, self.settings) if relayed else None
        if host_bridges:
            await host_bridges.start()  # same socket paths: the sandbox's forwarders reach us again
        log_path = Path(record.log_path)
        with contextlib.suppress(OSError):
            append_log(log_path, f"worker {spec.name} adopted by a new control plane (pid {os.getpid()})")
        started = datetime.fromisoformat(record.started_at)
        run = _Run(spec, record.pid, record.signal_pid, started, log_path, host_bridges, record.starts, record=record,
                   cgroup=self.limits.cgroup(spec.name))  # the run stays in the cgroup it was started in
        self._starts[spec.name] = record.starts
        run.watcher = asyncio.create_task(self._watch(run), name=f"sandbox-{spec.name}")
        self._runs[spec.name] = run
        return self._handle(run)

    async def signal(self, name: str, signum: int) -> bool:
        """Send ``signum`` to the worker (through its launcher); False if it is not running."""
        run = self._runs.get(name)
        if run is None or run.done.is_set():
            return False
        try:
            os.kill(run.signal_pid, signum)
        except ProcessLookupError:
            return False
        return True

    async def _stop_record(self, record: RunRecord, timeout: float = 10.0) -> bool:
        """Stop a recorded run nobody supervises (SIGTERM, then SIGKILL); True if it was alive."""
        alive = record.alive()
        if alive:
            kill_process(record.signal_pid, record.signal_start, signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wait_foreign_exit(record.signal_pid, record.signal_start), timeout)
            record.kill()
            await wait_foreign_exit(record.pid, record.pid_start)
            with contextlib.suppress(OSError):
                append_log(Path(record.log_path), f"worker {record.name} (left by a crashed control plane) stopped")
        self._remove_record(record)
        await self._remove_cgroup(self.limits.cgroup(record.name))
        return alive

    async def stop_leftovers(self, keep: set[str] | frozenset[str] = frozenset(), timeout: float = 10.0) -> list[str]:
        """Stop every recorded run not in ``keep`` and not run by this backend; their names."""
        records = [r for n in self.recorded() if n not in keep and n not in self._runs
                   if (r := self._read_record(n)) is not None]
        stopped = await asyncio.gather(*(self._stop_record(r, timeout) for r in records))
        return [r.name for r, alive in zip(records, stopped, strict=True) if alive]

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        """SIGTERM to the launcher (it passes it on to the worker); SIGKILL after ``timeout``."""
        run = self._runs.get(name)
        if run is None or run.done.is_set():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.signal_pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(run.done.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
            if run.record is not None:
                run.record.kill()
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
            pid=run.pid, launcher_pid=run.signal_pid, worker_pid=workers[0] if workers else None,
            exit_code=run.exit_code, started_at=run.started_at.isoformat(), restarts=run.starts - 1,
            log_path=str(run.log_path), adopted=run.process is None,
        )
