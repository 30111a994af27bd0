"""Who owns each waiting state, check by check, with a controllable clock: reviews nobody judges,
plans waiting for the admin, blocked tasks, the heartbeat's cap on questions, and the Manager's
failed judgement turns retried with back-off (durably), then reported.

The state DB, the storage and the outbox are real; chat, supervisor, provisioner, gateway and the
Manager are the small fakes of test_watchdog_logic.py (plus an outbox-backed chat). The same
behaviours run on a live team in test_ownership.py.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from test_watchdog_logic import INTERVAL, Clock, FakeChat, FakePlane, touch

from hiclaw.agent.client import GatewayError, ModelReply
from hiclaw.control.outbox import Outbox
from hiclaw.control.turns import MAX_ATTEMPTS, ManagerTurns, TurnProbe
from hiclaw.control.watchdog import MAX_ASKS
from hiclaw.manager.origin import Origin
from hiclaw.manager.plan import render_plan
from hiclaw.models import ResultStatus, TaskState
from hiclaw.storage import layout


class OutboxChat(FakeChat):
    """FakeChat that also delivers what is recorded with state changes (the transactional outbox)."""

    def __init__(self, plane: Any) -> None:
        super().__init__(plane)
        self.outbox = Outbox(plane.state, self)

    async def post(self, room_id: str, text: str, *, mentions: Any = (), key: str | None = None) -> str:
        event_id = await super().post(room_id, text, mentions=mentions, key=key)
        if key is not None:
            self.plane.state.outbox_put(key, room_id, event_id)  # as ControlChat does: sent keys are recorded
        return event_id

    send = post

    async def flush(self) -> None:
        await self.outbox.deliver_pending()

    async def resolve(self, room: str) -> str:
        return self.manager_room if room == "manager" else room


class Plane(FakePlane):
    def __init__(self, tmp_path: Any, clock: Clock) -> None:
        super().__init__(tmp_path, clock)
        self.chat = OutboxChat(self)
        self.requeued: list[str] = []
        self.engine = SimpleNamespace(render=self._render, wake_for_review=self._wake_for_review)
        self.watchdog = self.new_watchdog(clock)  # on this plane's chat and engine

    async def _wake_for_review(self, task: Any, *, again: bool = False) -> None:
        key = f"wake:review:{task.id}:{task.dispatch_count}" + (":again" if again else "")
        if self.state.inbox_add(key, "wake", {"key": key.removeprefix("wake:"), "room_id": "!room", "text": "judge"}):
            self.requeued.append(key)

    def reported(self, assignee: str = "bob") -> str:
        """A task of ``assignee`` reported and waiting for judgement, its first review turn done."""
        task = self.add_task(assignee, self.state.create_project("Stars").id)
        self.state.update_task(task, state=TaskState.REVIEW, result_status=ResultStatus.SUCCESS, result_summary="42")
        self.state.log_event("task.reported", task, status="SUCCESS")
        self.state.inbox_add(f"wake:review:{task}:1", "wake", {"key": f"review:{task}:1"})
        self.finish_turns()
        return task

    def finish_turns(self) -> None:
        for item in self.state.inbox_pending():
            self.state.inbox_done(item["id"])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def plane(tmp_path: Any, clock: Clock) -> Any:
    plane = Plane(tmp_path, clock)
    plane.watchdog.register()
    plane.watchdog.started_at = clock()
    yield plane
    plane.state.close()


def posts(plane: Plane, prefix: str) -> list[dict[str, Any]]:
    return [p for p in plane.chat.posts if (p["key"] or "").startswith(prefix)]


# ---------------------------------------------------------------------- review


async def test_an_unjudged_review_is_queued_again_after_one_interval_then_the_admin_is_told(plane, clock):
    task = plane.reported()
    watchdog = plane.watchdog
    clock.advance(INTERVAL * 0.9)
    assert (await watchdog.tick()).requeued == []
    clock.advance(INTERVAL * 0.2)
    report = await watchdog.tick()
    assert report.requeued == [task] and plane.requeued == [f"wake:review:{task}:1:again"]
    clock.advance(INTERVAL * 0.5)
    assert (await watchdog.tick()).review_alerted == []  # the second judgement turn is queued: it owns it
    plane.finish_turns()  # ... and it ran, without a judgement
    clock.advance(INTERVAL * 0.6)
    report = await watchdog.tick()
    assert report.review_alerted == [task]
    (alert,) = posts(plane, "review-stuck:")
    assert alert["key"] == f"review-stuck:{task}:1" and alert["mentions"] == ["admin"]
    assert alert["room"] == FakeChat.manager_room and f"**{task}**" in alert["text"] and "asked twice" in alert["text"]
    current = plane.state.task(task)
    plan = render_plan(plane.state.project(current.project_id), plane.state.tasks(project_id=current.project_id))
    assert "  - stuck: reported" in plan and "has not judged it" in plan
    for _ in range(3):  # nothing more: asked twice, admin told once
        clock.advance(INTERVAL)
        report = await watchdog.tick()
        assert not (report.requeued or report.review_alerted)
    assert len(plane.requeued) == 1 and len(posts(plane, "review-stuck:")) == 1
    # Judged at last: the note is stale for the new state, and plan.md no longer shows it.
    plane.state.update_task(task, state=TaskState.DONE)
    assert "stuck" not in render_plan(plane.state.project(current.project_id), plane.state.tasks(project_id=current.project_id))


async def test_a_judgement_turn_still_running_after_two_intervals_is_told_once(plane, clock):
    """A Manager whose model hangs or keeps failing inside one turn: the turn owns the review, but
    not silently for ever — two intervals after the report the admin hears of it, once."""
    task = plane.reported()
    plane.state.inbox_add(f"wake:review:{task}:1:again", "wake", {"key": f"review:{task}:1:again"})  # running
    clock.advance(INTERVAL * 1.9)
    assert (await plane.watchdog.tick()).review_alerted == []
    clock.advance(INTERVAL * 0.2)
    assert (await plane.watchdog.tick()).review_alerted == [task]
    (alert,) = posts(plane, "review-stuck:")
    assert alert["mentions"] == ["admin"] and "has not finished" in alert["text"] and "keep trying" in alert["text"]
    plane.finish_turns()
    for _ in range(3):
        clock.advance(INTERVAL)
        assert (await plane.watchdog.tick()).review_alerted == []
    assert len(posts(plane, "review-stuck:")) == 1


async def test_a_review_whose_turn_failed_for_good_is_not_alerted_twice(plane, clock):
    task = plane.reported()
    plane.state.log_event("manager.turn_failed", task, key=f"review:{task}:1", dispatch=1, account="model down")
    clock.advance(INTERVAL * 5)
    report = await plane.watchdog.tick()
    assert not (report.requeued or report.review_alerted) and plane.requeued == []


async def test_a_restarted_watchdog_goes_on_from_the_event_log(plane, clock):
    task = plane.reported()
    clock.advance(INTERVAL * 1.1)
    await plane.watchdog.tick()
    plane.finish_turns()
    # A new control plane: a new watchdog, the same state.
    plane.watchdog = plane.new_watchdog(clock)
    plane.watchdog.started_at = clock()
    assert (await plane.watchdog.tick()).requeued == []  # not queued again
    clock.advance(INTERVAL * 1.1)
    assert (await plane.watchdog.tick()).review_alerted == [task]
    assert (await plane.watchdog.tick()).review_alerted == []


# ---------------------------------------------------------------------- plans and blocked tasks


async def test_a_plan_awaiting_confirmation_gets_one_reminder(plane, clock):
    project = plane.state.create_project("Moon")
    plane.state.update_project(project.id, state="awaiting_confirmation")
    plane.state.log_event("plan.proposed", project.id, tasks=[])
    clock.advance(INTERVAL * 0.9)
    assert (await plane.watchdog.tick()).reminded == []
    clock.advance(INTERVAL * 0.2)
    assert (await plane.watchdog.tick()).reminded == [project.id]
    (reminder,) = posts(plane, "plan-reminder:")
    assert reminder["key"] == f"plan-reminder:{project.id}:1" and reminder["mentions"] == ["admin"]
    assert "*confirm*" in reminder["text"] and layout.project_plan(project.id) in reminder["text"]
    for _ in range(4):
        clock.advance(INTERVAL)
        assert (await plane.watchdog.tick()).reminded == []
    # A new proposal is a new episode: one more reminder.
    plane.state.log_event("plan.proposed", project.id, tasks=[])
    plane.state.update_project(project.id, state="awaiting_confirmation", version=2)  # as propose_plan does
    clock.advance(INTERVAL * 1.1)
    assert (await plane.watchdog.tick()).reminded == [project.id]
    assert [p["key"] for p in posts(plane, "plan-reminder:")] == [f"plan-reminder:{project.id}:{n}" for n in (1, 2)]


async def test_a_project_left_without_a_plan_is_told_to_the_admin_once(plane, clock):
    """The model said it would plan (or that it did) and never called propose_plan."""
    project = plane.state.create_project("Mars")
    plane.state.log_event("project.created", project.id, title="Mars")
    clock.advance(INTERVAL * 0.9)
    assert (await plane.watchdog.tick()).reminded == []
    plane.state.inbox_add("wake:x", "wake", {"key": "x"})  # a Manager turn may still be on it: wait a bit
    clock.advance(INTERVAL * 0.2)
    assert (await plane.watchdog.tick()).reminded == []
    clock.advance(INTERVAL * 0.5)  # ... but not for ever
    assert (await plane.watchdog.tick()).reminded == [project.id]
    plane.finish_turns()
    (told,) = posts(plane, "plan-missing:")
    assert told["key"] == f"plan-missing:{project.id}" and told["mentions"] == ["admin"]
    assert project.id in told["text"] and "no plan" in told["text"]
    for _ in range(3):
        clock.advance(INTERVAL)
        assert (await plane.watchdog.tick()).reminded == []
    # Once it has a plan, nothing more about it.
    plane.state.update_project(project.id, state="awaiting_confirmation")
    assert len(posts(plane, "plan-missing:")) == 1


async def test_a_blocked_task_is_recalled_to_the_admin_at_most_once_a_day(plane, clock):
    task = plane.add_task("bob")
    plane.state.update_task(task, state=TaskState.BLOCKED, result_summary="no access to the telescope")
    plane.state.log_event("task.blocked", task, summary="no access to the telescope")
    day = 86400.0
    clock.advance(day - 60)
    assert (await plane.watchdog.tick()).reminded == []
    clock.advance(120)
    assert (await plane.watchdog.tick()).reminded == [task]
    for _ in range(8):
        clock.advance(day / 8 - 1)
        await plane.watchdog.tick()
    keys = [p["key"] for p in posts(plane, "blocked-reminder:")]
    assert keys == [f"blocked-reminder:{task}:1:1", f"blocked-reminder:{task}:1:2"]
    assert "no access to the telescope" in posts(plane, "blocked-reminder:")[0]["text"]


async def test_a_paused_project_is_recalled_to_the_admin_at_most_once_a_day(plane, clock):
    project = plane.state.create_project("Mars")
    plane.state.update_project(project.id, state="paused")
    plane.state.log_event("project.paused", project.id, by="admin")
    day = 86400.0
    clock.advance(day - 60)
    assert (await plane.watchdog.tick()).reminded == []
    clock.advance(120)
    assert (await plane.watchdog.tick()).reminded == [project.id]
    for _ in range(8):
        clock.advance(day / 8 - 1)
        await plane.watchdog.tick()
    reminders = posts(plane, "paused-reminder:")
    assert [p["key"] for p in reminders] == [f"paused-reminder:{project.id}:1:1", f"paused-reminder:{project.id}:1:2"]
    assert f"**Mars** ({project.id}) has been paused for 24.0 h; nothing of it starts until you resume it (0 tasks " \
        "waiting)" in reminders[0]["text"]
    assert f"`hiclaw project resume {project.id}`" in reminders[0]["text"] and reminders[0]["mentions"] == ["admin"]
    plane.state.update_project(project.id, state="running")  # resumed: no more reminders
    clock.advance(day * 2)
    assert (await plane.watchdog.tick()).reminded == []


# ---------------------------------------------------------------------- heartbeat questions


async def test_a_worker_is_asked_at_most_a_few_times_per_task(plane, clock):
    plane.add_worker("bob")
    task = plane.add_task("bob")
    for round_ in range(MAX_ASKS + 2):  # each round: asked, then a file — then quiet again
        clock.advance(INTERVAL * 1.1)
        await plane.watchdog.tick()
        clock.advance(1)
        await touch(plane, f"{layout.task_progress_dir(task)}{round_}.md", clock())
        await plane.watchdog.tick()
    assert len(posts(plane, "heartbeat:")) == MAX_ASKS
    clock.advance(INTERVAL * 2.1)  # past the cap: the stall alert still comes
    await plane.watchdog.tick()
    await plane.watchdog.tick()
    assert len(posts(plane, "heartbeat:")) == MAX_ASKS and posts(plane, "stalled:")


# ---------------------------------------------------------------------- failed Manager turns


class FlakyModel:
    """A gateway client whose first ``failures`` calls fail for good."""

    base_url = "http://flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def chat(self, **kwargs: Any) -> ModelReply:
        self.calls += 1
        if self.calls <= self.failures:
            raise GatewayError(500, "the provider is down", attempts=5)
        return ModelReply(content="accepted")

    def wake(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class FakeManager:
    """Like ManagerAgent: one model call per turn, then it posts the reply (or its account)."""

    def __init__(self, plane: Any, probe: TurnProbe) -> None:
        self.plane = plane
        self.probe = probe
        self.turns: list[str] = []

    async def wake(self, room_id: str, text: str, *, key: str, origin: Origin) -> str:
        self.turns.append(key)
        try:
            reply = (await self.probe.chat(model="smart", messages=[])).content or ""
        except GatewayError as exc:
            reply = f"I could not finish this turn: the model call failed ({exc.detail})."
        if not self.plane.turns.swallow(key, reply):
            await self.plane.chat.post(room_id, reply, key=key)
        return reply


def turns_for(plane: Plane, model: FlakyModel, clock: Clock) -> ManagerTurns:
    probe = TurnProbe(model)  # type: ignore[arg-type]
    plane.manager = FakeManager(plane, probe)

    async def handle(message: Any) -> None:
        raise AssertionError("only judgement turns are queued here")

    plane.turns = ManagerTurns(state=plane.state, chat=plane.chat, engine=plane.engine, probe=probe,
                               wakeup=asyncio.Event(), handle=handle, wake=plane.manager.wake, interval=INTERVAL,
                               admin=plane.admin, clock=clock)
    return plane.turns


async def run_due(turns: ManagerTurns) -> None:
    for item in turns.state.inbox_pending():
        if turns._due(item) <= turns.clock():
            await turns._one(item)


async def test_a_failed_judgement_is_retried_with_back_off_then_succeeds(plane, clock):
    task = plane.reported()
    turns = turns_for(plane, FlakyModel(failures=2), clock)
    plane.state.inbox_add(f"wake:review:{task}:1:again", "wake", {"key": f"review:{task}:1:again", "room_id": "!p",
                                                                   "text": "judge"})
    await run_due(turns)
    (item,) = plane.state.inbox_pending()
    assert item["attempts"] == 1 and item["next_attempt_at"] == pytest.approx(clock() + INTERVAL / 8)
    await run_due(turns)
    assert len(plane.manager.turns) == 1  # not due yet
    clock.advance(INTERVAL / 8)
    await run_due(turns)
    (item,) = plane.state.inbox_pending()
    assert item["attempts"] == 2 and item["next_attempt_at"] == pytest.approx(clock() + INTERVAL / 4)
    clock.advance(INTERVAL / 4)
    await run_due(turns)
    assert plane.state.inbox_pending() == [] and plane.manager.turns == [f"manager-review:{task}:1:again"] * 3
    # The failed attempts posted nothing; the answer once.
    assert [p["text"] for p in plane.chat.posts] == ["accepted"]


async def test_a_judgement_that_keeps_failing_is_reported_once_and_the_task_shows_it(plane, clock):
    task = plane.reported()
    turns = turns_for(plane, FlakyModel(failures=99), clock)
    plane.state.inbox_add("wake:review:again", "wake", {"key": f"review:{task}:1:again", "room_id": "!p", "text": "j"})
    for _ in range(MAX_ATTEMPTS):
        await run_due(turns)
        clock.advance(INTERVAL)
    await run_due(turns)
    assert len(plane.manager.turns) == MAX_ATTEMPTS and plane.state.inbox_pending() == []
    (alert,) = plane.chat.posts
    assert alert["key"] == f"turn-failed:review:{task}:1:again" and alert["mentions"] == ["admin"]
    assert alert["text"].startswith(f"@admin I could not judge the report of {task}: {MAX_ATTEMPTS} attempts failed")
    assert "the provider is down" in alert["text"] and "\n" not in alert["text"]
    current = plane.state.task(task)
    plan = render_plan(plane.state.project(current.project_id), [current])
    assert f"stuck: the Manager could not judge the report of {task}" in plan
    assert plane.state.inbox_status("wake:review:again") == "failed"


async def test_a_failed_turn_no_longer_needed_is_dropped(plane, clock):
    task = plane.reported()
    turns = turns_for(plane, FlakyModel(failures=99), clock)
    plane.state.inbox_add("wake:q", "wake", {"key": f"review:{task}:1:again", "room_id": "!p", "text": "j"})
    plane.state.update_task(task, state=TaskState.DONE)  # the admin had it accepted meanwhile
    await run_due(turns)
    assert plane.state.inbox_pending() == [] and plane.chat.posts == []
