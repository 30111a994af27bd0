"""Every waiting state has an owner in code, on a live team (Synapse, gateway + scripted model,
real sandboxes), whatever the model does (issue 15, deliverable 1):

(a) a worker that answers in prose instead of calling report_result — its task still ends, in a
    bounded number of model calls, and the heartbeat does not keep asking; one whose model fails
    reports BLOCKED with the account, and the admin is told;
(b) a worker's question to @manager is answered by a judgement-only Manager turn with the task's
    context, in the room where it was asked — at most three per task, then the admin is told;
(c) a Manager judgement turn whose model fails is retried with back-off and succeeds; failing for
    good it is reported to the admin once — and a control-plane restart in between goes on with
    the attempts instead of losing them;
(d) a review the Manager does not judge is queued again, then the admin is alerted; a plan waiting
    for confirmation gets one reminder.
"""
from __future__ import annotations

import json
import time
from typing import Any

from hiclaw.manager.plan import stuck_note
from hiclaw.models import TaskState
from hiclaw.scripted import parse_scenario
from hiclaw.scripted.server import ScriptedModelServer
from hiclaw.storage import layout
from hiclaw.testing.team import running_team, wait_until

TASK_RE = r"\*\*(?P<task>task-\d+)\*\*"


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"name": tool, "arguments": arguments}


def reporting_worker(summary: str = "done") -> dict[str, Any]:
    return {"rules": [
        {"when": {"contains": "is yours", "regex": TASK_RE},
         "tool_calls": [call("report_result", task_id="{{task}}", status="SUCCESS", summary=summary)]},
        {"when": {"tool_result": "report_result"}, "text": "reported"},
    ], "default": {"text": "ok"}}


ACCEPTING_MANAGER = {"rules": [
    {"when": {"role": "user", "contains": "Judge it", "regex": TASK_RE},
     "tool_calls": [call("accept_task", task_id="{{task}}", note="fine")]},
    {"when": {"tool_result": "accept_task"}, "text": "accepted"},
], "default": {"text": "manager: noted"}}


def prompts(team: Any, agent: str, needle: str) -> list[str]:
    """The user messages ``agent``'s model was sent that contain ``needle`` (whole, not cut)."""
    found = []
    for request in team.model.recent:
        if request["agent"] == agent and request["latest_role"] == "user":
            last = next((m["content"] for m in reversed(request["messages"]) if m["role"] == "user"), "")
            if needle in last:
                found.append(last)
    return found


async def elapsed(seconds: float) -> None:
    """Let the heartbeat run for ``seconds`` (to show that something does NOT happen)."""
    until = time.monotonic() + seconds
    await wait_until(lambda: time.monotonic() >= until, timeout=seconds + 5, what=f"{seconds:.0f}s to pass")


# ---------------------------------------------------------------------- (a) no report_result


PROSE = "I have finished the task, here is the result: there are 42 stars in the picture."

PROSE_SCENARIO = {"agents": {
    "pat": {"rules": [
        {"when": {"contains": "You have not called report_result"}, "text": "As I said: 42 stars."},
        {"when": {"contains": "is yours"}, "text": PROSE},
    ], "default": {"text": "pat: still here"}},
    "una": {"rules": [
        {"when": {"contains": "is yours"}, "error": {"status": 500, "message": "the provider fell over"}},
    ], "default": {"text": "una: ok"}},
    "manager": ACCEPTING_MANAGER,
}}

HEARTBEAT_A = 3.0


