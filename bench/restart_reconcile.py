"""Control-plane restart until all of 10 workers are reconciled (bar: ≤ 5 s).

A real `hiclaw up` process (embedded Synapse, gateway, bwrap workers; the scripted model serves
the models) gets N workers, then is killed with SIGKILL — a crash — and started again. The figure
is the time from starting the new `hiclaw up` until it prints that it is up, which it does once
every worker's process is back and has reported ready (rooms, accounts and storage grants
re-derived on the way). A crash leaves the team's homeserver serving (phones stay connected) and
the workers' sandboxes running (their turns go on), so the new control plane adopts them: it
serves their bridges again, signals them, and waits for each one's ready report. Printed beside,
from the same run: creating the same N workers from nothing, a clean restart (Ctrl-C, then
`hiclaw up`: Synapse and every worker start), and the same kill -9 with sandboxes that die with
the control plane (`survive_crash = false`: every worker starts again).

    .venv/bin/python bench/restart_reconcile.py [--workers 10] [--sandbox bwrap|process]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hiclaw.config import load_config, save_config
from hiclaw.testing.gateway import running_scripted_model
from hiclaw.testing.team import default_sandbox, team_config
from hiclaw.testing.up import UpProcess


def main(workers: int, sandbox: str) -> int:
    with running_scripted_model({"agents": {"*": {"default": {"text": "ok"}}}}) as model, \
            tempfile.TemporaryDirectory(prefix="hiclaw-bench-") as tmp:
        home = Path(tmp) / "home"
        save_config(team_config(model.base_url, sandbox=sandbox), home)
        up = UpProcess(home)
        try:
            up.start_and_wait()
            names = [f"worker-{i:02d}" for i in range(workers)]
            started = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(lambda n: up.cli("worker", "create", n, "--role", "bench worker"), names))
            create = time.perf_counter() - started
            failed = [r.stderr.strip() for r in results if r.returncode != 0]
            if failed:
                raise SystemExit(f"creating workers failed: {failed[0]}")
            up.kill()
            crash = up.start_and_wait()
            phases = up.log.read_text()
            status = json.loads(up.cli("status", "--json").stdout)
            running = sum(1 for w in status["workers"] if w.get("process") == "running")
            up.interrupt()
            clean = up.start_and_wait()
            restart_all = None
            if sandbox == "bwrap":
                up.interrupt()
                config = load_config(home)
                config.sandbox.settings = {**config.sandbox.settings, "survive_crash": False}
                save_config(config, home)
                up.start_and_wait()
                up.kill()
                restart_all = up.start_and_wait()
        finally:
            up.stop()
    print(f"{workers} workers, sandbox {sandbox}; `hiclaw up` after the kill said:")
    print("".join(f"    {line}\n" for line in phases.splitlines() if line.strip().startswith("·")))
    print(f"{'create from nothing (baseline)':50} {create:6.2f} s")
    print(f"{'clean restart (Synapse, every worker start)':50} {clean:6.2f} s")
    if restart_all is not None:
        print(f"{'kill -9, sandboxes die too (survive_crash=false)':50} {restart_all:6.2f} s")
    print(f"{'restart after kill -9 until all reconciled':50} {crash:6.2f} s   ({running}/{workers} running)")
    verdict = "PASS" if crash <= 5.0 and running == workers else "FAIL"
    print(f"bar ≤ 5 s for 10 workers: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--sandbox", default=default_sandbox())
    args = parser.parse_args()
    sys.exit(main(args.workers, args.sandbox))
