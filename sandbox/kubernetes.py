"""Kubernetes sandbox backend (plugin ``kubernetes``, sandbox ``kubernetes``; needs
``pip install 'hiclaw[kubernetes]'``).

A Pod per worker with its tokens in a Secret, built from the YAML templates in
``sandbox/kubernetes/`` (apply ``namespace.yaml`` and ``rbac.yaml`` once)::

    [sandbox]
    plugin = "kubernetes"

    [sandbox.settings]
    namespace = "hiclaw"
    image = "registry.example.com/hiclaw-worker:0.1.0"
    service_host = "10.0.0.5"     # where pods reach the homeserver, gateway and control API
    memory_mb = 1024
    cpu = "1"

Workers without network get a NetworkPolicy that allows only their bridges' ports on
``service_host``. The implementation is :mod:`hiclaw.sandbox.backends.kubernetes` (the
kubernetes client is imported only when a worker starts).
"""
from __future__ import annotations

from hiclaw import hookimpl
from hiclaw.protocols import RegisterSandbox
from hiclaw.sandbox.settings import KubernetesSettings, lazy_backend

make_backend = lazy_backend("hiclaw.sandbox.backends.kubernetes", "KubernetesBackend")


@hookimpl
def hiclaw_register_sandboxes(register: RegisterSandbox) -> None:
    register("kubernetes", make_backend, settings_model=KubernetesSettings,
             description="a Kubernetes Pod per worker, tokens in a Secret, NetworkPolicy for no-network workers")
