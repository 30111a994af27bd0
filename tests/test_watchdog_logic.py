"""The watchdog's and the idle policy's decisions, tick by tick, with a controllable clock.

The state DB and the storage are real (SQLite, local files); the chat, the supervisor, the
provisioner and the gateway are small in-memory fakes that record what the watchdog asked of
them. The same logic runs against real components in test_watchdog.py and test_idle.py.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from hiclaw.config import HiclawConfig
from hiclaw.control.idle import IdlePolicy
from hiclaw.control.watchdog import Watchdog
from hiclaw.manager.plan import render_plan
from hiclaw.models import ChatMessage, TaskState
from hiclaw.plugins.storage.local.backend import LocalStorage
from hiclaw.state import Project, StateDB, Task, Worker
from hiclaw.storage import layout

INTERVAL = 10.0
IDLE = 100.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time() + 1  # tasks created by a test are at most a second "old"

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class FakeChat:
    manager_room = "!manager"

    def __init__(self, plane: Any) -> None:
        self.plane = plane
        self.posts: list[dict[str, Any]] = []

    async def post(self, room_id: str, text: str, *, mentions: Any = (), key: str | None = None) -> str:
        if key is not None and any(p["key"] == key for p in self.posts):
            return "$dup"
        if mentions:
            await self.plane.idle.wake_mentioned(list(mentions))
        self.posts.append({"room": room_id, "text": text, "mentions": list(mentions), "key": key})
        return f"$event{len(self.posts)}"

    async def worker_room(self, worker: str) -> str:
        return f"!worker-{worker}"

    def keys(self) -> list[str]:
        return [p["key"] for p in self.posts]


class FakeSupervisor:
    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.exit_callbacks: list[Any] = []
        self.loop_callbacks: list[Any] = []
        self.stopped: list[str] = []

    def on_exit(self, callback: Any) -> None:
        self.exit_callbacks.append(callback)

    def on_crash_loop(self, callback: Any) -> None:
        self.loop_callbacks.append(callback)

    def status(self, name: str) -> dict[str, Any]:
        return {"name": name, "state": self.states.get(name, "absent"), "recent_crashes": 5}

    async def stop(self, name: str, timeout: float | None = None) -> None:
        self.states[name] = "stopped"
        self.stopped.append(name)


class FakeProvisioner:
    def __init__(self, plane: Any) -> None:
        self.plane = plane
        self.ready_at: dict[str, float] = {}
        self.mounts: dict[str, Any] = {}
        self.started: list[str] = []
        self.fail_starts = False
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def start_process(self, worker: Worker, *, restart: bool = False) -> None:
        async with self.lock(worker.name):
            if self.fail_starts:
                raise RuntimeError("no sandbox")
            self.started.append(worker.name)
            self.plane.supervisor.states[worker.name] = "running"
            self.mounts[worker.name] = []
        self.ready_at[worker.name] = time.time()


class FakeGateway:
    def __init__(self) -> None:
        self.callers: set[str] = set()

    async def usage(self, by: str = "consumer", since: float | None = None) -> list[dict[str, Any]]:
        rows = [{"consumer": name, "calls": 1} for name in sorted(self.callers)]
        self.callers = set()
        return rows


class FakePlane:
    admin = "admin"

    def __init__(self, tmp_path: Any, clock: Clock) -> None:
        self.config = HiclawConfig()
        self.state = StateDB(tmp_path / "state.db")
        self.storage = LocalStorage(tmp_path / "data")
        self.chat = FakeChat(self)
        self.supervisor = FakeSupervisor()
        self.provisioner = FakeProvisioner(self)
        self.gateway = FakeGateway()
        self.rendered: list[str] = []
        self.engine = SimpleNamespace(render=self._render)
        self.wakes: list[tuple[str, str, str]] = []
        self.watchdog = self.new_watchdog(clock)

    def new_watchdog(self, clock: Clock, *, interval: float = INTERVAL, idle_seconds: float = IDLE) -> Watchdog:
        """A watchdog (and its idle policy) wired to this plane's fakes, as the control plane wires it."""
        self.idle = IdlePolicy(state=self.state, supervisor=self.supervisor, provisioner=self.provisioner,
                               display=self.display, idle_seconds=idle_seconds, clock=clock)
        return Watchdog(state=self.state, chat=self.chat, supervisor=self.supervisor, provisioner=self.provisioner,
                        gateway=self.gateway, storage=self.storage, engine=self.engine, idle=self.idle,
                        wake_manager=self.wake_manager, display=self.display, interval=interval, admin=self.admin,
                        clock=clock)

    async def _render(self, project_id: str) -> None:
        self.rendered.append(project_id)

    async def wake_manager(self, room_id: str, text: str, key: str) -> None:
        self.wakes.append((room_id, text, key))

    def display(self, user_id: str) -> str:
        return user_id.split(":", 1)[0].lstrip("@")

    def add_worker(self, name: str, *, state: str = "active", process: str = "running") -> None:
        self.state.upsert_worker(Worker(name=name, role="tester", model="smart", state=state))
        self.supervisor.states[name] = process

    def add_task(self, assignee: str, project_id: str | None = None) -> str:
        task_id = self.state.next_task_id()
        self.state.add_tasks(project_id, [Task(id=task_id, title=f"work of {assignee}", assignee=assignee)])
        self.state.update_task(task_id, state=TaskState.IN_PROGRESS, dispatch_count=1)
        return task_id


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def plane(tmp_path: Any, clock: Clock) -> Any:
    plane = FakePlane(tmp_path, clock)
    plane.watchdog.register()
    plane.watchdog.started_at = clock()
    yield plane
    plane.state.close()


