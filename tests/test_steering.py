"""Steering projects — pause, resume, cancel, complete early, conflict-safe writes and the history
of plan versions — the engine's bookkeeping step by step, on the in-memory fakes of
tests/test_plan_revisions.py (the outbox delivering its messages is the real one). The same
behaviours run on a live team in tests/test_steering_team.py."""
from __future__ import annotations

import pytest
from test_plan_revisions import PLAN, engine, plan_md, report, snapshot  # noqa: F401 - engine is a fixture

from hiclaw.errors import InvalidInputError
from hiclaw.manager.origin import ADMIN, Origin, OriginRefused, turn_origin
from hiclaw.manager.steer import project_history
from hiclaw.models import ProjectState, TaskState
from hiclaw.state import StateDB
from hiclaw.storage import layout


async def running(engine, plan=PLAN):  # noqa: F811 - the fixture's name
    project = await engine.create_project("Launch")
    await engine.propose_plan(project.id, plan)
    await engine.confirm_plan(project.id)
    return engine.state.project(project.id)


def states(engine):  # noqa: F811
    return {t.id: t.state for t in engine.state.tasks()}


async def test_paused_dispatches_nothing_until_resumed(engine):  # noqa: F811
    project = await running(engine)
    assert states(engine)["task-001"] is TaskState.IN_PROGRESS
    paused = await engine.pause_project(project.id, expected_version=1, reason="legal review")
    assert paused.state == ProjectState.PAUSED and paused.version == 1  # a state change, not a new plan
    room, text, _ = engine.chat.posts[-1]
    assert room == f"!project-{project.id}" and "is paused by admin: legal review" in text
    assert "**State:** paused" in plan_md(engine, project.id)
    assert (await engine.pause_project(project.id)).state == ProjectState.PAUSED  # idempotent
    assert len(engine.state.events(kind="project.paused")) == 1

    # The task under way finishes and is accepted; its dependants wait.
    await report(engine, "task-001", "SUCCESS")
    await engine.accept_task("task-001")
    assert states(engine) == {"task-001": TaskState.DONE, "task-002": TaskState.PENDING,
                              "task-003": TaskState.PENDING}
    assert await engine.dispatch_ready(project.id) == [] and await engine.release_held("alex") == []
    await engine.reconcile()
    assert states(engine)["task-002"] is TaskState.PENDING and not [p for p in engine.chat.posts
                                                                   if "**task-002** is yours" in p[1]]

    resumed = await engine.resume_project(project.id)
    assert resumed.state == ProjectState.RUNNING
    assert states(engine)["task-002"] is TaskState.IN_PROGRESS and states(engine)["task-003"] is TaskState.IN_PROGRESS
    await engine.resume_project(project.id)  # idempotent: nothing posted twice
    assert len([p for p in engine.chat.posts if "**task-002** is yours" in p[1]]) == 1


async def test_a_paused_project_finishes_only_when_resumed(engine):  # noqa: F811
    project = await running(engine, PLAN[:1])
    await engine.pause_project(project.id)
    await report(engine, "task-001", "SUCCESS")
    await engine.accept_task("task-001")
    assert engine.state.project(project.id).state == ProjectState.PAUSED
    await engine.resume_project(project.id)
    assert engine.state.project(project.id).state == ProjectState.DONE


async def test_a_paused_plan_is_revised_in_place(engine):  # noqa: F811
    project = await running(engine)
    await engine.pause_project(project.id)
    revision = await engine.revise_plan(project.id, reassign={"task-003": "jordan"}, expected_version=1)
    assert revision.project.state == ProjectState.PAUSED and revision.project.version == 2
    with pytest.raises(InvalidInputError, match="revise_plan"):
        await engine.propose_plan(project.id, PLAN)


async def test_a_stale_version_is_refused_with_nothing_written(engine):  # noqa: F811
    project = await running(engine)
    await engine.revise_plan(project.id, reassign={"task-003": "jordan"})  # now version 2
    before, events = snapshot(engine, project.id), len(engine.state.events())
    line = (f"{project.id}'s plan is version 2, not 1 (the version you saw): nothing was changed — look at version 2 "
            f"(`hiclaw project show {project.id}`), then retry with version 2 if it still makes sense")
    for change in (engine.pause_project, engine.cancel_project, engine.complete_project):
        with pytest.raises(InvalidInputError) as refused:
            await change(project.id, expected_version=1)
        assert str(refused.value) == line
    with pytest.raises(InvalidInputError, match="is version 2, not 1"):
        await engine.revise_plan(project.id, remove=["task-003"], expected_version=1)
    assert snapshot(engine, project.id) == before and len(engine.state.events()) == events
    assert len(engine.state.plan_versions(project.id)) == 2


