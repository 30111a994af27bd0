"""Configuration: ``$HICLAW_HOME/config.toml`` + ``secrets.toml`` (mode 0600) + environment.

Precedence, lowest first: defaults, ``config.toml``, ``HICLAW_<SECTION>__<KEY>`` environment
variables (``__`` separates nesting: ``HICLAW_GATEWAY__SETTINGS__PORT=4001``), and the
skills.sh variables ``SKILLS_API_URL`` / ``SKILLS_DOWNLOAD_URL``.

Secrets are never part of :class:`HiclawConfig`. They are named (``openai_api_key``) and
resolved by :class:`Secrets` from ``HICLAW_SECRET_<NAME>``, the conventional variable
``<NAME>`` in upper case (``OPENAI_API_KEY``), then ``secrets.toml``. Only the control plane
and the gateway resolve them; plugins receive the ones they declared (see ``hiclaw.host``).

Every error names the file, the key (and line when known) and the fix, in one line.
"""
from __future__ import annotations

import logging
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from hiclaw.errors import ConfigError
from hiclaw.storage.files import write_text_atomically

CONFIG_FILE = "config.toml"
SECRETS_FILE = "secrets.toml"
ENV_PREFIX = "HICLAW_"
SECRET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

log = logging.getLogger(__name__)

#: Former names of built-in components, per kind, and the name each is registered under now (the
#: name ``hiclaw plugins list`` shows). Still read, with one deprecation note in the log.
RENAMED_PLUGINS: dict[str, dict[str, str]] = {
    "gateway": {"embedded": "embedded-gateway"},
    "storage": {"local": "local-storage"},
}
_noted: set[tuple[str, str]] = set()


def current_plugin_name(kind: str, name: str) -> str:
    """``name``, or the name a renamed built-in ``kind`` component has now (noted once per process)."""
    current = RENAMED_PLUGINS.get(kind, {}).get(name)
    if current is None:
        return name
    if (kind, name) not in _noted:
        _noted.add((kind, name))
        log.warning("[%s] plugin = %r is a deprecated name: it is now %r (write that in config.toml)", kind, name, current)
    return current


def hiclaw_home() -> Path:
    """``$HICLAW_HOME`` or ``~/.hiclaw``."""
    raw = os.environ.get("HICLAW_HOME")
    return Path(raw).expanduser() if raw else Path.home() / ".hiclaw"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComponentConfig(_Section):
    """Which plugin provides a component — the name ``hiclaw plugins list`` shows — and that
    plugin's own settings."""

    kind: ClassVar[str] = ""
    plugin: str
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("plugin")
    @classmethod
    def _current_name(cls, value: str) -> str:
        return current_plugin_name(cls.kind, value)


class ChannelConfig(ComponentConfig):
    kind: ClassVar[str] = "channel"
    plugin: str = "matrix"


class GatewayConfig(ComponentConfig):
    kind: ClassVar[str] = "gateway"
    plugin: str = "embedded-gateway"


class StorageConfig(ComponentConfig):
    kind: ClassVar[str] = "storage"
    plugin: str = "local-storage"


class SandboxConfig(ComponentConfig):
    kind: ClassVar[str] = "sandbox"
    plugin: str = "bwrap"


class ModelAlias(_Section):
    """A model alias (``smart``, ``fast``, ``cheap``) the team uses, routed by the gateway."""

    model: str  # a litellm model string, e.g. "openai/gpt-4o", "anthropic/claude-sonnet-4-5", "ollama/llama3.1"
    api_key_secret: str | None = None  # name of the secret holding the provider key
    api_base: str | None = None
    fallback: str | None = None  # another alias tried on upstream 5xx / timeout
    input_cost_per_mtok: float | None = Field(default=None, ge=0)  # overrides litellm's price map
    output_cost_per_mtok: float | None = Field(default=None, ge=0)

    @field_validator("api_key_secret")
    @classmethod
    def _secret_name(cls, value: str | None) -> str | None:
        if value is not None and not SECRET_NAME.match(value):
            raise ValueError("must be a secret *name* like 'openai_api_key' (the key itself goes in secrets.toml)")
        return value


