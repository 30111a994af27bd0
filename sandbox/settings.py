"""``[sandbox.settings]`` models of the four backends (pydantic only: imported by the CLI)."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BackendSettings(BaseModel):
    """Keys every backend understands."""

    model_config = ConfigDict(extra="forbid")

    #: Memory limit per worker in MiB (bwrap/process: a cgroup memory limit on the whole sandbox
    #: where the control plane can create cgroups, else the address-space rlimit of each process;
    #: docker: mem_limit; kubernetes: resources.limits.memory). ``None``: no limit.
    memory_mb: int | None = Field(default=None, ge=16)
    #: Open-file limit per worker (RLIMIT_NOFILE). ``None``: inherited.
    max_open_files: int | None = Field(default=None, ge=16)
    #: Where the bridges' unix sockets live (default ``$HICLAW_HOME/run/sandbox``).
    run_dir: Path | None = None
    #: Connections one worker may hold open at once on each of its bridges (backends with host
    #: bridges: bwrap, docker); more are closed as soon as they arrive.
    bridge_max_connections: int = Field(default=64, ge=1)
    #: Seconds a new bridged connection may take to send its first byte before it is closed.
    bridge_header_timeout: float = Field(default=10.0, gt=0)
    #: Seconds a bridged connection may stay silent (both directions) before it is closed.
    bridge_idle_timeout: float = Field(default=600.0, gt=0)


class LocalSettings(BackendSettings):
    """Keys of the backends that run workers as local processes (bwrap, process)."""

    #: Processes (and threads) per worker: a cgroup ``pids.max`` where the control plane can
    #: create cgroups, else ``RLIMIT_NPROC`` inside the sandbox's user namespace (bwrap, not as
    #: root), else none. ``None``: no limit.
    max_processes: int | None = Field(default=None, ge=8)
    #: Use cgroups for ``memory_mb`` and ``max_processes`` when the control plane can create
    #: them (``false``: rlimits only).
    cgroups: bool = True


class BwrapSettings(LocalSettings):
    #: Defaults a normal worker never reaches, but a fork bomb or a memory hog does.
    memory_mb: int | None = Field(default=2048, ge=16)
    max_open_files: int | None = Field(default=4096, ge=16)
    max_processes: int | None = Field(default=512, ge=8)
    #: A seccomp filter denying the syscalls no worker needs (keyctl, bpf, io_uring, mount, ptrace…).
    seccomp: bool = True
    #: The bubblewrap executable.
    bwrap: str = "bwrap"
    #: More host paths made visible read-only at the same path (e.g. a tool chain in /opt).
    extra_ro_paths: list[Path] = Field(default_factory=list)
    #: Keep workers running when the control plane crashes, for the next ``hiclaw up`` to adopt
    #: (their turns in flight go on). ``false``: a sandbox dies with the process that started it.
    #: A clean stop stops them either way; ``hiclaw down`` stops what a crash left.
    survive_crash: bool = True


class ProcessSettings(LocalSettings):
    pass


class DockerSettings(BackendSettings):
    #: Image with hiclaw installed (build it from ``sandbox/Dockerfile``).
    image: str = "hiclaw-worker:latest"
    #: Docker network for workers whose spec asks for network; others get ``none``.
    network: str = "bridge"
    #: Docker engine URL; ``None``: ``$DOCKER_HOST`` or the local socket.
    base_url: str | None = None
    #: Processes per container.
    pids_limit: int | None = Field(default=256, ge=8)
    #: CPUs per container (e.g. 1.5). ``None``: no limit.
    cpus: float | None = Field(default=None, gt=0)
    #: The Python interpreter inside the image.
    python: str = "python"
    #: ``uid:gid`` inside the container; ``None``: the control plane's own (so bridge sockets work).
    user: str | None = None


class KubernetesSettings(BackendSettings):
    namespace: str = "hiclaw"
    image: str = "hiclaw-worker:latest"
    image_pull_policy: str = "IfNotPresent"
    #: Address at which pods reach the control plane's services (homeserver, gateway, control
    #: API). Bridges forward ``127.0.0.1:PORT`` in the pod to ``service_host:PORT``.
    service_host: str | None = None
    kubeconfig: Path | None = None
    context: str | None = None
    #: Use the pod's service account (the control plane itself runs in the cluster).
    in_cluster: bool = False
    #: CPU limit, Kubernetes quantity (``"500m"``, ``"1"``).
    cpu: str | None = None
    python: str = "python"
    #: Allow hostPath volumes for the spec's home and mounts (single-node clusters only).
    allow_host_paths: bool = False
    service_account: str | None = None
    #: Seconds to wait for a pod to be scheduled and running.
    start_timeout: float = Field(default=120, gt=0)


def lazy_backend(module: str, attribute: str) -> Callable[[Any, Any], Any]:
    """A factory that imports the backend class only when a backend is created, so the
    plugin's entry module (loaded by every ``hiclaw`` command) stays light."""

    def make_backend(settings: Any, ctx: Any) -> Any:
        return getattr(importlib.import_module(module), attribute)(settings, ctx)

    make_backend.__qualname__ = f"make_backend[{module}.{attribute}]"
    return make_backend
