"""Plans replaced and revised, revision tasks and their rounds — the engine's bookkeeping, step by
step, on in-memory channel and storage fakes (the outbox that delivers its messages is the real
one). The same behaviours run on a live team in tests/test_plan_revision_team.py."""
from __future__ import annotations

import pytest

from hiclaw.control.outbox import Outbox
from hiclaw.errors import InvalidInputError
from hiclaw.manager.engine import TaskEngine
from hiclaw.manager.rework import revision_title
from hiclaw.models import TaskState
from hiclaw.state import StateDB, Task, Worker
from hiclaw.storage import layout


class MemoryStorage:
    def __init__(self):
        self.objects = {}

    async def put(self, key, data, *, content_type=None):
        self.objects[layout.validate_key(key)] = bytes(data)

    async def get(self, key):
        return self.objects[key]


class FakeChat:
    """Posts and room memberships, in the order they happened."""

    manager_room = "!manager"

    def __init__(self, state):
        self.posts = []
        self.log = []  # ("room", members) and ("post", room, text)
        self.outbox = Outbox(state, self)

    async def send(self, room_id, text, *, mentions=(), key=None):
        self.posts.append((room_id, text, tuple(mentions)))
        self.log.append(("post", room_id, text))
        return f"$e{len(self.posts)}"

    async def flush(self):
        await self.outbox.deliver_pending()

    async def resolve(self, room):
        kind, _, name = room.partition(":")
        return {"manager": self.manager_room, "worker": f"!worker-{name}", "project": f"!project-{name}"}[kind]

    async def project_room(self, project, members):
        self.log.append(("room", tuple(members)))
        return f"!project-{project.id}"

    async def worker_room(self, worker):
        return f"!worker-{worker}"


class Access:
    async def refresh_access(self, worker):
        pass


@pytest.fixture
def engine(tmp_path):
    state = StateDB(tmp_path / "state.db")
    for name in ("alex", "sam", "taylor", "jordan"):
        state.upsert_worker(Worker(name=name, role=name, model="smart"))

    async def wake(room, text, key, *, origin=None):
        pass

    engine = TaskEngine(state=state, storage=MemoryStorage(), chat=FakeChat(state), access=Access(), wake_manager=wake,
                        max_revision_rounds=2)
    yield engine
    state.close()


PLAN = [
    {"id": "task-001", "title": "Write copy", "assignee": "alex"},
    {"id": "task-002", "title": "Proofread copy", "assignee": "alex", "depends_on": ["task-001"]},
    {"id": "task-003", "title": "Translate copy", "assignee": "sam", "depends_on": ["task-001"]},
]


async def report(engine, task_id, status, summary="ok"):
    task = engine.state.task(task_id)
    text = f"---\ntask: {task_id}\nstatus: {status}\nsummary: {summary}\nattempt: {task.dispatch_count}\n---\nbody\n"
    await engine.storage.put(layout.task_result(task_id), text.encode())
    assert await engine.collect_result(task_id)


def plan_md(engine, project_id):
    return engine.storage.objects[layout.project_plan(project_id)].decode()


def snapshot(engine, project_id):
    """Everything a refused change must leave alone."""
    state = engine.state
    return ([t.model_dump(exclude={"updated_at"}) for t in state.tasks()], state.project(project_id).version,
            plan_md(engine, project_id), [m.key for m in state.pending_messages()], len(engine.chat.posts))


async def test_proposing_again_replaces_the_plan(engine):
    project = await engine.create_project("Launch")
    await engine.propose_plan(project.id, PLAN)
    assert engine.state.project(project.id).version == 1
    assert "(proj-001, version 1)" in engine.chat.posts[-1][1]
    second = [{"title": "Write FAQ", "assignee": "sam"}, {"title": "Publish", "assignee": "alex", "depends_on": ["task-001"]}]
    created = await engine.propose_plan(project.id, second)
    assert [t.id for t in created] == ["task-001", "task-002"]  # the replaced plan's ids are free again
    assert [(t.id, t.title, t.state) for t in engine.state.tasks()] == [
        ("task-001", "Write FAQ", TaskState.PENDING), ("task-002", "Publish", TaskState.PENDING)]
    assert engine.state.project(project.id).version == 2
    plans = [p for p in engine.chat.posts if "Reply to me with *confirm*" in p[1]]
    assert len(plans) == 2 and "version 2 of the plan" in plans[1][1] and "replaces version 1" in plans[1][1]
    text = plan_md(engine, project.id)
    assert "**Version:** 2" in text and "Translate copy" not in text and text.count("- [ ] task-") == 2
    with pytest.raises(InvalidInputError, match="not 1"):
        await engine.confirm_plan(project.id, version=1)  # the admin confirmed an older version
    await engine.confirm_plan(project.id, version=2)
    assert engine.state.task("task-001").state is TaskState.IN_PROGRESS
    with pytest.raises(InvalidInputError, match="revise_plan"):
        await engine.propose_plan(project.id, second)


