"""Latency the embedded gateway adds, beside calling the same upstream directly, in one run.

Starts the scripted model server and the gateway as real processes (``hiclaw model
serve-scripted`` and ``hiclaw gateway serve``), then drives both with the same OpenAI request
from an aiohttp client at concurrency 1 and 50, and prints p50/p99 and requests/s side by side.

Two upstream behaviours are measured:

* **model-like**: every answer takes 100 ms ± 50 ms (the spread is fixed per call, so it is the
  same for both paths; without it 50 callers fall into lockstep and arrive as one burst). The
  bar's case: a real model takes this long or (much) longer.
* **instant** (0 ms): a saturation test. At 50 in flight with an upstream that answers at once
  every process is CPU-bound on 2 cores, so latency measures queueing, i.e. throughput — read
  its requests/s.

Every figure is the time a call spent *outside the model*: its latency minus the delay the scripted
model was told to take for that very call (known from the call's id; 0 for the instant upstream).
"Added" is the gateway path's p50 (p99) minus the direct path's. CPU/call is the gateway
process's CPU time per call, which does not depend on what else runs on the machine.

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

from hiclaw.scripted.engine import jittered_delay
from hiclaw.testing import clean_env
from hiclaw.testing.gateway import start_listening_process as start

PROVIDER_KEY = "sk-bench-provider-key-0123456789"
HICLAW = [sys.executable, "-m", "hiclaw"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(url: str, headers: dict[str, str], body: bytes, *, concurrency: int, requests: int,
                delay: tuple[int, int] = (0, 0)) -> tuple[list[float], list[float], float]:
    """Send ``requests`` calls, ``concurrency`` in flight: latencies (ms), time outside the model (ms), calls/s."""
    latencies: list[float] = []
    outside: list[float] = []
    remaining = requests
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    raw = await response.read()
                elapsed = (time.perf_counter() - started) * 1000
                if response.status != 200:
                    raise SystemExit(f"{url}: HTTP {response.status}: {raw[:300]!r}")
                agent, call = json.loads(raw)["id"].removeprefix("chatcmpl-scripted-").rsplit("-", 1)
                latencies.append(elapsed)
                outside.append(elapsed - jittered_delay(delay[0], delay[1], agent, int(call)))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = requests / (time.perf_counter() - started)
    return latencies, outside, rate


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(paths: dict[str, tuple[str, dict[str, str]]], body: bytes, *, concurrency: int, requests: int,
                  delay: tuple[int, int], gateway_pid: int) -> tuple[dict[str, tuple[list[float], list[float], float]], float]:
    """Both paths' results, and the gateway process's CPU time per call (ms)."""
    results: dict[str, tuple[list[float], list[float], float]] = {name: ([], [], 0.0) for name in paths}
    for url, headers in paths.values():  # warm-up: connections, caches
        await drive(url, headers, body, concurrency=concurrency, requests=min(requests, 2 * concurrency + 20), delay=delay)
    cpu = 0.0
    rounds = 4 if requests >= 1000 else 2
    for _ in range(rounds):  # alternate short rounds so load from other processes hits both sides alike
        for name, (url, headers) in paths.items():
            before = cpu_seconds(gateway_pid)
            latencies, outside, rate = await drive(url, headers, body, concurrency=concurrency,
                                                   requests=requests // rounds, delay=delay)
            if name == "gateway":
                cpu += cpu_seconds(gateway_pid) - before
            old = results[name]
            results[name] = (old[0] + latencies, old[1] + outside, old[2] + rate / rounds)
    return results, 1000 * cpu / len(results["gateway"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="calls per side at concurrency 50 (default 2000)")
    parser.add_argument("--delay-ms", type=int, default=100, help="model-like upstream latency (default 100, ± half)")
    parser.add_argument("--litellm", action="store_true", help="route through litellm (direct_openai = false)")
    args = parser.parse_args()
    model_delay = (args.delay_ms, args.delay_ms // 2)

    work = Path(tempfile.mkdtemp(prefix="hiclaw-bench-gw-"))
    home = work / "home"
    home.mkdir()
    env = clean_env()
    env.update(HICLAW_HOME=str(home), BENCH_PROVIDER_KEY=PROVIDER_KEY)
    usage = {"prompt_tokens": 20, "completion_tokens": 5}
    scenario = {"name": "bench", "agents": {
        "model-like": {"default": {"text": "ok", "delay_ms": model_delay[0], "delay_jitter_ms": model_delay[1],
                                   "usage": usage}},
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
    print(f"gateway added latency — scripted upstream, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} "
          f"at start), {'litellm' if args.litellm else 'direct OpenAI-compatible'} upstream path, aiohttp client; "
          "milliseconds outside the model")
    header = (f"{'upstream':<18}{'conc':>5}{'calls':>7} | {'direct p50':>10}{'p99':>8}{'req/s':>7} | "
              f"{'gateway p50':>11}{'p99':>8}{'req/s':>7} | {'added p50':>9}{'p99':>7} | {'gw CPU/call':>11}  bar")
    print(header)
    print("-" * len(header))
    verdict = True
    try:
        for agent, label, delay in (("model-like", f"model {model_delay[0]}±{model_delay[1]} ms", model_delay),
                                    ("instant", "instant (saturat.)", (0, 0))):
            body = json.dumps({"model": "bench", "user": agent, "messages": [
                {"role": "user", "content": "How long does the gateway take? " * 8}]}).encode()
            paths = {"direct": (f"{upstream}/chat/completions", {"Authorization": f"Bearer {PROVIDER_KEY}",
                                                                 "Content-Type": "application/json"}),
                     "gateway": (f"{base_url}/chat/completions", {"Authorization": f"Bearer {tokens[agent]}",
                                                                  "Content-Type": "application/json"})}
            for concurrency in (1, 50):
                calls = args.requests if concurrency == 50 else max(200, args.requests // 10)
                if agent == "model-like" and concurrency == 1:
                    calls = min(calls, max(100, 20_000 // max(model_delay[0], 1)))  # keep the serial run short
                results, cpu_ms = asyncio.run(measure(paths, body, concurrency=concurrency, requests=calls, delay=delay,
                                                      gateway_pid=gateway.pid))
                (d_lat, d_out, d_rate), (_g_lat, g_out, g_rate) = results["direct"], results["gateway"]
                added50 = percentile(g_out, 0.5) - percentile(d_out, 0.5)
                added99 = percentile(g_out, 0.99) - percentile(d_out, 0.99)
                bar = ""
                if agent == "model-like" and concurrency == 50:
                    ok = added50 <= 2.0 and added99 <= 5.0
                    verdict = verdict and ok
                    bar = f"≤2/≤5 ms {'PASS' if ok else 'FAIL'}"
                print(f"{label:<18}{concurrency:>5}{len(d_lat):>7} | {percentile(d_out, 0.5):>10.2f}"
                      f"{percentile(d_out, 0.99):>8.2f}{d_rate:>7.0f} | {percentile(g_out, 0.5):>11.2f}"
                      f"{percentile(g_out, 0.99):>8.2f}{g_rate:>7.0f} | {added50:>9.2f}{added99:>7.2f} | {cpu_ms:>8.2f} ms  {bar}")
    finally:
        for proc in (gateway, scripted):
            proc.terminate()
            proc.wait(timeout=20)
    print(f"bar (added at 50 concurrent, model-like upstream): {'PASS' if verdict else 'FAIL'}; "
          f"load average {os.getloadavg()[0]:.1f} at the end — other processes on these CPUs delay every hop, and "
          f"the gateway path has two more hops; logs in {work}")


if __name__ == "__main__":
    main()
