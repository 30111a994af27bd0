"""Tool arguments checked against the tool's JSON Schema before its handler runs.

A model writes arguments that do not match the schema it was given — a required field left out,
a list sent as a JSON string, a number as text — and a handler reading them would fail half-way
with a ``KeyError`` or an ``AttributeError``. So every call is checked first and the model gets
one line naming each problem and where it is (``tasks[0].id: required``), and calls again.

The subset of JSON Schema our tools use: ``type`` (one or a list), ``properties``, ``required``,
``items``, ``additionalProperties`` (a map's values), ``enum``, ``minItems``/``maxItems``,
``minLength`` — everything :func:`hiclaw.agent.functions.function_tool` derives about shape.
Unknown keywords are ignored, and so are properties the schema does not name (a handler reads
only its own). Pure Python, no dependencies: workers run it too and stay small.
"""
from __future__ import annotations

from typing import Any

#: At most this many problems are named (the rest are counted).
MAX_PROBLEMS = 3

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "null": (type(None),),
    "integer": (int,), "number": (int, float),
}


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, (object,)))


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _check(schema: dict[str, Any], value: Any, path: str, problems: list[str]) -> None:
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is(value, k) for k in kinds):
            hint = " (not a JSON string holding it)" if isinstance(value, str) and {"array", "object"} & set(kinds) else ""
            problems.append(f"{path or 'arguments'}: must be {' or '.join(kinds)}{hint}, got {_describe(value)}")
            return
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path or 'arguments'}: must be one of {', '.join(map(repr, schema['enum']))}")
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                problems.append(f"{path + '.' if path else ''}{name}: required")
        for name, sub in properties.items():
            if name in value and isinstance(sub, dict):
                _check(sub, value[name], f"{path + '.' if path else ''}{name}", problems)
        others = schema.get("additionalProperties")
        if isinstance(others, dict):  # a map (``dict[str, X]``): every value an X
            for name, item in value.items():
                if name not in properties:
                    _check(others, item, f"{path + '.' if path else ''}{name}", problems)
    elif isinstance(value, list):
        if len(value) < int(schema.get("minItems", 0)):
            problems.append(f"{path}: needs at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > int(schema["maxItems"]):
            problems.append(f"{path}: at most {schema['maxItems']} item(s)")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _check(items, item, f"{path}[{i}]", problems)
    elif isinstance(value, str) and len(value) < int(schema.get("minLength", 0)):
        problems.append(f"{path}: must not be empty" if schema["minLength"] == 1 else
                        f"{path}: at least {schema['minLength']} characters")


def argument_problems(schema: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """What is wrong with ``arguments`` for a tool with JSON Schema ``schema`` (one line), or None."""
    problems: list[str] = []
    _check(schema, arguments, "", problems)
    return one_line(problems)


def one_line(problems: list[str]) -> str | None:
    """Problems as the one line the model is given: the first :data:`MAX_PROBLEMS`, the rest counted."""
    if not problems:
        return None
    more = len(problems) - MAX_PROBLEMS
    return "; ".join(problems[:MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
