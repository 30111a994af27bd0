"""``[gateway.settings]`` of the embedded gateway (validated; errors name the key)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PORT = 18080


class EmbeddedGatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)  # 0 picks a free port
    db_path: Path | None = None  # default: $HICLAW_HOME/gateway/gateway.db
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)  # larger requests get 413
    upstream_timeout_seconds: float = Field(default=600.0, gt=0)  # per read from the provider → 504
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    retries: int = Field(default=1, ge=0, le=10)  # same model again on 5xx/timeout, before the fallback
    retry_backoff_seconds: float = Field(default=0.25, ge=0, le=60)
    # Budget reservation for a request that sets no max_tokens/max_completion_tokens.
    reserve_completion_tokens: int = Field(default=4096, ge=0)
    budget_warning_ratio: float = Field(default=0.8, gt=0, le=1)
    # `openai/…` models (any OpenAI-compatible server) are called directly over HTTP, which adds
    # far less latency than going through litellm; false sends every call through litellm.
    direct_openai: bool = True


def provider_secret_names(config: Any) -> Sequence[str]:
    """The provider keys the gateway needs: one per distinct ``api_key_secret`` of the model aliases."""
    if config is None:
        return ()
    return sorted({alias.api_key_secret for alias in config.models.values() if alias.api_key_secret})


def gateway_secret_names(config: Any) -> Sequence[str]:
    """What the embedded gateway declares: the provider keys, every egress route's ``secret`` and
    every MCP server's secrets."""
    if config is None:
        return ()
    return sorted({*provider_secret_names(config), *(route.secret for route in config.egress.values()),
                   *(name for server in config.mcp.values() for name in server.secret_names())})
