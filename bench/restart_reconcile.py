"""Control-plane restart until all of 10 workers are reconciled (bar: ≤ 5 s).

A real team (embedded Synapse, gateway, bwrap workers) with N workers is stopped, then a new
control plane starts on the same home: the figure is the time from the start of `ControlPlane.start()`
until every worker's process is back and has reported ready in its room (rooms, accounts, tokens
and storage grants are re-derived on the way). Printed beside the baseline of the same run:
creating the same N workers from nothing.

    .venv/bin/python bench/restart_reconcile.py [--workers 10] [--sandbox bwrap|process] [--kill]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from hiclaw.testing.team import default_sandbox, start_plane, team_config


async def main(workers: int, sandbox: str, kill: bool) -> int:
    from hiclaw.scripted import parse_scenario
    from hiclaw.scripted.server import ScriptedModelServer

    model = ScriptedModelServer(parse_scenario({"agents": {"*": {"default": {"text": "ok"}}}}))
    await model.start()
    try:
        with tempfile.TemporaryDirectory(prefix="hiclaw-bench-") as tmp:
            home = Path(tmp) / "home"
            config = team_config(model.base_url, sandbox=sandbox)
            plane = await start_plane(home, config)
            names = [f"worker-{i:02d}" for i in range(workers)]
            started = time.perf_counter()
            await asyncio.gather(*(plane.provisioner.create_worker(n, role="bench worker") for n in names))
            create = time.perf_counter() - started
            if kill:  # as after a crash: the workers die with their sandbox parent
                for name in names:
                    await plane.supervisor.stop(name, timeout=0.1)
            await plane.stop()

            started = time.perf_counter()
            phases: list[str] = []
            plane = await start_plane(home, config, progress=lambda line: phases.append(
                f"  {time.perf_counter() - started:5.2f}s  {line}"))
            restart = time.perf_counter() - started
            running = [n for n in names if await plane.provisioner.is_running(n)]
            await plane.stop()
    finally:
        await model.stop()
    print(f"{workers} workers, sandbox {sandbox}; restart phases:")
    print("\n".join(phases))
    print(f"{'create from nothing (baseline)':40} {create:6.2f} s")
    print(f"{'restart until all reconciled':40} {restart:6.2f} s   ({len(running)}/{workers} running)")
    verdict = "PASS" if restart <= 5.0 and len(running) == workers else "FAIL"
    print(f"bar ≤ 5 s for 10 workers: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--sandbox", default=default_sandbox())
    parser.add_argument("--kill", action="store_true", help="kill the workers first instead of a clean stop")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.workers, args.sandbox, args.kill)))
