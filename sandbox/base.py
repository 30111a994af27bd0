"""Shared backend code: settings, handles, status, logs, and the local-process backend base.

:class:`LocalSandboxBackend` runs each worker as a child process of the control plane
(bwrap and process backends). A subclass only says how to wrap the launcher command line
(:meth:`LocalSandboxBackend._plan`). Everything else — bridges, logs, status, graceful
stop, exit codes — is here.

Backend API (every backend, also docker and kubernetes)::

    handle = await backend.start(spec)          # SandboxHandle
    await backend.stop(name, timeout=10.0)      # SIGTERM, then SIGKILL after timeout; absent is fine
    await backend.status(name)                  # {name, backend, state, pid, exit_code, started_at, restarts}
    await backend.wait(name)                    # exit code of the current run (None if absent)
    async for line in backend.logs(name, follow=False): ...
    await backend.close()                       # stop every worker this backend started
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from hiclaw.errors import HiclawError, NotFoundError
from hiclaw.sandbox.bridge import MAX_SOCKET_PATH, HostBridges
from hiclaw.sandbox.logs import MARKER, append_log, open_log, read_log_lines, utcnow, worker_log_path
from hiclaw.sandbox.settings import BackendSettings
from hiclaw.sandbox.spec import WorkerSpec

#: Environment every sandboxed program gets unless the spec overrides it.
BASE_ENV = {
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",  # logs appear as they are written
    "PYTHONDONTWRITEBYTECODE": "1",  # the Python files are read-only inside
    "TMPDIR": "/tmp",
}
#: Seconds a sandbox may take from spawn to "the worker program runs".
READY_TIMEOUT = 60.0
T = TypeVar("T")
#: Files and folders of $HICLAW_HOME a sandbox must never see (relative to the home).
CONTROL_PLANE_ONLY = ("secrets.toml", "config.toml", "state.db", "run", "logs", "homeserver", "gateway", "channel")


class SandboxError(HiclawError):
    """A sandbox could not be started or controlled."""


class SandboxHandle(BaseModel):
    name: str
    backend: str
    pid: int | None = None
    started_at: datetime
    log_path: Path


def worker_environment(spec: WorkerSpec, defaults: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a sandboxed worker: a few defaults plus the spec's own variables."""
    env = {**BASE_ENV, **(defaults or {})}
    env["HOME"] = str(spec.home) if spec.home else "/tmp"
    env["USER"] = env["LOGNAME"] = spec.name
    env.update(spec.env)
    return env


def image_argv(argv: list[str], python: str) -> list[str]:
    """The worker's argv for a container image: the host's interpreter becomes the image's."""
    first = argv[0]
    if first == sys.executable or Path(first).name.startswith("python"):
        return [python, *argv[1:]]
    return list(argv)


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


def last_error(log_path: Path) -> str:
    """The last line the sandbox itself printed (not our markers), for error messages."""
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln and not ln.startswith(MARKER)]
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


def status_dict(name: str, backend: str, state: str, **extra: Any) -> dict[str, Any]:
    base = {"name": name, "backend": backend, "state": state, "pid": None, "exit_code": None,
            "started_at": None, "restarts": 0}
    base.update(extra)
    return base


def launcher_argv(python: str, forwards: list[str], settings: BackendSettings, extra: tuple[str, ...] = ()) -> list[str]:
    """``python -m hiclaw.sandbox.launch`` with ``--bridge`` forwards and resource limits (no ``--``)."""
    args = [python, "-m", "hiclaw.sandbox.launch", *extra]
    for forward in forwards:
        args += ["--bridge", forward]
    if settings.memory_mb:
        args += ["--rlimit-as", str(settings.memory_mb * 1024 * 1024)]
    if settings.max_open_files:
        args += ["--rlimit-nofile", str(settings.max_open_files)]
    return args


def exposes_control_plane(path: Path, control_home: Path) -> bool:
    """True if binding ``path`` would show the control plane's home, secrets, state or sockets."""
    home = control_home.resolve()
    real = path.resolve()
    if real == home or real in home.parents:
        return True
    return any(real == f or f in real.parents for f in (home / rel for rel in CONTROL_PLANE_ONLY))


