"""Tool calls a model wrote as text instead of in ``tool_calls``, and text fit to show a human.

Local models often write their calls in the text, in their chat template's own markup:

- Hermes / Qwen: ``<tool_call>{"name": "read_file", "arguments": {"path": "a.md"}}</tool_call>``
  (several in a row; the closing tag may be missing at the end of the reply);
- Llama 3.1: ``<function=read_file>{"path": "a.md"}</function>``, or ``<|python_tag|>{"name": …,
  "parameters": …}``;
- Mistral: ``[TOOL_CALLS] [{"name": …, "arguments": …}]``;
- a JSON object ``{"name": …, "arguments": …}`` (or a list of them) in a fenced block, or as the
  whole reply.

:func:`extract_calls` finds them (tolerantly: arguments may be an object or a JSON string, even
a Python-literal dict) and returns OpenAI-shaped calls plus the text without them;
:func:`visible_text` removes tool markup (and ``<think>`` blocks) from any text before a human
sees it. A call whose JSON cannot be read is still returned, with its raw text as arguments, so
the loop tells the model its arguments were invalid instead of posting them.
"""
from __future__ import annotations

import ast
import json
import re
from typing import Any

_UNREADABLE = object()

_TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.S)
_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|(?=<function=)|\Z)", re.S)
_FENCED = re.compile(r"```[ \t]*(?:json|tool_call|tool_code|tool)?[ \t]*\n?(.*?)```", re.S | re.I)
_MARKERS = re.compile(r"(\[TOOL_CALLS\]|<\|python_tag\|>)")
_PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)(?:</parameter>|(?=<parameter=)|(?=</function>)|\Z)", re.S)
_NAME = re.compile(r"""["']name["']\s*:\s*["']([^"']{1,64})["']""")
#: Markup that must never reach a human, even when it carries nothing we could run.
_STRAY = re.compile(r"<think>.*?(?:</think>|\Z)|</?tool_call>|</?tool_response>|</?function(?:=[^>]*)?>|</?parameter(?:=[^>]*)?>|"
                    r"\[TOOL_CALLS\]|<\|[a-z_]+\|>|</?(?:im_start|im_end)>", re.S | re.I)
_CALL_KEYS = {"name", "arguments", "parameters", "type", "id"}


def _loads(text: str) -> Any:
    """JSON, else the JSON value at the start of ``text``, else a Python literal; or _UNREADABLE."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return json.JSONDecoder().raw_decode(text)[0]
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return _UNREADABLE


def _arguments(value: Any) -> str:
    """Arguments as a JSON string: an object is encoded; a string is decoded (twice if it was
    encoded twice); anything unreadable is kept as it is (the loop reports it to the model)."""
    for _ in range(2):
        if not isinstance(value, str):
            break
        decoded = _loads(value) if value.strip() else {}
        if decoded is _UNREADABLE:
            return value
        value = decoded
    if value is None:
        value = {}
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def _call(name: Any, arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": str(name or ""), "arguments": _arguments(arguments)}}


def _as_call(value: Any, *, strict: bool) -> dict[str, Any] | None:
    """An OpenAI-shaped call from a parsed object, if it is shaped like one. ``strict`` (fences,
    bare JSON): the object must name its arguments and have no other keys."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict) and value.get("type", "function") == "function":
        value = value["function"]
    if not isinstance(value.get("name"), str) or not value["name"]:
        return None
    has_arguments = "arguments" in value or "parameters" in value
    if strict and (not has_arguments or not set(value) <= _CALL_KEYS):
        return None
    return _call(value["name"], value.get("arguments", value.get("parameters")))


def _calls_in(value: Any, *, strict: bool) -> list[dict[str, Any]] | None:
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(item, strict=strict) for item in items]
    if not items or any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def _parameters(body: str) -> str:
    """``<parameter=key>value</parameter>`` pairs (Qwen3-Coder) as a JSON object; else the body."""
    pairs = _PARAMETER.findall(body)
    if not pairs:
        return body.strip() or "{}"
    values: dict[str, Any] = {}
    for key, raw in pairs:
        raw = raw.strip("\n")
        value = _loads(raw) if raw.strip()[:1] in ("{", "[") or raw.strip() in ("true", "false", "null") else raw
        values[key] = raw if value is _UNREADABLE else value
    return json.dumps(values, ensure_ascii=False)


def _functions(text: str) -> list[tuple[tuple[int, int], dict[str, Any]]]:
    return [(m.span(), _call(m.group(1), _parameters(m.group(2)))) for m in _FUNCTION.finditer(text)]


def _tagged(body: str) -> list[dict[str, Any]]:
    if "<function=" in body:
        return [call for _, call in _functions(body)]
    value = _loads(body)
    calls = _calls_in(value, strict=False) if value is not _UNREADABLE else None
    if calls is not None:
        return calls
    found = _NAME.search(body)  # unreadable JSON: keep the name, pass the raw text as arguments
    return [{"type": "function", "function": {"name": found.group(1) if found else "", "arguments": body.strip()}}]


def _after_marker(text: str, start: int) -> tuple[list[dict[str, Any]], int]:
    """Calls in the JSON after a ``[TOOL_CALLS]`` / ``<|python_tag|>`` marker (objects may be
    separated by ``;``), and where they end."""
    calls: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    index = start
    while True:
        while index < len(text) and text[index] in " \t\r\n;":
            index += 1
        try:
            value, end = decoder.raw_decode(text, index)
        except ValueError:
            return calls, index
        found = _calls_in(value, strict=False)
        if found is None:
            return calls, index
        calls += found
        index = end


def _bare(text: str) -> list[dict[str, Any]] | None:
    """Calls if the whole of ``text`` is one call-shaped JSON object (or a list of them)."""
    text = text.strip()
    if text[:1] not in ("{", "["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return _calls_in(value, strict=True)


def extract_calls(text: str) -> tuple[list[dict[str, Any]], str]:
    """The tool calls written in ``text`` (OpenAI shape, without ids) and the text without them."""
    calls: list[tuple[int, dict[str, Any]]] = []  # (position, call): kept in the order written
    spans: list[tuple[int, int]] = []

    def outside(span: tuple[int, int]) -> bool:
        return all(span[1] <= start or span[0] >= end for start, end in spans)

    for match in _TAGGED.finditer(text):
        calls += [(match.start(), call) for call in _tagged(match.group(1))]
        spans.append(match.span())
    for span, call in _functions(text):
        if outside(span):
            calls.append((span[0], call))
            spans.append(span)
    for match in _MARKERS.finditer(text):
        found, end = _after_marker(text, match.end())
        if found and outside(match.span()):
            calls += [(match.start(), call) for call in found]
            spans.append((match.start(), end))
    if not calls:
        for match in _FENCED.finditer(text):
            value = _loads(match.group(1))
            fenced = _calls_in(value, strict=True) if value is not _UNREADABLE else None
            if fenced:
                calls += [(match.start(), call) for call in fenced]
                spans.append(match.span())
    if not calls:
        bare = _bare(text)
        return (bare, "") if bare else ([], text)
    kept, last = [], 0
    for start, end in sorted(spans):
        if start >= last:
            kept.append(text[last:start])
            last = end
    kept.append(text[last:])
    return [call for _, call in sorted(calls, key=lambda item: item[0])], visible_text("".join(kept))


def visible_text(text: str) -> str:
    """``text`` without tool-call markup, special tokens or ``<think>`` blocks, blank runs closed."""
    if "</think>" in text and "<think>" not in text:  # the template opened the reasoning block itself
        text = text.split("</think>", 1)[1]
    text = _STRAY.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
