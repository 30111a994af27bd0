"""Tools from typed functions: :func:`function_tool` derives a :class:`hiclaw.models.ToolSpec`
(name, description, JSON Schema, handler) from a function's signature and docstring.

    @function_tool
    async def create_worker(name: str, role: str, skills: list[str] | None = None) -> dict:
        \"""Create a worker agent. Idempotent.

        Args:
            role: role and responsibilities, becomes SOUL.md
        \"""

The name is the function's; the description is the docstring's first paragraph (later paragraphs
are for Python readers); a parameter's description is its ``Field(description=...)`` or its line
in a Google-style ``Args:`` section. Types become JSON Schema through pydantic — ``str``, ``int``,
``float``, ``bool``, ``Literal[...]`` and enums, ``list[...]``, ``dict[str, ...]``, nested pydantic
models, ``Annotated[..., Field(...)]`` — reduced to what the models understand and
:mod:`hiclaw.agent.arguments` checks: ``$ref``/``$defs`` inlined, ``X | None = None`` shown as
``X``, no ``title`` or ``default``, ``additionalProperties: false`` and a ``required`` list on every
object (exactly the parameters without a default). A signature that cannot be shown that way (a
union of objects, a recursive model, ``*args``) is refused when the tool is made, naming the tool.

**One validator decides**: the pre-check of :mod:`hiclaw.agent.arguments` against this derived
schema. The agent loop runs it before any handler, for typed and ``args: dict`` tools alike, and
the generated handler runs it again (so a caller outside the loop gets the same verdict in the
same words). Only then does pydantic turn the checked arguments into the typed values (nested
models, enum members, defaults) and call the function with keyword arguments. It adds no rules
of the shape of its own — it is lax and ignores unknown properties, as the pre-check does, and
everything the schema can say about shape the pre-check checks — so it refuses only what a
signature declares beyond the pre-check's subset (``Field(pattern=..., ge=..., max_length=...)``,
validators), in the same one-line form (``tasks[0].id: ...``), as an
:class:`hiclaw.errors.InvalidInputError`, never a traceback and before the function runs. A rule
the tool's own code checks, with a message saying how to fix it, is shown to the model but not
enforced by pydantic: :func:`schema_hint` (the built-in tools' patterns and bounds are such hints).

Deriving costs one small pydantic model per tool (the JSON-Schema generator is already loaded by
:mod:`hiclaw.models`); it is cached per function, so tool lists rebuilt every turn (the
Manager's) or per worker derive each schema once per process.
"""
from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Mapping
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from hiclaw.agent.arguments import argument_problems, one_line
from hiclaw.errors import InvalidInputError
from hiclaw.models import ToolSpec

__all__ = ["function_tool", "schema_hint"]

_ARGS = ("Args", "Arguments", "Parameters", "Params")
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Returns?|Raises|Yields?|Examples?|Notes?|Attributes|"
                      r"Warnings?|See Also|Todo)\s*:\s*$")
_PARAM = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_DROPPED = ("title", "default", "$defs")
_CACHE: dict[tuple[Any, ...], tuple[dict[str, Any], str, type[BaseModel]]] = {}
_CACHE_SIZE = 512


def schema_hint(**keywords: Any) -> Any:
    """JSON Schema keywords shown to the model but not enforced by pydantic, for rules the tool's
    code checks itself with a better message: ``Annotated[str, schema_hint(pattern=NAME.pattern)]``.
    (Keywords :mod:`hiclaw.agent.arguments` checks — ``enum``, ``minLength``, … — are checked by it.)"""
    return Field(json_schema_extra=keywords)


@overload
def function_tool(fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                  localns: Mapping[str, Any] | None = None) -> ToolSpec: ...


@overload
def function_tool(fn: None = None, *, name: str | None = None, description: str | None = None,
                  localns: Mapping[str, Any] | None = None) -> Callable[[Callable[..., Any]], ToolSpec]: ...


def function_tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None,
                  localns: Mapping[str, Any] | None = None) -> ToolSpec | Callable[[Callable[..., Any]], ToolSpec]:
    """A :class:`ToolSpec` for ``fn`` (sync or async; a bound method too), or a decorator making one.

    :param name: the tool's name (default: the function's).
    :param description: what the model is told the tool does (default: the docstring's first paragraph).
    :param localns: names the annotations use that are not module-level (default: the caller's
        local names, as pydantic resolves a model defined in a function).
    """
    names = dict(localns) if localns is not None else dict(sys._getframe(1).f_locals)  # noqa: SLF001 - as pydantic does

    def make(func: Callable[..., Any]) -> ToolSpec:
        tool_name = name or func.__name__
        parameters, text, model = _derive(func, tool_name, description, names)
        fields = tuple(model.model_fields)

        async def handler(args: dict[str, Any]) -> Any:
            problems = argument_problems(parameters, args)
            if problems is not None:
                raise InvalidInputError(f"invalid arguments for {tool_name}: {problems}",
                                        hint="call it again with arguments that match its parameters")
            try:
                values = model.model_validate(args)
            except ValidationError as exc:
                raise InvalidInputError(f"invalid arguments for {tool_name}: {validation_problems(exc)}",
                                        hint="call it again with arguments that match its parameters") from None
            result = func(**{field: getattr(values, field) for field in fields})
            return await result if inspect.isawaitable(result) else result

        handler.__name__ = handler.__qualname__ = tool_name
        return ToolSpec(name=tool_name, description=text, parameters=_copy(parameters), handler=handler)

    return make(fn) if fn is not None else make


