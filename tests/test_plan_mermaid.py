"""``hiclaw project show --mermaid``: the plan as a Mermaid flowchart, from the state DB (issue 18's
picture of the plan), with agents' words made safe as labels."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from hiclaw.cli import cli
from hiclaw.models import TaskState
from hiclaw.state import StateDB, Task


def test_the_plan_as_a_graph(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "state.db")
    project = state.create_project("Launch", "ship it")
    state.add_tasks(project.id, [
        Task(id="task-001", title="Research", assignee="alex", model="smart"),
        Task(id="task-002", title='Build "the" <core>\x1b[31m', assignee="sam", depends_on=["task-001"]),
        Task(id="task-003", title="Fix it", assignee="sam", revision_of="task-002", depends_on=["task-001"]),
    ])
    state.update_task("task-001", state=TaskState.DONE)
    state.close()
    result = CliRunner().invoke(cli, ["project", "show", project.id, "--mermaid"], env={"HICLAW_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "flowchart TD"
    assert '  task_001["task-001: Research<br/>alex · smart · done"]:::done' in lines
    assert '  task_002["task-002: Build #quot;the#quot; #lt;core#gt;[31m<br/>sam · pending"]:::pending' in lines
    assert "  task_001 --> task_002" in lines and "  task_002 -.->|revision| task_003" in lines
    assert any(line.startswith("  classDef done ") for line in lines)
    assert "\x1b" not in result.output
