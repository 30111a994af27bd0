"""End to end: a bwrap worker with no network calls an egress route with ``http_request``.

A real team (Synapse, the embedded gateway, the scripted model) with one route to an aiohttp API
on the host's loopback, whose secret is a canary in ``secrets.toml``. The granted worker's
script calls the route through its gateway bridge; the API echoes what it got (the credential
included). The upstream must have the canary; the worker's tool result, the model's inputs, its
files, its log and every Matrix message must not. A second worker, granted nothing, is offered
no ``http_request`` tool at all.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.testing.team import running_team, wait_until

pytestmark = pytest.mark.skipif(bwrap_unavailable() is not None, reason=str(bwrap_unavailable()))

WORKER, OTHER = "eve", "bob"


def scenario() -> dict[str, Any]:
    call = [{"name": "http_request", "arguments": {"route": "api", "path": "/allowed/echo", "query": {"q": "1"}}}]
    return {"agents": {WORKER: {"turns": [
        {"when": {"contains": "call the api"}, "tool_calls": call},
        {"when": {"tool_result": "http_request", "regex": r"(?s)(?P<answer>.*)"}, "text": "called: {{answer}}"},
    ]}, "*": {"default": {"text": "ok"}}}}


async def test_a_sandboxed_worker_calls_its_route_and_never_sees_the_secret(tmp_path: Path):
    canary = "hcanary-" + secrets.token_hex(16)
    received: list[dict[str, Any]] = []

    async def echo(request: web.Request) -> web.Response:
        seen = {"target": request.raw_path, "headers": dict(request.headers.items())}
        received.append(seen)
        return web.json_response(seen, headers={"Set-Cookie": "s=1", "X-Echo": request.headers.get("Authorization", "")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}"
    egress = {"api": {"base_url": upstream, "secret": "api_token", "header": "Authorization",
                      "format": "Bearer {secret}", "paths": ["/allowed"], "workers": [WORKER]}}
    try:
        async with running_team(tmp_path / "home", scenario(), secrets={"api_token": canary}, egress=egress) as team:
            plane = team.plane
            await plane.provisioner.create_worker(WORKER, role="caller")
            await plane.provisioner.create_worker(OTHER, role="bystander")
            room = await plane.chat.worker_room(WORKER)
            await wait_until(lambda: room in team.admin.room_names, what="the admin in the worker's room")
            await team.admin.send(room, f"@{WORKER} please call the api", mention=team.user_id(WORKER))
            reply = await team.wait_for_message("called:", sender=WORKER, timeout=120)

            assert len(received) == 1
            assert received[0]["headers"]["Authorization"] == f"Bearer {canary}"
            assert received[0]["target"] == "/allowed/echo?q=1"
            answer = team.model.engine.stats()["agents"][WORKER]["variables"]["answer"]
            assert '"status": 200' in answer or '"status":200' in answer, answer
            assert "[redacted]" in answer and canary not in answer
            assert "Set-Cookie" not in answer and "s=1" not in answer

            # Only the granted worker is told of a route (and so offered the tool), and never its secret.
            assert all("http_request" in record["tools"] for record in team.model.recent if record["agent"] == WORKER)
            runs = {name: json.loads(json.loads(plane.provisioner.run_record_path(name).read_text())["runtime"])
                    for name in (WORKER, OTHER)}
            assert [grant["name"] for grant in runs[WORKER]["egress"]] == ["api"]
            assert runs[OTHER]["egress"] == []
            assert canary not in json.dumps(runs)
            rows = await plane.gateway.egress_calls()
            assert [(r["consumer"], r["route"], r["status"]) for r in rows] == [(WORKER, "api", 200)]

            seen = {"reply": reply.body.encode()}
            for record in team.model.recent:
                seen[f"model request {record['agent']} #{record['call']}"] = json.dumps(record).encode()
            for path in (team.home / "logs").rglob("*"):
                if path.is_file():
                    seen[str(path)] = path.read_bytes()
            for path in (team.home / "workers").rglob("*"):
                if path.is_file():
                    seen[str(path)] = path.read_bytes()
            for message in team.admin.messages:
                seen[f"matrix {message.event_id}"] = json.dumps(message.content).encode()
            leaked = sorted(where for where, data in seen.items() if canary.encode() in data)
            assert not leaked, f"the canary leaked into: {leaked}"
    finally:
        await runner.cleanup()
