"""``HigressGateway``: hiclaw's gateway operations carried out by a Higress AI gateway.

Each model alias becomes a Higress AI route ``<route_prefix><alias>`` (matched on the request's
model name, upstream = the alias's provider with the model mapped, fallback to the alias's
``fallback`` on 5xx) with key-auth on; each agent becomes a consumer ``<consumer_prefix><name>``
with one bearer credential, listed in the allowed consumers of the routes of its models.
A route with no allowed consumer left is deleted (Higress refuses auth with an empty list, and
an open route would let anyone in). Budgets and the usage ledger are not available: Higress
meters usage with its own AI statistics.
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

from hiclaw.errors import ConfigError, InvalidInputError, NotFoundError, PluginError
from hiclaw.host import ComponentContext
from hiclaw.plugins.gateways.embedded.store import TOKEN_BYTES, TOKEN_PREFIX, check_consumer_name
from hiclaw.plugins.gateways.higress.console import HigressConsole, HigressError
from hiclaw.plugins.gateways.higress.settings import PASSWORD_SECRET, HigressSettings

log = logging.getLogger("hiclaw.gateway.higress")

#: litellm provider prefix → Higress LLM provider type.
PROVIDER_TYPES = {
    "openai": "openai", "anthropic": "claude", "dashscope": "qwen", "deepseek": "deepseek", "gemini": "gemini",
    "mistral": "mistral", "groq": "groq", "ollama": "ollama", "moonshot": "moonshot", "zhipuai": "zhipuai",
    "cohere": "cohere", "together_ai": "together-ai", "azure": "azure", "minimax": "minimax", "github": "github",
}


class HigressGateway:
    def __init__(self, settings: HigressSettings, ctx: ComponentContext, *, transport: Any = None) -> None:
        self.settings = settings
        self.ctx = ctx
        self.models = dict(ctx.config.models) if ctx.config is not None else {}
        password = ctx.secrets.get(PASSWORD_SECRET)
        if password is None:
            raise ConfigError(f"secret {PASSWORD_SECRET!r} is not set (needed to log in to the Higress console)",
                              hint=f'add `{PASSWORD_SECRET} = "…"` to secrets.toml')
        self.console = HigressConsole(settings.console_url, settings.console_username, password,
                                      timeout=settings.timeout_seconds, transport=transport)

    @property
    def base_url(self) -> str:
        return self.settings.gateway_url.rstrip("/")

    # ------------------------------------------------------------------ names

    def _consumer(self, name: str) -> str:
        return self.settings.consumer_prefix + check_consumer_name(name)

    def _route(self, alias: str) -> str:
        return self.settings.route_prefix + alias

    def _provider(self, alias: str) -> str:
        if not self.settings.manage_providers:
            return self.settings.providers.get(alias, self._route(alias))
        return self._route(alias)

    def _upstream(self, alias: str) -> dict[str, Any]:
        model = self.models[alias].model
        return {"provider": self._provider(alias), "weight": 100, "modelMapping": {"*": model.split("/", 1)[-1]}}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Log in, then make Higress's providers and existing hiclaw routes match the aliases."""
        await self.console.login()
        for alias in self.models:
            if self.settings.manage_providers:
                await self.console.put_provider(self._provider_body(alias))
            elif await self.console.provider(self._provider(alias)) is None:
                raise HigressError(f"Higress has no provider {self._provider(alias)!r} for model alias {alias!r}",
                                   hint="create it in the Higress console, set [gateway.settings] providers, "
                                        "or set manage_providers = true")
            route = await self.console.route(self._route(alias))
            allowed = ((route or {}).get("authConfig") or {}).get("allowedConsumers") or []
            if route is not None and allowed:
                await self.console.update_route(self._route_body(alias, allowed, route))
            elif route is not None:
                await self.console.delete_route(self._route(alias))  # no consumer: it must not stay open

    async def stop(self) -> None:
        await self.console.aclose()

    def _provider_body(self, alias: str) -> dict[str, Any]:
        spec = self.models[alias]
        prefix = spec.model.split("/", 1)[0] if "/" in spec.model else "openai"
        kind = PROVIDER_TYPES.get(prefix)
        if kind is None:
            raise ConfigError(f"model alias {alias!r}: provider {prefix!r} has no Higress equivalent",
                              hint=f"use one of {', '.join(sorted(PROVIDER_TYPES))}, or create the provider in "
                                   "Higress and set manage_providers = false")
        raw: dict[str, Any] = {}
        if spec.api_base:
            if kind != "openai":
                raise ConfigError(f"model alias {alias!r}: a custom api_base is only pushed for OpenAI-compatible providers",
                                  hint="configure that provider in the Higress console and set manage_providers = false")
            raw["openaiCustomUrl"] = spec.api_base
        key = self.ctx.secrets.get(spec.api_key_secret) if spec.api_key_secret else None
        if spec.api_key_secret and key is None:
            raise ConfigError(f"model alias {alias!r}: secret {spec.api_key_secret!r} is not set",
                              hint=f'add `{spec.api_key_secret} = "…"` to secrets.toml')
        return {"name": self._provider(alias), "type": kind, "protocol": "openai/v1",
                "tokens": [key.get_secret_value()] if key else [], "tokenFailoverConfig": {"enabled": False},
                "rawConfigs": raw}

    def _route_body(self, alias: str, consumers: Sequence[str], existing: dict[str, Any] | None = None) -> dict[str, Any]:
        body = dict(existing or {})  # keeps `version` and anything set in the console
        body.update(
            name=self._route(alias),
            domains=self.settings.domains,
            pathPredicate={"matchType": "PRE", "matchValue": "/", "caseSensitive": False},
            modelPredicates=[{"enabled": True, "prefix": alias}],
            upstreams=[self._upstream(alias)],
            authConfig={"enabled": True, "allowedCredentialTypes": ["key-auth"], "allowedConsumers": sorted(set(consumers))},
        )
        fallback = self.models[alias].fallback
        if fallback is not None:
            body["fallbackConfig"] = {"enabled": True, "upstreams": [self._upstream(fallback)], "fallbackStrategy": "SEQ",
                                      "responseCodes": ["5xx"]}
        return body

    # ------------------------------------------------------------------ consumers and routes

    async def _set_membership(self, alias: str, consumer: str, member: bool) -> None:
        route = await self.console.route(self._route(alias))
        current = list(route["authConfig"].get("allowedConsumers") or []) if route else []
        wanted = sorted(set(current) | {consumer}) if member else [c for c in current if c != consumer]
        if route is None:
            if member:
                await self.console.add_route(self._route_body(alias, wanted))
        elif not wanted:
            await self.console.delete_route(self._route(alias))  # never leave a route open or unauthorised
        elif wanted != sorted(current):
            await self.console.update_route(self._route_body(alias, wanted, route))

    async def mint_token(self, name: str, *, models: Sequence[str] | None = None, budget_usd: float | None = None) -> str:
        if budget_usd is not None:
            raise PluginError("the higress gateway cannot enforce a budget (Higress meters, hiclaw cannot refuse)",
                              hint="mint without a budget (unset team.worker_budget_usd), or use the embedded gateway")
        aliases = list(self.models) if models is None else list(models)
        unknown = [m for m in aliases if m not in self.models]
        if unknown:
            raise InvalidInputError(f"unknown model alias(es) {', '.join(map(repr, unknown))}",
                                    hint=f"configured aliases: {', '.join(sorted(self.models)) or 'none'}")
        consumer = self._consumer(name)
        existed = await self.console.consumer(consumer) is not None
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        await self.console.put_consumer(consumer, token)
        try:
            for alias in self.models:
                await self._set_membership(alias, consumer, alias in aliases)
        except Exception:
            if not existed:  # nothing half-written: a new consumer goes again if its routes failed
                await self.console.delete_consumer(consumer)
            raise
        return token

    async def revoke_token(self, name: str) -> None:
        consumer = self._consumer(name)
        if await self.console.consumer(consumer) is None:
            raise NotFoundError(f"Higress has no consumer {consumer!r}", hint="see `hiclaw gateway token list`")
        for alias in self.models:
            await self._set_membership(alias, consumer, False)
        await self.console.delete_consumer(consumer)

    async def check_token(self, name: str, token: str) -> bool:
        """True if ``token`` is consumer ``name``'s current credential (adoption after a crash)."""
        import hmac

        consumer = await self.console.consumer(self._consumer(name)) or {}
        values = [v for c in consumer.get("credentials") or [] for v in c.get("values") or [] if isinstance(v, str)]
        return any(hmac.compare_digest(v.encode(), token.encode()) for v in values)

    async def list_tokens(self) -> list[dict[str, Any]]:
        prefix = self.settings.consumer_prefix
        routes = {r["name"]: r for r in await self.console.routes()}
        rows = []
        for consumer in await self.console.consumers():
            if not consumer["name"].startswith(prefix):
                continue
            models = [a for a in self.models if consumer["name"] in
                      ((routes.get(self._route(a)) or {}).get("authConfig") or {}).get("allowedConsumers", [])]
            rows.append({"name": consumer["name"][len(prefix):], "models": models, "budget_usd": None, "spent_usd": None,
                         "created": None, "revoked": False, "revoked_at": None})
        return sorted(rows, key=lambda r: r["name"])

    async def usage(self, by: str | Sequence[str] = "consumer", since: Any = None, until: Any = None) -> list[dict[str, Any]]:
        raise PluginError("the higress gateway keeps no usage ledger in hiclaw",
                          hint="read usage from Higress's AI statistics (ai-statistics plugin metrics)")
