"""Latency the embedded gateway adds, beside calling the same upstream directly, in one run.

Starts the scripted model server and the gateway as real processes (``hiclaw model
serve-scripted`` and ``hiclaw gateway serve``), then drives both with the same OpenAI request
from an aiohttp client at concurrency 1 and 50, and prints p50/p99 and requests/s side by side.

Two upstream behaviours are measured:

* **model-like** (default 100 ms per answer): the bar's case. A real model takes hundreds of
  milliseconds or more; the gateway's cost shows as the difference between the two columns.
* **instant** (0 ms): a saturation test. At 50 in flight with an upstream that answers at once,
  every process is CPU-bound on 2 cores, so latency measures queueing, i.e. throughput — read
  its requests/s, not its "added" columns.

Bar (DESIGN section 9): added ≤ 2 ms p50 and ≤ 5 ms p99 at 50 concurrent.

    .venv/bin/python bench/gateway_latency.py [--requests 2000] [--delay-ms 100] [--litellm]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from hiclaw.testing.gateway import start_listening_process as start

PROVIDER_KEY = "sk-bench-provider-key-0123456789"
HICLAW = [sys.executable, "-m", "hiclaw"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def drive(url: str, headers: dict[str, str], body: bytes, *, concurrency: int, requests: int) -> tuple[list[float], float]:
    """Send ``requests`` calls with ``concurrency`` in flight; latencies in ms and requests/s."""
    latencies: list[float] = []
    remaining = requests
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise SystemExit(f"{url}: HTTP {response.status}: {(await response.text())[:300]}")
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, requests / elapsed


async def measure(direct: tuple[str, dict[str, str]], gateway: tuple[str, dict[str, str]], body: bytes, *,
                  concurrency: int, requests: int) -> dict[str, tuple[list[float], float]]:
    results: dict[str, tuple[list[float], float]] = {"direct": ([], 0.0), "gateway": ([], 0.0)}
    for name, (url, headers) in (("direct", direct), ("gateway", gateway)):
        await drive(url, headers, body, concurrency=concurrency, requests=min(requests, 4 * concurrency + 20))  # warm-up
    # Alternate halves so drift on a shared machine hits both sides alike.
    for _ in range(2):
        for name, (url, headers) in (("direct", direct), ("gateway", gateway)):
            latencies, rate = await drive(url, headers, body, concurrency=concurrency, requests=requests // 2)
            results[name] = (results[name][0] + latencies, results[name][1] + rate / 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="calls per side at concurrency 50 (default 2000)")
    parser.add_argument("--delay-ms", type=int, default=100, help="model-like upstream latency (default 100)")
    parser.add_argument("--litellm", action="store_true", help="route through litellm (direct_openai = false)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hiclaw-bench-gw-"))
    home = work / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HICLAW_")}
    env.update(HICLAW_HOME=str(home), BENCH_PROVIDER_KEY=PROVIDER_KEY)
    usage = {"prompt_tokens": 20, "completion_tokens": 5}
    scenario = {"name": "bench", "agents": {
        "model-like": {"default": {"text": "ok", "delay_ms": args.delay_ms, "delay_jitter_ms": args.delay_ms // 2, "usage": usage}},
        "instant": {"default": {"text": "ok", "usage": usage}}}}
    (work / "scenario.json").write_text(json.dumps(scenario))
    scripted, upstream = start([*HICLAW, "model", "serve-scripted", str(work / "scenario.json"), "--port", "0",
                                "--api-key-env", "BENCH_PROVIDER_KEY"], env, work / "scripted.log")
    (home / "config.toml").write_text(
        f'[gateway.settings]\nport = 0\ndirect_openai = {"false" if args.litellm else "true"}\n'
        f'[models.bench]\nmodel = "openai/scripted"\napi_base = "{upstream}"\napi_key_secret = "provider_key"\n'
        "input_cost_per_mtok = 3.0\noutput_cost_per_mtok = 15.0\n")
    (home / "secrets.toml").write_text(f'provider_key = "{PROVIDER_KEY}"\n')
    (home / "secrets.toml").chmod(0o600)
    gateway, base_url = start([*HICLAW, "gateway", "serve"], env, work / "gateway.log")
    tokens = {agent: subprocess.run([*HICLAW, "gateway", "token", "mint", agent], env=env, capture_output=True,
                                    text=True, check=True).stdout.strip() for agent in ("model-like", "instant")}
    load = os.getloadavg()[0]
    print(f"gateway added latency — scripted upstream, {os.cpu_count()} CPUs (load average {load:.1f} at start), "
          f"{'litellm' if args.litellm else 'direct OpenAI-compatible'} upstream path, aiohttp client in this process")
    header = (f"{'upstream':<16}{'conc':>5}{'calls':>7} | {'direct p50':>10}{'p99':>8}{'req/s':>8} | "
              f"{'gateway p50':>11}{'p99':>8}{'req/s':>8} | {'added p50':>9}{'p99':>8}  bar")
    print(header)
    print("-" * len(header))
    verdict = True
    try:
        for agent, label in (("model-like", f"model {args.delay_ms} ms"), ("instant", "instant (sat.)")):
            body = json.dumps({"model": "bench", "user": agent, "messages": [
                {"role": "user", "content": "How long does the gateway take? " * 8}]}).encode()
            direct = (f"{upstream}/chat/completions", {"Authorization": f"Bearer {PROVIDER_KEY}",
                                                       "Content-Type": "application/json"})
            via = (f"{base_url}/chat/completions", {"Authorization": f"Bearer {tokens[agent]}",
                                                   "Content-Type": "application/json"})
            for concurrency in (1, 50):
                calls = args.requests if concurrency == 50 else max(200, args.requests // 10)
                if agent == "model-like" and concurrency == 1:
                    calls = min(calls, max(100, 20_000 // max(args.delay_ms, 1)))  # keep the serial run short
                results = asyncio.run(measure(direct, via, body, concurrency=concurrency, requests=calls))
                (d_lat, d_rate), (g_lat, g_rate) = results["direct"], results["gateway"]
                d50, d99, g50, g99 = (percentile(d_lat, 0.5), percentile(d_lat, 0.99),
                                      percentile(g_lat, 0.5), percentile(g_lat, 0.99))
                bar = ""
                if agent == "model-like" and concurrency == 50:
                    ok = g50 - d50 <= 2.0 and g99 - d99 <= 5.0
                    verdict = verdict and ok
                    bar = f"≤2/≤5 ms {'PASS' if ok else 'FAIL'}"
                print(f"{label:<16}{concurrency:>5}{len(d_lat):>7} | {d50:>10.2f}{d99:>8.2f}{d_rate:>8.0f} | "
                      f"{g50:>11.2f}{g99:>8.2f}{g_rate:>8.0f} | {g50 - d50:>9.2f}{g99 - d99:>8.2f}  {bar}")
    finally:
        for proc in (gateway, scripted):
            proc.terminate()
            proc.wait(timeout=20)
    print(f"bar (added at 50 concurrent, model-like upstream): {'PASS' if verdict else 'FAIL'}; "
          f"load average {os.getloadavg()[0]:.1f} at the end (other processes on these CPUs add scheduling delay to "
          f"every hop, and the gateway path has two more); logs in {work}")


if __name__ == "__main__":
    main()