def check_mounts_safe(spec: WorkerSpec, control_home: Path) -> None:
    """Refuse a mount (or home) that would expose the control plane's files."""
    sources = [(m.host_path, "mount") for m in spec.mounts] + ([(spec.home, "home")] if spec.home else [])
    for path, what in sources:
        if exposes_control_plane(path, control_home):
            raise SandboxError(
                f"worker {spec.name!r}: {what} {path} would expose the control plane's files ({control_home})",
                hint="mount only the worker's own folders (e.g. its agent home under the storage root)",
            )


def run_dir_for(base: Path, name: str) -> Path:
    """Per-worker socket folder; falls back to a short path when unix-socket paths would be too long."""
    path = base / name
    if len(os.fsencode(str(path))) + 34 > MAX_SOCKET_PATH:  # room for "/<31-char bridge name>.sock"
        import hashlib
        import tempfile

        digest = hashlib.sha256(str(base).encode()).hexdigest()[:10]
        path = Path(tempfile.gettempdir()) / f"hiclaw-{os.getuid()}-{digest}" / name
    path.mkdir(parents=True, exist_ok=True)
    for folder in (path.parent, path):
        os.chmod(folder, 0o700)
    return path


async def async_log_lines(path: Path, *, follow: bool = False, tail: int | None = None) -> AsyncIterator[str]:
    if not path.exists():
        raise NotFoundError(f"no log at {path}", hint="the worker has not been started yet")
    lines = read_log_lines(path, follow=follow, tail=tail, interval=0)
    end = object()
    while True:
        line = await asyncio.to_thread(next, lines, end)
        if line is end:
            return
        if line is None:
            await asyncio.sleep(0.2)  # idle poll of a followed file
            continue
        yield line  # type: ignore[misc]


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


class BackendBase:
    """What every backend shares: settings, the control home, runs by name, logs, wait, close.

    A run is any object with ``done`` (asyncio.Event), ``exit_code`` and ``log_path``."""

    name: ClassVar[str] = "base"
    settings_model: ClassVar[type[BackendSettings]] = BackendSettings
    #: False for backends that do not isolate at all (``hiclaw sandbox check`` says so loudly).
    isolates: ClassVar[bool] = True

    def __init__(self, settings: BackendSettings | None = None, ctx: Any = None) -> None:
        self.settings = settings or self.settings_model()
        self.control_home = Path(getattr(ctx, "home", None) or _default_home())
        self._runs: dict[str, Any] = {}

    def _refuse_running(self, name: str) -> None:
        current = self._runs.get(name)
        if current is not None and not current.done.is_set():
            raise SandboxError(f"worker {name!r} is already running",
                               hint="stop it first, or use the supervisor's restart")

    def _socket_dir(self, name: str) -> Path:
        return run_dir_for(self.settings.run_dir or self.control_home / "run" / "sandbox", name)

    def log_path(self, name: str, spec: WorkerSpec | None = None) -> Path:
        if spec is not None and spec.log_path is not None:
            return spec.log_path
        run = self._runs.get(name)
        return run.log_path if run else worker_log_path(self.control_home, name)

    async def wait(self, name: str) -> int | None:
        """Exit code of the current (or last) run; ``None`` if the worker never ran here."""
        run = self._runs.get(name)
        if run is None:
            return None
        await run.done.wait()
        return run.exit_code


    async def logs(self, name: str, *, follow: bool = False, tail: int | None = None) -> AsyncIterator[str]:
        async for line in async_log_lines(self.log_path(name), follow=follow, tail=tail):
            yield line

    def names(self) -> list[str]:
        return sorted(self._runs)

    @staticmethod
    def _finished(run: Any) -> None:
        """Record the end of a run in its log and wake everyone waiting for it."""
        with contextlib.suppress(OSError):
            append_log(run.log_path, f"worker {run.spec.name} exited with code {run.exit_code}")
        run.done.set()

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        raise NotImplementedError

    async def close(self, timeout: float = 10.0) -> None:
        """Stop every worker this backend started, in parallel."""
        await asyncio.gather(*(self.stop(name, timeout) for name in list(self._runs)))


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


def _default_home() -> Path:
    from hiclaw.config import hiclaw_home

    return hiclaw_home()
