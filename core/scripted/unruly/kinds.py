"""What each misbehaviour returns, built from the reply the base scenario would have given.

Every kind is a pair of functions over a :class:`CallContext`: ``applies`` (can this call
misbehave this way — e.g. *tools as text* needs a tool call to write out) and ``make``, which
returns an :class:`Outcome`: a replacement completion (this module), or an HTTP error as a real
provider sends it, or something done to the connection (:mod:`.failures`). The shapes follow
what OpenAI, vLLM, llama.cpp and Hermes/Qwen-style local models really return; see
``docs/scripted-model.md`` ("The unruly model"). :data:`.engine.KIND_BEHAVIOURS` pairs them up.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field, replace
from typing import Any

from hiclaw.scripted.engine import LatestInput, ScriptedReply, content_text, estimate_tokens, match_when
from hiclaw.scripted.unruly import config as c

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TASK = re.compile(r"\btask-\d+\b")
LONG_PIECE = 1024  # characters per streamed delta of a long output (16 would be ~6,000 chunks per 100 kB)


@dataclass
class CallContext:
    """One call of one agent, with what the base scenario would have answered."""

    agent: str
    call: int  # this agent's call number, from 1 (every call, clean or not)
    body: dict[str, Any]
    model: str
    base: ScriptedReply
    latest: LatestInput
    prompt_tokens: int
    rng: random.Random  # seeded by (seed, agent, call): the same call always misbehaves the same way

    @property
    def base_calls(self) -> list[tuple[str, Any, str]]:
        """The base reply's tool calls as (name, decoded arguments, raw arguments)."""
        calls = []
        for tool_call in self.base.tool_calls:
            raw = tool_call["function"]["arguments"]
            try:
                decoded = json.loads(raw)
            except json.JSONDecodeError:
                decoded = raw
            calls.append((tool_call["function"]["name"], decoded, raw))
        return calls

    def offered_tools(self) -> dict[str, dict[str, Any]]:
        """The request's tools by name → their JSON schema (``parameters``)."""
        tools: dict[str, dict[str, Any]] = {}
        for tool in self.body.get("tools") or []:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and function.get("name"):
                tools[str(function["name"])] = function.get("parameters") or {}
        return tools

    def call_id(self, index: int) -> str:
        return f"call_unruly_{self.agent}_{self.call}_{index}"


@dataclass
class Outcome:
    """What the server does instead of the base reply."""

    kind: str
    reply: ScriptedReply | None = None  # a completion to send (JSON or streamed)
    status: int | None = 200  # the HTTP status sent; None when no response is sent at all
    body: bytes = b""  # an error response's body
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    transport: str | None = None  # "hang", "close", "stall" or "cut"
    seconds: float = 0.0
    keeps_base: bool = False  # a correct client still gets the base step done (tools written as text)
    piece: int = 16  # characters per streamed delta
    detail: dict[str, Any] = field(default_factory=dict)  # what was chosen, for the log


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _reply(ctx: CallContext, text: str | None, tool_calls: list[dict[str, Any]] | None = None, *,
           finish: str | None = None, refusal: str | None = None) -> ScriptedReply:
    calls = tool_calls or []
    written = (text or "") + (refusal or "") + "".join(t["function"]["name"] + t["function"]["arguments"] for t in calls)
    return replace(ctx.base, text=text, tool_calls=calls, refusal=refusal, error=None,
                   finish_reason=finish or ("tool_calls" if calls else "stop"),
                   completion_tokens=estimate_tokens(written) if written else 0)


def _tool_call(ctx: CallContext, index: int, name: str, arguments: str) -> dict[str, Any]:
    return {"id": ctx.call_id(index), "type": "function", "function": {"name": name, "arguments": arguments}}


def _renumbered(ctx: CallContext) -> list[dict[str, Any]]:
    """The base reply's tool calls under this call's own ids (a rolled-back base reply's ids come again)."""
    return [_tool_call(ctx, index, t["function"]["name"], t["function"]["arguments"])
            for index, t in enumerate(ctx.base.tool_calls)]


def _render(template: str, variables: dict[str, Any]) -> str:
    def value(found: re.Match[str]) -> str:
        item = variables.get(found.group(1), "")
        return item if isinstance(item, str) else as_json(item)

    return _VARIABLE.sub(value, template)


def filters_hold(spec: c.KindSpec, ctx: CallContext) -> bool:
    """The kind's own ``tools`` and ``when`` conditions."""
    if spec.tools and not {name for name, _, _ in ctx.base_calls} & set(spec.tools):
        return False
    return spec.when is None or match_when(spec.when, ctx.latest, ctx.model) is not None