#: Methods an egress route may allow.
EGRESS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
EGRESS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
WORKER_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")


def check_base_url(value: str) -> str:
    """An http(s) base URL without credentials, query or fragment (trailing '/' dropped)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc \
            or parts.query or parts.fragment or "\\" in value or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a base URL: write http(s)://host[:port][/path], "
                         "without credentials, query or fragment")
    return value.rstrip("/")


def check_secret_name(value: str) -> str:
    if not SECRET_NAME.match(value):
        raise ValueError("must be a secret *name* like 'github_token' (the value itself goes in secrets.toml)")
    return value


def check_worker_names(value: list[str]) -> list[str]:
    bad = [w for w in value if not WORKER_NAME.match(w) or w in ("manager", "admin")]
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))} is not a worker name")
    return value


class EgressRoute(_Section):
    """A credentialed HTTP route (``[egress.<name>]``): the gateway calls ``base_url`` with the
    secret added, for the workers granted it; they never see the secret (docs/egress.md)."""

    base_url: str
    secret: str  # name of the secret (secrets.toml / environment), as [models.*] api_key_secret
    header: str | None = None  # inject the secret in this request header …
    format: str = "{secret}"  # … formatted so, e.g. "Bearer {secret}"
    query: str | None = None  # … or as this query parameter
    methods: list[str] = Field(default_factory=lambda: ["GET"])
    paths: list[str] = Field(default_factory=lambda: ["/"])  # allowed path prefixes (whole segments)
    workers: list[str] = Field(default_factory=list)  # the workers granted the route: none by default
    manager_grants: bool = True  # the Manager may grant it to workers too (false: only the admin)
    description: str = Field(default="", max_length=300)  # what the API is, shown to granted workers' models
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("secret")
    @classmethod
    def _secret_name(cls, value: str) -> str:
        return check_secret_name(value)

    @field_validator("header", "query")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not HEADER_NAME.match(value):
            raise ValueError(f"{value!r} is not a header or parameter name")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        methods = [m.upper() for m in value]
        unknown = [m for m in methods if m not in EGRESS_METHODS]
        if unknown or not methods:
            raise ValueError(f"methods must be some of {', '.join(EGRESS_METHODS)} (got {', '.join(unknown) or 'none'})")
        return sorted(set(methods), key=EGRESS_METHODS.index)

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for prefix in value:
            segments = prefix.split("/")[1:]
            if not prefix.startswith("/") or "//" in prefix or "%" in prefix or "\\" in prefix or "?" in prefix \
                    or any(s in (".", "..") for s in segments) or any(c.isspace() for c in prefix):
                raise ValueError(f"path prefix {prefix!r} must start with '/' and have no '//', '.', '..', '%', "
                                 "'?' or backslash")
        if not value:
            raise ValueError("give at least one path prefix ('/' allows every path)")
        return value

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: list[str]) -> list[str]:
        return check_worker_names(value)

    def check_injection(self, name: str) -> None:
        """Exactly one of ``header`` and ``query``; ``format`` holds ``{secret}`` once."""
        if (self.header is None) == (self.query is None):
            raise ValueError(f"[egress.{name}] needs exactly one of `header` and `query` (e.g. header = "
                             '"Authorization" with format = "Bearer {secret}", or query = "api_key")')
        if self.format.count("{secret}") != 1 or (self.query is not None and self.format != "{secret}"):
            raise ValueError(f"[egress.{name}] format = {self.format!r} must contain {{secret}} exactly once "
                             "(and is for `header` only)")


MCP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class McpServer(_Section):
    """An MCP server behind the gateway (``[mcp.<name>]``, docs/mcp.md): a ``command`` the gateway
    runs outside every sandbox (stdio), or a remote ``url`` (Streamable HTTP). Its credentials come
    from secrets.toml — into the command's environment (``secret_env``) or a request header
    (``secret`` + ``header`` + ``format``) — and never reach a worker."""

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)  # plain (non-secret) environment variables
    secret_env: dict[str, str] = Field(default_factory=dict)  # ENV_VAR = "secret_name"
    cwd: str | None = None
    url: str | None = None
    secret: str | None = None  # remote: the secret sent in `header`, formatted by `format`
    header: str = "Authorization"
    format: str = "Bearer {secret}"
    headers: dict[str, str] = Field(default_factory=dict)  # remote: plain extra headers
    tools: list[str] | None = None  # the only tools offered at all (default: every tool the server has)
    workers: list[str] = Field(default_factory=list)  # granted every offered tool; `hiclaw mcp grant` adds more
    manager_grants: bool = True  # the Manager may grant it to workers too (false: only the admin)
    description: str = Field(default="", max_length=300)  # shown to granted workers' models
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)  # one tool call
    max_result_bytes: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_base_url(value)

    @field_validator("secret")
    @classmethod
    def _secret_name(cls, value: str | None) -> str | None:
        return None if value is None else check_secret_name(value)

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, value: dict[str, str]) -> dict[str, str]:
        for var, secret in value.items():
            if not ENV_NAME.match(var):
                raise ValueError(f"{var!r} is not an environment variable name")
            check_secret_name(secret)
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [var for var in value if not ENV_NAME.match(var)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an environment variable name")
        return value

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not HEADER_NAME.match(value):
            raise ValueError(f"{value!r} is not a header name")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not HEADER_NAME.match(name) or any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name!r} is not a valid header")
        return value

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: list[str]) -> list[str]:
        return check_worker_names(value)

    def check_transport(self, name: str) -> None:
        """Exactly one of ``command`` and ``url``, and only the keys of that transport."""
        if (self.command is None) == (self.url is None):
            raise ValueError(f"[mcp.{name}] needs exactly one of `command` (a stdio server the gateway runs) "
                             "and `url` (a Streamable HTTP server)")
        if self.command is not None and (self.secret or self.headers):
            raise ValueError(f"[mcp.{name}] runs a command: give its credentials in `secret_env`, "
                             "not `secret`/`headers`")
        if self.url is not None and (self.args or self.env or self.secret_env or self.cwd):
            raise ValueError(f"[mcp.{name}] is remote (`url`): `args`, `env`, `secret_env` and `cwd` are for "
                             "`command` servers")
        if self.secret is not None and self.format.count("{secret}") != 1:
            raise ValueError(f"[mcp.{name}] format = {self.format!r} must contain {{secret}} exactly once")

    def secret_names(self) -> list[str]:
        """Every secret this server needs."""
        return sorted({*self.secret_env.values(), *([self.secret] if self.secret else [])})


class SkillsConfig(_Section):
    api_url: str = "https://skills.sh"
    download_url: str | None = None
    registry: str = "skills-sh"
    allowed_sources: list[str] = Field(default_factory=lambda: ["*"])
    #: Origins (``scheme://host[:port]``) the control plane may fetch from for workers even on
    #: internal addresses — registries you run on the LAN; ``api_url``/``download_url`` are implied.
    trusted_origins: list[str] = Field(default_factory=list)
    max_files: int = Field(default=1000, ge=1)
    max_bytes: int = Field(default=25 * 1024 * 1024, ge=1)

    @field_validator("trusted_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        for origin in value:
            parts = urlsplit(origin)
            _ = parts.port  # raises ValueError on a bad port
            if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc \
                    or parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port], e.g. https://skills.lan:8443")
        return value


def machine_timezone() -> str:
    """This machine's IANA time zone (``TZ``, ``/etc/timezone``, the ``/etc/localtime`` link), else ``UTC``."""
    from zoneinfo import ZoneInfo

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        candidates.append(Path("/etc/timezone").read_text().strip())
    except OSError:
        pass
    try:
        target = str(Path("/etc/localtime").resolve())
        candidates.append(target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "")
    except OSError:
        pass
    for name in candidates:
        if name in ("Etc/UTC", "Etc/UCT", "Etc/Universal", "Etc/Zulu", "UCT", "Universal", "Zulu"):
            return "UTC"
        if name and not name.startswith("/"):
            try:
                ZoneInfo(name)
                return name
            except Exception:  # noqa: BLE001, S112 - not a zone name: try the next source
                continue
    return "UTC"


