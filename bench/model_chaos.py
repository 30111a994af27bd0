"""The seed scenario under a seeded mix of model misbehaviours, beside the clean run (bar: 0 silent
stalls; LLM calls per task ≤ 1.5× the clean run).

Each run plays the demo's scenario (four workers, a five-task project with a revision) on a new
live team — embedded Synapse, the embedded gateway, local storage, sandboxed workers, a private
skill registry — as a person plays it (hiclaw.testing.seedplay): the clean scripted model first,
then the same scenario with the unruly model drawing from all 15 kinds of misbehaviour (text
instead of tools, tools as text, malformed arguments, unknown tools, loops, questions, refusals,
long output, 429/500/502/503, timeouts, context errors, empty replies) at ``--rate`` each per call,
one run per seed. Printed per run: LLM calls and tokens per task (dispatched — a re-check counts
again — or planned; every call the gateway saw, Manager's included), the ratio to the clean run, misbehaving calls, silent stalls (a task
waiting on code or a worker, unchanged for two heartbeat intervals, that the admin was not told
about) and the other invariants of the model-chaos suite.

    .venv/bin/python bench/model_chaos.py [--seeds 1,2,3] [--rate 0.02] [--heartbeat 4]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from hiclaw.host import ENTRY_POINTS_ENV
from hiclaw.testing.seedplay import MIX_RATE, SeedPlay, play_seed, seeded_mix

BAR_RATIO = 1.5


async def run(seeds: list[int], rate: float, heartbeat: float) -> int:
    with tempfile.TemporaryDirectory(prefix="hiclaw-bench-") as tmp:
        clean = await play_seed(Path(tmp) / "clean" / "home", heartbeat=heartbeat)
        print(clean.line(), flush=True)
        plays: list[SeedPlay] = []
        for seed in seeds:
            play = await play_seed(Path(tmp) / f"seed-{seed}" / "home", mix=seeded_mix(seed, rate),
                                   label=f"mix seed {seed}", heartbeat=heartbeat)
            print(play.line(), flush=True)
            plays.append(play)
    print()
    print(f"{'run':<14} {'project':<8} {'tasks':>5} {'calls/task':>10} {'× clean':>8} {'tokens/task':>11} "
          f"{'misbehaved':>11} {'silent stalls':>13}  other invariants")
    for play in [clean, *plays]:
        broken = {k: v for k, v in play.broken().items() if k != "silent stalls"}
        print(f"{play.label:<14} {','.join(play.projects) or '-':<8} {play.task_count:>5} {play.calls_per_task:>10.2f} "
              f"{play.calls_per_task / clean.calls_per_task:>8.2f} {play.tokens_per_task:>11.0f} "
              f"{play.misbehaved:>5}/{play.model_calls:<5} {len(play.silent_stalls):>13}  "
              f"{broken or 'held'}" + (f" — {play.silent_stalls}" if play.silent_stalls else ""))
    calls = sum(p.calls for p in plays) / max(sum(p.task_count for p in plays), 1)
    ratio = calls / clean.calls_per_task
    stalls = sum(len(p.silent_stalls) for p in plays)
    kinds = sorted({k for p in plays for k in p.kinds})
    print(f"\nunder the mix ({len(seeds)} seeds, {rate} per kind per call, {len(kinds)} kinds fired): "
          f"{calls:.2f} LLM calls per task vs {clean.calls_per_task:.2f} clean = {ratio:.2f}× (bar ≤ {BAR_RATIO}×); "
          f"silent stalls {stalls} (bar 0)")
    ok = stalls == 0 and ratio <= BAR_RATIO and all(not p.broken() for p in [clean, *plays])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of the mix (default 1,2,3)")
    parser.add_argument("--rate", type=float, default=MIX_RATE, help=f"rate of each kind per call (default {MIX_RATE})")
    parser.add_argument("--heartbeat", type=float, default=4.0, help="heartbeat interval in seconds (default 4)")
    args = parser.parse_args()
    os.environ.setdefault(ENTRY_POINTS_ENV, "")  # installed plugins stay out of the bench's teams
    return asyncio.run(run([int(s) for s in args.seeds.split(",")], args.rate, args.heartbeat))


if __name__ == "__main__":
    sys.exit(main())
