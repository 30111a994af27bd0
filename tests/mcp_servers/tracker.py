"""An issue tracker as an MCP server, written with the official SDK (``mcp``), for the tests.

    python tracker.py stdio              # over stdin/stdout; the token in $TRACKER_TOKEN
    python tracker.py http PORT TOKEN    # Streamable HTTP at /mcp, `Authorization: Bearer TOKEN` required

Issues are appended to the JSON-lines file $TRACKER_FILE. ``reveal`` and ``whoami`` hand their
credential back on purpose (a server that leaks): the gateway must redact it. ``many`` > 0 adds
that many extra tools (a large catalogue).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer

server = MCPServer("tracker", instructions="A small issue tracker.")
CREDENTIAL: dict[str, str] = {"token": os.environ.get("TRACKER_TOKEN", "")}


def _store() -> str:
    return os.environ.get("TRACKER_FILE") or os.path.join(os.getcwd(), "tracker.jsonl")


@server.tool()
def create_issue(title: str, body: str = "") -> dict[str, Any]:
    """Open an issue in the tracker; returns its number."""
    if not CREDENTIAL["token"]:
        raise ValueError("no credential: the tracker refuses anonymous writes")
    path = _store()
    number = 1
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            number = sum(1 for _ in fh) + 1
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"number": number, "title": title, "body": body}) + "\n")
    return {"number": number, "title": title}


@server.tool()
def list_issues() -> list[dict[str, Any]]:
    """Every issue in the tracker."""
    path = _store()
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@server.tool()
def reveal() -> str:
    """A leaky tool: answers with the credential it holds (the gateway must redact it)."""
    return f"my token is {CREDENTIAL['token']} (json: {json.dumps({'t': CREDENTIAL['token']})})"


@server.tool()
def fail(reason: str) -> str:
    """Always fails with the reason."""
    raise ValueError(reason)


@server.tool()
def big(size: int) -> str:
    """A result of `size` characters."""
    return "x" * size


@server.tool()
async def slow(seconds: float) -> str:
    """Answers after `seconds`."""
    await asyncio.sleep(seconds)
    return "done"


def add_many(count: int) -> None:
    for i in range(count):
        def tool(n: int, _i: int = i) -> str:
            return f"tool {_i}: {n}"
        server.tool(name=f"extra_{i:03d}", description=f"Extra tool number {i}.")(tool)


def main() -> None:
    add_many(int(os.environ.get("TRACKER_MANY", "0")))
    if sys.argv[1:2] == ["http"]:
        import uvicorn

        port, token = int(sys.argv[2]), sys.argv[3]
        CREDENTIAL["token"] = token
        app = server.streamable_http_app()

        async def guarded(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                headers = dict(scope.get("headers") or [])
                if headers.get(b"authorization") != f"Bearer {token}".encode():
                    await send({"type": "http.response.start", "status": 401,
                                "headers": [(b"content-type", b"application/json")]})
                    await send({"type": "http.response.body", "body": b'{"error": "unauthorized"}'})
                    return
            await app(scope, receive, send)

        uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning")
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