class TeamConfig(_Section):
    manager_model: str = "smart"
    worker_model: str = "smart"
    yolo: bool = False  # skip the human's plan confirmation
    heartbeat_seconds: float = Field(default=600, gt=0)
    idle_sleep_seconds: float = Field(default=3600, gt=0)
    #: A worker whose control plane has been unreachable this long (a crash nobody restarted)
    #: stops itself; `hiclaw up` within that time adopts it instead.
    orphan_timeout_seconds: float = Field(default=1800, gt=0)
    #: The budget (USD) of every worker created without ``--budget``: the gateway warns at 80 %
    #: and refuses its calls at 100 %. ``"unlimited"`` for none.
    worker_budget_usd: float | Literal["unlimited"] = 5.0
    #: At most this many agent turns per room per minute started by others than the admin
    #: (a worker's own task assignments do not count); beyond it the agent stays silent there
    #: and the admin is told once in the Manager room. Stops mention loops.
    max_turns_per_room_per_minute: int = Field(default=10, ge=1)
    #: Revision rounds one planned task may go through (its revisions, and theirs); asking for one
    #: more blocks the task and tells the admin why.
    max_revision_rounds: int = Field(default=3, ge=0)
    #: The team's IANA time zone: the Manager's sense of "today", one-shot reminders (``--at``),
    #: schedules without ``--tz``, daily reports. Default: the machine's zone.
    timezone: str = Field(default_factory=machine_timezone)
    #: The Manager sees the last ``history_messages`` messages of the room it answers in, at most
    #: ``history_tokens`` tokens of them (≈ 4 characters each); older ones are folded into a
    #: running summary per room (0 messages: no history).
    history_messages: int = Field(default=40, ge=0, le=200)
    history_tokens: int = Field(default=2000, ge=500)
    #: The model alias that writes those summaries (default ``cheap`` if it exists, else the
    #: Manager's model); ``"none"``: summaries are made by code, without a model call.
    summary_model: str | None = None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        name = value.strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as Europe/Paris, "
                             "America/New_York or UTC") from None
        return name

    @field_validator("worker_budget_usd", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("unlimited", "none")):
            return "unlimited"
        return value

    @field_validator("worker_budget_usd")
    @classmethod
    def _budget_not_negative(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and value < 0:
            raise ValueError("a budget is >= 0 USD, or \"unlimited\"")
        return value

    @property
    def default_worker_budget(self) -> float | None:
        """``worker_budget_usd`` as a number, ``None`` for unlimited."""
        return None if self.worker_budget_usd == "unlimited" else float(self.worker_budget_usd)


ApprovalLevel = Literal["strict", "smart", "auto", "off"]


class ApprovalRule(_Section):
    """One ``[[approvals.rules]]``: calls whose target matches ``tool`` (a glob on
    ``mcp:<server>/<tool>``, ``egress:<route>/<METHOD> <path>`` or ``command:<command line>``) and, if set, whose arguments
    (as JSON) match the regular expression ``args``, by one of ``workers`` (default all), need the
    admin (``decision = "ask"``) or not (``"allow"``). The first matching rule decides."""

    tool: str
    args: str | None = None
    workers: list[str] = Field(default_factory=list)
    decision: Literal["ask", "allow"] = "ask"

    @field_validator("tool")
    @classmethod
    def _tool(cls, value: str) -> str:
        if not value.startswith(("mcp:", "egress:", "command:", "*")):
            raise ValueError(f"{value!r} must start with 'mcp:' (mcp:<server>/<tool>), 'egress:' "
                             "(egress:<route>/<METHOD> <path>) or 'command:' (command:<command line>); globs "
                             "allowed, e.g. 'mcp:tracker/create_*'")
        return value

    @field_validator("args")
    @classmethod
    def _args(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a regular expression ({exc})") from None
        return value

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: list[str]) -> list[str]:
        return check_worker_names(value)


class ApprovalsConfig(_Section):
    """``[approvals]`` (docs/approvals.md): which calls of workers' tools wait for the admin.
    ``level``: ``strict`` (every MCP tool call, egress request and command), ``smart`` (those
    that may write: MCP tools not marked read-only or marked destructive, egress requests other
    than GET/HEAD/OPTIONS, risky commands), ``auto`` (only what ``rules`` ask for), ``off``
    (none, not even rules).
    ``workers``: a level per worker. ``remind_seconds``: a pending approval reminds the admin
    every so often; ``expire_seconds`` (0 = never): then it is denied, saying so."""

    level: ApprovalLevel = "auto"
    workers: dict[str, ApprovalLevel] = Field(default_factory=dict)
    rules: list[ApprovalRule] = Field(default_factory=list)
    hold_seconds: float = Field(default=20.0, gt=0, le=120)
    remind_seconds: float = Field(default=1800.0, gt=0)
    expire_seconds: float = Field(default=0.0, ge=0)

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: dict[str, ApprovalLevel]) -> dict[str, ApprovalLevel]:
        check_worker_names(list(value))
        return value


