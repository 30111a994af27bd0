"""The control plane's side of credentialed HTTP routes (``[egress.<name>]``, docs/egress.md).

The routes and their grants come from config.toml; the secrets from secrets.toml or the
environment. :func:`check_egress` refuses to start a team whose route lacks its secret;
:func:`apply_egress` hands routes and grants to the gateway (which must offer
:class:`hiclaw.protocols.EgressRoutes`); :func:`worker_routes` is what a worker is told about the
routes granted to it (never a URL with a credential, never a secret).
"""
from __future__ import annotations

from typing import Any

from hiclaw.config import HiclawConfig, Secrets
from hiclaw.errors import ConfigError, PluginError
from hiclaw.protocols import EgressRoutes


def check_egress(config: HiclawConfig, secrets: Secrets) -> None:
    """Every route's secret is set (one line naming the fix otherwise)."""
    for name, route in sorted(config.egress.items()):
        if secrets.get(route.secret) is None:
            raise ConfigError(f"egress route {name!r} needs the secret {route.secret!r}, which is not set",
                              hint=f"add `{route.secret} = \"…\"` to {secrets.path} or export {route.secret.upper()}")


async def apply_egress(config: HiclawConfig, gateway: Any, plugin: str) -> None:
    """Give the gateway the routes and grants; a gateway that cannot serve them stops the start
    when any route is configured (``plugin``: the gateway's plugin, for the message)."""
    if isinstance(gateway, EgressRoutes):
        await gateway.set_egress(config.egress, config.egress_grants())
    elif config.egress:
        raise PluginError(f"gateway {config.gateway.plugin!r} (plugin {plugin}) cannot serve [egress] routes "
                          f"({', '.join(sorted(config.egress))}): it lacks set_egress",
                          hint="use the embedded-gateway, or remove the [egress.*] tables from config.toml")


def worker_routes(config: HiclawConfig, worker: str) -> list[dict[str, Any]]:
    """The routes granted to ``worker``, as its tool describes them to its model."""
    return [{"name": name, "description": route.description, "methods": list(route.methods),
             "paths": list(route.paths)}
            for name, route in sorted(config.egress.items()) if worker in route.workers]
