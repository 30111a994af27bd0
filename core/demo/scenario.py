"""The demo's scripted model: what the Manager and each Worker "decide" in the demo scenario.

The scenario is built here as data (the same structure as a YAML scenario file, see
docs/scripted-model.md); ``hiclaw demo --show-scenario`` prints it as YAML. Rules are tried in
order and the first that matches answers, so the script does not depend on the order in which
concurrent workers happen to run.
"""
from __future__ import annotations

from typing import Any

PROJECT = "AI Writing Assistant MVP"
WORKERS = {
    "alex": ("product manager: research, PRDs and product acceptance", "smart"),
    "sam": ("full-stack developer: architecture and implementation", "smart"),
    "taylor": ("content operations: launch copy and assets", "cheap"),
    "jordan": ("data analyst: metrics and reports", "cheap"),
}
PLAN: list[dict[str, Any]] = [
    {"id": "task-001", "title": "Competitive research & PRD", "assignee": "alex", "model": "smart",
     "spec": "Survey 3-5 writing assistants; write a PRD with goals, users, scope and acceptance criteria."},
    {"id": "task-002", "title": "Stack & architecture", "assignee": "sam", "depends_on": ["task-001"], "model": "smart",
     "spec": "Choose the stack and architecture for the PRD; record the decisions."},
    {"id": "task-003", "title": "Core feature", "assignee": "sam", "depends_on": ["task-002"], "model": "smart",
     "spec": "Implement drafting and rewriting as described in the PRD and the architecture."},
    {"id": "task-004", "title": "Product acceptance", "assignee": "alex", "depends_on": ["task-003"], "model": "smart",
     "spec": "Check the core feature against the PRD's acceptance criteria."},
    {"id": "task-005", "title": "Launch assets", "assignee": "taylor", "depends_on": ["task-001"], "model": "cheap",
     "spec": "Collect positioning points from the PRD and draft the launch post and FAQ."},
]
SKILL = "architecture-decision-records"
#: The demo's MCP server (hiclaw.demo.tracker, behind the gateway) and the tool taylor calls on it.
TRACKER_TOOL = "mcp__tracker__create_issue"
LAUNCH_ISSUE = "Launch checklist"
REVISION_TITLE = "Add model-selection guidance"
REVISION_FEEDBACK = ("Add model-selection guidance: tell the user which model drafted the text and when to pick "
                     "the fast or the smart model.")


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"name": tool, "arguments": arguments}


def generic_worker_rules(agent: str) -> list[dict[str, Any]]:
    """Assignment → read the spec → write the deliverable and report SUCCESS."""
    return [
        {"when": {"role": "user", "regex": rf"@{agent} (?:please resume )?\*\*(?P<task>task-\d+)\*\*"},
         "tool_calls": [call("read_file", path="shared/tasks/{{task}}/spec.md")]},
        {"when": {"tool_result": "read_file", "regex": r"task: (?P<task>task-\d+)\ntitle: '?(?P<title>[^\n']+)"},
         "tool_calls": [
             call("write_file", path="shared/tasks/{{task}}/workspace/deliverable.md",
                  content="# {{title}}\n\nDeliverable for {{task}} by " + agent + ".\n"),
             call("report_result", task_id="{{task}}", status="SUCCESS", summary="{{title}} is done",
                  result_markdown="# {{title}}\n\nDone: `shared/tasks/{{task}}/workspace/deliverable.md`.\n"),
         ]},
        {"when": {"tool_result": "report_result"}, "text": "Reported."},
    ]


def manager_rules() -> list[dict[str, Any]]:
    task_ref = r"reported \*\*(?P<task>task-\d+)\*\* \(.*?\): "
    return [
        {"when": {"role": "user", "contains": "create four workers"},
         "tool_calls": [call("create_worker", name=name, role=role, model=model)
                        for name, (role, model) in WORKERS.items()]},
        {"when": {"tool_result": "create_worker"},
         "text": "Your team is ready: alex (product), sam (full-stack), taylor (content) and jordan (data), "
                 "each in their own room."},
        # Code wakes the Manager when every task is accepted: it reports to the admin.
        {"when": {"role": "user", "contains": "is complete"},
         "text": f"The project **{PROJECT}** is complete: PRD, architecture, core feature (revised with "
                 "model-selection guidance), product acceptance and launch assets are all accepted. "
                 "Plan: `shared/projects/{{project}}/plan.md`."},
        {"when": {"role": "user", "contains": ["start the project", PROJECT]},
         "tool_calls": [call("create_project", title=PROJECT,
                             goal="An MVP of a writing assistant that drafts, rewrites and tells users which "
                                  "model it used and why.")]},
        {"when": {"tool_result": "create_project", "regex": r'"project_id": "(?P<project>proj-\d+)"'},
         "tool_calls": [call("propose_plan", project_id="{{project}}", tasks=PLAN)]},
        {"when": {"tool_result": "propose_plan"},
         "text": "I have posted the plan: five tasks for alex, sam and taylor. Reply *confirm* to start."},
        {"when": {"role": "user", "regex": r"(?i)\bconfirm\b"},
         "tool_calls": [call("confirm_plan", project_id="{{project}}")]},
        {"when": {"tool_result": "confirm_plan"},
         "text": "Started: alex is on task-001; the other tasks follow as their dependencies are accepted."},
        {"when": {"role": "user", "regex": task_ref + "REVISION_NEEDED"},
         "tool_calls": [call("request_revision", task_id="{{task}}", assignee="sam", title=REVISION_TITLE,
                             feedback=REVISION_FEEDBACK)]},
        {"when": {"tool_result": "request_revision", "regex": r'"id": "(?P<revision>task-\d+)"'},
         "text": "alex found a gap (no model-selection guidance): {{revision}} asks sam to fix it, then alex re-checks."},
        {"when": {"role": "user", "regex": task_ref + "SUCCESS"},
         "tool_calls": [call("accept_task", task_id="{{task}}", note="meets the spec")]},
        {"when": {"tool_result": "accept_task", "regex": r'"id": "(?P<accepted>task-\d+)"'},
         "text": "Accepted {{accepted}}."},
    ]


