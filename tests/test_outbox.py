"""The transactional outbox (hiclaw.control.outbox): a state change and its message commit
together, and the message is delivered exactly once whatever crashes when.

The crash tests run on the real state DB and a real Matrix channel on the session's Synapse: a
"crash" is a control plane whose objects are dropped before delivery (or after the homeserver
accepted a message, before it was marked delivered), and a new one started on the same home. The
delivery rules (order per room, back-off, alerting the admin once) run on the real ControlChat with
a channel that fails on command. A real `kill -9` of `hiclaw up` in the same window is in
tests/test_chaos_outbox.py.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hiclaw.control.chat import ControlChat
from hiclaw.control.outbox import CRASH_ENV, CRASH_FILE, Outbox, crash_hook_for_tests
from hiclaw.manager.engine import TaskEngine
from hiclaw.models import TaskState
from hiclaw.state import ROOM_MANAGER, StateDB, Task, Worker, room_of_project, room_of_worker
from hiclaw.storage import layout
from hiclaw.testing.matrix import MatrixUser
from hiclaw.testing.team import wait_until


class MemoryStorage:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        self.objects[layout.validate_key(key)] = bytes(data)

    async def get(self, key: str) -> bytes:
        return self.objects[key]


class Access:
    async def refresh_access(self, worker: str) -> None:
        return None


async def no_wake(room: str, text: str, key: str, *, origin: Any = None) -> None:
    return None


def engine_of(plane: Any) -> TaskEngine:
    return TaskEngine(state=plane.state, storage=MemoryStorage(), chat=plane.chat, access=Access(), wake_manager=no_wake)


# ---------------------------------------------------------------------------------- the state DB


def test_a_state_change_and_its_message_commit_together_or_not_at_all(tmp_path):
    state = StateDB(tmp_path / "state.db")
    state.add_tasks(None, [Task(id="task-001", title="a", assignee="alex")])
    committed: list[str] = []
    state.on_message_committed = committed.append

    with pytest.raises(RuntimeError, match="boom"), state.transaction():
        state.update_task("task-001", state=TaskState.IN_PROGRESS, dispatch_count=1)
        state.enqueue_message("assign:task-001:1", room_of_worker("alex"), "yours", ["alex"])
        raise RuntimeError("boom")  # e.g. killed here: neither happened
    assert state.task("task-001").state is TaskState.PENDING and state.pending_messages() == [] and committed == []

    with state.transaction():
        state.update_task("task-001", state=TaskState.IN_PROGRESS, dispatch_count=1)
        assert state.enqueue_message("assign:task-001:1", room_of_worker("alex"), "yours", ["alex"])
        assert committed == []  # not before the commit
    assert committed == ["assign:task-001:1"]
    (pending,) = state.pending_messages()
    assert (pending.key, pending.room, pending.text, pending.mentions) == ("assign:task-001:1", "worker:alex", "yours",
                                                                         ["alex"])
    assert not state.enqueue_message("assign:task-001:1", ROOM_MANAGER, "again")  # pending: once
    state.message_delivered(pending.id, pending.key, "!room", "$event")
    assert state.pending_messages() == [] and state.outbox_get("assign:task-001:1") == "$event"
    assert not state.enqueue_message("assign:task-001:1", ROOM_MANAGER, "again")  # sent: never again
    state.close()


async def test_a_transaction_left_open_across_an_await_is_refused(tmp_path):
    state = StateDB(tmp_path / "state.db")
    opened, release = asyncio.Event(), asyncio.Event()

    async def careless() -> None:
        with state.transaction():
            opened.set()
            await release.wait()

    holder = asyncio.create_task(careless())
    await opened.wait()
    with pytest.raises(RuntimeError, match="never await inside"):
        state.enqueue_message("k", ROOM_MANAGER, "text")
    release.set()
    await holder
    assert state.pending_messages() == []
    state.close()


def test_a_version_1_database_gets_the_outbox_table(tmp_path):
    path = tmp_path / "state.db"
    state = StateDB(path)
    state.add_tasks(None, [Task(id="task-001", title="a", assignee="alex")])
    state.outbox_put("assign:task-001:1", "!room", "$ev")
    with state.transaction() as conn:  # what the previous version left: no pending_messages
        conn.execute("DROP TABLE pending_messages")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    state.close()

    state = StateDB(path)
    assert state.get_meta("schema_version") == "3"  # raised to the current version (3: plan_versions)
    assert state.task("task-001").title == "a" and state.outbox_get("assign:task-001:1") == "$ev"
    assert not state.enqueue_message("assign:task-001:1", ROOM_MANAGER, "sent before the upgrade")
    assert state.enqueue_message("assign:task-001:2", ROOM_MANAGER, "new")
    state.close()


# ---------------------------------------------------------------------------------- the test-only crash hook


def test_the_crash_hook_is_armed_only_by_the_variable_and_the_marker_together(tmp_path, monkeypatch):
    marker = tmp_path / CRASH_FILE
    monkeypatch.delenv(CRASH_ENV, raising=False)
    assert crash_hook_for_tests(tmp_path) is None
    monkeypatch.setenv(CRASH_ENV, "outbox:assign:task-002")
    assert crash_hook_for_tests(tmp_path) is None  # no marker
    marker.parent.mkdir(parents=True)
    marker.write_text("outbox:assign:task-003")
    assert crash_hook_for_tests(tmp_path) is None  # a marker for another point
    marker.write_text("outbox:assign:task-002")
    assert crash_hook_for_tests(tmp_path) is not None


CRASHING_CHILD = """
import sys
from pathlib import Path
from hiclaw.control.outbox import crash_hook_for_tests
from hiclaw.state import StateDB, room_of_worker