class ConsoleConfig(_Section):
    """``[console]``: the web console the control plane serves (docs/console.md)."""

    enabled: bool = True
    #: Loopback by default; ``hiclaw up --lan`` sets "0.0.0.0" (all interfaces).
    host: str = "127.0.0.1"
    #: 0: any free port (printed by ``hiclaw up``).
    port: int = Field(default=7420, ge=0, le=65535)
    #: A session unused this long is over (log in again).
    session_idle_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    #: The largest file the console's Files page takes into shared/ (MB).
    max_upload_mb: float = Field(default=25.0, gt=0, le=1024)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        import ipaddress

        text = value.strip()
        try:
            ipaddress.ip_address(text)
        except ValueError:
            if text != "localhost":
                raise ValueError(f"console host {value!r} must be an IP address such as 127.0.0.1 (loopback) or "
                                 "0.0.0.0 (all interfaces), or localhost") from None
        return text


class PluginsConfig(_Section):
    disabled: list[str] = Field(default_factory=list)


class HiclawConfig(_Section):
    channel: ChannelConfig = Field(default_factory=ChannelConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    models: dict[str, ModelAlias] = Field(default_factory=dict)
    skills: SkillsConfig = Field(default_factory=SkillsConfig)
    team: TeamConfig = Field(default_factory=TeamConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    egress: dict[str, EgressRoute] = Field(default_factory=dict)
    mcp: dict[str, McpServer] = Field(default_factory=dict)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)

    @field_validator("mcp")
    @classmethod
    def _mcp_names(cls, value: dict[str, McpServer]) -> dict[str, McpServer]:
        for name, server in value.items():
            if not MCP_NAME.match(name):
                raise ValueError(f"MCP server name {name!r} must be lower-case letters, digits, '_' or '-' "
                                 "(at most 32)")
            server.check_transport(name)
        return value

    @field_validator("egress")
    @classmethod
    def _egress_names(cls, value: dict[str, EgressRoute]) -> dict[str, EgressRoute]:
        for name, route in value.items():
            if not EGRESS_NAME.match(name):
                raise ValueError(f"route name {name!r} must be lower-case letters, digits, '_' or '-'")
            route.check_injection(name)
        return value

    def egress_grants(self) -> dict[str, list[str]]:
        """``{worker: [egress route names]}`` from the routes' ``workers`` lists."""
        grants: dict[str, list[str]] = {}
        for name, route in sorted(self.egress.items()):
            for worker in route.workers:
                grants.setdefault(worker, []).append(name)
        return grants

    def mcp_grants(self) -> dict[str, dict[str, list[str] | None]]:
        """``{worker: {server: None}}`` (every offered tool) from the servers' ``workers`` lists."""
        grants: dict[str, dict[str, list[str] | None]] = {}
        for name, server in sorted(self.mcp.items()):
            for worker in server.workers:
                grants.setdefault(worker, {})[name] = None
        return grants

    @field_validator("models")
    @classmethod
    def _alias_names(cls, value: dict[str, ModelAlias]) -> dict[str, ModelAlias]:
        for alias, spec in value.items():
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", alias):
                raise ValueError(f"alias {alias!r} must be letters, digits, '.', '_' or '-'")
            if spec.fallback is not None and spec.fallback not in value:
                raise ValueError(f"alias {alias!r} falls back to unknown alias {spec.fallback!r}")
        return value


# --------------------------------------------------------------------------- reading


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of the key at ``loc`` in TOML ``text``."""
    if not loc:
        return None
    key = str(loc[-1])
    tables = [str(p) for p in loc[:-1] if not isinstance(p, int)]
    current: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[+\s*([^\]]+?)\s*\]+", stripped)
        if header:
            current = [part.strip().strip('"') for part in header.group(1).split(".")]
            if current == [*tables, key]:
                return number
            continue
        match = re.match(r'^"?([A-Za-z0-9_.-]+)"?\s*=', stripped)
        if match:
            full = current + [p.strip('"') for p in match.group(1).split(".")]
            if full == [*tables, key] or full[-len([*tables, key]):] == [*tables, key]:
                return number
    return None


def _format_validation(exc: ValidationError, *, source: str, text: str | None) -> ConfigError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(text, loc) if text is not None else None
    where = f"{source}" + (f" line {line}" if line else "")
    if err["type"] == "extra_forbidden":
        return ConfigError(f"{where}: unknown key '{key}'", hint="remove it or check its spelling (see docs/configuration.md)")
    expected = err["msg"]
    got = err.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    return ConfigError(f"{where}: key '{key}': {expected}{got_text}", hint=f"set '{key}' to a valid value")


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text", hint="save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})", hint="check the path and its permissions") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", hint="fix the syntax at that line, or rewrite it with `hiclaw init --force`") from None


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: dict[str, str]) -> list[tuple[str, list[str], Any]]:
    overrides = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if not all(path):
            raise ConfigError(f"environment variable {name}: empty key part", hint="use HICLAW_SECTION__KEY=value")
        overrides.append((name, path, _parse_env_value(raw)))
    return overrides


def _apply(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def load_config(home: Path | None = None, *, environ: dict[str, str] | None = None) -> HiclawConfig:
    """Read, merge and validate the configuration. Missing file → defaults."""
    home = home or hiclaw_home()
    environ = dict(os.environ) if environ is None else environ
    path = home / CONFIG_FILE
    data: dict[str, Any] = {}
    text: str | None = None
    if path.exists():
        data, text = _read_toml(path)
    try:
        HiclawConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(exc, source=str(path), text=text) from None
    for name, key_path, value in _env_overrides(environ):
        candidate = _deep_copy(data)
        _apply(candidate, key_path, value)
        try:
            HiclawConfig.model_validate(candidate)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(
                f"environment variable {name}: {err['msg']}", hint=f"unset {name} or give it a valid value"
            ) from None
        data = candidate
    if environ.get("SKILLS_API_URL"):
        _apply(data, ["skills", "api_url"], environ["SKILLS_API_URL"])
    if environ.get("SKILLS_DOWNLOAD_URL"):
        _apply(data, ["skills", "download_url"], environ["SKILLS_DOWNLOAD_URL"])
    return HiclawConfig.model_validate(data)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


# --------------------------------------------------------------------------- writing


#: Files directly under ``$HICLAW_HOME`` that only its owner may read: the configuration, the
#: secrets, the state database (and SQLite's companions of it).
PRIVATE_FILES = (CONFIG_FILE, SECRETS_FILE, "state.db", "state.db-wal", "state.db-shm")
#: Folders of ``$HICLAW_HOME`` holding credentials (run records, tokens, the gateway's database).
PRIVATE_DIRS = ("run", "run/workers", "channel", "gateway", "workers")


def secure_home(home: Path) -> Path:
    """Make ``home`` private whatever the umask: this process (and every process it starts)
    creates files 0600 and folders 0700 from now on (umask 077); ``home`` itself is 0700; the
    files of :data:`PRIVATE_FILES` and the folders of :data:`PRIVATE_DIRS` (with the files
    directly in them) that already exist are made 0600 / 0700. Links are never followed.

    Workers run as the same user, so they still read what is bound into their sandboxes."""
    os.umask(0o077)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    _chmod_nofollow(home, 0o700)
    for name in PRIVATE_FILES:
        _chmod_nofollow(home / name, 0o600)
    for name in PRIVATE_DIRS:
        folder = home / name
        if _chmod_nofollow(folder, 0o700):
            for entry in os.scandir(folder):
                if entry.is_file(follow_symlinks=False):
                    _chmod_nofollow(Path(entry.path), 0o600)
    return home


def _chmod_nofollow(path: Path, mode: int) -> bool:
    """``chmod`` ``path`` if it exists and is a file or folder of ours, not a link; True if done."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # absent, a link, or not ours to open
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            return False
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
        return True
    finally:
        os.close(fd)


def _prune(data: Any) -> Any:
    if isinstance(data, dict):
        pruned = {k: _prune(v) for k, v in data.items()}
        return {k: v for k, v in pruned.items() if v != {}}
    return data


def config_to_dict(config: HiclawConfig) -> dict[str, Any]:
    return _prune(config.model_dump(mode="json", exclude_none=True))


def save_config(config: HiclawConfig, home: Path | None = None) -> Path:
    home = home or hiclaw_home()
    path = home / CONFIG_FILE
    header = "# hiclaw configuration — see docs/configuration.md. Secrets belong in secrets.toml.\n"
    write_text_atomically(path, header + tomli_w.dumps(config_to_dict(config)), mode=0o600, fsync=True)
    return path


def update_config_file(home: Path | None, mutate: Any) -> Path:
    """Apply ``mutate(raw_dict)`` to the TOML file as written (not to defaults), validate, save.

    Keeps the user's choices intact: only what ``mutate`` changes is changed."""
    home = home or hiclaw_home()
    path = home / CONFIG_FILE
    data: dict[str, Any] = {}
    if path.exists():
        data, _ = _read_toml(path)
    mutate(data)
    try:
        HiclawConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(exc, source=str(path), text=None) from None
    header = "# hiclaw configuration — see docs/configuration.md. Secrets belong in secrets.toml.\n"
    write_text_atomically(path, header + tomli_w.dumps(data), mode=0o600, fsync=True)
    return path


class Secrets:
    """Named secrets from the environment and ``secrets.toml`` (never logged, never echoed)."""

    def __init__(self, values: dict[str, SecretStr], path: Path, environ: dict[str, str] | None = None) -> None:
        self._values = values
        self.path = path
        self._environ = dict(os.environ) if environ is None else environ

    @classmethod
    def load(cls, home: Path | None = None, *, environ: dict[str, str] | None = None) -> Secrets:
        home = home or hiclaw_home()
        path = home / SECRETS_FILE
        values: dict[str, SecretStr] = {}
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"{path}: readable by other users (mode {mode:04o})", hint=f"run `chmod 600 {path}`"
                )
            data, _ = _read_toml(path)
            for name, value in data.items():
                if not SECRET_NAME.match(name):
                    raise ConfigError(f"{path}: secret name '{name}' is invalid", hint="use lower-case letters, digits and '_'")
                if not isinstance(value, str):
                    raise ConfigError(f"{path}: secret '{name}' must be a string", hint=f'write it as {name} = "…"')
                values[name] = SecretStr(value)
        return cls(values, path, environ)

    def names(self) -> list[str]:
        return sorted(self._values)

    def get(self, name: str) -> SecretStr | None:
        for var in (f"{ENV_PREFIX}SECRET_{name.upper()}", name.upper()):
            if self._environ.get(var):
                return SecretStr(self._environ[var])
        return self._values.get(name)

    def require(self, name: str, *, purpose: str) -> SecretStr:
        value = self.get(name)
        if value is None:
            raise ConfigError(
                f"secret '{name}' is not set (needed for {purpose})",
                hint=f"add `{name} = \"…\"` to {self.path} or export {name.upper()}",
            )
        return value

    def set(self, name: str, value: str) -> None:
        if not SECRET_NAME.match(name):
            raise ConfigError(f"secret name '{name}' is invalid", hint="use lower-case letters, digits and '_'")
        self._values[name] = SecretStr(value)

    def save(self) -> Path:
        body = {name: secret.get_secret_value() for name, secret in sorted(self._values.items())}
        header = "# hiclaw secrets — keep mode 0600; read only by the control plane and the gateway.\n"
        write_text_atomically(self.path, header + tomli_w.dumps(body), mode=0o600, fsync=True)
        return self.path


SandboxName = Literal["bwrap", "process", "docker", "kubernetes"]
