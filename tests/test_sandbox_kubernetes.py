"""Kubernetes backend: the Pod, Secret and NetworkPolicy it creates, checked field by field
against the official client's API models (no cluster runs here)."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT

from hiclaw.sandbox.backends.kubernetes import KubernetesBackend
from hiclaw.sandbox.base import SandboxError
from hiclaw.sandbox.settings import KubernetesSettings
from hiclaw.sandbox.spec import Bridge, Mount, WorkerSpec

k8s_models = pytest.importorskip("kubernetes.client.models", reason="the kubernetes extra is not installed")
MODEL_OF_KIND = {"Pod": "V1Pod", "Secret": "V1Secret", "NetworkPolicy": "V1NetworkPolicy", "Namespace": "V1Namespace",
                 "ServiceAccount": "V1ServiceAccount", "Role": "V1Role", "RoleBinding": "V1RoleBinding"}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str}


def conforms(value, type_name: str, where: str) -> None:
    """Every key of ``value`` is a field of the API model ``type_name`` (recursively)."""
    if type_name == "object":
        return
    if m := re.fullmatch(r"List\[(.+)\]", type_name):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            conforms(item, m.group(1), f"{where}[{i}]")
        return
    if m := re.fullmatch(r"Dict\[str, (.+)\]", type_name):
        assert isinstance(value, dict), f"{where}: expected a mapping"
        for key, item in value.items():
            conforms(item, m.group(1), f"{where}.{key}")
        return
    if type_name in PRIMITIVES:
        assert isinstance(value, PRIMITIVES[type_name]), f"{where}: expected {type_name}, got {value!r}"
        return
    model = getattr(k8s_models, type_name)
    assert isinstance(value, dict), f"{where}: expected a {type_name} mapping"
    by_json_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        assert key in by_json_name, f"{where}: {key!r} is not a field of {type_name}"
        conforms(item, model.openapi_types[by_json_name[key]], f"{where}.{key}")


def conforms_doc(doc: dict) -> None:
    conforms(doc, MODEL_OF_KIND[doc["kind"]], doc["kind"])


def backend(**settings) -> KubernetesBackend:
    return KubernetesBackend(KubernetesSettings(**{"service_host": "10.0.0.5", **settings}),
                             SimpleNamespace(home=Path("/srv/hiclaw-home")))


def worker(**fields) -> WorkerSpec:
    return WorkerSpec(**{"name": "alice", "argv": [sys.executable, "-m", "hiclaw", "worker", "run"],
                         "env": {"HICLAW_WORKER_SPEC": '{"gateway": {"token": "tok"}}'},
                         "home": Path("/home/worker/alice"),
                         "bridges": [Bridge(name="gateway", port=4000), Bridge(name="homeserver", port=8008)], **fields})


def test_templates_are_valid_kubernetes_objects():
    for path in sorted((ROOT / "sandbox" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            conforms_doc(doc)


def test_pod_secret_and_policy_for_a_worker_without_network():
    secret, pod, policy = backend(memory_mb=512, cpu="500m").manifests(worker())
    for doc in (secret, pod, policy):
        conforms_doc(doc)
        assert doc["metadata"]["name"] == "hiclaw-worker-alice" and doc["metadata"]["namespace"] == "hiclaw"
        assert doc["metadata"]["labels"]["hiclaw.io/worker"] == "alice"
    assert secret["stringData"]["HICLAW_WORKER_SPEC"] == '{"gateway": {"token": "tok"}}'  # the token is only here
    spec = pod["spec"]
    container = spec["containers"][0]
    assert "env" not in container and container["envFrom"] == [{"secretRef": {"name": "hiclaw-worker-alice"}}]
    assert "tok" not in str(pod)
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never" and spec["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"] == {"limits": {"memory": "512Mi", "cpu": "500m"}}
    command = container["command"]
    assert "4000=tcp:10.0.0.5:4000" in command and "8008=tcp:10.0.0.5:8008" in command
    assert command[command.index("--") + 1:] == ["python", "-m", "hiclaw", "worker", "run"]
    assert {"name": "home", "emptyDir": {}} in spec["volumes"]
    assert not any("hostPath" in v for v in spec["volumes"])
    assert {"name": "home", "mountPath": "/home/worker/alice"} in container["volumeMounts"]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"hiclaw.io/worker": "alice"}}
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}],
                                        "ports": [{"protocol": "TCP", "port": 4000}, {"protocol": "TCP", "port": 8008}]}]


def test_network_opt_in_has_no_policy_and_dns_names_get_dns_egress():
    docs = backend().manifests(worker(network=True))
    assert [d["kind"] for d in docs] == ["Secret", "Pod"]
    policy = backend(service_host="hiclaw.hiclaw.svc").manifests(worker())[2]
    conforms_doc(policy)
    egress = policy["spec"]["egress"]
    assert egress[0] == {"ports": [{"protocol": "TCP", "port": 4000}, {"protocol": "TCP", "port": 8008}]}
    assert {"protocol": "UDP", "port": 53} in egress[1]["ports"]


def test_host_paths_only_when_allowed():
    spec = worker(mounts=[Mount(host_path=Path("/srv/data/shared/t1"), read_only=True)])
    with pytest.raises(SandboxError, match="cannot bind host paths"):
        backend().manifests(spec)
    pod = backend(allow_host_paths=True).manifests(spec)[1]
    conforms_doc(pod)
    assert {"name": "mount-0", "hostPath": {"path": "/srv/data/shared/t1"}} in pod["spec"]["volumes"]
    assert {"name": "mount-0", "mountPath": "/srv/data/shared/t1", "readOnly": True} in \
        pod["spec"]["containers"][0]["volumeMounts"]


def test_bridges_need_a_reachable_service_host():
    with pytest.raises(SandboxError, match="service_host is not set"):
        backend(service_host=None).manifests(worker())
    with pytest.raises(SandboxError, match="unix socket"):
        backend().manifests(worker(bridges=[Bridge(name="control", port=9, target_unix=Path("/run/c.sock"))]))
    external = backend(service_host=None).manifests(worker(bridges=[Bridge(name="hs", port=443, target_host="192.0.2.7")]))
    assert "443=tcp:192.0.2.7:443" in external[1]["spec"]["containers"][0]["command"]


def test_without_a_cluster_the_error_names_the_fix(tmp_path):
    b = backend(kubeconfig=tmp_path / "missing-kubeconfig")
    with pytest.raises(SandboxError, match="cannot configure the Kubernetes client"):
        b.api  # noqa: B018


def _cluster_reachable() -> bool:
    try:
        from kubernetes import client, config

        config.load_kube_config()
        client.VersionApi().get_code(_request_timeout=3)
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _cluster_reachable(), reason="no Kubernetes cluster reachable from this machine")
async def test_real_cluster_runs_a_worker(tmp_path):  # pragma: no cover - needs a cluster
    b = KubernetesBackend(KubernetesSettings(), SimpleNamespace(home=tmp_path))
    await b.start(WorkerSpec(name="alice", argv=["python", "-c", "print('in a pod')"], home=Path("/home/worker/w")))
    assert await b.wait("alice") == 0
    await b.close()