home = Path(sys.argv[1])
state = StateDB(home / "state.db")
state.on_message_committed = crash_hook_for_tests(home)
state.enqueue_message("assign:task-0021:1", room_of_worker("sam"), "another task: no crash")
with state.transaction():
    state.set_meta("marker", "committed with the message")
    state.enqueue_message("assign:task-002:1", room_of_worker("sam"), "the one")
print("survived", flush=True)
"""


def test_the_crash_hook_kills_right_after_the_commit_and_only_once(tmp_path):
    from hiclaw.testing.env import clean_env

    marker = tmp_path / CRASH_FILE
    marker.parent.mkdir(parents=True)
    marker.write_text("outbox:assign:task-002")
    env = clean_env(tmp_path, **{CRASH_ENV: "outbox:assign:task-002"})
    run = subprocess.run([sys.executable, "-c", CRASHING_CHILD, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert "survived" not in run.stdout and "after committing outbox entry assign:task-002:1" in run.stderr
    assert not marker.exists()  # disarmed: a restart does not crash again
    state = StateDB(tmp_path / "state.db")
    assert [m.key for m in state.pending_messages()] == ["assign:task-0021:1", "assign:task-002:1"]
    assert state.get_meta("marker") == "committed with the message"
    state.close()


# ---------------------------------------------------------------------------------- across crashes, on Synapse


class Home:
    """A control plane's objects on one home: state DB, Matrix channel, ControlChat, outbox."""

    def __init__(self, matrix_control: Any, home: Path, prefix: str) -> None:
        self.matrix_control, self.home, self.prefix = matrix_control, home, prefix

    async def start(self, *, outbox: bool = True) -> SimpleNamespace:
        plane = SimpleNamespace(admin="admin", state=StateDB(self.home / "state.db"))
        plane.channel = await self.matrix_control(prefix=self.prefix, home=self.home)
        plane.chat = ControlChat(plane.channel, plane.state, admin=plane.admin)
        if outbox:  # without: a control plane that dies before it delivers anything
            plane.outbox = plane.chat.outbox = Outbox(plane.state, plane.chat)
        return plane

    @staticmethod
    async def crash(plane: SimpleNamespace) -> None:
        await plane.channel.stop()
        plane.state.close()


def bodies(synapse: Any, user: MatrixUser, room_id: str, needle: str) -> list[str]:
    return [e["content"]["body"] for e in synapse.messages(user, room_id, limit=200)
            if e["type"] == "m.room.message" and needle in e["content"].get("body", "")]