def message(sender: str, body: str, *, mentions: tuple[str, ...] = (), when: float | None = None) -> ChatMessage:
    stamp = datetime.fromtimestamp(when if when is not None else time.time(), UTC)
    return ChatMessage(room_id="!room", event_id=f"${sender}{stamp.timestamp()}", sender=f"@{sender}:test", body=body,
                       mentions=mentions, timestamp=stamp)


async def test_a_quiet_task_is_asked_after_one_interval_and_alerted_after_two(plane, clock):
    plane.add_worker("bob")
    task = plane.add_task("bob")
    watchdog = plane.watchdog
    assert (await watchdog.tick()).asked == []
    clock.advance(INTERVAL - 0.5)
    assert (await watchdog.tick()).asked == []
    clock.advance(1.0)
    report = await watchdog.tick()
    assert report.asked == [task] and report.summary is None
    (ask,) = plane.chat.posts
    assert ask["room"] == "!worker-bob" and ask["mentions"] == ["bob"] and ask["key"] == f"heartbeat:{task}:1"
    assert f"how is **{task}** going" in ask["text"]
    assert plane.wakes == []  # asking needs no Manager turn
    clock.advance(INTERVAL - 1.5)
    assert (await watchdog.tick()).stalled == []  # 1.9 intervals
    clock.advance(1.0)
    report = await watchdog.tick()
    assert report.stalled == [task]
    alert = plane.chat.posts[-1]
    assert alert["room"] == FakeChat.manager_room and alert["mentions"] == ["admin"]
    assert alert["key"] == f"stalled:{task}:1" and "looks stalled" in alert["text"]
    assert plane.state.task(task).stalled_at is not None
    assert plane.state.task(task).state is TaskState.IN_PROGRESS
    assert [k for _, _, k in plane.wakes] == [f"heartbeat:stalled:{task}:1"]
    assert task in plane.wakes[0][1]
    for _ in range(3):  # routine checks afterwards: no new messages, no Manager turn
        clock.advance(INTERVAL)
        report = await watchdog.tick()
        assert not (report.asked or report.stalled or report.summary)
    assert len(plane.chat.posts) == 2 and len(plane.wakes) == 1


async def touch(plane, key: str, when: float) -> None:
    await plane.storage.put(key, b"step")
    os.utime(plane.storage.local_path(key), (when, when))


