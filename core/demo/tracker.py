"""The demo team's issue tracker: a small MCP server (official SDK) the gateway runs for the team.

    python -m hiclaw.demo.tracker        # stdio; the credential in $TRACKER_TOKEN, issues in $TRACKER_FILE

It stands for a real one (GitHub, Linear…): it refuses writes without its credential, which only
the gateway holds — the demo's worker files an issue through ``/mcp/tracker`` without ever seeing
it. Issues are JSON lines in ``$TRACKER_FILE``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

server = MCPServer("tracker", instructions="The team's issue tracker: open and list issues.")


def credential() -> str:
    return os.environ.get("TRACKER_TOKEN", "")


def store() -> Path:
    return Path(os.environ.get("TRACKER_FILE") or Path.cwd() / "tracker.jsonl")


def issues() -> list[dict[str, Any]]:
    path = store()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
def create_issue(title: str, body: str = "", labels: list[str] | None = None) -> dict[str, Any]:
    """Open an issue in the tracker; returns its number."""
    if not credential():
        raise ValueError("no credential: the tracker refuses anonymous writes")
    issue = {"number": len(issues()) + 1, "title": title, "body": body, "labels": sorted(labels or [])}
    with store().open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(issue) + "\n")
    return {"number": issue["number"], "title": title}


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def list_issues(label: str | None = None) -> list[dict[str, Any]]:
    """The issues in the tracker (those with `label`, if given)."""
    return [i for i in issues() if label is None or label in i.get("labels", [])]


def main() -> None:
    server.run("stdio")


if __name__ == "__main__":
    main()
