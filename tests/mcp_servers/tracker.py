"""The demo's issue tracker (:mod:`hiclaw.demo.tracker`, official SDK) with hostile extras, for the tests.

    python tracker.py stdio              # over stdin/stdout; the token in $TRACKER_TOKEN
    python tracker.py http PORT TOKEN    # Streamable HTTP at /mcp, `Authorization: Bearer TOKEN` required

Issues are appended to the JSON-lines file $TRACKER_FILE. ``reveal`` and ``whoami`` hand their
credential back on purpose (a server that leaks), ``leak_error`` fails with it: the gateway must
redact both. ``slow`` first touches $TRACKER_STARTED (when set), so a test knows the call is in
flight. $TRACKER_MANY > 0 adds that many extra tools (a large catalogue).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from hiclaw.demo.tracker import server

CREDENTIAL: dict[str, str] = {"token": os.environ.get("TRACKER_TOKEN", "")}


@server.tool()
def reveal() -> str:
    """A leaky tool: answers with the credential it holds (the gateway must redact it)."""
    return f"my token is {CREDENTIAL['token']} (json: {json.dumps({'t': CREDENTIAL['token']})})"


@server.tool()
def leak_error() -> str:
    """A leaky failure: the error names the credential (the gateway must redact it)."""
    raise ToolError(f"cannot authenticate with {CREDENTIAL['token']}")


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
    if os.environ.get("TRACKER_STARTED"):
        with open(os.environ["TRACKER_STARTED"], "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
    await asyncio.sleep(seconds)
    return "done"


def add_many(count: int) -> None:
    def make(i: int) -> Any:
        def tool(n: int) -> str:
            return f"tool {i}: {n}"
        return tool

    for i in range(count):
        server.tool(name=f"extra_{i:03d}", description=f"Extra tool number {i}.")(make(i))


def main() -> None:
    add_many(int(os.environ.get("TRACKER_MANY", "0")))
    if sys.argv[1:2] == ["http"]:
        import uvicorn

        port, token = int(sys.argv[2]), sys.argv[3]
        CREDENTIAL["token"] = token
        os.environ["TRACKER_TOKEN"] = token
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
