"""The example plugin in examples/ really works as a channel through the host."""
from __future__ import annotations

import sys

import pytest
from conftest import ROOT

from hiclaw.host import ComponentContext
from hiclaw.protocols import Channel
from hiclaw.testing import wait_until

sys.path.insert(0, str(ROOT / "examples" / "hiclaw-filechannel"))
import hiclaw_filechannel


async def test_two_agents_talk_through_the_file_channel(plugin_host, tmp_path):
    host = plugin_host(("filechannel", hiclaw_filechannel))
    settings = {"root": str(tmp_path / "rooms"), "poll_seconds": 0.01}
    admin = host.create("channel", "file", settings, ComponentContext(home=tmp_path, side="control"))
    alice = host.create("channel", "file", settings, ComponentContext(home=tmp_path, side="worker", agent="alice"))
    assert isinstance(admin, Channel) and isinstance(alice, Channel)

    room = await admin.ensure_room("worker-alice", name="Worker: alice", members=["admin", "alice"])
    assert await admin.ensure_room("worker-alice", name="Worker: alice", members=["alice"]) == room

    received = []

    async def handler(message):
        received.append(message)

    alice.on_message(handler)
    await admin.start()
    await alice.start()
    try:
        first = await admin.send(room, "hello @alice", mentions=["alice"], idempotency_key="k1")
        again = await admin.send(room, "hello @alice", mentions=["alice"], idempotency_key="k1")
        assert first == again  # the same idempotency key never posts twice
        await alice.send(room, "on it")  # own message: not delivered to alice
        await admin.send(room, "sentinel")  # written after alice's own line: once it arrives, all earlier did
        await wait_until(lambda: len(received) >= 2, what="alice receives the mention and the sentinel")
        assert [(m.body, m.sender, m.mentions) for m in received] == [
            ("hello @alice", "admin", ("alice",)),
            ("sentinel", "admin", ()),
        ]
    finally:
        await alice.stop()
        await admin.stop()


def test_bad_settings_are_reported_with_the_key(plugin_host, tmp_path):
    from hiclaw.errors import ConfigError

    host = plugin_host(("filechannel", hiclaw_filechannel))
    with pytest.raises(ConfigError, match=r"\[channel.settings\] poll_seconds: Input should be greater than 0"):
        host.create("channel", "file", {"poll_seconds": 0}, ComponentContext(home=tmp_path), section="channel.settings")


@pytest.fixture
def installed_example():
    """The example installed as its README says (an entry point in this environment), then removed."""
    import subprocess

    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e",
           str(ROOT / "examples" / "hiclaw-filechannel")]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    yield "filechannel"
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "hiclaw-filechannel"], capture_output=True,
                   timeout=300, check=False)


def _call(name: str, **arguments):
    return {"name": name, "arguments": arguments}


TEAM_SCENARIO = {"agents": {
    "wendy": {"rules": [
        {"when": {"role": "user", "regex": r"@wendy \*\*(?P<task>task-\d+)\*\*"},
         "tool_calls": [_call("read_file", path="shared/tasks/{{task}}/spec.md")]},
        {"when": {"tool_result": "read_file", "contains": "task: task-001"},
         "tool_calls": [_call("report_result", task_id="task-001", status="SUCCESS", summary="counted to three",
                              result_markdown="# Counting\n\n1, 2, 3\n")]},
        {"when": {"tool_result": "report_result"}, "text": "Reported."},
    ]},
    "manager": {"default": {"text": "manager here: {{input}}"}},
    "*": {"default": {"text": "ok"}},
}}


@pytest.mark.timeout(240)
async def test_the_example_channel_runs_a_team(installed_example, tmp_path, monkeypatch):
    """Configured as its README says, the example channel carries a whole team: the Manager answers
    the admin, a worker process (started by the control plane, loading the installed plugin) gets a
    task in its room and reports it, and the Manager's review notice arrives."""
    from hiclaw.config import ChannelConfig, SandboxConfig
    from hiclaw.models import TaskState
    from hiclaw.scripted import parse_scenario
    from hiclaw.scripted.server import ScriptedModelServer
    from hiclaw.storage import layout
    from hiclaw.testing.team import start_plane, team_config, wait_until

    monkeypatch.setenv("HICLAW_ENTRY_POINT_PLUGINS", installed_example)  # this test asks for it
    rooms = tmp_path / "rooms"
    model = ScriptedModelServer(parse_scenario(TEAM_SCENARIO))
    await model.start()
    config = team_config(model.base_url, sandbox="process")
    config.channel = ChannelConfig(plugin="file", settings={"root": str(rooms), "poll_seconds": 0.02})
    config.sandbox = SandboxConfig(plugin="process")
    admin = hiclaw_filechannel.FileChannel(rooms, "admin", 0.02)
    seen: list = []

    async def record(message):
        seen.append(message)

    admin.on_message(record)
    plane = await start_plane(tmp_path / "home", config)
    try:
        assert plane.host.plugin("filechannel").status == "ok"
        await admin.start()
        dm = await plane.chat.ensure_manager_room()
        await admin.send(dm, "@manager are you there?", mentions=["manager"])
        await wait_until(lambda: any("manager here" in m.body for m in seen), timeout=60, what="the Manager's answer")

        await plane.provisioner.create_worker("wendy", role="counter")
        spec = plane.supervisor.status("wendy")
        assert spec["state"] == "running", spec
        await plane.engine.assign_adhoc("wendy", "count", spec="Count to three.")
        await wait_until(lambda: plane.state.task("task-001").state is TaskState.REVIEW, timeout=90,
                         what="wendy to report task-001 through the file channel")
        assert "1, 2, 3" in (await plane.storage.get(layout.task_result("task-001"))).decode()
        senders = {m.sender for m in seen}
        assert {"manager", "wendy"} <= senders, senders
        assert model.engine.stats()["agents"]["wendy"]["calls"] >= 2
    finally:
        await admin.stop()
        await plane.stop()
        await model.stop()