def validation_problems(exc: ValidationError) -> str:
    """A pydantic validation error as one line, in the pre-check's words (``tasks[0].id: ...``)."""
    problems = []
    for error in exc.errors(include_url=False):
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
        message = "required" if error["type"] == "missing" else str(error["msg"])
        problems.append(f"{path or 'arguments'}: {message[:1].lower() + message[1:]}")
    return one_line(problems) or "invalid"


# --------------------------------------------------------------------------- derivation


def _derive(func: Callable[..., Any], name: str, description: str | None,
            localns: dict[str, Any]) -> tuple[dict[str, Any], str, type[BaseModel]]:
    target = inspect.unwrap(getattr(func, "__func__", func))
    try:
        hints = get_type_hints(target, localns=localns, include_extras=True)
    except Exception as exc:  # NameError, TypeError from a bad annotation
        raise TypeError(f"tool {name}: cannot resolve its annotations ({exc}); pass the names as localns") from exc
    signature = inspect.signature(func)
    code = getattr(target, "__code__", None)
    key = (code, name, description, str(signature), repr(hints)) if code is not None else None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    summary, documented = parse_docstring(inspect.getdoc(target) or "")
    text = description if description is not None else summary
    if not text:
        raise TypeError(f"tool {name}: give it a docstring (its first paragraph is what the model is told it does)")
    fields: dict[str, Any] = {}
    for pname, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"tool {name}: parameter {pname!r} must be an ordinary keyword parameter")
        if pname.startswith("_"):
            raise TypeError(f"tool {name}: parameter {pname!r} must not start with an underscore")
        default = ... if param.default is param.empty else param.default
        annotation = hints.get(pname, Any)
        doc = documented.get(pname)
        if doc and not _described(annotation) and not isinstance(default, FieldInfo):
            default = Field(default, description=doc)
        fields[pname] = (annotation, default)
    model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="ignore", protected_namespaces=()),
                         **fields)
    raw = model.model_json_schema()
    parameters = _inline(raw, raw.get("$defs", {}), frozenset(), name)
    parameters.setdefault("properties", {})
    parameters.setdefault("required", [])
    derived = (parameters, text, model)
    if key is not None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = derived
    return derived


def _described(annotation: Any) -> bool:
    """Whether ``Annotated[..., Field(description=...)]`` (maybe inside ``X | None``) describes it already."""
    if get_origin(annotation) is Annotated:
        return any(isinstance(m, FieldInfo) and m.description for m in get_args(annotation)[1:])
    return any(_described(arg) for arg in get_args(annotation)) if get_origin(annotation) in (Union, UnionType) else False


def _inline(node: Any, defs: dict[str, Any], stack: frozenset[str], tool: str) -> Any:
    """pydantic's schema reduced to the subset the models and :mod:`hiclaw.agent.arguments` share."""
    if isinstance(node, list):
        return [_inline(item, defs, stack, tool) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node or ("allOf" in node and len(node["allOf"]) == 1):
        ref = node["$ref"] if "$ref" in node else node["allOf"][0].get("$ref", "")
        target = str(ref).rsplit("/", 1)[-1]
        if target in stack:
            raise TypeError(f"tool {tool}: {target} refers to itself, which a tool's schema cannot show")
        # A class's docstring is for Python readers; the parameter's own description is the model's.
        body = {k: v for k, v in defs.get(target, {}).items() if k != "description"}
        rest = {k: v for k, v in node.items() if k not in ("$ref", "allOf")}
        return _inline(body | rest, defs, stack | {target}, tool)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {prop: _inline(sub, defs, stack, tool) for prop, sub in value.items()}
        else:
            out[key] = _inline(value, defs, stack, tool)
    if "anyOf" in out:
        out = _collapse(out, default_is_none="default" in node and node["default"] is None, tool=tool)
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("required", [])
        out["additionalProperties"] = False
    return out


def _collapse(node: dict[str, Any], *, default_is_none: bool, tool: str) -> dict[str, Any]:
    branches = node.pop("anyOf")
    solid = [b for b in branches if b != {"type": "null"}]
    nullable = len(solid) < len(branches)
    if len(solid) == 1 and (default_is_none or not nullable):
        return solid[0] | node  # ``X | None = None``: leaving it out is how "none" is said
    if len(solid) == 1 and isinstance(solid[0].get("type"), str):
        return solid[0] | node | {"type": [solid[0]["type"], "null"]}
    if all(set(b) == {"type"} and isinstance(b["type"], str) for b in branches):
        return node | {"type": [b["type"] for b in branches]}
    raise TypeError(f"tool {tool}: a union of {len(solid)} structured types cannot be shown to the model; "
                    "use one model with optional fields")


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(first paragraph as one line, {parameter: description}) of a Google-style docstring."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    paragraph: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        paragraph.append(line.strip())
    params: dict[str, str] = {}
    in_args, current, indent = False, "", -1
    for line in lines:
        stripped = line.strip()
        lead = len(line) - len(line.lstrip())
        header = _SECTION.match(stripped) if lead == 0 else None
        if header:
            in_args, current, indent = header.group(1) in _ARGS, "", -1
            continue
        if not in_args or not stripped:
            continue
        match = _PARAM.match(stripped)
        if match and (indent < 0 or lead <= indent):
            indent, current = lead, match.group(1)
            params[current] = match.group(2).strip()
        elif current and lead > indent:
            params[current] = f"{params[current]} {stripped}".strip()
        else:
            in_args = False
    return " ".join(paragraph), params
