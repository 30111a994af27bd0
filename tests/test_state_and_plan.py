"""State DB and plan validation/rendering (pure logic: no servers)."""
from __future__ import annotations

import pytest

from hiclaw.errors import InvalidInputError, NotFoundError
from hiclaw.manager.plan import parse_plan, render_plan, validate_plan
from hiclaw.models import ResultStatus, TaskState
from hiclaw.state import Schedule, StateDB, Task, Worker


@pytest.fixture
def db(tmp_path):
    state = StateDB(tmp_path / "state.db")
    yield state
    state.close()


def test_workers_projects_tasks_round_trip(db, tmp_path):
    db.upsert_worker(Worker(name="alex", role="product manager", model="smart", skills=["find-skills"]))
    assert db.worker("alex").skills == ["find-skills"]
    project = db.create_project("AI Writing Assistant MVP", "ship an MVP")
    assert project.id == "proj-001" and db.create_project("Second").id == "proj-002"
    db.add_tasks(project.id, [Task(id="task-001", title="PRD", assignee="alex"),
                              Task(id="task-002", title="Arch", assignee="alex", depends_on=["task-001"])])
    assert db.task("task-002").depends_on == ["task-001"]
    db.update_task("task-001", state=TaskState.DONE, result_status=ResultStatus.SUCCESS)
    assert db.task("task-001").state is TaskState.DONE
    assert [t.id for t in db.tasks(project_id=project.id, states=[TaskState.PENDING])] == ["task-002"]
    assert db.next_task_id() == "task-003"
    # A second connection (as the CLI would open it) sees the committed state.
    reader = StateDB(tmp_path / "state.db", readonly=True)
    assert reader.task("task-001").result_status is ResultStatus.SUCCESS
    reader.close()
    with pytest.raises(NotFoundError, match="no worker named 'zed'"):
        db.worker("zed")


def test_add_tasks_is_all_or_nothing(db):
    db.add_tasks(None, [Task(id="task-001", title="a", assignee="x")])
    with pytest.raises(InvalidInputError, match="task-001 already exists"):
        db.add_tasks(None, [Task(id="task-002", title="b", assignee="x"), Task(id="task-001", title="c", assignee="x")])
    assert [t.id for t in db.tasks()] == ["task-001"]


def test_outbox_events_schedules(db):
    assert db.outbox_get("assign:task-001:1") is None
    db.outbox_put("assign:task-001:1", "!room", "$ev")
    assert db.outbox_get("assign:task-001:1") == "$ev"
    db.log_event("task.dispatched", "task-001", assignee="alex")
    assert db.events(kind="task.dispatched")[0]["data"] == {"assignee": "alex"}
    db.upsert_schedule(Schedule(name="metrics", cron="0 9 * * *", timezone="Europe/Paris", message="post metrics",
                                assignee="jordan"))
    assert [s.name for s in db.schedules()] == ["metrics"]
    db.delete_schedule("metrics")
    with pytest.raises(NotFoundError):
        db.schedule("metrics")


DEMO_PLAN = [
    {"title": "Competitive research & PRD", "assignee": "alex"},
    {"title": "Stack & architecture", "assignee": "sam", "depends_on": ["task-001"]},
    {"title": "Core feature", "assignee": "sam", "depends_on": ["task-002"], "model": "smart"},
    {"title": "Product acceptance", "assignee": "alex", "depends_on": ["task-003"]},
    {"title": "Launch assets", "assignee": "taylor", "depends_on": ["task-001"], "model": "cheap"},
]


def test_plan_validation_assigns_ids_and_renders_markers(db):
    tasks = validate_plan(parse_plan(DEMO_PLAN), workers=["alex", "sam", "taylor"], next_id=1)
    assert [t.id for t in tasks] == ["task-001", "task-002", "task-003", "task-004", "task-005"]
    project = db.create_project("AI Writing Assistant MVP")
    db.add_tasks(project.id, tasks)
    db.update_task("task-001", state=TaskState.DONE, result_status=ResultStatus.SUCCESS, result_summary="PRD written")
    db.update_task("task-002", state=TaskState.IN_PROGRESS)
    db.update_task("task-004", state=TaskState.REVISION)
    db.update_task("task-005", state=TaskState.BLOCKED)
    text = render_plan(db.project(project.id), db.tasks(project_id=project.id))
    assert "- [x] task-001 Competitive research & PRD — @alex" in text
    assert "  - result: SUCCESS — PRD written" in text
    assert "- [~] task-002 Stack & architecture — @sam (after task-001)" in text
    assert "- [ ] task-003 Core feature — @sam (after task-002; model: smart)" in text
    assert "- [→] task-004" in text and "- [!] task-005" in text


@pytest.mark.parametrize(
    "plan,workers,message",
    [
        ([], ["a"], "the plan has no tasks"),
        ([{"title": "x", "assignee": "ghost"}], ["a"], "task-001: unknown assignee 'ghost' \\(workers: a\\)"),
        ([{"id": "task-001", "title": "x", "assignee": "a", "depends_on": ["task-001"]}], ["a"], "depends on itself"),
        ([{"title": "x", "assignee": "a", "depends_on": ["task-009"]}], ["a"], "depends on unknown task 'task-009'"),
        ([{"id": "task-001", "title": "x", "assignee": "a", "depends_on": ["task-002"]},
          {"id": "task-002", "title": "y", "assignee": "a", "depends_on": ["task-001"]}], ["a"],
         "dependency cycle: task-001 -> task-002 -> task-001"),
        ([{"id": "task-1", "title": "x", "assignee": "a"}], ["a"], "plan task #1: id: Value error, task ids look like"),
        ([{"id": "task-001", "title": "x", "assignee": "a"}, {"id": "task-001", "title": "y", "assignee": "a"}], ["a"],
         "duplicate task id\\(s\\): task-001"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(plan, workers, message):
    with pytest.raises(InvalidInputError, match=message):
        validate_plan(parse_plan(plan), workers=workers, next_id=1)