async def test_a_message_recorded_with_a_state_change_is_delivered_once_across_crashes(synapse, matrix_control,
                                                                                      tmp_path):
    home = Home(matrix_control, tmp_path / "home", synapse.unique_prefix())
    plane = await home.start(outbox=False)
    admin = await plane.channel.ensure_account("admin", password="admin-pw", admin=True)
    await plane.channel.ensure_account("alice")
    admin_user = MatrixUser(admin["user_id"], admin["access_token"], admin["device_id"], "admin-pw")
    plane.state.upsert_worker(Worker(name="alice", role="astronomer", model="smart"))

    # The assignment commits with its message; the control plane dies before delivering it.
    task = await engine_of(plane).assign_adhoc("alice", "Name the stars", "three of them")
    assert [m.key for m in plane.state.pending_messages()] == ["assign:task-001:1"]
    await home.crash(plane)

    plane = await home.start()
    assert plane.state.task(task.id).state is TaskState.IN_PROGRESS and plane.state.task(task.id).dispatch_count == 1
    assert await plane.outbox.deliver_pending() == 1  # what boot does first
    room = await plane.chat.worker_room("alice")  # created at delivery: it did not exist when recorded
    assert len(bodies(synapse, admin_user, room, "**task-001** is yours")) == 1
    assert plane.state.pending_messages() == [] and plane.state.outbox_get("assign:task-001:1")

    # The narrowest window: the homeserver accepted the message, the process died before any
    # record of it was written (neither the state DB nor the channel's own store).
    with plane.state.transaction():
        plane.state.update_task(task.id, result_summary="noted")
        plane.state.enqueue_message("note:task-001", room_of_worker("alice"), "a note about task-001", ["alice"])
    (pending,) = plane.state.pending_messages()
    await plane.channel.send(room, pending.text, mentions=pending.mentions, idempotency_key=pending.key)
    plane.channel.store._db.execute("DELETE FROM sent WHERE idem_key LIKE 'note:task-001%'")
    await home.crash(plane)

    plane = await home.start()
    assert await plane.outbox.deliver_pending() == 1  # sent again with the same key: the homeserver replays it
    assert len(bodies(synapse, admin_user, room, "a note about task-001")) == 1
    assert len(bodies(synapse, admin_user, room, "**task-001** is yours")) == 1
    assert plane.state.task(task.id).result_summary == "noted"
    await home.crash(plane)

    plane = await home.start()  # a third start: nothing left, nothing again
    assert plane.state.pending_messages() == [] and await plane.outbox.deliver_pending() == 0
    assert len(bodies(synapse, admin_user, room, "is yours")) == 1
    await home.crash(plane)


# ---------------------------------------------------------------------------------- delivery rules


