"""Every built-in tool's name, description and JSON Schema, pinned.

``tests/data/tool_schemas.json`` was written from the hand-written schemas before the tools were
derived from their typed signatures (issue 16, part 2), so this test proves the derivation shows
the models exactly what they saw before — and it notices any later change to a tool's signature
or docstring. A change made on purpose: update the table (the failure prints the tool's new entry).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hiclaw.control.access import access_tools
from hiclaw.control.schedule_tools import schedule_tools
from hiclaw.manager.memory import manager_skill_names
from hiclaw.manager.tools import manager_tools
from hiclaw.models import ToolSpec
from hiclaw.registry.tools import skill_tool_specs
from hiclaw.worker.mcp import DIRECT_LIMIT, McpTool, WorkerMcp
from hiclaw.worker.spec import EgressGrant
from hiclaw.worker.tools import WorkerTools

TABLE = Path(__file__).parent / "data" / "tool_schemas.json"
SKILL_NAMES = "<the Manager's bundled skill names>"  # data, not signature: compared with the live list


def built_in_tools() -> dict[str, list[ToolSpec]]:
    plane = SimpleNamespace(engine=None, state=None, provisioner=None, config=None, scheduler=SimpleNamespace(),
                            extra_manager_tools=lambda: [])
    return {
        "manager": manager_tools(plane),
        "scheduler": schedule_tools(SimpleNamespace()),  # type: ignore[arg-type]
        "worker": WorkerTools(SimpleNamespace(name="alice")).specs(),
        "registry": skill_tool_specs(SimpleNamespace()),  # type: ignore[arg-type]
        # A worker granted an egress route gets one more tool (issue 17, part 3); the others' lists stay as above.
        "worker_egress": [t for t in WorkerTools(SimpleNamespace(name="alice", spec=SimpleNamespace(egress=[
            EgressGrant(name="github", description="GitHub REST API", methods=["GET", "POST"], paths=["/repos/"])]))
        ).specs() if t.name == "http_request"],
        # The Manager's grant tools, when MCP servers or egress routes are configured (issue 17).
        "manager_access": access_tools(SimpleNamespace()),  # type: ignore[arg-type]
        # A worker with a big MCP catalogue looks tools up and calls them (its small ones are the servers' own).
        "worker_mcp": big_catalogue().specs(None),
    }


def big_catalogue() -> WorkerMcp:
    mcp = WorkerMcp(SimpleNamespace())
    mcp.servers = {"tracker": "the team's issue tracker"}
    mcp.tools = [McpTool("tracker", f"tool_{i}", "", {"type": "object", "properties": {}}) for i in range(DIRECT_LIMIT + 1)]
    return mcp


def entry(tool: ToolSpec) -> dict[str, Any]:
    return json.loads(json.dumps({"description": tool.description, "parameters": tool.parameters}))


EXPECTED: dict[str, dict[str, Any]] = json.loads(TABLE.read_text(encoding="utf-8"))
CASES = [(group, name) for group, tools in EXPECTED.items() for name in tools]


@pytest.fixture(scope="module")
def derived() -> dict[str, dict[str, ToolSpec]]:
    return {group: {t.name: t for t in tools} for group, tools in built_in_tools().items()}


def test_the_same_tools_in_each_group(derived):
    assert {group: sorted(tools) for group, tools in derived.items()} == {
        group: sorted(tools) for group, tools in EXPECTED.items()}


@pytest.mark.parametrize(("group", "name"), CASES, ids=[f"{g}:{n}" for g, n in CASES])
def test_schema_is_what_the_model_saw_before(derived, group, name):
    got = entry(derived[group][name])
    if name == "skills_read" and group == "manager":
        assert got["parameters"]["properties"]["name"]["enum"] == manager_skill_names()
        got["parameters"]["properties"]["name"]["enum"] = SKILL_NAMES
    assert got == EXPECTED[group][name], f"new entry for {group}:{name}:\n{json.dumps(got, indent=1, sort_keys=True)}"
