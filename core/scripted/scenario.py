"""The scenario file format of the scripted model server (YAML or JSON).

A scenario says, per agent, what the "model" answers. The agent is the request's ``user`` field
(the gateway sets it to the consumer name) or, failing that, the ``X-Hiclaw-Consumer`` header.
The full format, with examples, is documented in ``docs/scripted-model.md``; the pydantic models
below are its schema, and every validation error names the place in the file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hiclaw.errors import InvalidInputError

WILDCARD_AGENT = "*"
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Match(_Strict):
    """When a turn applies. Every given condition must hold (an empty ``when`` always holds).

    Text conditions look at the *latest input*: the trailing block of tool results if the
    conversation ends with tool messages (their contents joined by newlines), otherwise the
    content of the last user message.
    """

    contains: list[str] = Field(default_factory=list)  # every substring must occur
    not_contains: list[str] = Field(default_factory=list)  # none may occur
    regex: str | None = None  # re.search, DOTALL; named groups become variables
    role: Literal["user", "tool"] | None = None  # the latest input came from this role
    tool_result: str | None = None  # the latest input includes a result of this tool
    model: str | None = None  # the request's model equals this

    @field_validator("contains", "not_contains", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class ToolCall(_Strict):
    """A tool call the model makes. ``arguments`` is an object (JSON-encoded on the wire) or a JSON string."""

    name: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    id: str | None = None  # default: call_<agent>_<call number>_<index>

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: dict[str, Any] | str) -> dict[str, Any] | str:
        if isinstance(value, str) and not _TEMPLATE.search(value):
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"arguments string is not JSON: {exc}") from None
        return value


class Usage(_Strict):
    """Token counts to report; an omitted one is computed (about 4 characters per token)."""

    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)


class ErrorReply(_Strict):
    """Answer with an HTTP error instead of a completion (to exercise retries and fallbacks)."""

    status: int = Field(default=500, ge=400, le=599)
    message: str = "scripted upstream error"
    code: str | None = None  # the error's `code` (default "scripted_error"), e.g. context_length_exceeded
    type: str | None = None  # the error's `type` (default "server_error"), e.g. insufficient_quota
    headers: dict[str, str | int | float] = Field(default_factory=dict)  # e.g. {"Retry-After": 1}


class Turn(_Strict):
    """One scripted answer: text and/or tool calls (or an error), and when it applies."""

    when: Match = Field(default_factory=Match)
    text: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None  # default: "tool_calls" when there are tool calls, else "stop"
    delay_ms: int = Field(default=0, ge=0, le=600_000)  # wait before answering (model latency)
    delay_jitter_ms: int = Field(default=0, ge=0, le=600_000)  # ± spread of the delay, fixed per (agent, call)
    error: ErrorReply | None = None
    times: int | None = Field(default=None, ge=1)  # rules only: how often it may fire (default: always)

    @model_validator(mode="after")
    def _says_something(self) -> Turn:
        if self.error is None and self.text is None and not self.tool_calls:
            raise ValueError("a turn needs `text`, `tool_calls` or `error`")
        return self


class AgentScript(_Strict):
    """What one agent's model does: ordered ``turns``, pattern ``rules``, and a ``default``."""

    turns: list[Turn] = Field(default_factory=list)
    rules: list[Turn] = Field(default_factory=list)
    default: Turn | None = None

    @model_validator(mode="after")
    def _has_something(self) -> AgentScript:
        if not self.turns and not self.rules and self.default is None:
            raise ValueError("an agent needs at least one of `turns`, `rules` or `default`")
        if any(turn.times is not None for turn in self.turns):
            raise ValueError("`times` is for rules; an ordered turn is used once")
        return self


class Scenario(_Strict):
    """A whole scenario file."""

    version: Literal[1] = 1
    name: str = "scenario"
    models: list[str] = Field(default_factory=lambda: ["scripted"])  # what GET /v1/models lists
    agents: dict[str, AgentScript]

    @field_validator("agents")
    @classmethod
    def _names(cls, value: dict[str, AgentScript]) -> dict[str, AgentScript]:
        if not value:
            raise ValueError("needs at least one agent")
        for name in value:
            if name != WILDCARD_AGENT and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name):
                raise ValueError(f"agent name {name!r} must be letters, digits, '.', '_', '-' (or '*')")
        return value

    def script_for(self, agent: str | None) -> AgentScript | None:
        if agent is not None and agent in self.agents:
            return self.agents[agent]
        return self.agents.get(WILDCARD_AGENT)


def _where(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        parts.append(f"[{part}]" if isinstance(part, int) else (f".{part}" if parts else str(part)))
    return "".join(parts) or "(top level)"


def parse_scenario(data: Any, *, source: str = "scenario") -> Scenario:
    """Validate already-parsed data; errors name the key path (e.g. ``agents.manager.turns[2]``)."""
    if not isinstance(data, dict):
        raise InvalidInputError(f"{source}: a scenario must be a mapping with an `agents` key",
                                hint="see docs/scripted-model.md")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _where(tuple(err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        raise InvalidInputError(f"{source}: {where}: {message}", hint="see docs/scripted-model.md for the format") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read a ``.yaml``/``.yml``/``.json`` scenario file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the scenario ({exc.strerror})", hint="check the path") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise InvalidInputError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {detail}",
                                hint="fix the syntax at that line") from None
    return parse_scenario(data, source=str(path))


def template_names(text: str) -> list[str]:
    """Variable names used as ``{{name}}`` in ``text``."""
    return _TEMPLATE.findall(text)


def render_template(text: str, variables: dict[str, str]) -> str:
    """Replace ``{{name}}``; an unknown name raises ``KeyError`` (the server reports it)."""
    return _TEMPLATE.sub(lambda m: str(variables[m.group(1)]), text)