class FlakyChannel:
    """Records sends; rooms in ``down`` refuse them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str | None]] = []
        self.down: set[str] = set()

    async def send(self, room_id: str, text: str, *, mentions: Any = (), idempotency_key: str | None = None) -> str:
        if room_id in self.down:
            raise ConnectionError(f"{room_id} unreachable")
        self.sent.append((room_id, text, idempotency_key))
        return f"$event{len(self.sent)}"

    async def ensure_room(self, key: str, **kwargs: Any) -> str:
        return f"!{key}"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def flaky(tmp_path):
    plane = SimpleNamespace(admin="admin", state=StateDB(tmp_path / "state.db"), channel=FlakyChannel())
    plane.chat = ControlChat(plane.channel, plane.state, admin=plane.admin)
    plane.clock = Clock()
    plane.outbox = plane.chat.outbox = Outbox(plane.state, plane.chat, alert_after=300, clock=plane.clock)
    yield plane
    plane.state.close()


async def test_a_room_keeps_its_order_while_others_go_on_and_the_admin_is_told_once(flaky, caplog):
    state, channel, clock = flaky.state, flaky.channel, flaky.clock
    await flaky.chat.ensure_manager_room()
    channel.down.add("!worker-bob")
    state.enqueue_message("bob:1", room_of_worker("bob"), "first for bob")
    state.enqueue_message("bob:2", room_of_worker("bob"), "second for bob")
    state.enqueue_message("alex:1", room_of_worker("alex"), "for alex")
    assert await flaky.outbox.deliver_pending() == 1
    assert [s[2] for s in channel.sent] == ["alex:1"]  # bob's room waits, alex's does not
    assert await flaky.outbox.deliver_pending() == 0  # backing off: not even tried
    first = state.pending_messages()[0]
    assert (first.key, first.attempts, first.next_attempt_at) == ("bob:1", 1, clock.now + 1)

    for _ in range(8):  # five minutes of failures, with back-off
        clock.now += 60
        await flaky.outbox.deliver_pending()
    alerts = [s for s in channel.sent if s[2] == "undelivered:bob:1"]
    assert len(alerts) == 1 and alerts[0][0] == "!manager" and "worker:bob" in alerts[0][1]
    assert "I keep trying" in alerts[0][1] and state.pending_messages()[0].alerted

    channel.down.clear()
    clock.now += 60
    assert await flaky.outbox.deliver_pending() == 2
    assert [s[1] for s in channel.sent if s[0] == "!worker-bob"] == ["first for bob", "second for bob"]
    assert state.pending_messages() == []

    # When the Manager room is unreachable too, the log says it (once).
    channel.down.update({"!worker-bob", "!manager"})
    state.enqueue_message("bob:3", room_of_worker("bob"), "third for bob")
    with caplog.at_level(logging.ERROR, logger="hiclaw.control.outbox"):
        for _ in range(10):
            clock.now += 60
            await flaky.outbox.deliver_pending()
    logged = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(logged) == 1 and "bob:3" in logged[0].getMessage()


async def test_a_message_for_a_room_not_made_yet_waits_for_it(flaky):
    state = flaky.state
    project = state.create_project("P")
    state.enqueue_message("project-start:proj-001", room_of_project(project.id), "started")
    assert await flaky.outbox.deliver_pending() == 0  # no room yet: kept
    state.update_project(project.id, room_id="!project-room")
    flaky.clock.now += 5
    assert await flaky.outbox.deliver_pending() == 1
    assert flaky.channel.sent == [("!project-room", "started", "project-start:proj-001")]


async def test_a_direct_post_goes_after_what_the_outbox_holds(flaky):
    state = flaky.state
    state.enqueue_message("plan:proj-001:0", ROOM_MANAGER, "the plan")
    await flaky.chat.post(await flaky.chat.ensure_manager_room(), "what I think of it")
    assert [s[1] for s in flaky.channel.sent] == ["the plan", "what I think of it"]


async def test_the_delivery_loop_retries_on_its_own(flaky):
    outbox = Outbox(flaky.state, flaky.chat)  # the real clock: back-off of a second
    flaky.channel.down.add("!worker-bob")
    flaky.state.enqueue_message("bob:1", room_of_worker("bob"), "for bob")
    outbox.start()
    try:
        await wait_until(lambda: flaky.state.pending_messages()[0].attempts == 1, timeout=10, what="a first attempt")
        flaky.channel.down.clear()
        await wait_until(lambda: not flaky.state.pending_messages(), timeout=10, what="the retry (due after 1 s)")
        assert flaky.channel.sent[-1][2] == "bob:1"
    finally:
        await outbox.stop()


async def test_a_post_made_while_a_message_is_delivered_does_not_wait_for_that_delivery(flaky):
    """Delivering may wake a sleeping worker, and whatever that posts must not wait for the
    delivery it is part of (a deadlock)."""
    channel, chat = flaky.channel, flaky.chat
    plain_send = channel.send

    async def send(room_id: str, text: str, **kwargs: Any) -> str:
        if kwargs.get("idempotency_key") == "assign:task-001:1":
            await chat.post(room_id, "woken up for it")
        return await plain_send(room_id, text, **kwargs)

    channel.send = send
    flaky.state.enqueue_message("assign:task-001:1", room_of_worker("bob"), "task-001 is yours")
    async with asyncio.timeout(10):
        assert await flaky.outbox.deliver_pending() == 1
    assert [s[1] for s in channel.sent] == ["woken up for it", "task-001 is yours"]