async def test_an_undelivered_older_plan_message_is_dropped(engine):
    project = await engine.create_project("Launch")
    engine.chat.flush = _no_flush  # the homeserver is away: nothing is delivered
    await engine.propose_plan(project.id, PLAN)
    await engine.propose_plan(project.id, PLAN[:1])
    assert [m.key for m in engine.state.pending_messages()] == [f"plan:{project.id}:v2"]


async def _no_flush():
    return None


async def test_revising_a_running_plan(engine):
    project = await engine.create_project("Launch")
    await engine.propose_plan(project.id, PLAN)
    await engine.confirm_plan(project.id)
    await report(engine, "task-001", "SUCCESS")  # under review: neither pending nor done
    before = snapshot(engine, project.id)
    refusals = [
        ({"remove": ["task-001"]}, "task-001 is under review: only pending tasks"),
        ({"reassign": {"task-002": "nobody"}}, "unknown worker 'nobody'"),
        ({"remove": ["task-002"], "add": [{"title": "x", "assignee": "sam", "depends_on": ["task-002"]}]},
         "task-004 depends on task-002, which would be removed"),
        ({"depends_on": {"task-002": ["task-003"], "task-003": ["task-002"]}}, "dependency cycle"),
        ({"add": [{"id": "task-010", "title": "a", "assignee": "sam", "depends_on": ["task-011"]},
                  {"id": "task-011", "title": "b", "assignee": "sam", "depends_on": ["task-010"]}]}, "cycle"),
        ({"remove": ["task-099"]}, "task-099 is not a task of this project"),
        ({}, "nothing to change"),
    ]
    for change, message in refusals:
        with pytest.raises(InvalidInputError, match=message):
            await engine.revise_plan(project.id, **change)
        assert snapshot(engine, project.id) == before, change  # nothing written

    revision = await engine.revise_plan(project.id, remove=["task-003"], reassign={"task-002": "jordan"},
                                        add=[{"title": "Launch post", "assignee": "sam", "depends_on": ["task-002"]}])
    assert revision.project.version == 2 and [t.id for t in revision.added] == ["task-004"]
    tasks = {t.id: t for t in engine.state.tasks()}
    assert tasks["task-003"].state is TaskState.CANCELLED and tasks["task-002"].assignee == "jordan"
    assert tasks["task-004"].depends_on == ["task-002"] and tasks["task-004"].state is TaskState.PENDING
    room, text, mentions = engine.chat.posts[-1]
    assert room == f"!project-{project.id}" and mentions == ()
    assert text.startswith("Plan of **Launch** changed (version 2): added task-004 Launch post (@sam, after task-002); "
                           "removed task-003; task-002 → @jordan")
    text = plan_md(engine, project.id)
    assert "**Version:** 2" in text and "- [-] task-003" in text and "- [ ] task-002 Proofread copy — @jordan" in text

    # task-002 goes to jordan, who was never in the project room: the room is completed first.
    await engine.accept_task("task-001")
    assert engine.state.task("task-002").state is TaskState.IN_PROGRESS
    joined = next(i for i, e in enumerate(engine.chat.log) if e[0] == "room" and "jordan" in e[1])
    posted = next(i for i, e in enumerate(engine.chat.log) if e[0] == "post" and "@jordan **task-002** is yours" in e[2])
    assert joined < posted
    assert set(engine.chat.log[joined][1]) == {"alex", "sam", "jordan"}  # nobody dropped (alex had task-002)

    with pytest.raises(InvalidInputError, match=r"task-001 is done: only pending tasks .* done work stays as it is"):
        await engine.revise_plan(project.id, reassign={"task-001": "sam"})
    with pytest.raises(InvalidInputError, match="task-002 is in progress"):
        await engine.revise_plan(project.id, remove=["task-002"])
    # The last pending task removed, the project is done with its last acceptance.
    await report(engine, "task-002", "SUCCESS")
    await engine.revise_plan(project.id, remove=["task-004"])
    await engine.accept_task("task-002")
    assert engine.state.project(project.id).state == "done"


async def test_revising_a_plan_awaiting_confirmation_asks_again(engine):
    project = await engine.create_project("Launch")
    await engine.propose_plan(project.id, PLAN)
    await engine.revise_plan(project.id, remove=["task-003"], reassign={"task-002": "taylor"})
    assert [t.id for t in engine.state.tasks()] == ["task-001", "task-002"]  # deleted, not cancelled: never started
    _room, text, mentions = engine.chat.posts[-1]
    assert mentions == ("admin",) and "version 2 of the plan" in text and "removed task-003; task-002 → @taylor" in text
    await engine.confirm_plan(project.id, version=2)
    assert ("room", ("alex", "taylor")) in engine.chat.log


