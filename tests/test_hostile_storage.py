"""A hostile worker against the files the control plane shares with it (issue 14, attacks 1 and 2).

The control plane reads and writes a worker's home and task folders; the worker can change them
at any moment. Every attack here asserts the outcome that matters: no byte of a host file outside
the storage reaches anything the worker can see, and nothing is written outside the worker's area.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from pathlib import Path

import pytest

from hiclaw.errors import NotFoundError
from hiclaw.host import ComponentContext
from hiclaw.plugins.storage.local import make_local_storage
from hiclaw.plugins.storage.local.settings import LocalStorageSettings
from hiclaw.storage import AccessDeniedError, layout
from hiclaw.storage.safefs import Beneath, LinkRefused

# --------------------------------------------------------------------------- the storage itself


@pytest.fixture
async def control(tmp_path):
    storage = make_local_storage(LocalStorageSettings(), ComponentContext(home=tmp_path / "home"))
    await storage.put(layout.task_spec("t1"), b"# the task")
    yield storage
    await storage.stop()


@pytest.fixture
def host_secret(tmp_path) -> tuple[Path, bytes]:
    """A file outside the storage that the worker must never see (like secrets.toml)."""
    value = f"sk-canary-{secrets.token_hex(8)}".encode()
    path = tmp_path / "home" / "secrets.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'matrix_admin_password = "' + value + b'"\n')
    return path, value


async def test_reading_a_result_the_worker_keeps_swapping_for_a_link_never_yields_the_link_target(control, host_secret):
    """Attack 1 at its root: result.md swapped between a file and a link to a host file while the
    control plane reads it, thousands of times. Not one read may return the target's bytes."""
    secret_path, secret = host_secret
    result = control.root / layout.task_result("t1")
    result.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def swapper() -> None:  # what the worker does in its task folder, as fast as it can
        tmp_link, tmp_file = result.with_name(".l"), result.with_name(".f")
        while not stop.is_set():
            tmp_link.unlink(missing_ok=True)
            tmp_link.symlink_to(secret_path)
            os.replace(tmp_link, result)
            tmp_file.write_bytes(b"# done\n")
            os.replace(tmp_file, result)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    outcomes = {"file": 0, "refused": 0}
    try:
        for _ in range(3000):
            try:
                data = await control.get(layout.task_result("t1"))
            except (AccessDeniedError, NotFoundError):
                outcomes["refused"] += 1
                continue
            assert secret not in data
            assert data == b"# done\n"
            outcomes["file"] += 1
    finally:
        stop.set()
        thread.join()
    assert outcomes["file"] > 0 and outcomes["refused"] > 0, outcomes  # the race really ran both ways
    # stat and checksum on the link: nothing about the target either
    result.unlink()
    result.symlink_to(secret_path)
    assert await control.stat(layout.task_result("t1")) is None
    with pytest.raises(AccessDeniedError):
        await control.checksum(layout.task_result("t1"))
    assert [e["key"] for e in await control.list("shared/tasks/t1/")] == ["shared/tasks/t1/spec.md"]


