"""The task engine's bookkeeping, step by step through the demo's project flow.

Channel, storage and provisioner are small in-memory fakes here because only the engine's own
logic is under test (the outbox that delivers the engine's messages is the real one); the same
flow runs on the real components in the team integration test and in `hiclaw demo`.
"""
from __future__ import annotations

import pytest

from hiclaw.control.outbox import Outbox
from hiclaw.errors import InvalidInputError
from hiclaw.manager.engine import TaskEngine, parse_result
from hiclaw.models import TaskState
from hiclaw.state import StateDB, Worker
from hiclaw.storage import layout


class MemoryStorage:
    def __init__(self):
        self.objects = {}

    async def put(self, key, data, *, content_type=None):
        self.objects[layout.validate_key(key)] = bytes(data)

    async def get(self, key):
        return self.objects[key]


class FakeChat:
    manager_room = "!manager"

    def __init__(self, state):
        self.posts = []
        self.keys = set()
        self.outbox = Outbox(state, self)

    async def post(self, room_id, text, *, mentions=(), key=None):
        if key in self.keys:
            return "dup"
        self.keys.add(key)
        self.posts.append((room_id, text, tuple(mentions)))
        return f"$e{len(self.posts)}"

    send = post

    async def flush(self):
        await self.outbox.deliver_pending()

    async def resolve(self, room):
        kind, _, name = room.partition(":")
        return {"manager": self.manager_room, "worker": f"!worker-{name}", "project": f"!project-{name}"}[kind]

    async def project_room(self, project, members):
        return f"!project-{project.id}"

    async def worker_room(self, worker):
        return f"!worker-{worker}"


class Access:
    def __init__(self):
        self.calls = []

    async def refresh_access(self, worker):
        self.calls.append(worker)


@pytest.fixture
def team(tmp_path):
    state = StateDB(tmp_path / "state.db")
    for name in ("alex", "sam", "taylor"):
        state.upsert_worker(Worker(name=name, role=name, model="smart"))
    wakes = []

    async def wake(room, text, key, *, origin=None):
        if key not in {w[2] for w in wakes}:
            wakes.append((room, text, key, origin))

    engine = TaskEngine(state=state, storage=MemoryStorage(), chat=FakeChat(state), access=Access(), wake_manager=wake)
    engine.wakes = wakes
    yield engine
    state.close()


PLAN = [
    {"title": "Competitive research & PRD", "assignee": "alex"},
    {"title": "Stack & architecture", "assignee": "sam", "depends_on": ["task-001"]},
    {"title": "Core feature", "assignee": "sam", "depends_on": ["task-002"]},
    {"title": "Product acceptance", "assignee": "alex", "depends_on": ["task-003"]},
    {"title": "Launch assets", "assignee": "taylor", "depends_on": ["task-001"], "model": "cheap"},
]


async def report(engine, task_id, status, summary="ok"):
    task = engine.state.task(task_id)
    text = f"---\ntask: {task_id}\nstatus: {status}\nsummary: {summary}\nattempt: {task.dispatch_count}\n---\nbody\n"
    await engine.storage.put(layout.task_result(task_id), text.encode())
    return await engine.collect_result(task_id)


def states(engine):
    return {t.id: t.state.value for t in engine.state.tasks()}


def plan_markers(engine, project_id):
    text = engine.storage.objects[layout.project_plan(project_id)].decode()
    return {line.split()[2]: line.split()[1] for line in text.splitlines() if line.startswith("- [")}


async def test_full_project_flow_with_revision(team):
    engine = team
    project = await engine.create_project("AI Writing Assistant MVP", "MVP")
    await engine.propose_plan(project.id, PLAN)
    room, text, mentions = engine.chat.posts[-1]
    assert room == "!manager" and mentions == ("admin",) and "confirm" in text and "task-005" in text
    assert engine.state.project(project.id).state == "awaiting_confirmation"
    with pytest.raises(InvalidInputError, match="no result to judge"):
        await engine.accept_task("task-001")

    await engine.confirm_plan(project.id)
    assert states(engine)["task-001"] == "in_progress" and states(engine)["task-002"] == "pending"
    assign = [p for p in engine.chat.posts if "**task-001** is yours" in p[1]]
    assert assign[0][0] == f"!project-{project.id}" and assign[0][2] == ("alex",)
    spec = engine.storage.objects[layout.task_spec("task-001")].decode()
    assert spec.startswith("---\ntask: task-001") and "report_result" in spec

    assert await report(engine, "task-001", "SUCCESS", "PRD done")
    assert engine.wakes[-1][1].startswith("alex reported **task-001**")
    origin = engine.wakes[-1][3]
    assert (origin.kind, origin.name) == ("worker", "alex") and not origin.is_admin  # a review is not the admin's turn
    assert states(engine)["task-001"] == "review"
    await engine.accept_task("task-001")
    assert states(engine)["task-002"] == "in_progress" and states(engine)["task-005"] == "in_progress"
    assert "shared/tasks/task-001/result.md" in engine.storage.objects[layout.task_spec("task-002")].decode()

    for task_id in ("task-002", "task-005", "task-003"):
        await report(engine, task_id, "SUCCESS")
        await engine.accept_task(task_id)
    assert states(engine)["task-004"] == "in_progress"

    await report(engine, "task-004", "REVISION_NEEDED", "no model-selection guidance")
    revision = await engine.request_revision("task-004", "add model-selection guidance", assignee="sam")
    assert revision.id == "task-006" and revision.revision_of == "task-004"
    assert states(engine)["task-004"] == "revision" and states(engine)["task-006"] == "in_progress"
    assert plan_markers(engine, project.id)["task-004"] == "[→]"

    await report(engine, "task-006", "SUCCESS")
    await engine.accept_task("task-006")
    assert states(engine)["task-004"] == "in_progress"  # re-checked by alex
    assert engine.state.task("task-004").dispatch_count == 2
    assert any("**task-004** is yours: Product acceptance (re-check)" in p[1] for p in engine.chat.posts)
    # An old attempt's result does not count for the re-check.
    assert not await engine.collect_result("task-004")
    await report(engine, "task-004", "SUCCESS")
    await engine.accept_task("task-004")

    assert set(states(engine).values()) == {"done"}
    assert engine.state.project(project.id).state == "done"
    assert set(plan_markers(engine, project.id).values()) == {"[x]"}
    assert "is complete" in engine.wakes[-1][1] and engine.wakes[-1][3].kind == "code"
    assigned = [p[1].split("**")[1] for p in engine.chat.posts if "is yours" in p[1]]
    assert sorted(assigned) == sorted(["task-001", "task-002", "task-003", "task-004", "task-005", "task-006", "task-004"])