async def test_cancel_a_project_tells_the_worker_under_way(engine):  # noqa: F811
    project = await running(engine)
    await report(engine, "task-001", "SUCCESS")
    await engine.accept_task("task-001")  # task-002 (alex) and task-003 (sam) under way
    await report(engine, "task-003", "SUCCESS")  # sam's waits for judgement
    cancelled = await engine.cancel_project(project.id, reason="budget cut")
    assert cancelled.state == ProjectState.CANCELLED
    assert states(engine) == {"task-001": TaskState.DONE, "task-002": TaskState.CANCELLED,
                              "task-003": TaskState.CANCELLED}
    stops = [p for p in engine.chat.posts if "stop working on" in p[1]]
    assert [(room, mentions) for room, _t, mentions in stops] == [(f"!project-{project.id}", ("alex",))]
    assert "@alex stop working on **task-002** (Proofread copy): project **Launch** was cancelled" in stops[0][1]
    notice = engine.chat.posts[-1][1]
    assert "was cancelled by admin: budget cut. 1 of 3 tasks done; cancelled: task-002, task-003" in notice
    assert "**State:** cancelled" in plan_md(engine, project.id) and "- [-] task-002" in plan_md(engine, project.id)
    with pytest.raises(InvalidInputError, match="task-003 is cancelled — there is nothing to judge"):
        await engine.accept_task("task-003")  # its review turn, queued before the cancellation
    with pytest.raises(InvalidInputError, match="is cancelled: it cannot be paused"):
        await engine.pause_project(project.id)
    await engine.storage.put(layout.task_result("task-002"), b"---\nstatus: SUCCESS\nattempt: 1\n---\nlate\n")
    assert not await engine.collect_result("task-002")  # a late report changes nothing
    assert states(engine)["task-002"] is TaskState.CANCELLED


async def test_cancel_a_project_before_it_started(engine):  # noqa: F811
    project = await engine.create_project("Launch")
    engine.chat.flush = _no_flush  # the plan message is not delivered yet
    await engine.propose_plan(project.id, PLAN)
    await engine.cancel_project(project.id)
    assert [m.key for m in engine.state.pending_messages()] == [f"project.cancelled:{project.id}:1"]  # no plan to confirm
    assert set(states(engine).values()) == {TaskState.CANCELLED}


async def _no_flush():
    return None


async def test_complete_early_cancels_the_rest_and_wakes_the_manager(engine):  # noqa: F811
    woken = []

    async def wake(room, text, key, *, origin=None):
        woken.append((room, text, key))

    engine.wake_manager = wake
    project = await running(engine)
    await report(engine, "task-001", "SUCCESS")
    await engine.accept_task("task-001")
    woken.clear()
    with pytest.raises(InvalidInputError, match="it has not started"):
        await engine.complete_project((await engine.create_project("Other")).id)
    done = await engine.complete_project(project.id, expected_version=1)
    assert done.state == ProjectState.DONE
    assert states(engine) == {"task-001": TaskState.DONE, "task-002": TaskState.CANCELLED,
                              "task-003": TaskState.CANCELLED}
    assert len([p for p in engine.chat.posts if "stop working on" in p[1]]) == 2
    ((room, text, key),) = woken
    assert room == "!manager" and key == f"project-done:{project.id}"
    assert "was completed early by admin: 1 of 3 tasks done, the rest cancelled." in text
    assert "- [x] task-001 Write copy" in text and "- [-] task-003 Translate copy — @sam: cancelled" in text
    await engine.reconcile()  # the same report, keyed: the inbox keeps it once
    assert woken[-1][2] == key


