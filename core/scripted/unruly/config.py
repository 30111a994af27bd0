"""The unruly model's configuration: which misbehaviours, for whom, how often (YAML or JSON).

::

    seed: 7                       # the random mix is a pure function of (seed, agent, call number)
    max_consecutive: 3            # after this many bad calls in a row an agent gets a clean one
    scenario: demo.yaml           # optional base scenario (a path relative to this file, or inline)
    agents:
      sam:
        kinds:
          text_instead_of_tools: 0.3             # a rate...
          http_429: {rate: 0.1, retry_after: 2}  # ...or a rate with parameters
        schedule:                                # exact calls (1-based, per agent), beside the mix
          2: http_429
          5: {kind: http_429, retry_after: 3}
          7-9: loop
      "*":                                       # every agent without its own entry
        kinds: {http_503: 0.05}

Every kind and parameter is described in ``docs/scripted-model.md`` ("The unruly model").
Validation errors name the place in the file, like the scenario's.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hiclaw.errors import InvalidInputError
from hiclaw.scripted.scenario import WILDCARD_AGENT, Match, Scenario, parse_scenario

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
MAX_SCHEDULE_RANGE = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KindSpec(_Strict):
    """What every kind accepts: how often it fires and when it may."""

    kind: str = ""  # each concrete kind narrows this to its name
    rate: float = Field(default=0.0, ge=0, le=1)  # probability per call (in `kinds`; unused in `schedule`)
    streak: int = Field(default=1, ge=1, le=1000)  # once fired, the next streak-1 calls misbehave the same way
    tools: list[str] = Field(default_factory=list)  # only when the base reply calls one of these tools
    when: Match | None = None  # only when the latest input matches (the scenario's `when`)


class TextInsteadOfTools(KindSpec):
    kind: Literal["text_instead_of_tools"] = "text_instead_of_tools"
    style: Literal["done", "plan"] = "done"  # claims it did it / announces it will
    text: str | None = None  # template: {{tool}}, {{arguments}} (JSON) and each argument by name


class ToolsAsText(KindSpec):
    kind: Literal["tools_as_text"] = "tools_as_text"
    style: Literal["hermes", "fence", "llama", "any"] = "hermes"
    preamble: str | None = None  # prose before the calls


class MalformedArguments(KindSpec):
    kind: Literal["malformed_arguments"] = "malformed_arguments"
    mode: Literal["invalid_json", "wrong_types", "missing_required", "any"] = "any"


class UnknownTool(KindSpec):
    kind: Literal["unknown_tool"] = "unknown_tool"
    name: str | None = None  # default: a near miss of the tool it should have called


class Loop(KindSpec):
    kind: Literal["loop"] = "loop"
    streak: int = Field(default=3, ge=1, le=1000)


class Question(KindSpec):
    kind: Literal["question"] = "question"
    to: str | None = None  # whom it mentions: default "manager" (for the manager itself: "admin")
    text: str | None = None  # template: {{to}}, {{task}}, {{agent}}


class Refusal(KindSpec):
    kind: Literal["refusal"] = "refusal"
    text: str = "I'm sorry, but I can't help with that request."
    field: bool = False  # in `message.refusal` (content null), as OpenAI's structured outputs do


class LongOutput(KindSpec):
    kind: Literal["long_output"] = "long_output"
    chars: int = Field(default=100_000, ge=1, le=20_000_000)  # capped by the request's max_tokens × 4
    finish_reason: str = "length"


class Http429(KindSpec):
    kind: Literal["http_429"] = "http_429"
    retry_after: float | None = Field(default=1.0, ge=0, le=86_400)  # seconds; null: no Retry-After header
    code: Literal["rate_limit_exceeded", "insufficient_quota"] = "rate_limit_exceeded"


class Http500(KindSpec):
    kind: Literal["http_500"] = "http_500"


class Http502(KindSpec):
    kind: Literal["http_502"] = "http_502"


class Http503(KindSpec):
    kind: Literal["http_503"] = "http_503"
    retry_after: float | None = Field(default=None, ge=0, le=86_400)


class Timeout(KindSpec):
    kind: Literal["timeout"] = "timeout"
    mode: Literal["hang", "close", "stall", "cut"] = "hang"
    seconds: float = Field(default=600.0, ge=0, le=86_400)  # how long `hang`/`stall` hold the connection


class ContextLength(KindSpec):
    kind: Literal["context_length"] = "context_length"
    budget: int | None = Field(default=None, ge=1)  # fires whenever the prompt's tokens exceed it
    style: Literal["openai", "llama_cpp", "vllm"] = "openai"


class Empty(KindSpec):
    kind: Literal["empty"] = "empty"
    null: bool = False  # content null instead of ""


KIND_MODELS: dict[str, type[KindSpec]] = {
    model.model_fields["kind"].default: model
    for model in (TextInsteadOfTools, ToolsAsText, MalformedArguments, UnknownTool, Loop, Question, Refusal,
                  LongOutput, Http429, Http500, Http502, Http503, Timeout, ContextLength, Empty)
}
#: Every kind, in the order the random draw walks them.
KINDS: tuple[str, ...] = tuple(KIND_MODELS)

AnyKind = Annotated[
    TextInsteadOfTools | ToolsAsText | MalformedArguments | UnknownTool | Loop | Question | Refusal | LongOutput
    | Http429 | Http500 | Http502 | Http503 | Timeout | ContextLength | Empty,
    Field(discriminator="kind"),
]


def _rate_or_spec(value: Any) -> Any:
    if isinstance(value, bool):
        return value  # let pydantic reject it: a rate is a number
    return {"rate": value} if isinstance(value, int | float) else value


class Kinds(_Strict):
    """The random mix: a rate (or a rate with parameters) per kind; the rates add up to at most 1."""

    text_instead_of_tools: TextInsteadOfTools | None = None
    tools_as_text: ToolsAsText | None = None
    malformed_arguments: MalformedArguments | None = None
    unknown_tool: UnknownTool | None = None
    loop: Loop | None = None
    question: Question | None = None
    refusal: Refusal | None = None
    long_output: LongOutput | None = None
    http_429: Http429 | None = None
    http_500: Http500 | None = None
    http_502: Http502 | None = None
    http_503: Http503 | None = None
    timeout: Timeout | None = None
    context_length: ContextLength | None = None
    empty: Empty | None = None

    @model_validator(mode="before")
    @classmethod
    def _rates(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {name: _rate_or_spec(value) for name, value in data.items()}
        return data

    @model_validator(mode="after")
    def _at_most_one(self) -> Kinds:
        total = sum(spec.rate for spec in self.specs())
        if total > 1 + 1e-9:
            raise ValueError(f"the rates add up to {total:g}; a call misbehaves at most once (≤ 1)")
        return self

    def specs(self) -> list[KindSpec]:
        """The configured kinds, in :data:`KINDS` order."""
        return [spec for name in KINDS if (spec := getattr(self, name)) is not None]


def _schedule_entry(value: Any) -> Any:
    return {"kind": value} if isinstance(value, str) else value


def call_numbers(key: str) -> range:
    """``"5"`` → call 5; ``"3-6"`` → calls 3 to 6 (1-based, inclusive)."""
    found = _RANGE.match(key)
    if found is None:
        raise ValueError(f"schedule key {key!r} must be a call number or a range like 3-6")
    first = int(found.group(1))
    last = int(found.group(2) or first)
    if first < 1 or last < first or last - first >= MAX_SCHEDULE_RANGE:
        raise ValueError(f"schedule key {key!r}: calls count from 1 and a range goes upwards "
                         f"(at most {MAX_SCHEDULE_RANGE} calls)")
    return range(first, last + 1)


class AgentMix(_Strict):
    """How one agent's model misbehaves."""

    kinds: Kinds = Field(default_factory=Kinds)
    schedule: dict[str, AnyKind] = Field(default_factory=dict)  # "N" or "N-M" → a kind (name or spec)
    max_consecutive: int | None = Field(default=None, ge=1)  # default: the file's `max_consecutive`

    @field_validator("schedule", mode="before")
    @classmethod
    def _entries(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(key): _schedule_entry(entry) for key, entry in value.items()}
        return value

    @field_validator("schedule")
    @classmethod
    def _keys(cls, value: dict[str, KindSpec]) -> dict[str, KindSpec]:
        seen: dict[int, str] = {}
        for key in value:
            for number in call_numbers(key):
                if number in seen:
                    raise ValueError(f"call {number} is scheduled twice ({seen[number]!r} and {key!r})")
                seen[number] = key
        return value

    def scheduled(self, call: int) -> KindSpec | None:
        for key, spec in self.schedule.items():
            if call in call_numbers(key):
                return spec
        return None


