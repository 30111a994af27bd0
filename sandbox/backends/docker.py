"""The docker backend: one container per worker, through the Docker SDK (``pip install hiclaw[docker]``).

:meth:`DockerBackend.container_kwargs` turns a :class:`WorkerSpec` into the keyword arguments
of ``client.containers.run`` — a pure function, tested without an engine:

* image from ``sandbox/Dockerfile`` (setting ``image``), command = the launcher + the worker's argv
  (the host's Python path is replaced by the image's ``python``);
* the spec's environment (tokens included) as container environment — no config file, no secret
  files;
* volumes: only the worker's home, its mounts (same paths, ``ro`` unless read-write) and the
  bridges' socket folder at ``/run/hiclaw`` (read-only);
* ``network_mode="none"`` unless the spec asks for network; bridges work as with bwrap, over the
  unix sockets, so the engine must run on this machine;
* read-only root filesystem, private ``/tmp`` tmpfs, all capabilities dropped,
  ``no-new-privileges``, pids/memory/CPU limits, the control plane's uid:gid.

The SDK is imported only when a container is really started.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiclaw.sandbox.base import (
    BackendBase,
    SandboxError,
    SandboxHandle,
    check_mounts_safe,
    image_argv,
    launcher_argv,
    status_dict,
    worker_environment,
)
from hiclaw.sandbox.bridge import HostBridges, format_target
from hiclaw.sandbox.logs import open_log, utcnow
from hiclaw.sandbox.settings import DockerSettings
from hiclaw.sandbox.spec import WorkerSpec

SANDBOX_RUN_DIR = "/run/hiclaw"
LABEL = "hiclaw.worker"


def container_name(worker: str) -> str:
    return f"hiclaw-worker-{worker}"


@dataclass
class _ContainerRun:
    spec: WorkerSpec
    container: Any
    started_at: Any
    log_path: Path
    bridges: HostBridges | None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    watcher: asyncio.Task[None] | None = None  # a reference keeps the task from being garbage-collected


class DockerBackend(BackendBase):
    name = "docker"
    settings_model = DockerSettings
    settings: DockerSettings

    def __init__(self, settings: DockerSettings | None = None, ctx: Any = None) -> None:
        super().__init__(settings, ctx)
        self._client: Any = None

    # ------------------------------------------------------------------ specs (no engine needed)

    def container_kwargs(self, spec: WorkerSpec, sockets: dict[str, Path] | None = None) -> dict[str, Any]:
        """Keyword arguments for ``client.containers.run`` (``detach=True``)."""
        s = self.settings
        sockets = sockets or {}
        by_name = {b.name: b for b in spec.bridges}
        forwards = [format_target(by_name[n].port, unix=f"{SANDBOX_RUN_DIR}/{p.name}") for n, p in sockets.items()]
        volumes = []
        if spec.home is not None:
            volumes.append(f"{spec.home}:{spec.home_inside}:rw")
        volumes += [f"{m.host_path}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.mounts]
        if sockets:
            run_dir = next(iter(sockets.values())).parent
            volumes.append(f"{run_dir}:{SANDBOX_RUN_DIR}:ro")
        kwargs: dict[str, Any] = {
            "image": s.image,
            "name": container_name(spec.name),
            "command": [*launcher_argv(s.python, forwards, s), "--", *image_argv(spec.argv, s.python)],
            "environment": worker_environment(spec),
            "user": s.user or f"{os.getuid()}:{os.getgid()}",
            "hostname": spec.name,
            "labels": {LABEL: spec.name, "hiclaw.managed-by": "hiclaw"},
            "volumes": volumes,
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=1g"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "stop_signal": "SIGTERM",
            "detach": True,
        }
        if spec.network:
            kwargs["network"] = s.network
        else:
            kwargs["network_mode"] = "none"
        if spec.working_dir is not None:
            kwargs["working_dir"] = str(spec.working_dir)
        if s.pids_limit:
            kwargs["pids_limit"] = s.pids_limit
        if s.memory_mb:
            kwargs["mem_limit"] = f"{s.memory_mb}m"
        if s.cpus:
            kwargs["nano_cpus"] = int(s.cpus * 1e9)
        return kwargs

    # ------------------------------------------------------------------ engine

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import docker
            except ImportError:
                raise SandboxError("the docker backend needs the Docker SDK",
                                   hint="install it with `pip install 'hiclaw[docker]'`") from None
            where = self.settings.base_url or os.environ.get("DOCKER_HOST") or "the local Docker socket"
            try:
                client = docker.DockerClient(base_url=self.settings.base_url) if self.settings.base_url else docker.from_env()
                client.ping()
            except Exception as exc:  # noqa: BLE001 - the SDK raises several types for "no engine"
                raise SandboxError(
                    f"cannot reach the Docker engine at {where}: {' '.join(str(exc).split())[:200]}",
                    hint="start Docker, set DOCKER_HOST or [sandbox.settings] base_url, or use another backend",
                ) from None
            self._client = client
        return self._client

    def build_image(self, context: Path | None = None) -> str:
        """Build ``settings.image`` from ``sandbox/Dockerfile`` of a hiclaw checkout."""
        root = context or Path(__file__).resolve().parents[2]
        if not (root / "sandbox" / "Dockerfile").is_file() or not (root / "pyproject.toml").is_file():
            raise SandboxError(f"no hiclaw checkout at {root}", hint="build from a checkout: docker build -f sandbox/Dockerfile .")
        self.client.images.build(path=str(root), dockerfile="sandbox/Dockerfile", tag=self.settings.image, rm=True)
        return self.settings.image

    async def start(self, spec: WorkerSpec) -> SandboxHandle:
        self._refuse_running(spec.name)
        check_mounts_safe(spec, self.control_home)
        client = self.client
        bridges = HostBridges.from_settings(self._socket_dir(spec.name), spec.bridges, self.settings) if spec.bridges else None
        sockets = await bridges.start() if bridges else {}
        log_path = self.log_path(spec.name, spec)
        os.close(open_log(log_path, f"starting worker {spec.name} (docker sandbox, image {self.settings.image})"))
        try:
            container = await asyncio.to_thread(self._run_container, client, self.container_kwargs(spec, sockets))
        except BaseException:
            if bridges:
                await bridges.close()
            raise
        run = _ContainerRun(spec, container, utcnow(), log_path, bridges)
        self._runs[spec.name] = run
        threading.Thread(target=self._pump_logs, args=(container, log_path), daemon=True).start()
        run.watcher = asyncio.create_task(self._watch(run))
        return SandboxHandle(name=spec.name, backend=self.name, pid=None, started_at=run.started_at, log_path=log_path)

    @staticmethod
    def _run_container(client: Any, kwargs: dict[str, Any]) -> Any:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            stale = client.containers.get(kwargs["name"])
            if stale.labels.get(LABEL) != kwargs["labels"][LABEL]:
                raise SandboxError(f"a container named {kwargs['name']} exists and was not created by hiclaw",
                                   hint="remove or rename it")
            stale.remove(force=True)
        try:
            return client.containers.run(**kwargs)
        except docker.errors.ImageNotFound:
            raise SandboxError(f"docker image {kwargs['image']} not found",
                               hint="build it: docker build -f sandbox/Dockerfile -t hiclaw-worker:latest .") from None
        except docker.errors.APIError as exc:
            raise SandboxError(f"docker could not start {kwargs['name']}: {exc.explanation or exc}") from None

    @staticmethod
    def _pump_logs(container: Any, log_path: Path) -> None:
        with contextlib.suppress(Exception), open(log_path, "ab") as fh:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                fh.write(chunk)
                fh.flush()

    async def _watch(self, run: _ContainerRun) -> None:
        try:
            result = await asyncio.to_thread(run.container.wait)
            run.exit_code = int(result.get("StatusCode", -1))
        except Exception:  # noqa: BLE001 - removed under us: keep what we know
            run.exit_code = run.exit_code if run.exit_code is not None else -1
        if run.bridges:
            await run.bridges.close()
        self._finished(run)

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        run = self._runs.get(name)
        if run is None:
            return
        if not run.done.is_set():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(run.container.stop, timeout=int(max(timeout, 1)))
            await run.done.wait()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(run.container.remove, force=True)

    async def status(self, name: str) -> dict[str, Any]:
        run = self._runs.get(name)
        if run is None:
            return status_dict(name, self.name, "absent")
        state = "exited" if run.done.is_set() else "running"
        pid = None
        if not run.done.is_set():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(run.container.reload)
                pid = run.container.attrs.get("State", {}).get("Pid") or None
        return status_dict(name, self.name, state, pid=pid, exit_code=run.exit_code,
                           started_at=run.started_at.isoformat(), container=container_name(name),
                           log_path=str(run.log_path))
