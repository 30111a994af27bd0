"""The team the demo runs and the test harness starts: every model alias served by the scripted
model, embedded Synapse and gateway, local storage, the best sandbox this machine has.

A product module (``hiclaw demo`` uses it), so the product never imports :mod:`hiclaw.testing`;
:mod:`hiclaw.testing.team` re-exports these names and adds the running team around them.
"""
from __future__ import annotations

import socket
from typing import Any

from hiclaw.config import (
    ApprovalsConfig,
    ChannelConfig,
    ConsoleConfig,
    GatewayConfig,
    HiclawConfig,
    ModelAlias,
    SandboxConfig,
    SkillsConfig,
    StorageConfig,
    TeamConfig,
)

#: USD per million tokens (input, output) of the team's aliases.
PRICES = {"smart": (3.0, 15.0), "fast": (0.5, 1.5), "cheap": (0.25, 1.25)}
SERVER_NAME = "hiclaw.test"  # the homeserver name of such a team unless told (`hiclaw demo` says its own)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_sandbox() -> str:
    """bwrap when it can really create sandboxes here, else the process backend (which warns)."""
    from hiclaw.sandbox.availability import bwrap_unavailable

    return "bwrap" if bwrap_unavailable() is None else "process"


def team_config(model_url: str, *, registry_url: str = "https://skills.sh", sandbox: str | None = None,
                server_name: str = SERVER_NAME, homeserver_port: int | None = None, key_secret: str | None = None,
                storage: StorageConfig | None = None, gateway_settings: dict[str, Any] | None = None,
                model_name: str = "scripted-{alias}", egress: dict[str, Any] | None = None,
                mcp: dict[str, Any] | None = None, approvals: dict[str, Any] | None = None,
                **team: Any) -> HiclawConfig:
    """The configuration of a team whose models are all served by the scripted model at ``model_url``
    (with the provider key from the secret ``key_secret``, if given); local storage unless ``storage``;
    ``gateway_settings`` are more ``[gateway.settings]`` (e.g. ``{"direct_openai": False}``: via litellm).
    ``model_name``: the provider's model name of each alias (``{alias}`` is replaced); ``egress``:
    ``[egress.<name>]`` routes (docs/egress.md); ``mcp``: ``[mcp.<name>]`` servers (docs/mcp.md);
    ``approvals``: the ``[approvals]`` section (docs/approvals.md)."""
    models = {alias: ModelAlias(model=f"openai/{model_name.format(alias=alias)}", api_base=model_url,
                                input_cost_per_mtok=price[0],
                                output_cost_per_mtok=price[1], fallback="fast" if alias == "smart" else None,
                                api_key_secret=key_secret)
              for alias, price in PRICES.items()}
    return HiclawConfig(
        channel=ChannelConfig(settings={"embedded": True, "server_name": server_name,
                                        "port": homeserver_port or free_port()}),
        gateway=GatewayConfig(settings={"port": 0, **(gateway_settings or {})}),
        sandbox=SandboxConfig(plugin=sandbox or default_sandbox()),
        storage=storage or StorageConfig(),
        models=models,
        skills=SkillsConfig(api_url=registry_url),
        team=TeamConfig(**{"manager_model": "smart", "worker_model": "smart", **team}),
        egress=egress or {},
        mcp=mcp or {},
        approvals=ApprovalsConfig.model_validate(approvals or {}),
        console=ConsoleConfig(port=0),  # many teams run at once in tests: any free port
    )