async def test_blocked_result_is_escalated_to_admin(team):
    engine = team
    project = await engine.create_project("P")
    await engine.propose_plan(project.id, PLAN[:1])
    await engine.confirm_plan(project.id)
    await report(engine, "task-001", "BLOCKED", "no access to competitor data")
    room, text, mentions = engine.chat.posts[-1]
    assert room == "!manager" and mentions == ("admin",) and "blocked" in text
    assert states(engine)["task-001"] == "blocked"
    assert plan_markers(engine, project.id)["task-001"] == "[!]"


async def test_yolo_starts_without_confirmation_and_worker_runs_one_task_at_a_time(team):
    engine = team
    engine.yolo = True
    project = await engine.create_project("P")
    await engine.propose_plan(project.id, [{"title": "a", "assignee": "sam"}, {"title": "b", "assignee": "sam"}])
    assert engine.state.project(project.id).state == "running"
    assert states(engine) == {"task-001": "in_progress", "task-002": "pending"}


async def test_adhoc_task_goes_to_the_worker_room(team):
    task = await team.assign_adhoc("taylor", "Write a tweet", "about the launch", model="cheap")
    room, _text, mentions = team.chat.posts[-1]
    assert room == "!worker-taylor" and mentions == ("taylor",) and task.state is TaskState.IN_PROGRESS


def test_parse_result():
    meta, body = parse_result("---\nstatus: SUCCESS\nsummary: fine\n---\n# Result\n")
    assert meta == {"status": "SUCCESS", "summary": "fine"} and body == "# Result\n"
    assert parse_result("no front matter") == ({}, "no front matter")


async def test_reconcile_after_a_crash_redoes_only_what_was_lost(team):
    engine = team
    project = await engine.create_project("P")
    await engine.propose_plan(project.id, PLAN)
    await engine.confirm_plan(project.id)
    await report(engine, "task-001", "SUCCESS")
    posts, wakes = len(engine.chat.posts), len(engine.wakes)
    await engine.reconcile()  # nothing was lost: nothing happens again
    assert (len(engine.chat.posts), len(engine.wakes)) == (posts, wakes)
    # A crash right after task-001 was marked done, before the next tasks were dispatched:
    engine.state.update_task("task-001", state=TaskState.DONE)
    await engine.reconcile()
    assert states(engine)["task-002"] == "in_progress" and states(engine)["task-005"] == "in_progress"
    again = len(engine.chat.posts)
    await engine.reconcile()
    assert len(engine.chat.posts) == again


async def test_concurrent_dispatches_never_set_a_reported_task_back_in_progress(team):
    """Reconciliation at boot and an acceptance may dispatch at the same time. The slower one must
    not dispatch a task again — let alone mark it in progress after its worker reported it."""
    import asyncio

    engine = team
    project = await engine.create_project("P", "goal")
    await engine.propose_plan(project.id, PLAN)
    await engine.confirm_plan(project.id)
    assert await report(engine, "task-001", "SUCCESS")
    engine.state.update_task("task-001", state=TaskState.DONE)  # accepted, as a crash left it

    gate = asyncio.Event()
    slow_refresh = engine.access.refresh_access

    async def refresh_access(worker):  # a worker restart that takes a while
        await slow_refresh(worker)
        await gate.wait()
    engine.access.refresh_access = refresh_access

    first = asyncio.create_task(engine.dispatch_ready(project.id))
    second = asyncio.create_task(engine.dispatch_ready(project.id))
    await asyncio.sleep(0)  # both have started (one waits for the other)
    gate.set()
    await first
    assert states(engine)["task-005"] == "in_progress"
    assert await report(engine, "task-005", "SUCCESS")  # taylor is quick
    assert await second == []
    assert states(engine)["task-005"] == "review"
    assert [t.dispatch_count for t in engine.state.tasks() if t.id in ("task-002", "task-005")] == [1, 1]