async def test_a_worker_that_answers_in_prose_still_finishes_in_bounded_calls(tmp_path):
    async with running_team(tmp_path / "home", PROSE_SCENARIO, heartbeat_seconds=HEARTBEAT_A) as team:
        plane = team.plane
        await plane.provisioner.create_worker("pat", role="astronomer")
        task = await plane.engine.assign_adhoc("pat", "Count the stars", "Count the stars in the picture.")
        await wait_until(lambda: plane.state.task(task.id).state is TaskState.DONE, timeout=90,
                         what="the task to end although pat never called report_result")
        asks = plane.state.events(kind="task.heartbeat_asked", subject=task.id)
        # The assignment turn (prose), one nudge (prose again) — plus one call per heartbeat question, if any came.
        assert team.model_calls("pat") == 2 + len(asks) and len(asks) <= 1
        done = plane.state.task(task.id)
        assert done.result_status.value == "SUCCESS_WITH_NOTES"
        assert "reported by the runtime" in done.result_summary and "42 stars" in done.result_summary
        result = (await plane.storage.get(layout.task_result(task.id))).decode()
        assert "Reported by the worker runtime, not by the model" in result and PROSE in result
        (nudge,) = prompts(team, "pat", "You have not called report_result")
        assert task.id in nudge
        # The report was the usual one (result.md and the @manager mention), judged by the Manager.
        report = await team.wait_for_message(f"**{task.id}** SUCCESS_WITH_NOTES", sender="pat", timeout=30)
        assert team.user_id("manager") in report.mentions
        # The prose went into the result, not into a chat message of its own.
        said = [m.body for m in team.admin.messages if m.sender == team.user_id("pat")]
        assert said == [report.body] if not asks else said[0] == report.body
        # The heartbeat does not ask forever: nothing more for three intervals.
        calls = team.model_calls("pat")
        await elapsed(3 * HEARTBEAT_A)
        assert team.model_calls("pat") == calls
        assert plane.state.events(kind="task.heartbeat_asked", subject=task.id) == asks


async def test_a_worker_whose_model_fails_reports_blocked_with_the_account_and_the_admin_is_told(tmp_path):
    async with running_team(tmp_path / "home", PROSE_SCENARIO) as team:
        plane = team.plane
        await plane.provisioner.create_worker("una", role="astronomer")
        task = await plane.engine.assign_adhoc("una", "Map the moon", "Map it.")
        await wait_until(lambda: plane.state.task(task.id).state is TaskState.BLOCKED, timeout=120,
                         what="una to report BLOCKED on the model's failure")
        blocked = plane.state.task(task.id)
        assert "the model call failed" in blocked.result_summary and "the provider fell over" in blocked.result_summary
        alert = await team.wait_for_message(f"**{task.id}** (Map the moon) is blocked", timeout=30)
        assert team.user_id("admin") in alert.mentions and alert.room_id == plane.chat.manager_room
        # The client's own retries, each through the gateway's retry and fallback: bounded, no nudge.
        assert 1 <= team.model_calls("una") <= 5 * 4
        assert not prompts(team, "una", "You have not called report_result")


# ---------------------------------------------------------------------- (b) questions


QUESTION = "@manager Before I go on with {{task}}: which format should the star list have? I'll wait for your answer."

QUESTION_SCENARIO = {"agents": {
    "alice": {"rules": [
        {"when": {"contains": "Use a Markdown table", "regex": TASK_RE},
         "tool_calls": [call("report_result", task_id="{{task}}", status="SUCCESS", summary="a table of stars")]},
        {"when": {"tool_result": "report_result"}, "text": "reported"},
        {"when": {"contains": "is yours", "regex": TASK_RE}, "text": QUESTION},
    ], "default": {"text": "alice: ok"}},
    # bob never stops asking.
    "bob": {"rules": [{"when": {"regex": TASK_RE}, "text": "@manager I am still unsure about {{task}}: what now?"}],
            "default": {"text": "bob: ok"}},
    "manager": {"rules": [
        {"when": {"role": "user", "contains": "alice asks you a question"}, "text": "Use a Markdown table, one star per row."},
        {"when": {"role": "user", "contains": "bob asks you a question"}, "text": "Think it over once more."},
        *ACCEPTING_MANAGER["rules"],
    ], "default": {"text": "manager: noted"}},
}}


