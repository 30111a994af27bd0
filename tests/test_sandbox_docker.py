"""Docker backend: the container it asks for, checked through the real Docker SDK's own argument
handling (no engine runs here); a real-engine test runs only where an engine answers."""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT

from hiclaw.sandbox.backends.docker import DockerBackend
from hiclaw.sandbox.base import SandboxError
from hiclaw.sandbox.settings import DockerSettings
from hiclaw.sandbox.spec import Bridge, Mount, WorkerSpec

docker = pytest.importorskip("docker", reason="the docker extra is not installed")
from docker.models.containers import _create_container_args  # noqa: E402 - after importorskip


def backend(**settings) -> DockerBackend:
    return DockerBackend(DockerSettings(**settings), SimpleNamespace(home=Path("/srv/hiclaw-home")))


def worker(**fields) -> WorkerSpec:
    return WorkerSpec(**{"name": "alice", "argv": [sys.executable, "-m", "hiclaw", "worker", "run"],
                         "env": {"HICLAW_WORKER_SPEC": '{"gateway": {"token": "tok"}}'},
                         "home": Path("/srv/data/agents/alice"), **fields})


def create_args(kwargs: dict) -> dict:
    """What the SDK sends to POST /containers/create for these ``containers.run`` kwargs."""
    kwargs = dict(kwargs)
    assert kwargs.pop("detach") is True
    return _create_container_args({**kwargs, "version": "1.45"})


def test_container_without_network_and_with_only_the_workers_folders():
    spec = worker(mounts=[Mount(host_path=Path("/srv/data/shared/tasks/t1"), read_only=False),
                          Mount(host_path=Path("/srv/data/shared/projects/p1"))],
                  bridges=[Bridge(name="gateway", port=4000), Bridge(name="homeserver", port=8008)])
    sockets = {"gateway": Path("/srv/run/alice/gateway.sock"), "homeserver": Path("/srv/run/alice/homeserver.sock")}
    kwargs = backend(memory_mb=512, cpus=1.5).container_kwargs(spec, sockets)
    args = create_args(kwargs)
    host = args["host_config"]
    assert host["NetworkMode"] == "none"
    assert sorted(host["Binds"]) == sorted([
        "/srv/data/agents/alice:/srv/data/agents/alice:rw",
        "/srv/data/shared/tasks/t1:/srv/data/shared/tasks/t1:rw",
        "/srv/data/shared/projects/p1:/srv/data/shared/projects/p1:ro",
        "/srv/run/alice:/run/hiclaw:ro",
    ])
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=1g"}
    assert host["PidsLimit"] == 256 and host["Memory"] == 512 * 1024 * 1024 and host["NanoCpus"] == 1_500_000_000
    assert "Privileged" not in host or host["Privileged"] is False
    assert args["environment"]["HICLAW_WORKER_SPEC"] == spec.env["HICLAW_WORKER_SPEC"]  # tokens as env
    assert args["environment"]["HOME"] == str(spec.home) and args["working_dir"] == str(spec.home)
    command = args["command"]
    assert command[:3] == ["python", "-m", "hiclaw.sandbox.launch"]
    assert "4000=unix:/run/hiclaw/gateway.sock" in command and "8008=unix:/run/hiclaw/homeserver.sock" in command
    assert command[command.index("--") + 1:] == ["python", "-m", "hiclaw", "worker", "run"]  # the image's python
    assert args["labels"]["hiclaw.worker"] == "alice" and args["name"] == "hiclaw-worker-alice"
    assert args["user"].count(":") == 1


def test_network_opt_in_uses_the_configured_network():
    args = create_args(backend(network="hiclaw-net").container_kwargs(worker(network=True)))
    assert args["host_config"]["NetworkMode"] == "hiclaw-net"
    assert args["networking_config"] == {"hiclaw-net": None}


def test_control_home_mounts_are_refused_before_any_engine_call():
    b = backend()
    spec = worker(mounts=[Mount(host_path=Path("/srv/hiclaw-home/secrets.toml"))])
    with pytest.raises(SandboxError, match="expose the control plane"):
        import asyncio
        asyncio.run(b.start(spec))


def test_without_an_engine_the_error_names_the_fix(tmp_path):
    b = backend(base_url=f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(SandboxError, match=r"cannot reach the Docker engine .* start Docker, set DOCKER_HOST"):
        b.client  # noqa: B018


def test_dockerfile_installs_every_package_folder_but_not_litellm():
    text = (ROOT / "sandbox" / "Dockerfile").read_text()
    setup = (ROOT / "setup.py").read_text()
    for folder in ("core", "plugins", "registry-client", "sandbox", "skills"):
        assert f'"{folder}"' in setup and f"COPY {folder} ./{folder}" in text
    assert "startswith('litellm')" in text and "pip install --no-deps ." in text
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("litellm") for d in deps)  # so the filter has something to drop


def _engine() -> object | None:
    try:
        client = docker.from_env()
        client.ping()
        client.images.get(DockerSettings().image)
        return client
    except Exception:
        return None


@pytest.mark.skipif(_engine() is None, reason="no Docker engine with the hiclaw-worker image on this machine")
async def test_real_engine_runs_a_worker(tmp_path):  # pragma: no cover - needs a Docker engine
    b = DockerBackend(DockerSettings(), SimpleNamespace(home=tmp_path / "ctl"))
    home = tmp_path / "agents" / "alice"
    home.mkdir(parents=True)
    await b.start(WorkerSpec(name="alice", argv=["python", "-c", "print('in a container')"], home=home))
    assert await b.wait("alice") == 0
    assert "in a container" in b.log_path("alice").read_text()
    await b.close()
