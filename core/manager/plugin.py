"""Default plugin ``manager-tools``: registers the Manager's management tools (import-light; the
tools live in :mod:`hiclaw.manager.tools`)."""
from __future__ import annotations

from typing import Any

from hiclaw import hookimpl
from hiclaw.protocols import RegisterTools


def _factory(ctx: Any) -> list[Any]:
    plane = getattr(ctx, "runtime", None)
    if ctx.side != "control" or plane is None:
        return []
    from hiclaw.manager.tools import manager_tools

    return manager_tools(plane)


@hookimpl
def hiclaw_register_tools(register: RegisterTools) -> None:
    register("manager", _factory, description="the Manager's management tools")
