"""The failures a provider (or a proxy in front of it) answers with: HTTP errors in the shapes
OpenAI, vLLM and llama.cpp really send, and connections that hang, close, stall or drop."""
from __future__ import annotations

import math
from typing import Any

from hiclaw.scripted.server import error_body
from hiclaw.scripted.unruly import config as c
from hiclaw.scripted.unruly.kinds import CallContext, Outcome, as_json


def _error(kind: str, status: int, document: dict[str, Any], *, headers: dict[str, str] | None = None,
           **detail: Any) -> Outcome:
    return Outcome(kind, status=status, body=as_json(document).encode(), headers=headers or {}, detail=detail)


def _retry_headers(seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return {}
    return {"Retry-After": str(math.ceil(seconds)), "retry-after-ms": str(round(seconds * 1000))}


def http_429(spec: c.Http429, ctx: CallContext) -> Outcome:
    if spec.code == "insufficient_quota":  # a 429 that waiting does not cure
        message = ("You exceeded your current quota, please check your plan and billing details. For more information "
                   "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.")
        return _error(spec.kind, 429, error_body(message, code="insufficient_quota", kind="insufficient_quota"),
                      code=spec.code)
    wait = f"Please try again in {spec.retry_after:g}s." if spec.retry_after is not None else "Please try again later."
    message = (f"Rate limit reached for {ctx.model} in organization org-unruly on requests per min (RPM): Limit 60, "
               f"Used 60, Requested 1. {wait} Visit https://platform.openai.com/account/rate-limits to learn more.")
    headers = {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
               **({"x-ratelimit-reset-requests": f"{spec.retry_after:g}s"} if spec.retry_after is not None else {}),
               **_retry_headers(spec.retry_after)}
    return _error(spec.kind, 429, error_body(message, code="rate_limit_exceeded", kind="requests"), headers=headers,
                  retry_after=spec.retry_after)


def http_500(spec: c.Http500, ctx: CallContext) -> Outcome:
    message = "The server had an error while processing your request. Sorry about that!"
    return _error(spec.kind, 500, error_body(message, code=None, kind="server_error"))


NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             b"</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


def http_502(spec: c.Http502, ctx: CallContext) -> Outcome:
    return Outcome(spec.kind, status=502, body=NGINX_502, content_type="text/html")  # a proxy's page, not JSON


def http_503(spec: c.Http503, ctx: CallContext) -> Outcome:
    message = ("That model is currently overloaded with other requests. You can retry your request, or contact us "
               "through our help center at help.openai.com if the error persists.")
    return _error(spec.kind, 503, error_body(message, code=None, kind="server_error"),
                  headers=_retry_headers(spec.retry_after), retry_after=spec.retry_after)


def timeout(spec: c.Timeout, ctx: CallContext) -> Outcome:
    status = None if spec.mode in ("hang", "close") else 200
    return Outcome(spec.kind, ctx.base, status=status, transport=spec.mode, seconds=spec.seconds,
                   detail={"mode": spec.mode, "seconds": spec.seconds})


def context_window(spec: c.ContextLength, ctx: CallContext) -> int:
    return spec.budget if spec.budget is not None else max(1, ctx.prompt_tokens - 1)


def context_length(spec: c.ContextLength, ctx: CallContext) -> Outcome:
    window, prompt = context_window(spec, ctx), ctx.prompt_tokens
    limit = ctx.body.get("max_completion_tokens") or ctx.body.get("max_tokens")
    completion = int(limit) if isinstance(limit, int) else 0
    detail: dict[str, Any] = {"prompt_tokens": prompt, "context_window": window, "style": spec.style}
    if spec.style == "llama_cpp":  # llama.cpp's llama-server
        document: dict[str, Any] = {"error": {
            "code": 400, "message": f"request ({prompt} tokens) exceeds the available context size ({window} tokens), "
                                    "try increasing it",
            "type": "exceed_context_size_error", "n_prompt_tokens": prompt, "n_ctx": window}}
        return _error(spec.kind, 400, document, **detail)
    head = f"This model's maximum context length is {window} tokens. However, "
    if completion or spec.style == "vllm":
        message = (head + f"you requested {prompt + completion} tokens ({prompt} in the messages, {completion} in the "
                   "completion). Please reduce the length of the messages or completion.")
    else:
        message = head + f"your messages resulted in {prompt} tokens. Please reduce the length of the messages."
    if spec.style == "vllm":
        document = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
    else:
        document = error_body(message, code="context_length_exceeded", param="messages")
    return _error(spec.kind, 400, document, **detail)
