"""Plans that change, revisions that converge and workers with registry skills — on a live team
(Synapse, the gateway with the scripted model, sandboxed workers). The Manager's scripted model
calls the tools; everything else is code, observed from the outside: the state DB, plan.md, the
rooms and what each agent's model was asked."""
from __future__ import annotations

from typing import Any

from hiclaw.demo.scenario import call, generic_worker_rules
from hiclaw.models import TaskState
from hiclaw.state import StateDB, Worker
from hiclaw.storage import layout
from hiclaw.testing.team import running_team, start_plane, wait_until

REFUSED = {"when": {"tool_result": "revise_plan", "regex": r"error: (?P<err>[^\n]+)"}, "text": "refused: {{err}}"}
REVISED = {"when": {"tool_result": "revise_plan", "regex": r'"version": (?P<version>\d+)'},
           "text": "revised: now version {{version}}"}
V1 = [{"id": "task-001", "title": "Draft copy", "assignee": "alex"},
      {"id": "task-002", "title": "Review copy", "assignee": "sam", "depends_on": ["task-001"]},
      {"id": "task-003", "title": "Press kit", "assignee": "sam"}]
V2 = [{"id": "task-001", "title": "Write copy", "assignee": "alex"},
      {"id": "task-002", "title": "Proofread copy", "assignee": "alex", "depends_on": ["task-001"]},
      {"id": "task-003", "title": "Translate copy", "assignee": "sam", "depends_on": ["task-001"]}]


def admin_says(phrase: str, *tool_calls: dict[str, Any]) -> dict[str, Any]:
    return {"when": {"role": "user", "contains": phrase}, "tool_calls": list(tool_calls)}


PLANS = {"agents": {
    "manager": {"rules": [
        admin_says("start the launch", call("create_project", title="Launch", goal="launch copy")),
        {"when": {"tool_result": "create_project", "regex": r'"project_id": "(?P<project>proj-\d+)"'},
         "tool_calls": [call("propose_plan", project_id="{{project}}", tasks=V1)]},
        admin_says("change the plan", call("propose_plan", project_id="{{project}}", tasks=V2)),
        {"when": {"tool_result": "propose_plan", "regex": r'"version": (?P<version>\d+)'},
         "text": "plan version {{version}} posted"},
        admin_says("confirmed", call("confirm_plan", project_id="{{project}}", version=2)),
        {"when": {"tool_result": "confirm_plan"}, "text": "started"},
        admin_says("drop the copy task", call("revise_plan", project_id="{{project}}", remove=["task-001"])),
        admin_says("loop the plan", call("revise_plan", project_id="{{project}}",
                                         depends_on={"task-002": ["task-003"], "task-003": ["task-002"]})),
        admin_says("restructure", call("revise_plan", project_id="{{project}}", remove=["task-003"],
                                       reassign={"task-002": "jordan"},
                                       add=[{"title": "Launch post", "assignee": "sam", "depends_on": ["task-002"]}])),
        admin_says("give the copy to sam", call("revise_plan", project_id="{{project}}", reassign={"task-001": "sam"})),
        admin_says("accept the copy", call("accept_task", task_id="task-001")),
        {"when": {"tool_result": "accept_task"}, "text": "copy accepted"},
        REFUSED, REVISED,
        # Reports are judged only when the admin says so (above): a report leaves its task in review.
        {"when": {"role": "user", "contains": "reported **task-"}, "text": "noted"},
    ], "default": {"text": "manager: {{input}}"}},
    "alex": {"rules": generic_worker_rules("alex")},
    "sam": {"rules": generic_worker_rules("sam")},
    "jordan": {"rules": generic_worker_rules("jordan")},
}}


def snapshot(plane: Any, project_id: str) -> Any:
    state = plane.state
    return ([t.model_dump(exclude={"updated_at", "last_progress_at"}) for t in state.tasks()],
            state.project(project_id).version, [m.key for m in state.pending_messages()],
            len(state.events(kind="plan.revised")))


async def plan_md(plane: Any, project_id: str) -> str:
    return (await plane.storage.get(layout.project_plan(project_id))).decode()


async def plan_has(plane: Any, project_id: str, text: str) -> bool:
    return text in await plan_md(plane, project_id)


