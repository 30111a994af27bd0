"""The kubernetes backend: a Pod per worker, its tokens in a Secret (``pip install hiclaw[kubernetes]``).

:meth:`KubernetesBackend.manifests` turns a :class:`WorkerSpec` into a Secret, a Pod and (for a
worker without network) a NetworkPolicy, starting from the YAML templates in
``sandbox/kubernetes/`` — a pure function, tested without a cluster.

A pod shares no filesystem with the control plane, so bridges cannot use unix sockets: the
launcher forwards ``127.0.0.1:PORT`` in the pod to ``service_host:PORT`` (setting
``service_host``, the control plane's address as seen from pods), and the NetworkPolicy lets
the pod reach exactly those ports and nothing else. The worker's home is an ``emptyDir``
(use an S3-compatible storage plugin) unless ``allow_host_paths`` binds host paths on a
single-node cluster.

The ``kubernetes`` client is imported only when a pod is really started.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hiclaw.sandbox.base import (
    BackendBase,
    SandboxError,
    SandboxHandle,
    image_argv,
    launcher_argv,
    status_dict,
    worker_environment,
)
from hiclaw.sandbox.bridge import format_target
from hiclaw.sandbox.logs import open_log, utcnow
from hiclaw.sandbox.settings import KubernetesSettings
from hiclaw.sandbox.spec import WorkerSpec

TEMPLATES = Path(__file__).resolve().parents[1] / "kubernetes"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def load_template(name: str) -> dict[str, Any]:
    return yaml.safe_load((TEMPLATES / f"{name}.yaml").read_text())


def resource_name(worker: str) -> str:
    return f"hiclaw-worker-{worker}"


def _named(template: str, spec: WorkerSpec, namespace: str) -> dict[str, Any]:
    doc = copy.deepcopy(load_template(template))
    meta = doc["metadata"]
    meta["name"] = resource_name(spec.name)
    meta["namespace"] = namespace
    meta["labels"]["hiclaw.io/worker"] = spec.name
    return doc


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass
class _PodRun:
    spec: WorkerSpec
    started_at: Any
    log_path: Path
    done: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    watcher: asyncio.Task[None] | None = None


class KubernetesBackend(BackendBase):
    name = "kubernetes"
    isolates = True
    settings_model = KubernetesSettings
    settings: KubernetesSettings

    def __init__(self, settings: KubernetesSettings | None = None, ctx: Any = None) -> None:
        super().__init__(settings or KubernetesSettings(), ctx)
        self._api: tuple[Any, Any] | None = None

    # ------------------------------------------------------------------ manifests (no cluster needed)

    def bridge_targets(self, spec: WorkerSpec) -> list[tuple[int, str, int]]:
        """``(pod port, host, port)`` for each bridge, as reachable from a pod."""
        targets = []
        for bridge in spec.bridges:
            tcp = bridge.tcp_target
            if tcp is None:
                raise SandboxError(f"bridge {bridge.name!r}: a pod cannot reach the host's unix socket {bridge.target_unix}",
                                   hint="give the service a TCP port reachable from the cluster")
            host, port = tcp
            if host in _LOOPBACK:
                if not self.settings.service_host:
                    raise SandboxError(
                        "[sandbox.settings] service_host is not set: pods cannot reach services on the control plane's loopback",
                        hint="set service_host to the control plane's address as seen from the pods",
                    )
                host = self.settings.service_host
            targets.append((bridge.port, host, port))
        return targets

    def manifests(self, spec: WorkerSpec) -> list[dict[str, Any]]:
        """``[Secret, Pod]`` plus a ``NetworkPolicy`` unless the spec asks for network."""
        s = self.settings
        targets = self.bridge_targets(spec)
        if spec.mounts and not s.allow_host_paths:
            raise SandboxError(f"worker {spec.name!r}: the kubernetes backend cannot bind host paths ({spec.mounts[0].host_path})",
                               hint="use an S3-compatible storage plugin, or set allow_host_paths = true on a single-node cluster")
        secret = _named("secret", spec, s.namespace)
        secret["stringData"] = worker_environment(spec)
        pod = _named("pod", spec, s.namespace)
        pod["spec"]["hostname"] = spec.name
        container = pod["spec"]["containers"][0]
        container["image"] = s.image
        container["imagePullPolicy"] = s.image_pull_policy
        container["envFrom"][0]["secretRef"]["name"] = resource_name(spec.name)
        forwards = [format_target(port, tcp=(host, tport)) for port, host, tport in targets]
        container["command"] = [*launcher_argv(s.python, forwards, s), "--", *image_argv(spec.argv, s.python)]
        if spec.working_dir is not None:
            container["workingDir"] = str(spec.working_dir)
        limits = {}
        if s.memory_mb:
            limits["memory"] = f"{s.memory_mb}Mi"
        if s.cpu:
            limits["cpu"] = s.cpu
        if limits:
            container["resources"] = {"limits": limits}
        if s.service_account:
            pod["spec"]["serviceAccountName"] = s.service_account
        volumes, mounts = pod["spec"]["volumes"], container["volumeMounts"]
        if spec.home is not None:
            source = {"hostPath": {"path": str(spec.home), "type": "Directory"}} if s.allow_host_paths else {"emptyDir": {}}
            volumes.append({"name": "home", **source})
            mounts.append({"name": "home", "mountPath": str(spec.home_inside)})
        for i, mount in enumerate(spec.mounts):
            volumes.append({"name": f"mount-{i}", "hostPath": {"path": str(mount.host_path)}})
            mounts.append({"name": f"mount-{i}", "mountPath": str(mount.target), "readOnly": mount.read_only})
        docs = [secret, pod]
        if not spec.network:
            docs.append(self._network_policy(spec, targets))
        return docs

    def _network_policy(self, spec: WorkerSpec, targets: list[tuple[int, str, int]]) -> dict[str, Any]:
        policy = _named("networkpolicy", spec, self.settings.namespace)
        policy["spec"]["podSelector"]["matchLabels"]["hiclaw.io/worker"] = spec.name
        egress = []
        by_host: dict[str, list[int]] = {}
        for _, host, port in targets:
            by_host.setdefault(host, []).append(port)
        for host, ports in sorted(by_host.items()):
            rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": p} for p in sorted(set(ports))]}
            if _is_ip(host):
                suffix = "/32" if ipaddress.ip_address(host).version == 4 else "/128"
                rule["to"] = [{"ipBlock": {"cidr": host + suffix}}]
            egress.append(rule)  # a DNS name: ports only (NetworkPolicy cannot select by name)
        if any(not _is_ip(host) for host in by_host):
            egress.append({"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                           "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
        policy["spec"]["egress"] = egress
        return policy

    # ------------------------------------------------------------------ cluster

    @property
    def api(self) -> tuple[Any, Any]:
        """``(CoreV1Api, NetworkingV1Api)``, configured from kubeconfig or in-cluster."""
        if self._api is None:
            try:
                from kubernetes import client, config
            except ImportError:
                raise SandboxError("the kubernetes backend needs the kubernetes client",
                                   hint="install it with `pip install 'hiclaw[kubernetes]'`") from None
            try:
                if self.settings.in_cluster:
                    config.load_incluster_config()
                else:
                    config.load_kube_config(config_file=str(self.settings.kubeconfig) if self.settings.kubeconfig else None,
                                            context=self.settings.context)
            except Exception as exc:  # noqa: BLE001 - config errors come in many types
                raise SandboxError(f"cannot configure the Kubernetes client: {' '.join(str(exc).split())[:200]}",
                                   hint="point [sandbox.settings] kubeconfig/context at a cluster, or set in_cluster = true") from None
            self._api = (client.CoreV1Api(), client.NetworkingV1Api())
        return self._api

    def _apply(self, docs: list[dict[str, Any]]) -> None:
        core, net = self.api
        ns = self.settings.namespace
        self._delete(docs[0]["metadata"]["name"])
        for doc in docs:
            create = {"Secret": core.create_namespaced_secret, "Pod": core.create_namespaced_pod,
                      "NetworkPolicy": net.create_namespaced_network_policy}[doc["kind"]]
            create(ns, doc)

    def _delete(self, name: str, grace: int = 0) -> None:
        from kubernetes.client.exceptions import ApiException

        core, net = self.api
        ns = self.settings.namespace
        for delete in (lambda: core.delete_namespaced_pod(name, ns, grace_period_seconds=grace),
                       lambda: core.delete_namespaced_secret(name, ns),
                       lambda: net.delete_namespaced_network_policy(name, ns)):
            try:
                delete()
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def _pod_state(self, name: str) -> tuple[str, int | None, Any]:
        """``(state, exit_code, pod)`` with state running | exited | absent."""
        from kubernetes.client.exceptions import ApiException

        core, _ = self.api
        try:
            pod = core.read_namespaced_pod(resource_name(name), self.settings.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return "absent", None, None
            raise
        phase = pod.status.phase
        if phase in ("Succeeded", "Failed"):
            code = None
            for status in pod.status.container_statuses or []:
                if status.state and status.state.terminated:
                    code = status.state.terminated.exit_code
            return "exited", code if code is not None else (0 if phase == "Succeeded" else 1), pod
        return "running", None, pod

    async def start(self, spec: WorkerSpec) -> SandboxHandle:
        self._refuse_running(spec.name)
        docs = self.manifests(spec)
        log_path = self.log_path(spec.name, spec)
        os.close(open_log(log_path, f"starting worker {spec.name} (kubernetes pod in {self.settings.namespace})"))
        await asyncio.to_thread(self._apply, docs)
        deadline = time.monotonic() + self.settings.start_timeout
        while True:
            state, _, pod = await asyncio.to_thread(self._pod_state, spec.name)
            if state == "exited" or (pod is not None and pod.status.phase == "Running"):
                break
            if time.monotonic() > deadline:
                await asyncio.to_thread(self._delete, resource_name(spec.name))
                raise SandboxError(f"pod {resource_name(spec.name)} did not start within {self.settings.start_timeout:.0f}s",
                                   hint="check `kubectl describe pod` (image pull, quota, scheduling)")
            await asyncio.sleep(1.0)
        run = _PodRun(spec, utcnow(), log_path)
        self._runs[spec.name] = run
        threading.Thread(target=self._pump_logs, args=(spec.name, log_path), daemon=True).start()
        run.watcher = asyncio.create_task(self._watch(run))
        return SandboxHandle(name=spec.name, backend=self.name, started_at=run.started_at, log_path=log_path)

    def _pump_logs(self, name: str, log_path: Path) -> None:
        core, _ = self.api
        with contextlib.suppress(Exception), open(log_path, "ab") as fh:
            stream = core.read_namespaced_pod_log(resource_name(name), self.settings.namespace, follow=True,
                                                  _preload_content=False)
            for chunk in stream.stream():
                fh.write(chunk)
                fh.flush()

    async def _watch(self, run: _PodRun) -> None:
        while True:
            state, code, _ = await asyncio.to_thread(self._pod_state, run.spec.name)
            if state != "running":
                run.exit_code = code
                break
            await asyncio.sleep(1.0)  # the pod's phase is polled; a watch would need a long-lived stream
        self._finished(run)

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        run = self._runs.get(name)
        if run is None:
            return
        await asyncio.to_thread(self._delete, resource_name(name), int(max(timeout, 0)))
        if run.watcher is not None and not run.done.is_set():
            await run.done.wait()

    async def status(self, name: str) -> dict[str, Any]:
        run = self._runs.get(name)
        if run is None:
            return status_dict(name, self.name, "absent")
        return status_dict(name, self.name, "exited" if run.done.is_set() else "running", exit_code=run.exit_code,
                           started_at=run.started_at.isoformat(), pod=resource_name(name), log_path=str(run.log_path))