# --------------------------------------------------------------------------- content misbehaviours


def has_tool_calls(spec: Any, ctx: CallContext) -> bool:
    return bool(ctx.base.tool_calls)


def always(spec: Any, ctx: CallContext) -> bool:
    return True


def _prose(name: str, arguments: Any) -> str:
    if not isinstance(arguments, dict):
        return f"I have done {name}: {arguments}"
    if name == "report_result":
        task = f" {arguments['task_id']}" if arguments.get("task_id") else ""
        text = f"I have finished the task{task}, here is the result: {arguments.get('summary', 'all done')}"
        return text + (f"\n\n{arguments['result_markdown']}" if arguments.get("result_markdown") else "")
    if {"path", "content"} <= set(arguments):
        return f"I have written `{arguments['path']}`:\n\n```\n{arguments['content']}\n```"
    details = ", ".join(f"{key}: {as_json(value)}" for key, value in arguments.items())
    return f"Done: I have taken care of {name}" + (f" ({details})." if details else ".")


def text_instead_of_tools(spec: c.TextInsteadOfTools, ctx: CallContext) -> Outcome:
    calls = ctx.base_calls
    if spec.text is not None:
        name, arguments, raw = calls[0]
        extra = arguments if isinstance(arguments, dict) else {}
        text = _render(spec.text, {**extra, "tool": name, "arguments": raw})
    elif spec.style == "plan":
        text = "\n".join(f"Next, I will use {name} with these arguments: {raw}" for name, _, raw in calls)
    else:
        text = "\n\n".join(_prose(name, arguments) for name, arguments, _ in calls)
    return Outcome(spec.kind, _reply(ctx, text), detail={"style": spec.style, "instead_of": [n for n, _, _ in calls]})


def tools_as_text(spec: c.ToolsAsText, ctx: CallContext) -> Outcome:
    style = ctx.rng.choice(["hermes", "fence", "llama"]) if spec.style == "any" else spec.style
    parts = []
    for name, arguments, _ in ctx.base_calls:
        if style == "hermes":  # Hermes 2 Pro / Qwen 2.5 chat templates
            parts.append(f"<tool_call>\n{as_json({'name': name, 'arguments': arguments})}\n</tool_call>")
        elif style == "fence":
            parts.append("```json\n" + json.dumps({"name": name, "arguments": arguments}, indent=2, ensure_ascii=False)
                         + "\n```")
        else:  # Llama 3.x's JSON tool calling: "parameters", no tags
            parts.append(as_json({"name": name, "parameters": arguments}))
    text = ("\n\n" if style == "fence" else "\n").join(parts)
    preamble = spec.preamble if spec.preamble is not None else ctx.base.text
    if preamble:
        text = f"{preamble}\n\n{text}"
    return Outcome(spec.kind, _reply(ctx, text), keeps_base=True, detail={"style": style})


