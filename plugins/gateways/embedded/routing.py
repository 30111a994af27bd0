"""Model aliases → provider routes, and the fallback chain of each alias."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import SecretStr

from hiclaw.config import ModelAlias
from hiclaw.plugins.gateways.embedded.pricing import Price, price_for

log = logging.getLogger("hiclaw.gateway")

DIRECT_PREFIX = "openai/"
OPENAI_API_BASE = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Route:
    """Where one alias goes, with the key to use (never logged, never returned)."""

    alias: str
    model: str  # the litellm model string
    api_base: str | None
    api_key: SecretStr | None
    key_secret: str | None  # the secret's *name*, for messages
    direct: bool  # call the OpenAI-compatible endpoint ourselves instead of through litellm
    price: Price

    @property
    def provider_model(self) -> str:
        """The model name sent to an OpenAI-compatible provider (the litellm prefix removed)."""
        return self.model[len(DIRECT_PREFIX):] if self.model.startswith(DIRECT_PREFIX) else self.model

    @property
    def chat_url(self) -> str:
        return (self.api_base or OPENAI_API_BASE).rstrip("/") + "/chat/completions"


class Router:
    """Resolves what a caller asked for (an alias, or an alias's model string) to a route chain."""

    def __init__(self, models: Mapping[str, ModelAlias], secrets: Mapping[str, SecretStr], *, direct_openai: bool) -> None:
        self.routes: dict[str, Route] = {}
        self._fallback = {alias: spec.fallback for alias, spec in models.items()}
        self._by_model: dict[str, str] = {}
        for alias, spec in models.items():
            key = secrets.get(spec.api_key_secret) if spec.api_key_secret else None
            if spec.api_key_secret and key is None:
                log.warning("model alias %r: secret %r is not set; its calls will fail until it is", alias, spec.api_key_secret)
            price = price_for(spec.model, spec.input_cost_per_mtok, spec.output_cost_per_mtok)
            if not price.known:
                log.warning("model alias %r: no price known for %r; its calls are recorded at $0 — set "
                            "input_cost_per_mtok/output_cost_per_mtok under [models.%s]", alias, spec.model, alias)
            self.routes[alias] = Route(alias, spec.model, spec.api_base, key, spec.api_key_secret,
                                       direct_openai and spec.model.startswith(DIRECT_PREFIX), price)
            self._by_model.setdefault(spec.model, alias)

    def aliases(self) -> list[str]:
        return sorted(self.routes)

    def resolve(self, requested: str) -> str | None:
        if requested in self.routes:
            return requested
        return self._by_model.get(requested)

    def chain(self, alias: str) -> list[Route]:
        """The alias, then its fallback, then that one's fallback… (each alias once)."""
        chain: list[Route] = []
        current: str | None = alias
        while current is not None and current in self.routes and all(r.alias != current for r in chain):
            chain.append(self.routes[current])
            current = self._fallback.get(current)
        return chain

    def needs_litellm(self) -> bool:
        return any(not route.direct for route in self.routes.values())
