"""Default plugin ``worker-tools``: registers a Worker's tools (kept import-light; the tools
themselves live in :mod:`hiclaw.worker.tools` and load only when a worker builds its tool list)."""
from __future__ import annotations

from typing import Any

from hiclaw import hookimpl
from hiclaw.protocols import RegisterTools


def _factory(ctx: Any) -> list[Any]:
    runtime = getattr(ctx, "runtime", None)
    if ctx.side != "worker" or runtime is None:
        return []
    from hiclaw.worker.tools import WorkerTools

    return WorkerTools(runtime).specs()


@hookimpl
def hiclaw_register_tools(register: RegisterTools) -> None:
    register("worker", _factory, description="a worker's file, command, skill and reporting tools")
