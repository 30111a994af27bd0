"""``[channel.settings]`` of the Matrix channel, for both sides.

The control side reads the keys a user writes in ``config.toml`` (embedded server or external
URL, how accounts are registered). A worker gets the keys :meth:`ControlMatrixChannel.worker_settings`
produced (its own user id and access token) through ``HICLAW_WORKER_SPEC``; the same model
validates both. Kept import-light (pydantic only): the plugin entry module imports it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

AGENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
USER_ID = re.compile(r"^@[a-z0-9._=/+-]+:[A-Za-z0-9.-]+(:[0-9]+)?$")
ROOM_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,80}$")
DEFAULT_PORT = 18008

#: Secrets the control side may use (all optional; which one depends on ``registration``).
SECRET_NAMES = (
    "matrix_registration_token",  # external server: m.login.registration_token
    "matrix_admin_token",  # external Synapse: an admin's access token (admin API)
    "matrix_registration_shared_secret",  # external Synapse: its registration_shared_secret
    "matrix_admin_password",  # the human admin's password (written by `hiclaw up`)
)

Registration = Literal["auto", "shared_secret", "token", "admin_api"]


class MatrixSettings(BaseModel):
    """Settings of the Matrix channel (``[channel.settings]``)."""

    model_config = ConfigDict(extra="forbid")

    # -- control side -----------------------------------------------------------------------
    embedded: bool = True  # run Synapse under $HICLAW_HOME/homeserver (hiclaw up / homeserver start)
    server_name: str = "hiclaw.local"  # the part after ':' in user ids
    host: str = "127.0.0.1"  # embedded listener address (0.0.0.0 to reach it from a phone on your LAN)
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    homeserver_url: str | None = None  # external server (control side) / the server (worker side)
    registration: Registration = "auto"
    user_prefix: str = Field(default="", pattern=r"^[a-z0-9._=-]{0,20}$")  # namespaces our users on a shared server
    synapse_config: dict[str, Any] = Field(default_factory=dict)  # merged into the generated homeserver.yaml
    max_message_chars: int = Field(default=16000, ge=200, le=60000)  # longer messages are split
    sync_timeout_ms: int = Field(default=30000, ge=0, le=300000)
    allowed_senders: list[str] = Field(default_factory=list)  # extra trusted senders (user ids) in every room

    # -- worker side (produced by worker_settings(); never typed by hand) ---------------------
    user_id: str | None = None
    access_token: SecretStr | None = None
    device_id: str | None = None
    store_dir: Path | None = None
    trusted_inviters: list[str] = Field(default_factory=list)  # invites from these are accepted

    @field_validator("homeserver_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", value):
            raise ValueError("must be a host name such as 'hiclaw.local' or 'matrix.example.org'")
        return value

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str | None) -> str | None:
        if value is not None and not USER_ID.match(value):
            raise ValueError("must be a Matrix user id such as '@alice:hiclaw.local'")
        return value

    @model_validator(mode="after")
    def _external_needs_url(self) -> MatrixSettings:
        if not self.embedded and not self.homeserver_url:
            raise ValueError("embedded = false needs homeserver_url (e.g. https://matrix.example.org)")
        return self

    # -- derived ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The client-server base URL the channel talks to."""
        if self.homeserver_url:
            return self.homeserver_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104 - a comparison, not a bind
        return f"http://{host}:{self.port}"

    def user_id_of(self, name_or_id: str) -> str:
        """``alice`` → ``@<prefix>alice:<server_name>``; a full user id is returned as is."""
        if name_or_id.startswith("@"):
            if not USER_ID.match(name_or_id):
                raise ValueError(f"{name_or_id!r} is not a Matrix user id")
            return name_or_id
        if not AGENT_NAME.match(name_or_id):
            raise ValueError(f"{name_or_id!r} is not an agent name ([a-z][a-z0-9-]{{0,30}})")
        return f"@{self.user_prefix}{name_or_id}:{self.server_name}"

    def name_of(self, user_id: str) -> str | None:
        """The agent name of one of our user ids, or ``None`` for anyone else."""
        suffix = f":{self.server_name}"
        if not user_id.startswith(f"@{self.user_prefix}") or not user_id.endswith(suffix):
            return None
        name = user_id[1 + len(self.user_prefix): -len(suffix)]
        return name if AGENT_NAME.match(name) else None

    def room_alias(self, key: str) -> str:
        """Alias local part (without ``#`` and server) of the room with ``key``."""
        if not ROOM_KEY.match(key):
            raise ValueError(f"room key {key!r} must be lower-case letters, digits, '.', '_' or '-'")
        return f"hiclaw-{self.user_prefix}{key}"