async def test_plans_are_replaced_and_revised_and_rooms_follow_their_assignees(tmp_path):
    async with running_team(tmp_path / "home", PLANS) as team:
        plane = team.plane
        for name in ("alex", "sam", "jordan"):
            await plane.provisioner.create_worker(name, role="writer", model="smart")

        # Proposing twice: one plan, the second replacing the first.
        await team.tell_manager("@manager start the launch")
        await team.wait_for_message("plan version 1 posted")
        await team.tell_manager("@manager change the plan: alex proofreads, sam translates")
        await team.wait_for_message("plan version 2 posted")
        project = plane.state.projects()[0]
        assert (project.state, project.version) == ("awaiting_confirmation", 2)
        assert [(t.id, t.title, t.assignee, t.state) for t in plane.state.tasks()] == [
            ("task-001", "Write copy", "alex", TaskState.PENDING), ("task-002", "Proofread copy", "alex", TaskState.PENDING),
            ("task-003", "Translate copy", "sam", TaskState.PENDING)]
        text = await plan_md(plane, project.id)
        assert "**Version:** 2" in text and text.count("- [ ] task-") == 3 and "Press kit" not in text
        plans = [m for m in team.admin.messages if "Reply to me with *confirm*" in m.body]
        assert len(plans) == 2 and "version 1" in plans[0].body and "Press kit" in plans[0].body
        assert "here is version 2 of the plan" in plans[1].body and "replaces version 1" in plans[1].body
        assert "Translate copy" in plans[1].body and "Press kit" not in plans[1].body

        await team.tell_manager("@manager confirmed, go")
        await team.wait_for_message("started")
        # alex reports task-001; it waits in review (neither pending nor done).
        await wait_until(lambda: plane.state.task("task-001").state is TaskState.REVIEW, what="task-001 in review")
        await wait_until(lambda: plan_has(plane, project.id, "result: SUCCESS — Write copy is done"), what="plan.md")
        room = plane.state.project(project.id).room_id
        assert team.user_id("jordan") not in (await plane.channel.joined_members(room) or set())

        before, plan_before = snapshot(plane, project.id), await plan_md(plane, project.id)
        await team.tell_manager("@manager drop the copy task")
        await team.wait_for_message("refused: task-001 is under review: only pending tasks can be removed")
        await team.tell_manager("@manager loop the plan")
        await team.wait_for_message("refused: the revised plan has a dependency cycle: task-002 -> task-003 -> task-002")
        assert snapshot(plane, project.id) == before and await plan_md(plane, project.id) == plan_before

        await team.tell_manager("@manager restructure: jordan proofreads, no translation, sam writes the post")
        await team.wait_for_message("revised: now version 3")
        tasks = {t.id: t for t in plane.state.tasks()}
        assert tasks["task-003"].state is TaskState.CANCELLED and tasks["task-002"].assignee == "jordan"
        assert (tasks["task-004"].title, tasks["task-004"].assignee, tasks["task-004"].depends_on) == (
            "Launch post", "sam", ["task-002"])
        text = await plan_md(plane, project.id)
        assert "**Version:** 3" in text and "- [-] task-003 Translate copy" in text
        assert "- [ ] task-002 Proofread copy — @jordan (after task-001)" in text
        notice = await team.wait_for_message("changed (version 3)")
        assert notice.room_id == room and "removed task-003; task-002 → @jordan" in notice.body

        # task-002 now goes to jordan, who was never in the project room: jordan is added first,
        # its model gets the assignment, and it reports.
        await team.tell_manager("@manager accept the copy")
        await team.wait_for_message("copy accepted")
        assignment = await team.wait_for_message("@jordan **task-002** is yours: Proofread copy")
        assert assignment.room_id == room and assignment.mentions == [team.user_id("jordan")]
        assert team.user_id("jordan") in (await plane.channel.joined_members(room) or set())
        await wait_until(lambda: plane.state.task("task-002").state is TaskState.REVIEW, what="jordan's report")
        await wait_until(lambda: plan_has(plane, project.id, "result: SUCCESS — Proofread copy is done"), what="plan.md")
        assert team.model_calls("jordan") >= 2  # the assignment, then its tool results

        before, plan_before = snapshot(plane, project.id), await plan_md(plane, project.id)
        await team.tell_manager("@manager give the copy to sam")
        await team.wait_for_message("refused: task-001 is done: only pending tasks can be removed, reassigned or "
                                    "re-wired — done work stays as it is")
        assert snapshot(plane, project.id) == before and await plan_md(plane, project.id) == plan_before


