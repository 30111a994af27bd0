"""What a sandbox runs: :class:`WorkerSpec`, with its :class:`Mount`\\ s and :class:`Bridge`\\ s.

A spec is backend-neutral. The control plane builds one per worker; every backend (bwrap,
process, docker, kubernetes) turns the same spec into its own isolation.

Paths are absolute and host paths. Mounts appear at ``sandbox_path`` (by default the same
path), so a path printed by the control plane means the same file inside the sandbox. A bridge
makes ``127.0.0.1:<port>`` inside the sandbox reach a host service (by default the host service
listening on the same port), so URLs are identical inside and outside.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Agent names (DESIGN: ``[a-z][a-z0-9-]{0,30}``).
AGENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BRIDGE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")

Port = Annotated[int, Field(ge=1, le=65535)]


def _absolute(value: Path, what: str) -> Path:
    if not value.is_absolute():
        raise ValueError(f"{what} must be an absolute path (got {str(value)!r})")
    if any(part == ".." for part in value.parts):
        raise ValueError(f"{what} must not contain '..' (got {str(value)!r})")
    return Path(str(value))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Mount(_Model):
    """A host path made visible inside the sandbox (read-only unless ``read_only=False``)."""

    host_path: Path
    sandbox_path: Path | None = None  # None: the same path as on the host
    read_only: bool = True
    #: If set, ``host_path`` lies under this trusted folder and is reached from it without
    #: following any link (opened by descriptor and bound by descriptor where the backend can),
    #: because what is between them can be changed by an untrusted worker.
    beneath: Path | None = None

    @field_validator("host_path", "sandbox_path", "beneath")
    @classmethod
    def _check(cls, value: Path | None) -> Path | None:
        return None if value is None else _absolute(value, "a mount path")

    @property
    def target(self) -> Path:
        return self.sandbox_path or self.host_path


class Bridge(_Model):
    """In-sandbox ``127.0.0.1:port`` → a host service (TCP ``target_host:target_port`` or a
    unix socket ``target_unix``). ``target_port`` defaults to ``port``."""

    name: str
    port: Port
    target_host: str = "127.0.0.1"
    target_port: Port | None = None
    target_unix: Path | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _BRIDGE_NAME.match(value):
            raise ValueError(f"bridge name {value!r} must be lower-case letters, digits and '-' (e.g. 'gateway')")
        return value

    @field_validator("target_unix")
    @classmethod
    def _unix(cls, value: Path | None) -> Path | None:
        return None if value is None else _absolute(value, "target_unix")

    @model_validator(mode="after")
    def _one_target(self) -> Bridge:
        if self.target_unix is not None and self.target_port is not None:
            raise ValueError(f"bridge {self.name!r}: give target_port or target_unix, not both")
        return self

    @property
    def tcp_target(self) -> tuple[str, int] | None:
        """``(host, port)`` for a TCP target, ``None`` for a unix-socket target."""
        if self.target_unix is not None:
            return None
        return self.target_host, self.target_port or self.port


class WorkerSpec(_Model):
    """Everything a backend needs to start one worker."""

    name: str
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    #: The worker's own directory: bound read-write, ``$HOME`` inside, default ``cwd``.
    home: Path | None = None
    #: Where ``home`` appears inside the sandbox (``None``: the same path) — a neutral path, so a
    #: worker does not learn where the control plane keeps its files.
    home_target: Path | None = None
    cwd: Path | None = None
    mounts: list[Mount] = Field(default_factory=list)
    bridges: list[Bridge] = Field(default_factory=list)
    #: Full network access (the host's network). Off by default: only the bridges.
    network: bool = False
    #: Where stdout/stderr go; ``None``: ``$HICLAW_HOME/logs/workers/<name>.log``.
    log_path: Path | None = None
    #: Digest of what the run depends on, chosen by the caller (never secrets): a run left by a
    #: crashed control plane is adopted only by a spec with the same fingerprint.
    fingerprint: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not AGENT_NAME.match(value):
            raise ValueError(
                f"worker name {value!r} must start with a letter and use only a-z, 0-9 and '-' (at most 31 characters)"
            )
        return value

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if any("\0" in arg for arg in value):
            raise ValueError("argv must not contain NUL characters")
        if not value[0]:
            raise ValueError("argv[0] (the program) must not be empty")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"environment variable name {key!r} is invalid (letters, digits, '_')")
            if "\0" in val:
                raise ValueError(f"environment variable {key} must not contain NUL characters")
        return value

    @field_validator("home", "home_target", "cwd", "log_path")
    @classmethod
    def _paths(cls, value: Path | None) -> Path | None:
        return None if value is None else _absolute(value, "home, home_target, cwd and log_path")

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSpec:
        ports = [b.port for b in self.bridges]
        if len(ports) != len(set(ports)):
            raise ValueError("two bridges listen on the same port; give each bridge its own port")
        names = [b.name for b in self.bridges]
        if len(names) != len(set(names)):
            raise ValueError("two bridges have the same name; bridge names must be unique")
        targets = [m.target for m in self.mounts] + ([self.home_inside] if self.home_inside else [])
        if len(targets) != len(set(targets)):
            raise ValueError("two mounts (or a mount and home) use the same sandbox path")
        return self

    @property
    def home_inside(self) -> Path | None:
        """The home's path inside the sandbox."""
        return self.home_target or self.home

    @property
    def working_dir(self) -> Path | None:
        return self.cwd or self.home_inside

    def writable_paths(self) -> list[Path]:
        """Sandbox paths the worker may write: its home and read-write mounts."""
        paths = [self.home_inside] if self.home_inside else []
        return paths + [m.target for m in self.mounts if not m.read_only]