async def test_history_lists_versions_and_steering(engine, tmp_path):  # noqa: F811
    project = await engine.create_project("Launch")
    await engine.propose_plan(project.id, PLAN)
    await engine.propose_plan(project.id, PLAN[:2])  # replaced before confirmation
    await engine.confirm_plan(project.id, version=2)
    await engine.pause_project(project.id, reason="wait")
    await engine.revise_plan(project.id, add=[{"title": "Publish", "assignee": "sam", "depends_on": ["task-002"]}],
                             by="admin")
    await engine.resume_project(project.id)
    rows = project_history(engine.state, project.id)
    assert [(r["event"], r["version"], r["by"]) for r in rows] == [
        ("plan.proposed", 1, "manager"), ("plan.replaced", 2, "manager"), ("plan.confirmed", 2, "manager"),
        ("project.paused", 2, "admin"), ("plan.revised", 3, "admin"), ("project.resumed", 3, "admin")]
    assert rows[1]["what"] == "2 tasks, replacing version 1" and rows[3]["what"] == "wait"
    assert rows[4]["what"] == "added task-003 Publish (@sam, after task-002)"
    versions = engine.state.plan_versions(project.id)
    assert [t["id"] for t in versions[0].tasks] == ["task-001", "task-002", "task-003"]
    assert "**Version:** 1" in versions[0].plan and "Translate copy" in versions[0].plan
    assert "**Version:** 3" in versions[2].plan and "Publish" in versions[2].plan
    # Kept durably: a read-only look (the CLI's) sees the same.
    readonly = StateDB(engine.state.path, readonly=True)
    try:
        assert [v.version for v in readonly.plan_versions(project.id)] == [1, 2, 3]
    finally:
        readonly.close()


async def test_the_steering_tools_refuse_a_turn_the_admin_did_not_start(engine):  # noqa: F811
    from types import SimpleNamespace

    from hiclaw.manager.plan_tools import plan_tools

    project = await running(engine)
    tools = {t.name: t for t in plan_tools(SimpleNamespace(engine=engine, state=engine.state), lambda t: t.view())}
    for origin in (None, Origin.worker("alex", "its report of task-001"), Origin.code("task engine")):
        with pytest.raises(OriginRefused, match="pause_project refused: this turn was started by"):
            if origin is None:
                await tools["pause_project"].handler({"project_id": project.id})
            else:
                with turn_origin(origin):
                    await tools["pause_project"].handler({"project_id": project.id})
    assert engine.state.project(project.id).state == ProjectState.RUNNING
    with turn_origin(ADMIN):
        answer = await tools["pause_project"].handler({"project_id": project.id, "expected_version": 1})
    assert answer["state"] == "paused" and answer["tasks"]["task-001"] == "in_progress"


def test_a_version_2_database_gets_the_plan_versions_table(tmp_path):
    path = tmp_path / "state.db"
    state = StateDB(path)
    project = state.create_project("Old")
    with state.transaction() as conn:  # what the previous version left: no plan_versions
        conn.execute("DROP TABLE plan_versions")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    state.close()
    readonly = StateDB(path, readonly=True)  # a CLI look before the control plane upgraded it
    try:
        assert readonly.plan_versions(project.id) == [] and project_history(readonly, project.id) == []
    finally:
        readonly.close()
    state = StateDB(path)
    assert state.get_meta("schema_version") == "3" and state.plan_versions(project.id) == []
    state.close()


async def test_the_admin_confirms_a_plan_outside_chat_and_the_manager_is_told_once(engine):  # noqa: F811
    project = await engine.create_project("Launch")
    await engine.propose_plan(project.id, PLAN)
    before = len(engine.chat.posts)
    with pytest.raises(InvalidInputError, match="version 1, not 2"):
        await engine.confirm_project(project.id, expected_version=2)
    assert engine.state.project(project.id).state == ProjectState.AWAITING_CONFIRMATION
    assert len(engine.chat.posts) == before and states(engine)["task-001"] is TaskState.PENDING

    confirmed = await engine.confirm_project(project.id, expected_version=1, reason="from the console")
    assert confirmed.state == ProjectState.RUNNING and states(engine)["task-001"] is TaskState.IN_PROGRESS
    told = [p for p in engine.chat.posts if "outside chat" in p[1]]
    assert told == [("!manager", f"The admin confirmed {project.id}'s plan (version 1) outside chat (from the "
                                 "console); it has started.", ())]
    assert [e["data"]["by"] for e in engine.state.events(kind="plan.confirmed", subject=project.id)] == ["admin"]
    # Again (a second click, or the CLI after the console): a no-op, nothing posted twice.
    assert (await engine.confirm_project(project.id, expected_version=1)).state == ProjectState.RUNNING
    assert len([p for p in engine.chat.posts if "outside chat" in p[1]]) == 1
    assert len(engine.state.events(kind="plan.confirmed", subject=project.id)) == 1