class UnrulyConfig(_Strict):
    """A whole unruly-model file."""

    version: Literal[1] = 1
    name: str = "unruly"
    seed: int = 0
    max_consecutive: int = Field(default=3, ge=1)  # bad calls in a row (mix and streaks) before a clean one
    scenario: dict[str, Any] | str | None = None  # the base scenario: inline, or a path
    agents: dict[str, AgentMix] = Field(default_factory=dict)

    def mix_for(self, agent: str) -> AgentMix | None:
        return self.agents.get(agent, self.agents.get(WILDCARD_AGENT))

    def limit_for(self, mix: AgentMix) -> int:
        return self.max_consecutive if mix.max_consecutive is None else mix.max_consecutive


def _where(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for index, part in enumerate(loc):
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in KINDS and index >= 2 and loc[index - 2] == "schedule":
            continue  # the discriminator's own segment: `schedule.2.http_429.retry_after` says it twice
        else:
            parts.append(f".{part}" if parts else str(part))
    return "".join(parts) or "(top level)"


def parse_unruly_config(data: Any, *, source: str = "unruly config") -> UnrulyConfig:
    """Validate already-parsed data; errors name the key path (e.g. ``agents.sam.kinds.http_429.retry_after``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInputError(f"{source}: an unruly config must be a mapping (with `agents`)",
                                hint="see docs/scripted-model.md, \"The unruly model\"")
    try:
        return UnrulyConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key" + (f" (kinds: {', '.join(KINDS)})" if "kinds" in err["loc"] else "")
        elif err["type"] == "union_tag_invalid":
            message = f"unknown kind (kinds: {', '.join(KINDS)})"
        raise InvalidInputError(f"{source}: {_where(tuple(err['loc']))}: {message}",
                                hint="see docs/scripted-model.md, \"The unruly model\"") from None


def _read(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the {what} ({exc.strerror})", hint="check the path") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise InvalidInputError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {detail}",
                                hint="fix the syntax at that line") from None


def load_unruly_config(path: str | Path) -> UnrulyConfig:
    """Read a ``.yaml``/``.yml``/``.json`` unruly config; a relative ``scenario`` path is made absolute."""
    path = Path(path)
    config = parse_unruly_config(_read(path, "unruly config"), source=str(path))
    if isinstance(config.scenario, str):
        config = config.model_copy(update={"scenario": str((path.parent / config.scenario).resolve())})
    return config


def base_scenario(config: UnrulyConfig) -> Scenario | None:
    """The scenario the config names (inline or by path), if any."""
    if config.scenario is None:
        return None
    if isinstance(config.scenario, str):
        from hiclaw.scripted.scenario import load_scenario

        return load_scenario(config.scenario)
    return parse_scenario(config.scenario, source="unruly config: scenario")
