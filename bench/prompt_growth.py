"""Worker prompt tokens at task 50 vs task 1 of a long project (bar: ≤ 1.2×).

A real team (embedded Synapse, the gateway with the scripted model, a bwrap worker) runs a
50-task chain for one worker; after every task the worker also appends a line to its memory, as
a worker that learns would. The figure is the prompt size of the first model call of each task,
read from the gateway's ledger. Baseline, from the same run: a single agent that keeps its whole
conversation (every earlier task's exchange stays in its prompt) — its task-N prompt is the sum of
the exchanges of tasks 1..N-1 plus task N's own first prompt.

    .venv/bin/python bench/prompt_growth.py [--tasks 50]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from hiclaw.testing.team import running_team, wait_until


def scenario() -> dict:
    return {"agents": {
        "manager": {"rules": [
            {"when": {"role": "user", "regex": r"reported \*\*(?P<task>task-\d+)\*\*"},
             "tool_calls": [{"name": "accept_task", "arguments": {"task_id": "{{task}}"}}]},
            {"when": {"tool_result": "accept_task"}, "text": "ok"},
        ], "default": {"text": "ok"}},
        "sam": {"rules": [
            {"when": {"role": "user", "regex": r"@sam \*\*(?P<task>task-\d+)\*\* is yours"},
             "tool_calls": [{"name": "read_file", "arguments": {"path": "shared/tasks/{{task}}/spec.md"}}]},
            {"when": {"tool_result": "read_file", "regex": r"task: (?P<task>task-\d+)"},
             "tool_calls": [
                 {"name": "write_file", "arguments": {"path": "shared/tasks/{{task}}/workspace/out.md",
                                                      "content": "step {{task}} " + "lorem ipsum " * 200}},
                 {"name": "memory_append", "arguments": {"text": "finished {{task}}: the build needs the cache "
                                                                  "warmed first and the linter before tests"}},
                 {"name": "report_result", "arguments": {"task_id": "{{task}}", "status": "SUCCESS",
                                                         "summary": "step {{task}} done"}}]},
            {"when": {"tool_result": "report_result"}, "text": "done"},
        ]},
    }}


async def main(tasks: int) -> int:
    with tempfile.TemporaryDirectory(prefix="hiclaw-bench-") as tmp:
        async with running_team(Path(tmp) / "home", scenario(), yolo=True) as team:
            plane = team.plane
            await plane.provisioner.create_worker("sam", role="developer")
            project = await plane.engine.create_project("Long project")
            plan = [{"title": f"Step {i}", "assignee": "sam",
                     "depends_on": [f"task-{i - 1:03d}"] if i > 1 else [],
                     "spec": f"Do step {i} of the long project."} for i in range(1, tasks + 1)]
            started = time.perf_counter()
            await plane.engine.propose_plan(project.id, plan)
            await wait_until(lambda: plane.state.project(project.id).state == "done", timeout=60 + 10 * tasks,
                             what=f"{tasks} tasks to be accepted")
            elapsed = time.perf_counter() - started
            rows = await plane.gateway.ledger(limit=100000)
    calls: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        if row["consumer"] == "sam" and row.get("task"):
            calls.setdefault(row["task"], []).append(row)
    order = [f"task-{i:03d}" for i in range(1, tasks + 1)]
    first = [calls[t][0]["prompt_tokens"] for t in order]
    exchange = [sum(r["prompt_tokens"] - (calls[t][i - 1]["prompt_tokens"] if i else 0) + r["completion_tokens"]
                    for i, r in enumerate(calls[t])) for t in order]
    naive_first, naive_last = first[0], sum(exchange[:-1]) + first[-1]
    ratio, naive_ratio = first[-1] / first[0], naive_last / naive_first
    print(f"long project: {tasks} tasks in {elapsed:.1f}s ({len(rows)} model calls)")
    print(f"{'':34} {'task 1':>8} {'task ' + str(tasks):>9} {'ratio':>7}")
    print(f"{'hiclaw worker (fresh turn + memory)':34} {first[0]:>8} {first[-1]:>9} {ratio:>6.2f}x")
    print(f"{'baseline: one growing conversation':34} {naive_first:>8} {naive_last:>9} {naive_ratio:>6.1f}x")
    verdict = "PASS" if ratio <= 1.2 else "FAIL"
    print(f"bar ≤ 1.2x: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    sys.exit(asyncio.run(main(parser.parse_args().tasks)))