PRD = [{"id": "task-001", "title": "Write the PRD", "assignee": "alex"},
       {"id": "task-002", "title": "Review the PRD", "assignee": "sam", "depends_on": ["task-001"]}]
FEEDBACK = "The PRD has no pricing: add a pricing section with three tiers."
REPORTED = r"reported \*\*(?P<task>task-\d+)\*\* \(.*?\): "
REVISIONS = {"agents": {
    "manager": {"rules": [
        admin_says("start the PRD", call("create_project", title="PRD", goal="a PRD")),
        {"when": {"tool_result": "create_project", "regex": r'"project_id": "(?P<project>proj-\d+)"'},
         "tool_calls": [call("propose_plan", project_id="{{project}}", tasks=PRD)]},
        {"when": {"tool_result": "propose_plan"}, "text": "PRD project started"},
        {"when": {"role": "user", "regex": REPORTED + "REVISION_NEEDED"},
         "tool_calls": [call("request_revision", task_id="{{task}}", assignee="jordan", title="Add a pricing section",
                             feedback=FEEDBACK)]},
        {"when": {"tool_result": "request_revision", "contains": '"blocked"'}, "text": "{{task}} is out of rounds"},
        {"when": {"tool_result": "request_revision", "regex": r'"id": "(?P<revision>task-\d+)"'},
         "text": "revision {{revision}} requested"},
        {"when": {"role": "user", "regex": REPORTED + "SUCCESS"}, "tool_calls": [call("accept_task", task_id="{{task}}")]},
        {"when": {"tool_result": "accept_task", "regex": r'"id": "(?P<accepted>task-\d+)"'}, "text": "accepted {{accepted}}"},
    ], "default": {"text": "manager: {{input}}"}},
    "alex": {"rules": generic_worker_rules("alex")},
    "jordan": {"rules": generic_worker_rules("jordan")},
    "sam": {"rules": [  # the reviewer is never satisfied
        {"when": {"role": "user", "regex": r"@sam (?:please resume )?\*\*(?P<task>task-\d+)\*\*"},
         "tool_calls": [call("read_file", path="shared/tasks/{{task}}/spec.md")]},
        {"when": {"tool_result": "read_file", "regex": r"task: (?P<task>task-\d+)"},
         "tool_calls": [call("report_result", task_id="{{task}}", status="REVISION_NEEDED", summary="no pricing section",
                             result_markdown="# Review\n\nPricing: **missing**\n")]},
        {"when": {"tool_result": "report_result"}, "text": "Reported."},
    ]},
}}


async def test_a_revision_has_the_managers_title_spec_and_inputs_and_rounds_are_capped(tmp_path):
    async with running_team(tmp_path / "home", REVISIONS, yolo=True, max_revision_rounds=1) as team:
        plane = team.plane
        for name in ("alex", "sam", "jordan"):
            await plane.provisioner.create_worker(name, role="writer", model="smart")
        await team.tell_manager("@manager start the PRD project")
        await team.wait_for_message("PRD project started")
        await team.wait_for_message("accepted task-001")

        # sam rejects; the Manager asks jordan — who is not in the project room — for the fix.
        await team.wait_for_message("revision task-003 requested")
        fix = plane.state.task("task-003")
        assert (fix.title, fix.assignee, fix.revision_of, fix.spec) == ("Add a pricing section", "jordan", "task-002",
                                                                        FEEDBACK)
        assignment = await team.wait_for_message("@jordan **task-003** is yours: Add a pricing section")
        room = plane.state.projects()[0].room_id
        assert assignment.room_id == room
        assert "Inputs: `shared/tasks/task-002/result.md`, `shared/tasks/task-001/result.md`" in assignment.body
        spec = (await plane.storage.get(layout.task_spec("task-003"))).decode()
        assert "# task-003: Add a pricing section" in spec and FEEDBACK in spec
        assert "This revises **task-002** (Review the PRD)" in spec and "- `shared/tasks/task-002/result.md`" in spec

        # jordan's fix is accepted: sam re-checks task-002 on the fix, not on the old input.
        await team.wait_for_message("accepted task-003")
        recheck = await team.wait_for_message("@sam **task-002** is yours: Review the PRD (re-check)")
        assert "Inputs: `shared/tasks/task-003/result.md`" in recheck.body and "task-001/result.md" not in recheck.body
        spec = (await plane.storage.get(layout.task_spec("task-002"))).decode()
        assert "Re-check after the revision **task-003** (Add a pricing section)" in spec and "attempt: 2" in spec

        # sam rejects again: one round is the cap — code blocks task-002 and tells the admin why.
        await team.wait_for_message("task-002 is out of rounds")
        assert plane.state.task("task-002").state is TaskState.BLOCKED
        assert [t.id for t in plane.state.tasks()] == ["task-001", "task-002", "task-003"]  # no new revision
        told = await team.wait_for_message("**task-002** (Review the PRD) is blocked")
        assert told.room_id == plane.chat.manager_room and told.mentions == [team.user_id("admin")]
        assert "after 1 revision round, the most `[team] max_revision_rounds` allows" in told.body
        assert "- [!] task-002 Review the PRD" in await plan_md(plane, plane.state.projects()[0].id)


