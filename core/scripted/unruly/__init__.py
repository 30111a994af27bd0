"""The unruly model: a provider like the scripted one that misbehaves on purpose.

It plays a base scenario (so the team still makes progress when the model behaves) and, per
agent and per call, replaces the reply with a misbehaviour real models and providers show —
prose instead of a tool call, tool calls written as text, malformed arguments, unknown tools,
loops, questions, refusals, very long output, 429/5xx, timeouts, context-length errors, empty
replies — from a seeded random mix, a schedule, or both. Format: ``docs/scripted-model.md``
("The unruly model").

    from hiclaw.scripted.unruly import UnrulyModelServer, parse_unruly_config

    config = parse_unruly_config({"seed": 7, "agents": {"sam": {"kinds": {"http_429": 0.2}}}})
    server = UnrulyModelServer(config, scenario)      # scenario: a hiclaw.scripted.Scenario
    await server.start()                              # server.base_url, server.log("sam"), server.stats()

In tests use :func:`hiclaw.testing.unruly.running_unruly_model`. Never imports litellm.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hiclaw.scripted.unruly.config import KINDS, UnrulyConfig, load_unruly_config, parse_unruly_config

if TYPE_CHECKING:  # pragma: no cover
    from hiclaw.scripted.unruly.server import UnrulyModelServer

__all__ = ["KINDS", "UnrulyConfig", "UnrulyModelServer", "load_unruly_config", "parse_unruly_config"]


def __getattr__(name: str) -> Any:
    # The server imports aiohttp; keep config validation light.
    if name == "UnrulyModelServer":
        from hiclaw.scripted.unruly.server import UnrulyModelServer

        return UnrulyModelServer
    raise AttributeError(name)
