"""``[gateway.settings]`` of the Higress gateway plugin."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hiclaw.plugins.gateways.embedded.settings import provider_secret_names

PASSWORD_SECRET = "higress_console_password"  # noqa: S105 - the name of a secret, not its value


class HigressSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    console_url: str = Field(pattern=r"^https?://")  # e.g. http://127.0.0.1:8001
    gateway_url: str = Field(pattern=r"^https?://")  # what agents call, e.g. http://aigw.example.com:8080/v1
    console_username: str = "admin"
    # Names in Higress are prefixed so hiclaw only ever touches what it created.
    consumer_prefix: str = Field(default="hiclaw-", pattern=r"^[a-z0-9-]*$")
    route_prefix: str = Field(default="hiclaw-", pattern=r"^[a-z0-9-]*$")
    domains: list[str] = Field(default_factory=list)  # AI route domains (empty: every domain)
    # true: push each alias's provider (type, base URL and the key from secrets.toml) to Higress.
    # false: keys stay in Higress only; `providers` names an existing Higress provider per alias.
    manage_providers: bool = True
    providers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=15.0, gt=0)


def higress_secret_names(config: Any) -> Sequence[str]:
    return [PASSWORD_SECRET, *provider_secret_names(config)]