SKILLS = {"agents": {
    "manager": {"rules": [
        admin_says("hire maya", call("create_worker", name="maya", role="analyst: reads PDFs", skills=["pdf-tools"])),
        admin_says("hire casper", call("create_worker", name="casper", role="tester", skills=["no-such-skill"])),
        {"when": {"tool_result": "create_worker", "regex": r"error: (?P<err>[^\n]+)"}, "text": "not created: {{err}}"},
        {"when": {"tool_result": "create_worker", "regex": r'"skills": (?P<skills>\[[^\]]*\])'},
         "text": "created with {{skills}}"},
    ], "default": {"text": "manager: {{input}}"}},
    "*": {"default": {"text": "ok"}},
}}


async def test_create_worker_installs_registry_skills_or_creates_nothing_and_restarts_cleanly(tmp_path, skills_registry):
    from hiclaw.scripted import parse_scenario
    from hiclaw.scripted.server import ScriptedModelServer

    skills_registry.publish("acme", "tools", "pdf-tools", description="Read PDFs and their tables.")
    home = tmp_path / "home"
    async with running_team(home, SKILLS, registry_url=skills_registry.url) as team:
        plane = team.plane
        await team.tell_manager("@manager hire maya")
        await team.wait_for_message('created with ["pdf-tools"]')
        assert plane.state.worker("maya").skills == ["pdf-tools"]
        skill_md = (await plane.storage.get("agents/maya/skills/pdf-tools/SKILL.md")).decode()
        assert "Read PDFs and their tables." in skill_md
        assert await plane.provisioner.is_running("maya")

        await team.tell_manager("@manager hire casper")
        refusal = await team.wait_for_message("not created: ")
        assert "cannot install skill 'no-such-skill' for casper" in refusal.body and "nothing was created" in refusal.body
        assert plane.state.find_worker("casper") is None
        assert await plane.storage.stat(layout.agent_soul("casper")) is None
        assert not await plane.provisioner.is_running("casper")
        config = team.config

    # A worker recorded with a skill nobody can install (what older versions left behind).
    state = StateDB(home / "state.db")
    try:
        state.upsert_worker(Worker(name="oldie", role="legacy", model="smart", skills=["ghost-skill"]))
    finally:
        state.close()
    model = ScriptedModelServer(parse_scenario(SKILLS))
    await model.start()
    config = config.model_copy(deep=True)
    for alias in config.models.values():
        alias.api_base = model.base_url
    plane = await start_plane(home, config)
    try:
        assert await plane.provisioner.is_running("maya") and await plane.provisioner.is_running("oldie")
        assert plane.state.worker("maya").skills == ["pdf-tools"]
        key = "skill-missing:oldie:ghost-skill"
        await wait_until(lambda: plane.state.outbox_get(key), what="the admin to be told about oldie's skill")
        assert await plane.provisioner.reconcile() == []  # what every start does: clean, and told only once
        assert len(plane.state.events(kind="worker.skill_missing")) == 1 and not plane.state.pending_messages()
    finally:
        await plane.stop()
        await model.stop()