def _invalid_json(arguments: Any, raw: str, variant: str) -> tuple[str, str]:
    if variant == "single_quotes" and isinstance(arguments, dict) and arguments:
        return repr(arguments), variant  # a Python dict: {'path': 'a.py', 'force': True}
    if variant == "trailing_comma" and isinstance(arguments, dict):
        encoded = as_json(arguments)
        return encoded[:-1] + ",}" if arguments else "{,}", variant
    return raw[: max(1, len(raw) * 2 // 3)], "truncated"  # cut off, as when max_tokens ends it mid-call


def _wrong_type(value: Any) -> Any:
    if isinstance(value, dict | list):
        return as_json(value)  # JSON inside a string: the commonest real mistake
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return [value]
    return 0


def malformed_arguments(spec: c.MalformedArguments, ctx: CallContext) -> Outcome:
    name, arguments, raw = ctx.base_calls[0]
    mode = ctx.rng.choice(["invalid_json", "wrong_types", "missing_required"]) if spec.mode == "any" else spec.mode
    schema = ctx.offered_tools().get(name, {})
    required = [key for key in schema.get("required") or [] if isinstance(arguments, dict) and key in arguments]
    detail: dict[str, Any] = {"tool": name}
    if mode in ("wrong_types", "missing_required") and not (isinstance(arguments, dict) and arguments):
        mode = "invalid_json"  # nothing to mistype or leave out
    if mode == "wrong_types":
        assert isinstance(arguments, dict)
        key = (required or list(arguments))[0]
        encoded = as_json({**arguments, key: _wrong_type(arguments[key])})
        detail["field"] = key
    elif mode == "missing_required":
        assert isinstance(arguments, dict)
        key = (required or list(arguments))[0]
        encoded = as_json({k: v for k, v in arguments.items() if k != key})
        detail["field"] = key
    else:
        encoded, detail["variant"] = _invalid_json(arguments, raw, ctx.rng.choice(
            ["truncated", "single_quotes", "trailing_comma"]))
    calls = _renumbered(ctx)
    calls[0] = _tool_call(ctx, 0, name, encoded)
    return Outcome(spec.kind, _reply(ctx, ctx.base.text, calls), detail={"mode": mode, **detail})


def _near_misses(name: str) -> list[str]:
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
    plural = name[:-1] if name.endswith("s") else f"{name}s"
    return [plural, camel, f"{name}_tool"]


def unknown_tool(spec: c.UnknownTool, ctx: CallContext) -> Outcome:
    offered = ctx.offered_tools()
    calls = ctx.base_calls
    candidates = [spec.name] if spec.name else (_near_misses(calls[0][0]) if calls else
                                                 ["complete_task", "finish", "submit_answer"])
    name = next((n for n in candidates if n not in offered), candidates[0])
    while name in offered:
        name += "_v2"
    arguments = calls[0][2] if calls else "{}"
    tool_calls = _renumbered(ctx) or [{}]
    tool_calls[0] = _tool_call(ctx, 0, name, arguments)
    return Outcome(spec.kind, _reply(ctx, ctx.base.text if calls else None, tool_calls),
                   detail={"name": name, "instead_of": calls[0][0] if calls else None})


def _previous_calls(ctx: CallContext) -> list[dict[str, Any]]:
    for message in reversed(ctx.body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "assistant" and message.get("tool_calls"):
            return [t for t in message["tool_calls"] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    return []


def loop_applies(spec: Any, ctx: CallContext) -> bool:
    return bool(_previous_calls(ctx))


def loop(spec: c.Loop, ctx: CallContext) -> Outcome:
    previous = _previous_calls(ctx)
    calls = [_tool_call(ctx, index, str(t["function"].get("name", "")), str(t["function"].get("arguments") or "{}"))
             for index, t in enumerate(previous)]
    return Outcome(spec.kind, _reply(ctx, None, calls), detail={"repeats": [t["function"]["name"] for t in calls]})


def _task_mentioned(ctx: CallContext) -> str | None:
    texts = [ctx.latest.text] + [content_text(m.get("content")) for m in reversed(ctx.body.get("messages") or [])
                                 if isinstance(m, dict)]
    for text in texts:
        found = _TASK.findall(text)
        if found:
            return str(found[-1])
    return None


def question(spec: c.Question, ctx: CallContext) -> Outcome:
    to = spec.to or ("admin" if ctx.agent == "manager" else "manager")
    task = _task_mentioned(ctx)
    template = spec.text or ("@{{to}} Before I go on with {{task}}: what exactly should the result contain, and in "
                             "which format? I'll wait for your answer.")
    text = _render(template, {"to": to, "task": task or "this", "agent": ctx.agent})
    return Outcome(spec.kind, _reply(ctx, text), detail={"to": to, "task": task})


def refusal(spec: c.Refusal, ctx: CallContext) -> Outcome:
    if spec.field:
        return Outcome(spec.kind, _reply(ctx, None, refusal=spec.text), detail={"field": True})
    return Outcome(spec.kind, _reply(ctx, spec.text), detail={"field": False})


def long_output(spec: c.LongOutput, ctx: CallContext) -> Outcome:
    limit = ctx.body.get("max_completion_tokens") or ctx.body.get("max_tokens")
    chars = min(spec.chars, 4 * int(limit)) if isinstance(limit, int) and limit > 0 else spec.chars
    lines = [ctx.base.text or "Let me work through this carefully.", ""]
    size = sum(len(line) + 1 for line in lines)
    number = 0
    while size < chars:
        number += 1
        line = f"{number}. On reflection, there is one more aspect of this worth considering in detail before going on."
        lines.append(line)
        size += len(line) + 1
    text = "\n".join(lines)[:chars]
    finish = "length" if chars < spec.chars else spec.finish_reason
    return Outcome(spec.kind, _reply(ctx, text, finish=finish), piece=LONG_PIECE, detail={"chars": len(text)})


def empty(spec: c.Empty, ctx: CallContext) -> Outcome:
    return Outcome(spec.kind, _reply(ctx, None if spec.null else ""), detail={"null": spec.null})
