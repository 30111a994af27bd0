"""Worker cold start and idle memory, on a real team: bwrap workers beside process-backend workers.

Starts two teams in this process (``hiclaw.testing.team.running_team``: embedded Synapse, the
embedded gateway with the scripted model, local storage), one whose sandbox backend is ``bwrap``
and one with the ``process`` backend (no isolation: the baseline), and measures, interleaved:

* **create → ready**: ``provisioner.create_worker(...)`` until it returns, i.e. until the worker
  has done its first Matrix sync in its room and sent the control API's ready signal (account,
  room, token, home, sandbox and the worker process included). Then one **mention round trip**
  (the admin @mentions the worker in its room until its reply arrives) proves it can answer.
  Bar: ≤ 2 s median.
* **10 workers created concurrently**: ``asyncio.gather`` of 10 ``create_worker`` calls until the
  last returns, and the slowest worker's first mention round trip after that. Bar: ≤ 10 s.
* **idle RSS per worker**: after every worker has answered one mention and the team is quiet
  for ``--settle`` seconds, the worker process's VmRSS and PSS (``/proc/PID/smaps_rollup``),
  median over the workers; beside it what the sandbox adds (launcher + bwrap). Bar: ≤ 60 MB.

    .venv/bin/python bench/worker_start.py [--samples 5] [--concurrent 10] [--settle 3]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.testing.team import running_team, wait_until

BACKENDS = ("bwrap", "process")
SCENARIO = {"agents": {"*": {"default": {"text": "{{agent}} heard: {{input}}"}}}}


def memory_kb(pid: int | None) -> dict[str, int]:
    """VmRSS and (if readable) PSS of a process, in kB; empty if it is gone."""
    if not pid:
        return {}
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                values["rss"] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                values["pss"] = int(line.split()[1])
    except OSError:
        pass
    return values


async def mention_round_trip(team: Any, name: str) -> float:
    """The admin @mentions ``name`` in its room; seconds until its reply arrives."""
    room = await team.plane.chat.worker_room(name)
    await wait_until(lambda: room in team.admin.room_names, timeout=30, what=f"the admin in {name}'s room")
    started = time.perf_counter()
    nonce = f"ping-{name}-{time.monotonic_ns()}"
    await team.admin.send(room, f"@{name} {nonce}", mention=team.user_id(name))
    await team.wait_for_message(nonce, sender=name, timeout=60)
    return time.perf_counter() - started


async def create(team: Any, name: str) -> tuple[float, float]:
    """Seconds from the call to its return, and of those, from the process's spawn to its ready signal."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await team.plane.provisioner.create_worker(name, role="benchmark worker")
    done = loop.time()
    return done - started, done - team.plane.provisioner.start_times[name]


async def processes(team: Any, name: str) -> dict[str, dict[str, int]]:
    status = await team.plane.supervisor.backend_status(name)
    launcher = status.get("launcher_pid")
    outer = status.get("pid")
    return {"worker": memory_kb(status.get("worker_pid")), "launcher": memory_kb(launcher),
            "bwrap": memory_kb(outer) if outer and outer != launcher else {}}


def mb(kb: float) -> str:
    return f"{kb / 1024:6.1f} MB"


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):5.2f} s  (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


async def main(samples: int, concurrent: int, settle: float) -> int:
    if reason := bwrap_unavailable():
        print(f"cannot run the bwrap side here: {reason}", file=sys.stderr)
        return 1
    logging.getLogger("hiclaw.sandbox.backends.process").setLevel(logging.ERROR)  # its warning on every start
    results: dict[str, dict[str, Any]] = {b: {"create": [], "spawn": [], "mention": [], "batch": None,
                                               "batch_mention": None, "names": []} for b in BACKENDS}
    with tempfile.TemporaryDirectory(prefix="hiclaw-bench-") as tmp:
        async with AsyncExitStack() as stack:
            teams = {}
            for backend in BACKENDS:
                teams[backend] = await stack.enter_async_context(
                    running_team(Path(tmp) / backend, SCENARIO, sandbox=backend))
            print(f"teams up: {', '.join(BACKENDS)}", flush=True)
            for i in range(samples):  # one at a time, the backends interleaved
                for backend in BACKENDS:
                    team, result = teams[backend], results[backend]
                    name = f"solo-{i}"
                    total, spawn_to_ready = await create(team, name)
                    result["create"].append(total)
                    result["spawn"].append(spawn_to_ready)
                    result["mention"].append(await mention_round_trip(team, name))
                    result["names"].append(name)
            for backend in BACKENDS:
                team, result = teams[backend], results[backend]
                names = [f"batch-{i}" for i in range(concurrent)]
                started = time.perf_counter()
                await asyncio.gather(*(team.plane.provisioner.create_worker(n, role="benchmark worker") for n in names))
                result["batch"] = time.perf_counter() - started
                trips = await asyncio.gather(*(mention_round_trip(team, n) for n in names))
                result["batch_mention"] = time.perf_counter() - started
                result["batch_trip_max"] = max(trips)
                result["names"] += names
            for backend in BACKENDS:  # quiet: nothing queued anywhere
                await wait_until(teams[backend].plane.manager_idle, timeout=60, what="the Manager to be idle")
            await asyncio.sleep(settle)  # a measurement parameter: let allocations settle after the last turn
            for backend in BACKENDS:
                results[backend]["memory"] = [await processes(teams[backend], n) for n in results[backend]["names"]]
    report(results, samples, concurrent, settle)
    return 0


def report(results: dict[str, dict[str, Any]], samples: int, concurrent: int, settle: float) -> None:
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"\nworker cold start — create_worker() → ready in its room ({samples} one at a time, interleaved)")
    for backend in BACKENDS:
        print(f"  {backend:8s} create → ready     {summary(results[backend]['create'])}")
        print(f"  {backend:8s}   of which spawn → ready {summary(results[backend]['spawn'])}")
        print(f"  {backend:8s} mention round trip {summary(results[backend]['mention'])}")
    print("  bar: ≤ 2 s median")
    print(f"\n{concurrent} workers created concurrently — until the last create_worker() returns")
    for backend in BACKENDS:
        r = results[backend]
        print(f"  {backend:8s} all ready {r['batch']:5.2f} s; all answered a mention {r['batch_mention']:5.2f} s "
              f"(slowest round trip {r['batch_trip_max']:.2f} s)")
    print("  bar: ≤ 10 s")
    print(f"\nidle memory per worker — after one answered mention and {settle:.0f} s quiet, median over "
          f"{samples + concurrent} workers")
    for backend in BACKENDS:
        rows = results[backend]["memory"]
        line = f"  {backend:8s}"
        for part in ("worker", "launcher", "bwrap"):
            rss = [r[part]["rss"] for r in rows if "rss" in r[part]]
            pss = [r[part]["pss"] for r in rows if "pss" in r[part]]
            if rss:
                line += f"  {part} RSS {mb(statistics.median(rss))}"
                line += f" PSS {mb(statistics.median(pss))}" if pss else ""
        print(line)
    print("  bar: ≤ 60 MB RSS of the worker process")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5, help="workers created one at a time per backend")
    parser.add_argument("--concurrent", type=int, default=10, help="workers created at once per backend")
    parser.add_argument("--settle", type=float, default=3.0, help="quiet seconds before memory is read")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.samples, args.concurrent, args.settle)))
