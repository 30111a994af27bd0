"""The example plugin in examples/ really works as a channel through the host."""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT
from hiclaw.host import ComponentContext
from hiclaw.protocols import Channel
from hiclaw.testing import wait_for_async

sys.path.insert(0, str(ROOT / "examples" / "hiclaw-filechannel"))
import hiclaw_filechannel  # noqa: E402


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
        await wait_for_async(lambda: len(received) >= 2, what="alice receives the mention and the sentinel")
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
