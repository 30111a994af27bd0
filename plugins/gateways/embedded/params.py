"""The OpenAI Chat Completions request the gateway accepts: an allow-list of parameters, with types.

This is the one definition both upstreams use (direct HTTP and litellm). A caller's body is
checked here before anything else is looked up, and each upstream builds its provider request
from :func:`forwarded` only. Anything else is refused with 400 naming it: litellm takes many more
keyword arguments than OpenAI defines (``api_base``, ``base_url``, ``api_key``, ``extra_headers``,
``custom_llm_provider``, ``metadata``…), and passing one of a caller's through would let a worker
choose where the provider key is sent. ``user`` is accepted for compatibility and replaced: the
provider always sees the consumer's name.

Messages are checked too (roles, the fields OpenAI defines, the types of content parts). An
``image_url`` must carry the image inline (a ``data:`` URL): the gateway never has a provider,
or litellm on its own network, fetch a URL a caller chose.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from hiclaw.plugins.gateways.embedded.errors import GatewayHTTPError, bad_request

Check = Callable[[str, Any], None]


def _invalid(param: str, expected: str) -> GatewayHTTPError:
    return bad_request(f"parameter {param!r} must be {expected}", "invalid_field", param)


def unsupported(param: str) -> GatewayHTTPError:
    return bad_request(f"unsupported parameter {param!r}: the gateway accepts only the OpenAI Chat Completions "
                       "parameters listed in docs/gateway.md", "unsupported_parameter", param)


def _number(low: float, high: float) -> Check:
    def check(param: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not low <= value <= high:
            raise _invalid(param, f"a number from {low:g} to {high:g}")
    return check


def _integer(low: int, high: int) -> Check:
    def check(param: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _invalid(param, f"an integer from {low} to {high}")
    return check


def _boolean(param: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _invalid(param, "true or false")


def _string(param: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _invalid(param, "a string")


def _object(fields: Mapping[str, Check], *, required: tuple[str, ...] = ()) -> Check:
    """A JSON object with only ``fields`` (each checked), ``required`` among them."""
    def check(param: str, value: Any) -> None:
        if not isinstance(value, dict):
            raise _invalid(param, "an object")
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                raise unsupported(f"{param}.{key}")
            field(f"{param}.{key}", item)
        for key in required:
            if key not in value:
                raise bad_request(f"parameter {param!r} needs {key!r}", "missing_field", f"{param}.{key}")
    return check


def _literal(*values: str) -> Check:
    def check(param: str, value: Any) -> None:
        if value not in values:
            raise _invalid(param, " or ".join(repr(v) for v in values))
    return check


def _any_object(param: str, value: Any) -> None:
    """A JSON Schema: data for the model, never read by the gateway or litellm as settings."""
    if not isinstance(value, dict):
        raise _invalid(param, "an object")


def _stop(param: str, value: Any) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list) or len(value) > 4 or not all(isinstance(v, str) for v in value):
        raise _invalid(param, "a string or a list of up to 4 strings")


def _logit_bias(param: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k.isdigit() and not isinstance(v, bool) and isinstance(v, int | float)
            and -100 <= v <= 100 for k, v in value.items()):
        raise _invalid(param, "an object of token ids to numbers from -100 to 100")


_FUNCTION = _object({"name": _string, "description": _string, "parameters": _any_object, "strict": _boolean},
                    required=("name",))


def _tools(param: str, value: Any) -> None:
    if not isinstance(value, list):
        raise _invalid(param, "a list of function tools")
    tool = _object({"type": _literal("function"), "function": _FUNCTION}, required=("type", "function"))
    for index, item in enumerate(value):
        tool(f"{param}[{index}]", item)


def _tool_choice(param: str, value: Any) -> None:
    if isinstance(value, str):
        _literal("none", "auto", "required")(param, value)
        return
    _object({"type": _literal("function"), "function": _object({"name": _string}, required=("name",))},
            required=("type", "function"))(param, value)


_JSON_SCHEMA = _object({"name": _string, "description": _string, "schema": _any_object, "strict": _boolean},
                       required=("name",))


def _response_format(param: str, value: Any) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("text", "json_object"):
        _object({"type": _string})(param, value)
    elif kind == "json_schema":
        _object({"type": _string, "json_schema": _JSON_SCHEMA}, required=("json_schema",))(param, value)
    else:
        raise _invalid(param, "an object with type 'text', 'json_object' or 'json_schema'")


# --------------------------------------------------------------------------- messages

ROLES = ("system", "developer", "user", "assistant", "tool")
MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})


def _image_url(param: str, value: Any) -> None:
    _object({"url": _string, "detail": _string}, required=("url",))(param, value)
    if not value["url"].startswith("data:"):
        raise bad_request(f"{param}.url must be a data: URL (the image inline, base64): the gateway does not let a "
                          "provider fetch a URL for a caller", "invalid_field", f"{param}.url")


#: Content part type → (the field it needs, its check). Other fields of a part are left to the
#: provider (e.g. litellm's ``cache_control``): they choose nothing about where a call goes.
_PARTS: dict[str, tuple[str, Check]] = {
    "text": ("text", _string),
    "refusal": ("refusal", _string),
    "image_url": ("image_url", _image_url),
    "input_audio": ("input_audio", _object({"data": _string, "format": _string}, required=("data", "format"))),
}


def _content(param: str, value: Any) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _invalid(param, "a string or a list of content parts")
    for index, part in enumerate(value):
        where = f"{param}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _PARTS:
            raise bad_request(f"{where} must be a content part of type {', '.join(map(repr, _PARTS))}",
                              "invalid_field", where)
        field, check = _PARTS[kind]
        if field not in part:
            raise bad_request(f"{where} of type {kind!r} needs {field!r}", "missing_field", f"{where}.{field}")
        check(f"{where}.{field}", part[field])


def _tool_calls(param: str, value: Any) -> None:
    if not isinstance(value, list):
        raise _invalid(param, "a list")
    for index, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not isinstance(function.get("arguments", ""), str):
            raise _invalid(f"{param}[{index}]", "a tool call with function.name and function.arguments (strings)")


_MESSAGE_CHECKS: dict[str, Check] = {"content": _content, "name": _string, "tool_calls": _tool_calls,
                                     "tool_call_id": _string, "refusal": _string}


def _messages(param: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise bad_request("missing required field `messages` (a non-empty list)", "missing_field", param)
    for index, message in enumerate(value):
        where = f"{param}[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request("every message needs a `role`", "invalid_field", param)
        if message["role"] not in ROLES:
            raise _invalid(f"{where}.role", " or ".join(map(repr, ROLES)))
        for key, item in message.items():
            if key == "role":
                continue
            check = _MESSAGE_CHECKS.get(key)
            if check is None:
                raise unsupported(f"{where}.{key}")
            if item is not None:
                check(f"{where}.{key}", item)


# --------------------------------------------------------------------------- the allow-list


def _model(param: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise bad_request("missing required field `model` (a model alias, see GET /v1/models)", "missing_field", param)


#: Every request parameter the gateway accepts, and how its value is checked. ``model`` is the
#: alias (replaced by the provider's model), ``stream``/``stream_options`` and ``user`` are set by
#: the gateway itself; everything else in here is passed to the provider as is.
PARAMETERS: dict[str, Check] = {
    "model": _model,
    "messages": _messages,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "max_tokens": _integer(1, 2**31 - 1),
    "max_completion_tokens": _integer(1, 2**31 - 1),
    "stop": _stop,
    "stream": _boolean,
    "stream_options": _object({"include_usage": _boolean}),
    "n": _integer(1, 128),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "seed": _integer(-(2**63), 2**63 - 1),
    "response_format": _response_format,
    "logprobs": _boolean,
    "top_logprobs": _integer(0, 20),
    "logit_bias": _logit_bias,
    "user": _string,
}
#: Decided by the gateway, never taken from the caller.
OWN = frozenset({"model", "messages", "stream", "stream_options", "user"})
#: What an upstream passes on from the caller's (checked) request.
FORWARDED = frozenset(PARAMETERS) - OWN
REQUIRED = ("model", "messages")


def check_request(payload: Any) -> dict[str, Any]:
    """The caller's request if every parameter is allowed and well-typed; else a 400 naming the first
    offending one. Nothing has been looked up or sent anywhere when this raises."""
    if not isinstance(payload, dict):
        raise bad_request("request body must be a JSON object", "invalid_json")
    for key, value in payload.items():
        check = PARAMETERS.get(key)
        if check is None:
            raise unsupported(str(key))
        if value is not None or key in REQUIRED:
            check(key, value)
    for key in REQUIRED:
        if key not in payload:
            PARAMETERS[key](key, None)
    return payload


def forwarded(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a checked request an upstream sends on as they are (no ``None`` values)."""
    return {key: value for key, value in payload.items() if key in FORWARDED and value is not None}