@pytest.mark.parametrize("signal", ["progress file", "workspace file", "result file"])
async def test_each_progress_signal_resets_the_quiet_time(plane, clock, signal):
    plane.add_worker("bob")
    task = plane.add_task("bob")
    watchdog = plane.watchdog
    clock.advance(INTERVAL * 0.8)
    key = {"progress file": f"{layout.task_progress_dir(task)}1.md",
           "workspace file": f"{layout.task_workspace(task)}out.txt", "result file": layout.task_result(task)}[signal]
    await touch(plane, key, clock())
    assert (await watchdog.tick()).asked == []
    assert plane.state.task(task).last_progress_at is not None
    clock.advance(INTERVAL * 0.8)  # 1.6 intervals after dispatch, 0.8 after the signal
    assert (await watchdog.tick()).asked == []
    clock.advance(INTERVAL * 0.3)
    assert (await watchdog.tick()).asked == [task]


async def test_what_is_not_the_workers_progress_does_not_count(plane, clock):
    """Task progress is files of the task; chatter and model calls are not — not even the
    worker's own (a worker answering "still on it" every interval would be asked forever)."""
    plane.add_worker("bob")
    plane.add_worker("carol")
    task = plane.add_task("bob")
    clock.advance(INTERVAL * 0.8)
    await touch(plane, layout.task_spec(task), clock())  # the Manager's
    plane.watchdog.observe(message("carol", "I am busy too", when=clock()))
    plane.watchdog.observe(message("admin", "@bob hurry", mentions=("@bob:test",), when=clock()))
    plane.watchdog.observe(message("bob", "still on it, halfway there", when=clock()))
    plane.gateway.callers = {"carol", "bob"}
    await plane.watchdog.tick()
    clock.advance(INTERVAL * 0.3)
    assert (await plane.watchdog.tick()).asked == [task]


async def test_progress_after_a_stall_clears_it_and_says_so(plane, clock):
    project = plane.state.create_project("Stars")
    plane.add_worker("bob")
    task = plane.add_task("bob", project.id)
    clock.advance(INTERVAL + 0.1)
    await plane.watchdog.tick()
    clock.advance(INTERVAL)
    assert (await plane.watchdog.tick()).stalled == [task]
    assert plane.rendered == [project.id]
    plan = render_plan(plane.state.project(project.id), plane.state.tasks(project_id=project.id))
    assert f"[~] {task}" in plan and "stalled since" in plan
    clock.advance(1)
    plane.watchdog.observe(message("bob", "sorry, back on it", when=clock()))
    assert (await plane.watchdog.tick()).unstalled == []  # words are not progress
    await touch(plane, f"{layout.task_progress_dir(task)}1.md", clock())
    report = await plane.watchdog.tick()
    assert report.unstalled == [task]
    assert plane.state.task(task).stalled_at is None
    assert plane.chat.posts[-1]["key"] == f"unstalled:{task}:1" and "moving again" in plane.chat.posts[-1]["text"]
    assert plane.rendered == [project.id, project.id]
    assert "stalled" not in render_plan(plane.state.project(project.id), plane.state.tasks(project_id=project.id))
    clock.advance(INTERVAL + 0.1)  # a second episode gets new keys
    await plane.watchdog.tick()
    clock.advance(INTERVAL)
    await plane.watchdog.tick()
    assert plane.chat.keys()[-2:] == [f"heartbeat:{task}:2", f"stalled:{task}:2"]


async def test_a_stall_ends_when_the_task_leaves_in_progress(plane, clock):
    plane.add_worker("bob")
    task = plane.add_task("bob")
    clock.advance(INTERVAL + 0.1)
    await plane.watchdog.tick()
    clock.advance(INTERVAL)
    await plane.watchdog.tick()
    plane.state.update_task(task, state=TaskState.CANCELLED)
    await plane.watchdog.tick()
    assert plane.state.task(task).stalled_at is None and plane.watchdog.watches == {}


async def test_a_new_dispatch_starts_a_new_window(plane, clock):
    plane.add_worker("bob")
    task = plane.add_task("bob")
    clock.advance(INTERVAL + 0.1)
    assert (await plane.watchdog.tick()).asked == [task]
    plane.state.update_task(task, dispatch_count=2)
    plane.watchdog.started_at = clock()  # the dispatch happened "now" in the fake clock's terms
    assert (await plane.watchdog.tick()).asked == []


