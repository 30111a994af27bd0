"""The Higress gateway plugin: hiclaw's consumer tokens and model routes, kept in Higress.

For teams that already run Higress (and keep provider keys there). Selected with::

    [gateway]
    plugin = "higress"
    [gateway.settings]
    console_url = "http://higress-console:8001"
    gateway_url = "http://aigw.example.com:8080/v1"      # what agents call
    # manage_providers = false   → keys stay in Higress; name providers with `providers = {smart = "…"}`

and the secret ``higress_console_password``. ``mint_token`` creates a Higress consumer with a
key-auth bearer credential and adds it to the allowed consumers of each model alias's AI route;
``revoke_token`` removes it everywhere and deletes the consumer; ``start`` pushes the aliases'
LLM providers (unless ``manage_providers = false``). No budgets, no usage ledger.

Tested against a recorded contract of the Higress console REST API
(:mod:`hiclaw.plugins.gateways.higress.contract`), not against a running Higress — none can run
here. User guide: ``docs/gateway.md``.
"""
from __future__ import annotations

from typing import Any

from hiclaw import hookimpl
from hiclaw.plugins.gateways.higress.settings import HigressSettings, higress_secret_names
from hiclaw.protocols import RegisterGateway


def make_higress_gateway(settings: HigressSettings, ctx: Any) -> Any:
    from hiclaw.plugins.gateways.higress.gateway import HigressGateway

    return HigressGateway(settings, ctx)


@hookimpl
def hiclaw_register_gateways(register: RegisterGateway) -> None:
    register(
        "higress",
        make_higress_gateway,
        settings_model=HigressSettings,
        secrets=higress_secret_names,
        description="Higress AI gateway driven through its console API (consumers, AI routes, providers)",
    )