def test_revision_titles():
    original = Task(id="task-004", title="Product acceptance", assignee="alex")
    assert revision_title(original, "Add model-selection guidance. Users cannot tell.") == \
        "Fix: add model-selection guidance"
    assert revision_title(original, "1. API docs are missing\n2. and more") == "Fix: API docs are missing"
    assert revision_title(original, "   ") == "Fix: Product acceptance"
    long = revision_title(original, "word " * 40)
    assert len(long) <= 80 and long.endswith("…")


async def test_revisions_carry_title_spec_inputs_and_are_capped(engine):
    project = await engine.create_project("PRD")
    await engine.propose_plan(project.id, [{"title": "Write the PRD", "assignee": "alex"},
                                           {"title": "Review the PRD", "assignee": "sam", "depends_on": ["task-001"]}])
    await engine.confirm_plan(project.id)
    await report(engine, "task-001", "SUCCESS")
    await engine.accept_task("task-001")
    await report(engine, "task-002", "REVISION_NEEDED", "no pricing")
    fix = await engine.request_revision("task-002", "The PRD has no pricing: add three tiers.", assignee="jordan",
                                        title="Add a pricing section")
    assert (fix.id, fix.title, fix.assignee, fix.revision_of) == ("task-003", "Add a pricing section", "jordan", "task-002")
    assert fix.spec == "The PRD has no pricing: add three tiers." and fix.depends_on == ["task-001"]
    spec = engine.storage.objects[layout.task_spec("task-003")].decode()
    assert "# task-003: Add a pricing section" in spec and "add three tiers" in spec
    assert "This revises **task-002** (Review the PRD)" in spec
    assert "- `shared/tasks/task-002/result.md`\n- `shared/tasks/task-001/result.md`" in spec  # rejected first
    await report(engine, "task-003", "SUCCESS")
    await engine.accept_task("task-003")
    recheck = [p[1] for p in engine.chat.posts if "**task-002** is yours" in p[1]][-1]
    assert "(re-check)" in recheck and "Inputs: `shared/tasks/task-003/result.md`" in recheck
    assert "task-001/result.md" not in recheck
    spec = engine.storage.objects[layout.task_spec("task-002")].decode()
    assert "Re-check after the revision **task-003** (Add a pricing section)" in spec

    await report(engine, "task-002", "REVISION_NEEDED", "tiers unclear")
    second = await engine.request_revision("task-002", "Name the tiers.")  # default title, same worker
    assert second.title == "Fix: name the tiers" and second.assignee == "sam" and second.depends_on == ["task-003"]
    await report(engine, second.id, "SUCCESS")
    await engine.accept_task(second.id)
    await report(engine, "task-002", "REVISION_NEEDED", "still unclear")
    posts = len(engine.chat.posts)
    blocked = await engine.request_revision("task-002", "Again.")  # a third round: over the cap of 2
    assert blocked.id == "task-002" and blocked.state is TaskState.BLOCKED
    assert [t.id for t in engine.state.tasks()] == ["task-001", "task-002", "task-003", "task-004"]
    (room, text, mentions), = engine.chat.posts[posts:]
    assert room == "!manager" and mentions == ("admin",) and "\n" not in text
    assert "**task-002** (Review the PRD) is blocked" in text and "2 revision rounds" in text
    assert "- [!] task-002" in plan_md(engine, project.id)


async def test_an_adhoc_task_is_revised_and_rechecked_in_the_worker_room(engine):
    task = await engine.assign_adhoc("taylor", "Three tweets")
    await report(engine, task.id, "SUCCESS")
    fix = await engine.request_revision(task.id, "Shorter, please.")
    assert engine.state.task(fix.id).state is TaskState.IN_PROGRESS
    assert engine.chat.posts[-1][0] == "!worker-taylor"
    await report(engine, fix.id, "SUCCESS")
    await engine.accept_task(fix.id)
    assert engine.state.task(task.id).state is TaskState.IN_PROGRESS and engine.state.task(task.id).dispatch_count == 2


async def test_reconcile_dispatches_an_adhoc_task_a_crash_left_pending(engine):
    """A revision (or re-check) of a task outside any project recorded, then a crash before its post."""
    engine.state.add_tasks(None, [Task(id="task-001", title="Fix: shorter tweets", assignee="taylor")])
    await engine.reconcile()
    assert engine.state.task("task-001").state is TaskState.IN_PROGRESS
    assert engine.chat.posts[-1][0] == "!worker-taylor" and "**task-001** is yours" in engine.chat.posts[-1][1]
    await engine.reconcile()
    assert len([p for p in engine.chat.posts if "is yours" in p[1]]) == 1
