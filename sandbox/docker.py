"""Docker sandbox backend (plugin ``docker``, sandbox ``docker``; needs ``pip install 'hiclaw[docker]'``).

One container per worker from an image built with ``sandbox/Dockerfile``::

    docker build -f sandbox/Dockerfile -t hiclaw-worker:latest .

    [sandbox]
    plugin = "docker"

    [sandbox.settings]
    image = "hiclaw-worker:latest"
    memory_mb = 2048
    pids_limit = 256
    cpus = 1.5

Containers get no network (``network_mode=none``) unless a worker is configured for it, only
the worker's own folders as volumes, a read-only root filesystem and no capabilities; bridges
reach host services over unix sockets, so the engine must run on this machine. The implementation
is :mod:`hiclaw.sandbox.backends.docker` (the Docker SDK is imported only when a worker starts).
"""
from __future__ import annotations

from hiclaw import hookimpl
from hiclaw.protocols import RegisterSandbox
from hiclaw.sandbox.settings import DockerSettings, lazy_backend

make_backend = lazy_backend("hiclaw.sandbox.backends.docker", "DockerBackend")


@hookimpl
def hiclaw_register_sandboxes(register: RegisterSandbox) -> None:
    register("docker", make_backend, settings_model=DockerSettings,
             description="a Docker container per worker (network none, read-only root, no capabilities)")