async def test_a_workers_question_is_answered_with_the_tasks_context_in_its_room(tmp_path):
    async with running_team(tmp_path / "home", QUESTION_SCENARIO) as team:
        plane = team.plane
        await plane.provisioner.create_worker("alice", role="astronomer")
        task = await plane.engine.assign_adhoc("alice", "List the stars", "List the brightest stars.")
        room = await plane.chat.worker_room("alice")
        answer = await team.wait_for_message("Use a Markdown table", timeout=90)
        assert answer.room_id == room and team.user_id("alice") in answer.mentions and f"**{task.id}**" in answer.body
        await wait_until(lambda: plane.state.task(task.id).state is TaskState.DONE, timeout=90,
                         what="alice to finish with the answer")

        (prompt,) = prompts(team, "manager", "alice asks you a question")
        question = QUESTION.replace("{{task}}", task.id)
        assert json.dumps(question) in prompt  # the question, quoted as one JSON string
        assert f"**{task.id}** (List the stars)" in prompt and layout.task_spec(task.id) in prompt
        assert json.dumps("List the brightest stars.") in prompt  # the spec, as the Manager wrote it
        # A judgement-only turn, caused by the worker.
        assert "started by worker alice (its question about " + task.id in prompt
        assert team.model_calls("alice") == 3  # the question; then, with the answer, report_result and its reply
        assert not team.said("manager", "alice mentioned me")  # answered, not just noticed


async def test_a_worker_that_keeps_asking_gets_three_answers_then_the_admin_is_told(tmp_path):
    async with running_team(tmp_path / "home", QUESTION_SCENARIO) as team:
        plane = team.plane
        await plane.provisioner.create_worker("bob", role="astronomer")
        task = await plane.engine.assign_adhoc("bob", "Name the stars", "Name them.")
        notice = await team.wait_for_message("bob keeps asking about", timeout=120)
        assert notice.room_id == plane.chat.manager_room and team.user_id("admin") in notice.mentions
        assert json.dumps(f"@manager I am still unsure about {task.id}: what now?") in notice.body
        assert len(prompts(team, "manager", "bob asks you a question")) == 3
        assert len([m for m in team.admin.messages if "Think it over" in m.body]) == 3
        assert team.model_calls("bob") == 4  # the assignment and three answers
        await elapsed(2)
        assert team.model_calls("bob") == 4 and len([m for m in team.admin.messages if "keeps asking" in m.body]) == 1


# ---------------------------------------------------------------------- (c) failed judgement turns


def failing_review(times: int | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"when": {"role": "user", "contains": "Judge it"},
                            "error": {"status": 400, "message": "the provider rejected the request"}}
    if times is not None:
        rule["times"] = times
    return {"agents": {"sam": reporting_worker(), "manager": {"rules": [rule, *ACCEPTING_MANAGER["rules"]],
                                                               "default": {"text": "manager: noted"}}}}


def review_calls(team: Any) -> int:
    return len(prompts(team, "manager", "Judge it"))


async def test_a_failed_judgement_turn_is_retried_with_back_off_and_then_succeeds(tmp_path):
    async with running_team(tmp_path / "home", failing_review(times=2), heartbeat_seconds=4.0) as team:
        plane = team.plane
        await plane.provisioner.create_worker("sam", role="tester")
        task = await plane.engine.assign_adhoc("sam", "Check the lens", "Check it.")
        await wait_until(lambda: plane.state.task(task.id).state is TaskState.DONE, timeout=90,
                         what="the judgement to succeed on its third attempt")
        assert review_calls(team) == 3
        retries = plane.state.events(kind="manager.turn_retry", subject=f"review:{task.id}:1")
        assert [r["data"]["attempt"] for r in retries] == [1, 2]
        assert [r["data"]["delay_seconds"] for r in retries] == [0.5, 1.0]  # heartbeat / 8, then / 4
        # The failed attempts posted nothing; the admin was not alerted.
        await team.wait_for_message("accepted", timeout=30)
        assert not team.said("manager", "could not finish this turn") and not team.said("manager", "I could not judge")


