"""Choosing the scripted answer for a request, deterministically.

For each call of an agent the engine tries, in order:

1. the agent's next ordered turn (``turns[i]``), if its ``when`` holds — then ``i`` advances;
2. the agent's ``rules``, first match wins (a rule with ``times`` stops after that many uses);
3. the agent's ``default``;
4. a built-in reply that says nothing matched (counted as *unmatched* in the stats).

Named groups of a matching ``regex`` become variables of that agent (kept for later turns);
``{{agent}}``, ``{{call}}`` (1-based call number of this agent), ``{{model}}`` and ``{{input}}`` (the
latest input's text) always exist.
"""
from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from hiclaw.scripted.scenario import AgentScript, ErrorReply, Match, Scenario, Turn, render_template


class ScenarioError(Exception):
    """The scenario cannot answer this request (unknown agent, variable never captured…)."""

    def __init__(self, message: str, *, code: str = "scenario_error") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class AgentState:
    next_turn: int = 0
    calls: int = 0
    unmatched: int = 0
    rule_uses: dict[int, int] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)


@dataclass
class ScriptedReply:
    """The answer chosen for one request, ready to be shaped into an OpenAI response."""

    agent: str
    call: int
    source: str  # "turn 2", "rule 1", "default" or "unmatched"
    text: str | None
    tool_calls: list[dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    delay_ms: int = 0
    error: ErrorReply | None = None
    refusal: str | None = None  # OpenAI's ``message.refusal`` (set by the unruly model only)


@dataclass(frozen=True)
class LatestInput:
    role: str  # "user", "tool" or "" (no input at all)
    text: str
    tool_names: tuple[str, ...]


def content_text(content: Any) -> str:
    """Text of an OpenAI message ``content`` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def _tool_name(message: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    if message.get("name"):
        return str(message["name"])
    call_id = message.get("tool_call_id")
    for earlier in reversed(messages):
        for call in earlier.get("tool_calls") or []:
            if isinstance(call, dict) and call.get("id") == call_id:
                return str((call.get("function") or {}).get("name", ""))
    return ""


def latest_input(messages: list[dict[str, Any]]) -> LatestInput:
    """The trailing block of tool results, or else the last user message."""
    index = len(messages) - 1
    tools: list[dict[str, Any]] = []
    while index >= 0 and isinstance(messages[index], dict) and messages[index].get("role") == "tool":
        tools.insert(0, messages[index])
        index -= 1
    if tools:
        return LatestInput("tool", "\n".join(content_text(m.get("content")) for m in tools),
                           tuple(_tool_name(m, messages) for m in tools))
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return LatestInput("user", content_text(message.get("content")), ())
    return LatestInput("", "", ())


def match_when(when: Match, latest: LatestInput, model: str) -> dict[str, str] | None:
    """Captured variables if ``when`` holds for this latest input, else ``None``."""
    if when.model is not None and when.model != model:
        return None
    if when.role is not None and when.role != latest.role:
        return None
    if when.tool_result is not None and when.tool_result not in latest.tool_names:
        return None
    if any(needle not in latest.text for needle in when.contains):
        return None
    if any(needle in latest.text for needle in when.not_contains):
        return None
    if when.regex is not None:
        found = re.search(when.regex, latest.text, flags=re.DOTALL)
        if found is None:
            return None
        return {k: v for k, v in found.groupdict().items() if v is not None}
    return {}


def estimate_tokens(text: str) -> int:
    """About four characters per token, at least one — deterministic, provider-agnostic."""
    return max(1, math.ceil(len(text) / 4))


def prompt_tokens_of(request: dict[str, Any]) -> int:
    """The estimated prompt size: the request's ``messages`` and ``tools`` as compact JSON."""
    return estimate_tokens(json.dumps(request.get("messages") or [], ensure_ascii=False, separators=(",", ":"))
                           + json.dumps(request.get("tools") or [], separators=(",", ":")))


def jittered_delay(delay_ms: int, jitter_ms: int, agent: str, call: int) -> int:
    """``delay_ms`` spread by up to ``jitter_ms`` either way — always the same for the same call."""
    if not jitter_ms:
        return delay_ms
    spread = zlib.crc32(f"{agent}:{call}".encode()) % (2 * jitter_ms + 1) - jitter_ms
    return max(0, delay_ms + spread)


def _delay(turn: Turn, agent: str, call: int) -> int:
    return jittered_delay(turn.delay_ms, turn.delay_jitter_ms, agent, call)


def _render(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        return render_template(value, variables)
    if isinstance(value, dict):
        return {k: _render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, variables) for v in value]
    return value


class ScriptEngine:
    """Holds the scenario and each agent's progress through it (one event loop, no locking)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.states: dict[str, AgentState] = {}
        self.requests = 0

    def reset(self) -> None:
        self.states.clear()
        self.requests = 0

    def stats(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "requests": self.requests,
            "agents": {
                name: {"calls": s.calls, "next_turn": s.next_turn, "unmatched": s.unmatched,
                       "variables": dict(s.variables)}
                for name, s in sorted(self.states.items())
            },
        }

    def _pick(self, script: AgentScript, state: AgentState, latest: LatestInput, model: str) -> tuple[str, Turn | None, dict[str, str]]:
        if state.next_turn < len(script.turns):
            turn = script.turns[state.next_turn]
            captured = match_when(turn.when, latest, model)
            if captured is not None:
                state.next_turn += 1
                return f"turn {state.next_turn}", turn, captured
        for index, rule in enumerate(script.rules):
            if rule.times is not None and state.rule_uses.get(index, 0) >= rule.times:
                continue
            captured = match_when(rule.when, latest, model)
            if captured is not None:
                state.rule_uses[index] = state.rule_uses.get(index, 0) + 1
                return f"rule {index + 1}", rule, captured
        if script.default is not None:
            captured = match_when(script.default.when, latest, model)
            return "default", script.default, captured or {}
        return "unmatched", None, {}

    def reply(self, request: dict[str, Any], *, agent: str | None) -> ScriptedReply:
        self.requests += 1
        script = self.scenario.script_for(agent)
        name = agent or "*"
        if script is None:
            known = ", ".join(sorted(self.scenario.agents))
            raise ScenarioError(
                f"scenario {self.scenario.name!r} has no script for agent {name!r} (scripted: {known}); "
                f"add `agents.{name}` or a catch-all `agents.'*'`", code="unknown_agent")
        messages = request.get("messages") or []
        model = str(request.get("model", ""))
        state = self.states.setdefault(name, AgentState())
        state.calls += 1
        latest = latest_input(messages)
        source, turn, captured = self._pick(script, state, latest, model)
        state.variables.update(captured)
        variables = {**state.variables, "agent": name, "call": str(state.calls), "model": model, "input": latest.text}
        prompt_tokens = prompt_tokens_of(request)
        if turn is None:
            state.unmatched += 1
            text = f"[scripted] no turn of scenario {self.scenario.name!r} matched call {state.calls} of agent {name!r}"
            return ScriptedReply(name, state.calls, source, text, [], prompt_tokens, estimate_tokens(text), "stop")
        try:
            return self._build(turn, name, state.calls, source, variables, prompt_tokens)
        except KeyError as exc:
            raise ScenarioError(
                f"scenario {self.scenario.name!r}, agent {name!r}, {source}: variable {{{{{exc.args[0]}}}}} "
                f"was never captured (captured so far: {', '.join(sorted(state.variables)) or 'none'})") from None

    def _build(self, turn: Turn, agent: str, call: int, source: str, variables: dict[str, str], prompt_tokens: int) -> ScriptedReply:
        text = _render(turn.text, variables) if turn.text is not None else None
        tool_calls: list[dict[str, Any]] = []
        for index, tool in enumerate(turn.tool_calls):
            arguments = _render(tool.arguments, variables)
            if isinstance(arguments, str):
                try:
                    json.loads(arguments)
                except json.JSONDecodeError:
                    raise ScenarioError(f"{source}: arguments of {tool.name} are not JSON after filling variables") from None
            else:
                arguments = json.dumps(arguments, ensure_ascii=False)
            tool_calls.append({
                "id": tool.id or f"call_{agent}_{call}_{index}",
                "type": "function",
                "function": {"name": tool.name, "arguments": arguments},
            })
        error = None
        if turn.error is not None:
            error = turn.error.model_copy(update={"message": _render(turn.error.message, variables)})
        completion_text = (text or "") + "".join(c["function"]["name"] + c["function"]["arguments"] for c in tool_calls)
        usage = turn.usage
        return ScriptedReply(
            agent=agent,
            call=call,
            source=source,
            text=text,
            tool_calls=tool_calls,
            prompt_tokens=usage.prompt_tokens if usage.prompt_tokens is not None else prompt_tokens,
            completion_tokens=(usage.completion_tokens if usage.completion_tokens is not None
                               else estimate_tokens(completion_text)),
            finish_reason=turn.finish_reason or ("tool_calls" if tool_calls else "stop"),
            delay_ms=_delay(turn, agent, call),
            error=error,
        )
