"""Plans: the Manager proposes, code validates (acyclic, known workers) and renders plan.md.

plan.md is a *view* of the state DB, rendered after every change and never parsed back; its
markers always match the tasks' states: ``[ ]`` pending, ``[~]`` in progress, ``[x]`` done,
``[!]`` blocked, ``[→]`` waiting for a revision.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, Field, ValidationError, field_validator

from hiclaw.errors import InvalidInputError
from hiclaw.models import TaskState
from hiclaw.state import Project, Task

TASK_ID = re.compile(r"^task-\d{3,}$")


def stuck_value(task: Task, note: str) -> str:
    """What to store in ``Task.stuck``: the note, for the task's current state and dispatch only."""
    return json.dumps({"state": task.state.value, "dispatch": task.dispatch_count, "note": note}, ensure_ascii=False)


def stuck_note(task: Task) -> str | None:
    """The task's stuck note if it was made for its current state and dispatch (else it is stale)."""
    try:
        data = json.loads(task.stuck or "")
    except ValueError:
        return None
    if not isinstance(data, dict) or (data.get("state"), data.get("dispatch")) != (task.state.value, task.dispatch_count):
        return None
    return str(data.get("note") or "") or None


class PlannedTask(BaseModel):
    """One task as the Manager proposes it."""

    id: str | None = None
    title: str = Field(min_length=1, max_length=200)
    assignee: str
    depends_on: list[str] = Field(default_factory=list)
    model: str | None = None
    spec: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        if value is not None and not TASK_ID.match(value):
            raise ValueError("task ids look like 'task-001'")
        return value


