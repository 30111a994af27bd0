"""What the control plane hands a worker process (``HICLAW_WORKER_SPEC``, JSON)."""
from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from hiclaw.errors import ConfigError

ENV_VAR = "HICLAW_WORKER_SPEC"


class ComponentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plugin: str
    settings: dict[str, Any] = Field(default_factory=dict)


class GatewayRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str
    token: SecretStr


class EgressGrant(BaseModel):
    """An egress route granted to the worker, as its ``http_request`` tool describes it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    methods: list[str] = Field(default_factory=lambda: ["GET"])
    paths: list[str] = Field(default_factory=lambda: ["/"])


class McpGrant(BaseModel):
    """An MCP server granted to the worker (``[mcp.<name>]``, reached at ``{gateway}/mcp/<server>``):
    its name, what it is for and — if not every one — the names of the tools granted. Never a URL
    or a secret: the gateway holds those."""

    model_config = ConfigDict(extra="forbid")
    server: str
    description: str = ""
    tools: list[str] | None = None


class WorkerRuntimeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    model: str = "smart"
    channel: ComponentRef
    storage: ComponentRef
    gateway: GatewayRef
    control_url: str
    control_token: SecretStr
    manager: str = "manager"
    #: Senders (names or user ids) whose mentions wake this worker; anyone else's — another
    #: worker's above all — start no turn (the message is kept as context, never answered).
    trusted: list[str] = Field(default_factory=lambda: ["admin", "manager"])
    #: At most this many turns per room per minute started by others than the admin
    #: (``[team] max_turns_per_room_per_minute``; its own task assignments do not count).
    max_turns_per_room_per_minute: int = Field(default=10, ge=1)
    scratch_dir: str = "/tmp/hiclaw-work"
    command_timeout_seconds: float = Field(default=120, gt=0)
    max_steps: int = Field(default=24, ge=1)
    #: Stop after the control plane has been unreachable this long (``[team] orphan_timeout_seconds``).
    orphan_timeout_seconds: float = Field(default=1800, gt=0)
    disabled_plugins: list[str] = Field(default_factory=list)
    #: Default plugins the worker loads (the ones providing its channel, storage and tools);
    #: ``None`` loads them all.
    default_plugins: list[str] | None = None
    #: Installed (entry-point) plugins the worker loads: the ones the control plane loaded, so
    #: both sides run the same plugins. ``None`` loads every installed one.
    entry_point_plugins: list[str] | None = None
    #: The credentialed HTTP routes granted to it (``[egress.<name>] workers``): names and rules,
    #: never a secret. Its ``http_request`` tool is offered only when there is one.
    egress: list[EgressGrant] = Field(default_factory=list)
    #: The MCP servers granted to it at its start; the gateway's ``GET /mcp`` answer, asked at each
    #: new task, wins over it (grants change while the worker runs).
    mcp: list[McpGrant] = Field(default_factory=list)
    #: Whether ``[approvals]`` may hold its commands: each ``run_command`` asks the control plane
    #: first (``POST /v1/approval``) and runs only once it is let (docs/approvals.md).
    ask_commands: bool = False

    def to_env(self) -> str:
        data = self.model_dump(mode="json")
        data["gateway"]["token"] = self.gateway.token.get_secret_value()
        data["control_token"] = self.control_token.get_secret_value()
        return json.dumps(data)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WorkerRuntimeSpec:
        raw = (environ if environ is not None else os.environ).get(ENV_VAR)
        if not raw:
            raise ConfigError(f"{ENV_VAR} is not set", hint="`hiclaw worker run` is started by the control plane "
                              "inside a sandbox; create workers with `hiclaw worker create`")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"{ENV_VAR}: {where}: {err['msg']}", hint="restart the worker from the control plane") from None