async def test_a_folder_swapped_for_a_link_is_never_written_through(control, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = control.root / "shared/tasks/t1/workspace"
    workspace.parent.mkdir(parents=True, exist_ok=True)
    workspace.symlink_to(outside)
    with pytest.raises(AccessDeniedError, match="links are never followed"):
        await control.put("shared/tasks/t1/workspace/notes.md", b"from the control plane")
    with pytest.raises(AccessDeniedError):
        await control.copy(layout.task_spec("t1"), "shared/tasks/t1/workspace/spec-copy.md")
    await control.delete("shared/tasks/t1/workspace/anything.md")  # nothing of ours there: a no-op
    assert list(outside.iterdir()) == []
    # a link as the final name is replaced, never written through
    victim = outside / "victim.txt"
    victim.write_bytes(b"untouched")
    (control.root / "shared/tasks/t1/result.md").symlink_to(victim)
    await control.put(layout.task_result("t1"), b"# the real result")
    assert victim.read_bytes() == b"untouched"
    assert not (control.root / "shared/tasks/t1/result.md").is_symlink()


async def test_a_fifo_planted_as_a_result_does_not_block_the_control_plane(control):
    result = control.root / layout.task_result("t1")
    os.mkfifo(result)
    with pytest.raises(NotFoundError):
        await asyncio.wait_for(control.get(layout.task_result("t1")), timeout=5)
    assert await control.stat(layout.task_result("t1")) is None


def test_beneath_refuses_links_at_every_depth(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (root / "a" / "link").symlink_to(tmp_path / "elsewhere")
    fs = Beneath(root)
    assert fs.read_bytes("a/b/f") == b"x"
    for rel in ("a/link/f", "a/link"):
        with pytest.raises(LinkRefused):
            fs.write_bytes(rel + "/new", b"y")
    with pytest.raises(LinkRefused):
        fs.open_path("a/link")
    with pytest.raises(ValueError, match=r"'\.' and '\.\.'"):
        fs.read_bytes("a/../../x")
    assert list(fs.walk("")) == [("a/b/f", fs.stat("a/b/f"))]


# --------------------------------------------------------------------------- a live team, a real bwrap worker

ATTACK = r'''
import json, os, urllib.request
spec = None
raw = b""
for pid in os.listdir("/proc"):
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        continue
    for item in env:
        if item.startswith(b"HICLAW_WORKER_SPEC="):
            raw = item.split(b"=", 1)[1]
            spec = json.loads(raw)
root = spec["storage"]["settings"]["root"]
print("storage root inside:", root, "| HOST-PATH-LEAK" if b"HOST_HOME" in raw + os.getcwd().encode() else "| no host path")
home = "HOST_HOME"                   # the control plane's home, as if the attacker had guessed it
task = "TASK"
result = f"{root}/shared/tasks/{task}/result.md"
targets = [f"{home}/secrets.toml", f"{home}/run/control.json", "/etc/shadow"]
ready = urllib.request.Request(spec["control_url"].rstrip("/") + "/v1/ready", data=b'{"reconnected": false}',
                               headers={"Authorization": "Bearer " + spec["control_token"], "Content-Type": "application/json"})
for i in range(200):
    try:
        os.unlink(result)
    except FileNotFoundError:
        pass
    os.symlink(targets[i % len(targets)], result)   # the control plane reads result.md on every ready
    try:
        urllib.request.urlopen(ready, timeout=10).read()
    except Exception as exc:
        pass
skills = f"{root}/agents/{spec['name']}/skills"
for how in (lambda: os.rename(skills, skills + ".old"), lambda: os.rmdir(skills)):
    try:
        how()
        print("SKILLS-MOVED")
    except OSError as exc:
        print("skills folder stays:", exc.strerror)
try:
    open(skills + "/planted.md", "w").write("mine")
    print("SKILLS-WRITABLE")
except OSError as exc:
    print("skills folder read-only:", exc.strerror)
print("attack done")
'''


def _call(name: str, **arguments):
    return {"name": name, "arguments": arguments}


def _scenario(task: str, host_home: Path) -> dict:
    script = ATTACK.replace("TASK", task).replace("HOST_HOME", str(host_home))
    return {"agents": {
        "mallory": {"rules": [
            {"when": {"role": "user", "regex": r"@mallory \*\*task-\d+\*\*"},
             "tool_calls": [_call("run_command", command=f"python3 - <<'EOF'\n{script}\nEOF", timeout_seconds=300)]},
            {"when": {"tool_result": "run_command", "contains": "attack done"},
             "tool_calls": [_call("skills_find", query="architecture decision records")]},
            {"when": {"tool_result": "skills_find", "regex": r'"source": "(?P<source>[^"]+)"'},
             "tool_calls": [_call("skills_add", source="{{source}}", skill="architecture-decision-records")]},
            {"when": {"tool_result": "skills_add"}, "text": "finished"},
        ]},
        "*": {"default": {"text": "ok"}},
    }}


@pytest.mark.needs_bwrap
@pytest.mark.timeout(300)
async def test_a_worker_swapping_its_result_for_links_to_host_secrets_gets_nothing(tmp_path):
    """Attacks 1 and 2 from inside a real bwrap worker, with only its run_command tool: result.md
    swapped for links to the control plane's secrets while the worker triggers reads at will,
    then its skills folder replaced before a skill install. Nothing of those files reaches
    anything the worker (or anyone in chat) can read; the skill lands in its own folder only."""
    from hiclaw.demo import REGISTRY_ROOT
    from hiclaw.sandbox.availability import bwrap_unavailable
    from hiclaw.testing.registry import RunningRegistry
    from hiclaw.testing.team import running_team, wait_until

    if bwrap_unavailable() is not None:
        pytest.skip(f"bubblewrap cannot create sandboxes here: {bwrap_unavailable()}")
    canary = f"sk-canary-{secrets.token_hex(8)}"
    registry = RunningRegistry(REGISTRY_ROOT).start()
    try:
        async with running_team(tmp_path / "home", _scenario("task-001", tmp_path / "home"), sandbox="bwrap",
                                registry_url=registry.url,
                                secrets={"openai_api_key": canary}) as team:
            plane = team.plane
            await plane.provisioner.create_worker("mallory", role="tester")
            await plane.provisioner.create_worker("bob", role="bystander")
            await plane.engine.assign_adhoc("mallory", "look busy", spec="Do something.")
            await wait_until(lambda: team.model_calls("mallory") >= 4, timeout=240, what="mallory's attack and install")

            secret_values = [canary, plane.secrets.get("matrix_admin_password").get_secret_value(),
                             (team.home / "run" / "control.json").read_text().strip()[-20:]]
            seen = []
            for path in plane.storage.root.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    seen.append((str(path), path.read_bytes().decode(errors="replace")))
            seen += [("chat", m.body) for m in team.admin.messages]
            for where, text in seen:
                for value in secret_values:
                    assert value not in text, f"a secret reached {where}"
            output = "\n".join(m.body for m in team.admin.messages)
            log = (team.home / "logs" / "workers" / "mallory.log").read_text()
            assert "SKILLS-MOVED" not in log + output and "SKILLS-WRITABLE" not in log + output
            # What the worker's commands printed came back to its model as tool results.
            requests = json.dumps(list(team.model.recent))
            assert "storage root inside: /data" in requests and "| no host path" in requests
            assert "HOST-PATH-LEAK" not in requests
            for value in secret_values:
                assert value not in requests, "a secret reached the worker's model"
            skills = plane.storage.root / "agents" / "mallory" / "skills"
            assert (skills / "architecture-decision-records" / "SKILL.md").is_file()
            assert not skills.is_symlink() and not (skills / "planted.md").exists()
            bob = plane.storage.root / "agents" / "bob"
            assert not (bob / "skills" / "architecture-decision-records").exists()
            assert plane.state.task("task-001").state.value in ("in_progress", "review")
    finally:
        registry.stop()


@pytest.mark.needs_bwrap
async def test_a_granted_file_replaced_by_a_link_is_not_bound_into_the_sandbox(tmp_path, sandbox_backend, worker_spec):
    """Mounts under the storage are bound by descriptor, opened without following links: if a
    granted file became a link to a host file, the sandbox refuses to start rather than bind it."""
    from hiclaw.errors import HiclawError
    from hiclaw.sandbox.spec import Mount

    root = tmp_path / "data"
    (root / "shared/tasks/t1").mkdir(parents=True)
    secret = tmp_path / "secrets.toml"
    secret.write_text("password = 'nope'\n")
    (root / "shared/tasks/t1/spec.md").symlink_to(secret)
    backend = sandbox_backend("bwrap")
    spec = worker_spec(["/bin/cat", str(root / "shared/tasks/t1/spec.md")], name="linky",
                       mounts=[Mount(host_path=root / "shared/tasks/t1/spec.md", read_only=True, beneath=root)])
    with pytest.raises(HiclawError, match="symbolic link"):
        await backend.start(spec)
    await backend.stop("linky")