def parse_plan(raw: Iterable[object]) -> list[PlannedTask]:
    tasks = []
    for index, item in enumerate(raw, start=1):
        try:
            tasks.append(PlannedTask.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise InvalidInputError(f"plan task #{index}: {where}: {err['msg']}", hint="fix that task and propose again") from None
    return tasks


def validate_plan(
    planned: Sequence[PlannedTask],
    *,
    workers: Iterable[str],
    next_id: int,
    existing: Iterable[str] = (),
) -> list[Task]:
    """Check a proposed plan and turn it into tasks with ids; raise with the first problem."""
    if not planned:
        raise InvalidInputError("the plan has no tasks", hint="propose at least one task")
    known_workers = set(workers)
    existing_ids = set(existing)
    ids: list[str] = []
    counter = next_id
    for task in planned:
        if task.id is None:
            while f"task-{counter:03d}" in existing_ids or f"task-{counter:03d}" in ids:
                counter += 1
            ids.append(f"task-{counter:03d}")
            counter += 1
        else:
            ids.append(task.id)
    duplicates = sorted({i for i in ids if ids.count(i) > 1} | (set(ids) & existing_ids))
    if duplicates:
        raise InvalidInputError(f"duplicate task id(s): {', '.join(duplicates)}", hint="give every task a new id")
    plan_ids = set(ids)
    tasks = []
    for task_id, task in zip(ids, planned, strict=True):
        if task.assignee not in known_workers:
            known = ", ".join(sorted(known_workers)) or "none yet"
            raise InvalidInputError(
                f"{task_id}: unknown assignee {task.assignee!r} (workers: {known})",
                hint="create the worker first with create_worker, or assign an existing one",
            )
        for dep in task.depends_on:
            if dep == task_id:
                raise InvalidInputError(f"{task_id} depends on itself", hint="remove that dependency")
            if dep not in plan_ids and dep not in existing_ids:
                raise InvalidInputError(f"{task_id} depends on unknown task {dep!r}", hint="use ids from this plan")
        tasks.append(Task(id=task_id, title=task.title, assignee=task.assignee, depends_on=list(task.depends_on),
                          model=task.model, spec=task.spec))
    cycle = find_cycle({t.id: [d for d in t.depends_on if d in plan_ids] for t in tasks})
    if cycle:
        raise InvalidInputError(f"the plan has a dependency cycle: {' -> '.join(cycle)}", hint="remove one of those dependencies")
    return tasks


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in ``graph`` (node -> dependencies) as a list of nodes, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for dep in graph.get(node, []):
            if colour.get(dep) == GREY:
                return [*stack[stack.index(dep):], dep]
            if colour.get(dep) == WHITE:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    for node in graph:
        if colour[node] == WHITE:
            found = visit(node)
            if found:
                return found
    return None


def render_plan(project: Project, tasks: Sequence[Task]) -> str:
    """plan.md for a project, from the state DB."""
    lines = [f"# Plan: {project.title} ({project.id})", ""]
    if project.goal:
        lines += [f"**Goal:** {project.goal}", ""]
    version = f" · **Version:** {project.version}" if project.version else ""
    lines += [f"**State:** {project.state.replace('_', ' ')}{version}", "",
              "Markers: `[ ]` pending · `[~]` in progress · `[x]` done · `[!]` blocked · `[→]` revision", ""]
    for task in tasks:
        extras = []
        if task.depends_on:
            extras.append("after " + ", ".join(task.depends_on))
        if task.revision_of:
            extras.append(f"revision of {task.revision_of}")
        if task.model:
            extras.append(f"model: {task.model}")
        tail = f" ({'; '.join(extras)})" if extras else ""
        lines.append(f"- {task.state.marker} {task.id} {task.title} — @{task.assignee}{tail}")
        if task.result_status:
            lines.append(f"  - result: {task.result_status.value}" + (f" — {task.result_summary}" if task.result_summary else ""))
        if task.stalled_at and task.state is TaskState.IN_PROGRESS:  # a note, not a state: the marker stays [~]
            lines.append(f"  - stalled since {task.stalled_at}: no progress for two heartbeat intervals")
        note = stuck_note(task)
        if note:
            lines.append(f"  - stuck: {note}")
    lines.append("")
    return "\n".join(lines)


#: Fill and stroke of each task state in the Mermaid graph (`hiclaw project show --mermaid`).
MERMAID_STYLES = {
    "pending": "fill:#f5f5f5,stroke:#9e9e9e", "in_progress": "fill:#e3f2fd,stroke:#1e88e5",
    "review": "fill:#fff8e1,stroke:#f9a825", "done": "fill:#e8f5e9,stroke:#43a047",
    "blocked": "fill:#ffebee,stroke:#e53935", "revision": "fill:#f3e5f5,stroke:#8e24aa",
    "cancelled": "fill:#eeeeee,stroke:#616161,stroke-dasharray:4",
}


def mermaid_text(text: str, limit: int = 60) -> str:
    """An agent's words as a Mermaid label: one line, quotes and angle brackets as entities."""
    line = "".join(c for c in " ".join(str(text).split()) if c.isprintable())  # no terminal escapes
    line = line if len(line) <= limit else line[: limit - 1] + "…"
    return line.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def render_mermaid(project: Project, tasks: Sequence[Task]) -> str:
    """The plan as a Mermaid flowchart: a node per task (id, title, assignee, model, state), an
    edge per dependency, revisions dotted to what they revise, colours by state."""
    known = {t.id for t in tasks}
    lines = ["flowchart TD", f"  %% {mermaid_text(project.id)}: {mermaid_text(project.title, 120)}"]
    for task in tasks:
        node = task.id.replace("-", "_")
        label = (f"{mermaid_text(task.id)}: {mermaid_text(task.title)}<br/>{mermaid_text(task.assignee)}"
                 + (f" · {mermaid_text(task.model)}" if task.model else "") + f" · {task.state.value}")
        lines.append(f'  {node}["{label}"]:::{task.state.value}')
    for task in tasks:
        for dep in task.depends_on:
            if dep in known:
                lines.append(f"  {dep.replace('-', '_')} --> {task.id.replace('-', '_')}")
        if task.revision_of in known:
            lines.append(f"  {task.revision_of.replace('-', '_')} -.->|revision| {task.id.replace('-', '_')}")
    lines += [f"  classDef {state} {style}" for state, style in MERMAID_STYLES.items()]
    return "\n".join(lines) + "\n"
