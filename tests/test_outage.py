"""A worker's calls wait out a control plane that is away (restarting after a crash) instead of
failing its turn: they retry within ``outage_grace`` and retry at once on ``wake()``."""
from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from hiclaw.agent.client import GatewayError
from hiclaw.errors import HiclawError
from hiclaw.worker.control import ControlClient
from hiclaw.worker.http import WorkerGatewayClient

REPLY = {"choices": [{"message": {"role": "assistant", "content": "back"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "model": "m"}


def reserved_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def serve(port: int) -> web.AppRunner:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response(REPLY)

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.mark.parametrize("kind", ["gateway", "control"])
async def test_a_call_waits_for_the_service_and_wake_retries_at_once(kind):
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1" if kind == "gateway" else f"http://127.0.0.1:{port}"
    client = (WorkerGatewayClient(url, "t", outage_grace=600) if kind == "gateway"
              else ControlClient(url, "t", outage_grace=600))

    async def call():
        if kind == "gateway":
            return (await client.chat(model="m", messages=[{"role": "user", "content": "hi"}])).content
        await client.ready({"name": "w"})
        return "ready"

    pending = asyncio.create_task(call())
    for _ in range(3):  # three attempts cut off (a control plane killed and not back yet)
        conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 30)
        conn.close()
    listener.close()
    # The back-off after the third failure: 4 s (gateway), 2 s (control API).
    runner = await serve(port)
    try:
        woken = loop.time()
        client.wake()  # what the worker does when the control plane says it is back
        result = await asyncio.wait_for(pending, 30)
        assert loop.time() - woken < 1.5
        assert result == ("back" if kind == "gateway" else "ready")
    finally:
        await client.aclose()
        await runner.cleanup()


@pytest.mark.parametrize("kind", ["gateway", "control"])
async def test_without_grace_an_unreachable_service_is_an_error(kind):
    port = reserved_port()
    if kind == "gateway":
        client = WorkerGatewayClient(f"http://127.0.0.1:{port}/v1", "t", retries=0)
        with pytest.raises(GatewayError, match="cannot reach the gateway"):
            await client.chat(model="m", messages=[{"role": "user", "content": "hi"}])
    else:
        client = ControlClient(f"http://127.0.0.1:{port}", "t")
        with pytest.raises(HiclawError, match="cannot reach the control plane"):
            await client.ready({"name": "w"})
    await client.aclose()
