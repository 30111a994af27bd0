"""Run Synapse in this process; when started as a child, exit when the parent goes away.

``python -m hiclaw.plugins.channels.matrix.synapse_runner CONFIG [--parent PID]``

``PR_SET_PDEATHSIG`` would fire when the *thread* that spawned us exits (e.g. an executor
thread of ``hiclaw up``), so the parent is watched here instead: once we are re-parented, the
parent is gone and Synapse gets SIGTERM (its normal, clean shutdown).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(prog="synapse_runner")
    parser.add_argument("config")
    parser.add_argument("--parent", type=int, default=0)
    args = parser.parse_args()
    if args.parent:
        if os.getppid() != args.parent:  # the parent died before we got here
            sys.exit(0)
        threading.Thread(target=_watch_parent, args=(args.parent,), daemon=True, name="parent-watch").start()
    from synapse.app.homeserver import main as synapse_main

    sys.argv = ["synapse", "--config-path", args.config]
    synapse_main()


if __name__ == "__main__":
    main()
