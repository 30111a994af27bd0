"""``python -m hiclaw.worker``: the worker process, without the CLI's start-up cost.

The control plane starts workers this way (``hiclaw worker run`` is the same for humans): no
click, no plugin commands to collect — a worker starts as fast as its imports allow.
"""
from __future__ import annotations

import asyncio
import logging
import sys

from hiclaw.errors import HiclawError


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from hiclaw.worker.runtime import WorkerRuntime
    from hiclaw.worker.spec import WorkerRuntimeSpec

    try:
        spec = WorkerRuntimeSpec.from_env()
        asyncio.run(WorkerRuntime(spec).run_forever())
    except HiclawError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