async def test_a_judgement_that_keeps_failing_is_retried_across_a_restart_then_the_admin_is_told(tmp_path):
    home = tmp_path / "home"
    model = ScriptedModelServer(parse_scenario(failing_review(times=None)))
    await model.start()
    try:
        # Back-off of 2 s, then 4 s: room to stop the control plane between two attempts.
        async with running_team(home, None, provider=model, heartbeat_seconds=16.0) as team:
            plane = team.plane
            await plane.provisioner.create_worker("sam", role="tester")
            task = await plane.engine.assign_adhoc("sam", "Check the lens", "Check it.")
            key = f"wake:review:{task.id}:1"

            def attempts() -> int:
                return next((i["attempts"] for i in plane.state.inbox_pending() if i["key"] == key), 0)

            await wait_until(lambda: attempts() == 1, timeout=90, what="the first failed judgement")
            port = team.config.channel.settings["port"]
        assert review_calls(team) == 1

        async with running_team(home, None, provider=model, heartbeat_seconds=16.0, homeserver_port=port) as team:
            plane = team.plane
            alert = await team.wait_for_message(f"I could not judge the report of {task.id}", timeout=120)
            assert alert.room_id == plane.chat.manager_room and team.user_id("admin") in alert.mentions
            assert "3 attempts failed" in alert.body and "the provider rejected the request" in alert.body
            assert review_calls(team) == 3  # one before the restart, two after: none lost, none repeated
            assert plane.state.inbox_status(key) == "failed"
            current = plane.state.task(task.id)
            assert current.state is TaskState.REVIEW and "could not judge the report" in (stuck_note(current) or "")
            assert len(plane.state.events(kind="manager.turn_failed", subject=task.id)) == 1
            await elapsed(2)
            assert review_calls(team) == 3 and len([m for m in team.admin.messages if "I could not judge" in m.body]) == 1
    finally:
        await model.stop()


# ---------------------------------------------------------------------- (d) reviews and plans waiting


WAITING_SCENARIO = {"agents": {
    "sam": reporting_worker("the lens is clean"),
    "manager": {"rules": [{"when": {"role": "user", "contains": "Judge it"}, "text": "Looks fine to me."}],
                "default": {"text": "manager: noted"}},
}}
HEARTBEAT_D = 2.0


async def test_an_unjudged_review_is_queued_again_then_the_admin_alerted_and_a_waiting_plan_reminded_once(tmp_path):
    async with running_team(tmp_path / "home", WAITING_SCENARIO, heartbeat_seconds=HEARTBEAT_D) as team:
        plane, engine = team.plane, team.plane.engine
        await plane.provisioner.create_worker("sam", role="tester")
        running = await engine.create_project("Lens")
        (task,) = await engine.propose_plan(running.id, [{"title": "Check the lens", "assignee": "sam"}])
        await engine.confirm_plan(running.id)
        waiting = await engine.create_project("Mirror")
        await engine.propose_plan(waiting.id, [{"title": "Polish the mirror", "assignee": "sam"}])

        alert = await team.wait_for_message(f"**{task.id}** (Check the lens) has waited", timeout=60)
        assert alert.room_id == plane.chat.manager_room and team.user_id("admin") in alert.mentions
        assert "asked twice" in alert.body
        judged = prompts(team, "manager", "Judge it")
        assert len(judged) == 2 and "You were asked to judge this report before" in judged[1]
        plan = (await plane.storage.get(layout.project_plan(running.id))).decode()
        assert f"{task.id} Check the lens" in plan and "  - stuck: reported" in plan and "has not judged it" in plan

        reminder = await team.wait_for_message(f"the plan for **Mirror** ({waiting.id}) has waited", timeout=30)
        assert team.user_id("admin") in reminder.mentions and "*confirm*" in reminder.body
        await elapsed(3 * HEARTBEAT_D)
        assert len(prompts(team, "manager", "Judge it")) == 2
        assert len([m for m in team.admin.messages if "has waited" in m.body and task.id in m.body]) == 1
        assert len([m for m in team.admin.messages if "the plan for **Mirror**" in m.body and "reminder" in m.body]) == 1
        assert plane.state.task(task.id).state is TaskState.REVIEW
