"""Cost of the seed workload from the gateway's ledger: model routing beside all-on-smart.

The seed workload (DESIGN section 9): 3 coding tasks of 50k tokens each on a $3/M-token model
(``smart``) and 10 collection tasks of 100k tokens each on a $0.25/M-token model (``cheap``).
This replays those token counts through the real gateway (``hiclaw gateway serve``) in front of
the scripted provider (``hiclaw model serve-scripted``, which reports the scripted usage), once
routed (collection on ``cheap``) and once with everything on ``smart``, and prints what
``hiclaw usage`` says each run cost. Bar: $0.70 routed vs $3.45 all on smart.

    .venv/bin/python bench/routing_cost.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from hiclaw.testing import clean_env
from hiclaw.testing.gateway import start_listening_process as start

HICLAW = [sys.executable, "-m", "hiclaw"]

PROVIDER_KEY = "sk-bench-routing-0123456789"
CODE_TASKS, CODE_TOKENS = 3, (40_000, 10_000)  # prompt + completion = 50k tokens a task
COLLECT_TASKS, COLLECT_TOKENS = 10, (90_000, 10_000)  # 100k tokens a task
PRICES = {"smart": 3.0, "cheap": 0.25}  # USD per million tokens, input and output alike


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="hiclaw-bench-cost-"))
    home = work / "home"
    home.mkdir()
    env = clean_env()
    env.update(HICLAW_HOME=str(home), BENCH_PROVIDER_KEY=PROVIDER_KEY)
    scenario = {"name": "seed-workload", "agents": {
        "coder": {"default": {"text": "patch ready",
                              "usage": dict(zip(("prompt_tokens", "completion_tokens"), CODE_TOKENS, strict=True))}},
        "collector": {"default": {"text": "data collected",
                                  "usage": dict(zip(("prompt_tokens", "completion_tokens"), COLLECT_TOKENS, strict=True))}}}}
    (work / "scenario.json").write_text(json.dumps(scenario))
    scripted, upstream = start([*HICLAW, "model", "serve-scripted", str(work / "scenario.json"), "--port", "0",
                                "--api-key-env", "BENCH_PROVIDER_KEY"], env, work / "scripted.log")
    config = "[gateway.settings]\nport = 0\n"
    for alias, price in PRICES.items():
        config += (f'[models.{alias}]\nmodel = "openai/scripted-{alias}"\napi_base = "{upstream}"\n'
                   f'api_key_secret = "provider_key"\ninput_cost_per_mtok = {price}\noutput_cost_per_mtok = {price}\n')
    (home / "config.toml").write_text(config)
    (home / "secrets.toml").write_text(f'provider_key = "{PROVIDER_KEY}"\n')
    (home / "secrets.toml").chmod(0o600)
    gateway, base_url = start([*HICLAW, "gateway", "serve"], env, work / "gateway.log")
    try:
        tokens = {agent: subprocess.run([*HICLAW, "gateway", "token", "mint", agent], env=env, capture_output=True,
                                        text=True, check=True).stdout.strip() for agent in ("coder", "collector")}
        plan = {"routed": {"coder": "smart", "collector": "cheap"}, "all-smart": {"coder": "smart", "collector": "smart"}}
        with httpx.Client(timeout=60) as http:
            for run, models in plan.items():
                for agent, count in (("coder", CODE_TASKS), ("collector", COLLECT_TASKS)):
                    for n in range(1, count + 1):
                        response = http.post(f"{base_url}/chat/completions", json={
                            "model": models[agent], "messages": [{"role": "user", "content": f"task {n}"}]}, headers={
                            "Authorization": f"Bearer {tokens[agent]}", "X-Hiclaw-Project": run,
                            "X-Hiclaw-Task": f"{agent}-{n}"})
                        response.raise_for_status()
        rows = json.loads(subprocess.run([*HICLAW, "usage", "--by", "project,consumer,model", "--json"], env=env,
                                         capture_output=True, text=True, check=True).stdout)
    finally:
        for proc in (gateway, scripted):
            proc.terminate()
            proc.wait(timeout=20)

    def cost(project: str, consumer: str | None = None) -> float:
        return sum(r["cost_usd"] for r in rows if r["project"] == project and consumer in (None, r["consumer"]))

    def model(project: str, consumer: str) -> str:
        return ",".join(sorted({r["model"] for r in rows if r["project"] == project and r["consumer"] == consumer}))

    print("seed workload cost from the gateway ledger (`hiclaw usage --by project,consumer,model`)")
    print(f"{'part':<36}{'routed':>18}{'all on smart':>22}")
    print(f"{f'code: {CODE_TASKS} × 50k tokens':<36}{cost('routed', 'coder'):>10.4f} ({model('routed', 'coder')})"
          f"{cost('all-smart', 'coder'):>14.4f} ({model('all-smart', 'coder')})")
    print(f"{f'collection: {COLLECT_TASKS} × 100k tokens':<36}{cost('routed', 'collector'):>10.4f} "
          f"({model('routed', 'collector')}){cost('all-smart', 'collector'):>14.4f} ({model('all-smart', 'collector')})")
    routed, all_smart = cost("routed"), cost("all-smart")
    ok = abs(routed - 0.70) < 1e-6 and abs(all_smart - 3.45) < 1e-6
    print(f"{'total (USD)':<36}{routed:>10.4f}{'':>8}{all_smart:>14.4f}")
    print(f"bar: $0.70 routed vs $3.45 all-smart — {'PASS' if ok else 'FAIL'} "
          f"(routing saves {100 * (1 - routed / all_smart):.0f} %)")


if __name__ == "__main__":
    main()
