"""The embedded AI gateway (default): OpenAI-compatible HTTP in front of every model provider.

It is the only place real provider keys live. Agents hold consumer tokens (random, stored
hashed); the gateway maps model aliases (``[models.<alias>]``) to providers, enforces per-consumer
model allow-lists and budgets (consumer and project; warning hook at 80 %, 429 at 100 %), falls
back to a second alias on upstream 5xx/timeouts, and writes a usage ledger (tokens and cost per
consumer, task, project and model). It also serves credentialed HTTP routes (``[egress.<name>]``,
``ANY /egress/<route>/<path>``, :mod:`~hiclaw.plugins.gateways.embedded.egress`; docs/egress.md). User guide: ``docs/gateway.md``.

Quick start (Python)::

    gateway = host.create("gateway", "embedded-gateway", {"port": 0}, ComponentContext(home, config=config))
    token = await gateway.mint_token("alice", models=["smart"], budget_usd=5)
    await gateway.start()          # gateway.base_url -> "http://127.0.0.1:PORT/v1"

This entry module only registers the factory: aiohttp and (when a provider needs it) litellm
are imported when the gateway is created or started, never by ``import hiclaw``.
"""
from __future__ import annotations

from typing import Any

from hiclaw import hookimpl
from hiclaw.plugins.gateways.embedded.settings import EmbeddedGatewaySettings, gateway_secret_names
from hiclaw.protocols import RegisterGateway


def make_embedded_gateway(settings: EmbeddedGatewaySettings, ctx: Any) -> Any:
    from hiclaw.plugins.gateways.embedded.gateway import EmbeddedGateway

    return EmbeddedGateway(settings, ctx)


@hookimpl
def hiclaw_register_gateways(register: RegisterGateway) -> None:
    register(
        "embedded-gateway",
        make_embedded_gateway,
        settings_model=EmbeddedGatewaySettings,
        secrets=gateway_secret_names,
        description="built-in OpenAI-compatible gateway: consumer tokens, aliases, budgets, usage ledger",
    )