async def test_a_dead_process_is_restarted_and_its_task_renotified(plane, clock):
    project = plane.state.create_project("Stars")
    plane.state.update_project(project.id, room_id="!project")
    plane.add_worker("bob", process="exited")
    task = plane.add_task("bob", project.id)
    report = await plane.watchdog.tick()
    assert report.restarted == ["bob"] and report.renotified == [task]
    assert plane.provisioner.started == ["bob"]
    (notice,) = plane.chat.posts
    assert notice["room"] == "!project" and notice["mentions"] == ["bob"] and notice["key"] == f"renotify:{task}:1"
    assert "was not running (exited)" in notice["text"] and layout.task_spec(task) in notice["text"]
    assert (await plane.watchdog.tick()).restarted == []  # running now


@pytest.mark.parametrize("worker_state,process", [("active", "absent"), ("active", "backoff"), ("active", "starting"),
                                                  ("active", "crash-loop"), ("sleeping", "stopped")])
async def test_processes_the_watchdog_leaves_alone(plane, worker_state, process):
    plane.add_worker("bob", state=worker_state, process=process)
    report = await plane.watchdog.tick()
    assert report.restarted == [] and plane.provisioner.started == []


async def test_a_worker_being_started_or_removed_is_left_to_the_provisioner(plane):
    plane.add_worker("bob", process="stopped")
    async with plane.provisioner.lock("bob"):
        assert (await plane.watchdog.tick()).restarted == []


async def test_a_crash_restarted_by_the_supervisor_is_renotified_once_ready(plane):
    plane.add_worker("bob")
    task = plane.add_task("bob")
    plane.provisioner.ready_at["bob"] = time.time() - 5
    for callback in plane.supervisor.exit_callbacks:
        callback("bob", -9, True)
    assert plane.state.events(kind="worker.crashed", subject="bob")[0]["data"]["exit_code"] == -9
    plane.supervisor.states["bob"] = "backoff"
    assert (await plane.watchdog.tick()).renotified == []
    plane.supervisor.states["bob"] = "running"  # started, not ready yet
    assert (await plane.watchdog.tick()).renotified == []
    plane.provisioner.ready_at["bob"] = time.time() + 1
    report = await plane.watchdog.tick()
    assert report.renotified == [task] and report.restarted == []
    assert "exit code -9" in plane.chat.posts[-1]["text"]
    assert (await plane.watchdog.tick()).renotified == []


async def test_planned_exits_are_not_crashes(plane):
    plane.add_worker("bob")
    plane.add_task("bob")
    for callback in plane.supervisor.exit_callbacks:
        callback("bob", 0, False)  # stopped on purpose
    async with plane.provisioner.lock("bob"):  # a restart the provisioner asked for
        for callback in plane.supervisor.exit_callbacks:
            callback("bob", -15, True)
    assert plane.state.events(kind="worker.crashed") == []


async def test_a_crash_loop_is_summarised_for_the_manager_once_and_not_restarted(plane):
    plane.add_worker("bob", process="crash-loop")
    task = plane.add_task("bob")
    plane.state.log_event("worker.crash_loop", "bob")  # what the control plane's own callback records
    for callback in plane.supervisor.loop_callbacks:
        callback("bob", plane.supervisor.status("bob"))
    report = await plane.watchdog.tick()
    assert report.restarted == [] and plane.provisioner.started == []
    assert "bob keeps crashing" in report.summary and task in report.summary
    assert [k for _, _, k in plane.wakes] == ["heartbeat:crash-loop:bob:1"]
    assert (await plane.watchdog.tick()).summary is None


async def test_a_worker_that_cannot_be_started_is_reported_after_three_attempts(plane):
    plane.add_worker("bob", process="exited")
    plane.provisioner.fail_starts = True
    for _ in range(2):
        await plane.watchdog.tick()
    assert plane.chat.posts == [] and plane.wakes == []
    report = await plane.watchdog.tick()
    assert "cannot be started" in report.summary
    assert plane.chat.posts[-1]["key"] == "start-failed:bob:0" and plane.chat.posts[-1]["mentions"] == ["admin"]
    await plane.watchdog.tick()
    assert len(plane.chat.posts) == 1  # gave up: no restart storm


# ---------------------------------------------------------------------- idle sleep


