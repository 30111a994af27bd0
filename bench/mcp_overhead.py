"""Latency the embedded gateway adds to an MCP tool call, beside calling the same server directly.

Starts the tests' tracker (the demo's MCP server, official SDK) over Streamable HTTP with a
bearer token, and the embedded gateway in this process with it as ``[mcp.tracker]`` (the gateway
adds the token). Then the official SDK client calls the same cheap tool (``list_issues`` on an
empty tracker) through both paths — directly, and through ``/mcp/tracker`` with a consumer token
— alternating, after a warm-up, in the current protocol revision (2026-07-28, one HTTP request per
call). Prints p50/p99 per path and the difference; the gateway's own work per call is the consumer
check, the grant filter, the redaction and the audit row, plus one more HTTP hop on loopback.

No bar in DESIGN section 9 for MCP; the model path's bar (≤ 2 ms p50 added) is the reference.

    .venv/bin/python bench/mcp_overhead.py [--calls 300]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

ROOT = Path(__file__).resolve().parent.parent
TRACKER = ROOT / "tests" / "mcp_servers" / "tracker.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(calls: int) -> None:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    from hiclaw.config import HiclawConfig
    from hiclaw.host import ComponentContext, PluginHost
    from hiclaw.plugins.gateways import embedded

    token = "bench-" + secrets.token_hex(12)
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="hiclaw-mcp-bench-"))
    server = subprocess.Popen([sys.executable, str(TRACKER), "http", str(port), token],
                              env={"TRACKER_FILE": str(home / "issues.jsonl"), "PATH": "/usr/bin:/bin"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    direct_url = f"http://127.0.0.1:{port}/mcp"
    config = HiclawConfig.model_validate({"mcp": {"tracker": {"url": direct_url, "secret": "tracker_token",
                                                              "workers": ["bench"]}}})
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded)],
                      secret_source=lambda n: SecretStr(token) if n == "tracker_token" else None)
    gateway = host.create("gateway", "embedded-gateway", {"port": 0}, ComponentContext(home=home, config=config))
    try:
        for _ in range(600):
            try:
                async with httpx2.AsyncClient() as http:
                    if (await http.post(direct_url, json={})).status_code == 401:
                        break
            except httpx2.HTTPError:
                await asyncio.sleep(0.05)  # polling a subprocess's port until it listens
        await gateway.start()
        consumer = await gateway.mint_token("bench")
        paths = {"direct": (direct_url, token), "gateway": (f"http://127.0.0.1:{gateway.port}/mcp/tracker", consumer)}
        clients: dict[str, Any] = {}
        timings: dict[str, list[float]] = {name: [] for name in paths}
        async with contextlib.AsyncExitStack() as stack:
            for name, (url, bearer) in paths.items():
                clients[name] = await stack.enter_async_context(Client(streamable_http_client(
                    url, http_client=httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"})), mode="auto"))
            for i in range(calls + 30):
                for name in (("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")):
                    started = time.perf_counter()
                    result = await clients[name].call_tool("list_issues", {})
                    elapsed = (time.perf_counter() - started) * 1000
                    assert not result.is_error
                    if i >= 30:  # warm-up
                        timings[name].append(elapsed)
        print(f"MCP tool call (list_issues), {calls} calls per path, alternating, protocol 2026-07-28")
        print(f"  {'path':8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
        for name, values in timings.items():
            print(f"  {name:8} {pct(values, 50):8.2f} {pct(values, 99):8.2f} {statistics.mean(values):8.2f}")
        added50 = pct(timings["gateway"], 50) - pct(timings["direct"], 50)
        added99 = pct(timings["gateway"], 99) - pct(timings["direct"], 99)
        print(f"  added by the gateway: p50 {added50:+.2f} ms, p99 {added99:+.2f} ms "
              "(reference: the model path's bar, <= 2 ms p50)")
        audited = len(await gateway.mcp_calls(limit=100000))
        print(f"  audit rows written: {audited}")
    finally:
        try:
            await gateway.stop()
            gateway.store.close()
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    asyncio.run(main(parser.parse_args().calls))
