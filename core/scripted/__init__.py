"""The scripted model server: an OpenAI-compatible *provider* that replays a scenario file.

It stands in for a real model (none is reachable here) behind the gateway in tests and in
``hiclaw demo``; it never replaces the gateway. Per agent (the request's ``user`` field, or the
``X-Hiclaw-Consumer`` header) it answers with ordered or pattern-matched turns — text and/or
tool calls, token usage, streaming — deterministically. Format: ``docs/scripted-model.md``.

    from hiclaw.scripted import load_scenario, ScriptedModelServer

    server = ScriptedModelServer(load_scenario("demo.yaml"), port=0)
    await server.start()          # server.base_url -> "http://127.0.0.1:PORT/v1"

This package never imports litellm.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hiclaw.scripted.scenario import Scenario, load_scenario, parse_scenario

if TYPE_CHECKING:  # pragma: no cover
    from hiclaw.scripted.server import ScriptedModelServer

__all__ = ["Scenario", "ScriptedModelServer", "load_scenario", "parse_scenario"]


def __getattr__(name: str) -> Any:
    # The server imports aiohttp; keep `import hiclaw.scripted` (scenario validation) light.
    if name == "ScriptedModelServer":
        from hiclaw.scripted.server import ScriptedModelServer

        return ScriptedModelServer
    raise AttributeError(name)