async def test_an_idle_worker_sleeps_and_a_busy_one_does_not(plane, clock):
    plane.add_worker("bob")
    plane.add_worker("carol")
    plane.add_task("carol")
    await plane.watchdog.tick()
    clock.advance(IDLE - 1)
    assert (await plane.watchdog.tick()).slept == []
    clock.advance(1)
    report = await plane.watchdog.tick()
    assert report.slept == ["bob"]
    assert plane.state.worker("bob").state == "sleeping" and plane.supervisor.stopped == ["bob"]
    assert plane.state.worker("carol").state == "active"
    assert plane.state.events(kind="worker.sleeping", subject="bob")
    clock.advance(IDLE * 3)
    assert (await plane.watchdog.tick()).restarted == []  # asleep on purpose: not "dead"


async def test_messages_and_model_calls_keep_a_worker_awake(plane, clock):
    plane.add_worker("bob")
    await plane.watchdog.tick()
    clock.advance(IDLE * 0.6)
    plane.watchdog.observe(message("admin", "@bob a question", mentions=("@bob:test",), when=clock()))
    clock.advance(IDLE * 0.6)
    assert (await plane.watchdog.tick()).slept == []
    plane.gateway.callers = {"bob"}
    await plane.watchdog.tick()
    clock.advance(IDLE * 0.9)
    assert (await plane.watchdog.tick()).slept == []
    clock.advance(IDLE * 0.2)
    assert (await plane.watchdog.tick()).slept == ["bob"]


async def test_a_mention_wakes_a_sleeping_worker_before_the_post(plane):
    plane.add_worker("bob", state="sleeping", process="stopped")
    await plane.chat.post("!worker-bob", "@bob here is something", mentions=["bob"])
    assert plane.provisioner.started == ["bob"] and plane.state.worker("bob").state == "active"
    assert plane.state.events(kind="worker.woken", subject="bob")[0]["data"]["reason"] == "mention"
    await plane.chat.post("!worker-bob", "@bob again", mentions=["bob"])
    assert plane.provisioner.started == ["bob"]  # awake: not started twice


async def test_a_message_mentioning_a_sleeping_worker_wakes_it(plane):
    plane.add_worker("bob", state="sleeping", process="stopped")
    plane.watchdog.observe(message("admin", "@bob are you there?", mentions=("@bob:test",)))
    await asyncio.gather(*plane.watchdog._background)
    assert plane.state.worker("bob").state == "active" and plane.provisioner.started == ["bob"]


async def test_concurrent_wakes_start_the_worker_once(plane):
    plane.add_worker("bob", state="sleeping", process="stopped")
    results = await asyncio.gather(*(plane.idle.wake("bob", reason="test") for _ in range(3)))
    assert sorted(results) == [False, False, True] and plane.provisioner.started == ["bob"]


async def test_a_sleeping_worker_started_by_someone_else_counts_as_awake(plane):
    plane.add_worker("bob", state="sleeping", process="running")
    await plane.watchdog.tick()
    assert plane.state.worker("bob").state == "active"


# ---------------------------------------------------------------------- state


def test_an_older_state_db_gains_the_stalled_column(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE tasks (id TEXT PRIMARY KEY, project_id TEXT, title TEXT NOT NULL, assignee TEXT NOT NULL,"
                 " model TEXT, spec TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'pending', revision_of TEXT,"
                 " result_status TEXT, result_summary TEXT, dispatch_count INTEGER NOT NULL DEFAULT 0,"
                 " last_progress_at TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
                 " position INTEGER NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO tasks(id, title, assignee, created_at, updated_at) VALUES ('task-001', 't', 'bob', 'x', 'x')")
    conn.commit()
    conn.close()
    state = StateDB(path)
    try:
        assert state.task("task-001").stalled_at is None
        assert state.update_task("task-001", stalled_at="2025-01-01T00:00:00+00:00").stalled_at.startswith("2025")
    finally:
        state.close()


def test_plan_notes_a_stall_but_keeps_the_marker():
    project = Project(id="proj-001", title="Stars")
    stalled = Task(id="task-001", title="Count", assignee="bob", state=TaskState.IN_PROGRESS, stalled_at="2025-01-01")
    done = Task(id="task-002", title="Old", assignee="bob", state=TaskState.DONE, stalled_at="2025-01-01")
    plan = render_plan(project, [stalled, done])
    assert "- [~] task-001 Count" in plan and "stalled since 2025-01-01" in plan
    assert plan.count("stalled since") == 1
