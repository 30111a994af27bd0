"""What every backend shares: errors, handles, the worker's environment, mount safety, logs.

:class:`BackendBase` holds runs by name and implements ``wait``, ``logs``, ``close``; the local
backends (bwrap, process) build on :class:`hiclaw.sandbox.backends.local.LocalSandboxBackend`.

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
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from hiclaw.errors import HiclawError, NotFoundError
from hiclaw.sandbox.bridge import MAX_SOCKET_PATH
from hiclaw.sandbox.logs import MARKER, append_log, read_log_lines, worker_log_path
from hiclaw.sandbox.settings import BackendSettings
from hiclaw.sandbox.spec import WorkerSpec

#: Environment every sandboxed program gets unless the spec overrides it.
BASE_ENV = {
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",  # logs appear as they are written
    "PYTHONDONTWRITEBYTECODE": "1",  # the Python files are read-only inside
    "TMPDIR": "/tmp",
}
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
    env["HOME"] = str(spec.home_inside) if spec.home_inside else "/tmp"
    env["USER"] = env["LOGNAME"] = spec.name
    env.update(spec.env)
    return env


def image_argv(argv: list[str], python: str) -> list[str]:
    """The worker's argv for a container image: the host's interpreter becomes the image's."""
    first = argv[0]
    if first == sys.executable or Path(first).name.startswith("python"):
        return [python, *argv[1:]]
    return list(argv)


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


def launcher_argv(python: str, forwards: list[str], settings: BackendSettings, extra: tuple[str, ...] = (),
                  rlimits: dict[str, int] | None = None) -> list[str]:
    """``python -m hiclaw.sandbox.launch`` with ``--bridge`` forwards and resource limits (no ``--``).
    ``rlimits`` (launcher option → value, from :func:`hiclaw.sandbox.limits.plan_limits`) replaces
    the limits derived from ``settings``."""
    args = [python, "-m", "hiclaw.sandbox.launch", *extra]
    for forward in forwards:
        args += ["--bridge", forward]
    if forwards:
        args += ["--max-connections", str(settings.bridge_max_connections)]
    if rlimits is not None:
        for option, value in rlimits.items():
            args += [option, str(value)]
        return args
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
    if not path.exists():  # noqa: ASYNC240 - a single stat of a local file
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


def _default_home() -> Path:
    from hiclaw.config import hiclaw_home

    return hiclaw_home()