def demo_scenario() -> dict[str, Any]:
    alex = [
        # The first acceptance finds a gap; the re-check (attempt 2) passes through the generic rules.
        {"when": {"tool_result": "read_file", "regex": r"task: task-004\n[\s\S]*?attempt: 1\n"},
         "tool_calls": [call("report_result", task_id="task-004", status="REVISION_NEEDED",
                             summary="no model-selection guidance: users cannot tell which model drafted a text",
                             result_markdown="# Acceptance of task-003\n\n- Drafting: OK\n- Rewriting: OK\n"
                                             "- Model-selection guidance: **missing**\n")]},
    ]
    sam = [
        # task-002: sam lacks an architecture skill; he finds it in the registry, installs and reads it.
        {"when": {"tool_result": "read_file", "regex": r"task: task-002\n"},
         "tool_calls": [call("skills_find", query="architecture decision records")]},
        {"when": {"tool_result": "skills_find", "regex": r'"source": "(?P<source>[^"]+)"'},
         "tool_calls": [call("skills_add", source="{{source}}", skill=SKILL)]},
        {"when": {"tool_result": "skills_add"}, "tool_calls": [call("skills_read", name=SKILL)]},
        {"when": {"tool_result": "skills_read"},
         "tool_calls": [
             call("write_file", path="shared/tasks/task-002/workspace/adr-001-stack.md",
                  content="# ADR 001: Stack\n\n**Context** the PRD of task-001.\n**Options** FastAPI + React; "
                          "Next.js.\n**Decision** FastAPI + React.\n**Consequences** two deployables; model "
                          "routing lives in the API.\n"),
             call("report_result", task_id="task-002", status="SUCCESS",
                  summary="stack chosen (FastAPI + React), recorded as an ADR",
                  result_markdown="# Stack & architecture\n\nSee `shared/tasks/task-002/workspace/adr-001-stack.md`.\n"),
         ]},
    ]
    taylor = [
        # task-005: taylor files the launch checklist in the team's tracker (an MCP server behind the
        # gateway, whose credential taylor never sees), then delivers the assets with its number.
        {"when": {"tool_result": "read_file", "regex": r"task: task-005\n"},
         "tool_calls": [call(TRACKER_TOOL, title=LAUNCH_ISSUE, labels=["launch"],
                             body="- [ ] launch post\n- [ ] FAQ\n- [ ] positioning points from the PRD")]},
        {"when": {"tool_result": TRACKER_TOOL, "regex": r'"number":\s*(?P<issue>\d+)'},
         "tool_calls": [
             call("write_file", path="shared/tasks/task-005/workspace/launch-post.md",
                  content="# Meet the writing assistant\n\nDrafts, rewrites, and tells you which model wrote what.\n\n"
                          "Launch checklist: tracker issue #{{issue}}.\n"),
             call("report_result", task_id="task-005", status="SUCCESS",
                  summary="launch post and FAQ drafted; checklist filed as tracker issue #{{issue}}",
                  result_markdown="# Launch assets\n\nSee `shared/tasks/task-005/workspace/launch-post.md`; "
                                  "the launch checklist is tracker issue #{{issue}}.\n"),
         ]},
        # A team without the tracker (the chaos tests' own config): the assets without the issue.
        {"when": {"tool_result": TRACKER_TOOL},
         "tool_calls": [
             call("write_file", path="shared/tasks/task-005/workspace/launch-post.md",
                  content="# Meet the writing assistant\n\nDrafts, rewrites, and tells you which model wrote what.\n"),
             call("report_result", task_id="task-005", status="SUCCESS_WITH_NOTES",
                  summary="launch post and FAQ drafted; the tracker was not reachable, so no checklist issue",
                  result_markdown="# Launch assets\n\nSee `shared/tasks/task-005/workspace/launch-post.md`.\n"),
         ]},
    ]
    agents: dict[str, Any] = {
        "manager": {"rules": manager_rules(),
                    "default": {"text": "I can create workers, start projects and report on them — what would you like?"}},
        "alex": {"rules": alex + generic_worker_rules("alex")},
        "sam": {"rules": sam + generic_worker_rules("sam")},
        "taylor": {"rules": taylor + generic_worker_rules("taylor")},
        "jordan": {"rules": generic_worker_rules("jordan")},
    }
    for name in agents:
        agents[name].setdefault("default", {"text": "I am not sure what you need; mention me with a task."})
    return {"version": 1, "name": "ai-writing-assistant-demo",
            "models": ["scripted-smart", "scripted-fast", "scripted-cheap"], "agents": agents}
