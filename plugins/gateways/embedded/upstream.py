"""Calling providers: directly for OpenAI-compatible ones, through litellm for every other.

Both upstreams take the caller's OpenAI request (already checked by
:func:`~hiclaw.plugins.gateways.embedded.params.check_request`), pass on only its allowed
parameters (:func:`~hiclaw.plugins.gateways.embedded.params.forwarded`), set ``model`` to the
provider's model and ``user`` to the consumer name, and return either a :class:`Completion`
or a stream of chunk JSON documents that remembers the usage it saw. Errors become
:class:`UpstreamError` with any secret redacted from their text.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from hiclaw import __version__
from hiclaw.agent.recovery import is_budget_refusal, is_context_overflow
from hiclaw.plugins.gateways.embedded.errors import UpstreamError
from hiclaw.plugins.gateways.embedded.http1 import Http1Pool, UpstreamHTTPError, UpstreamResponse
from hiclaw.plugins.gateways.embedded.params import forwarded
from hiclaw.plugins.gateways.embedded.routing import Route

Redact = Callable[[str], str]
CONSUMER_HEADER = "X-Hiclaw-Consumer"
USER_AGENT = f"hiclaw-gateway/{__version__}"


@dataclass
class Completion:
    body: bytes  # the OpenAI JSON response to forward
    prompt_tokens: int
    completion_tokens: int


class ChunkStream:
    """Chunks of a streamed reply (JSON bytes each); ``prompt_tokens``/``completion_tokens`` fill in
    from the usage chunk."""

    prompt_tokens = 0
    completion_tokens = 0

    def _take_usage(self, usage: Any) -> None:
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def __aiter__(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release the upstream connection."""


def _usage_of(data: Any) -> tuple[int, int]:
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def status_error(route: Route, status: int, message: str, *, code: str | None = None,
                 retry_after: str | None = None) -> UpstreamError:
    """Map a provider's HTTP status to what the caller gets (and whether to retry/fall back).

    What an agent can act on is kept: a rate limit's ``Retry-After``, a spent quota
    (``insufficient_quota``: not worth retrying) and a context-window overflow
    (``context_length_exceeded``: the agent trims its conversation and tries again)."""
    where = f"model alias {route.alias!r} ({route.model})"
    if is_budget_refusal(status, code):
        return UpstreamError(429, f"the provider's quota is used up for {where}: {message}", code="insufficient_quota",
                             kind="insufficient_quota", retryable=False)
    if status in (400, 413, 422) and is_context_overflow(status, code, message):
        return UpstreamError(400, f"the conversation is too long for {where}: {message}", code="context_length_exceeded",
                             kind="invalid_request_error", retryable=False)
    if status >= 500 or status == 408:
        return UpstreamError(502, f"the provider failed for {where}: HTTP {status}: {message}", code="upstream_error",
                             retryable=True)
    if status in (401, 403):
        secret = f"secret {route.key_secret!r}" if route.key_secret else "no key (set api_key_secret)"
        return UpstreamError(502, f"the provider rejected the gateway's credentials for {where} — check {secret}",
                             code="upstream_auth_failed", retryable=False)
    if status == 429:
        return UpstreamError(429, f"the provider is rate-limiting {where}: {message}", code="upstream_rate_limited",
                             kind="rate_limit_error", retryable=False, retry_after=retry_after)
    return UpstreamError(status, f"the provider refused the request for {where}: {message}", code="upstream_rejected",
                         kind="invalid_request_error", retryable=False)


def timeout_error(route: Route, seconds: float) -> UpstreamError:
    return UpstreamError(504, f"the provider did not answer within {seconds:g}s for model alias {route.alias!r}",
                         code="upstream_timeout", retryable=True)


def connection_error(route: Route, detail: str) -> UpstreamError:
    return UpstreamError(502, f"cannot reach the provider for model alias {route.alias!r}: {detail}",
                         code="upstream_unreachable", retryable=True)


def _error_message(raw: bytes, redact: Redact) -> str:
    try:
        data = json.loads(raw)
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else str(data.get("error") or data)
    except (ValueError, KeyError, TypeError, AttributeError):
        message = raw.decode("utf-8", "replace")
    return redact(" ".join(str(message).split())[:500])


def _error_code(raw: bytes) -> str | None:
    """The provider's error ``code`` (else its ``type``), e.g. ``context_length_exceeded``."""
    try:
        error = json.loads(raw).get("error")
        value = (error.get("code") or error.get("type")) if isinstance(error, dict) else None
    except (ValueError, TypeError, AttributeError):
        return None
    return str(value)[:64] if value is not None else None


def _response_error(route: Route, response: UpstreamResponse, raw: bytes, redact: Redact) -> UpstreamError:
    return status_error(route, response.status, _error_message(raw, redact), code=_error_code(raw),
                        retry_after=response.headers.get("retry-after"))


# --------------------------------------------------------------------------- direct (OpenAI-compatible)


class DirectStream(ChunkStream):
    def __init__(self, response: UpstreamResponse, route: Route, timeout: float) -> None:
        self._response = response
        self._route = route
        self._timeout = timeout
        self._finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buffer = b""
        try:
            async for piece in self._response.iter_body():
                buffer += piece
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # comments, event names, blank separators
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        self._finished = True
                        return
                    if b'"usage"' in data:
                        self._take_usage(json.loads(data).get("usage"))
                    yield data
        except UpstreamHTTPError as exc:
            raise _transport_error(self._route, exc, self._timeout) from None

    async def aclose(self) -> None:
        if self._finished:  # the terminating chunk normally arrives with [DONE]: keep the connection
            await self._response.drain(timeout=1.0)
        self._response.release()


def _transport_error(route: Route, exc: UpstreamHTTPError, timeout: float) -> UpstreamError:
    return timeout_error(route, timeout) if exc.timeout else connection_error(route, str(exc))


class DirectUpstream:
    """Plain HTTP to an OpenAI-compatible ``/chat/completions`` over pooled keep-alive connections."""

    def __init__(self, *, timeout: float, connect_timeout: float, redact: Redact) -> None:
        self.timeout = timeout
        self.redact = redact
        self._pool = Http1Pool(connect_timeout=connect_timeout, read_timeout=timeout)

    async def start(self) -> None:
        """Connections open on first use."""

    async def close(self) -> None:
        await self._pool.close()

    async def _post(self, route: Route, payload: dict[str, Any], consumer: str, stream: bool) -> UpstreamResponse:
        # The allow-listed parameters only: nothing a caller adds reaches the provider.
        body = {"model": route.provider_model, "messages": payload["messages"], **forwarded(payload), "user": consumer}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if route.api_key is not None:
            headers["Authorization"] = f"Bearer {route.api_key.get_secret_value()}"
        try:
            return await self._pool.request("POST", route.chat_url, headers, json.dumps(body).encode())
        except UpstreamHTTPError as exc:
            raise _transport_error(route, exc, self.timeout) from None

    async def _body(self, route: Route, response: UpstreamResponse) -> bytes:
        try:
            return await response.read()
        except UpstreamHTTPError as exc:
            raise _transport_error(route, exc, self.timeout) from None
        finally:
            response.release()

    async def complete(self, route: Route, payload: dict[str, Any], consumer: str) -> Completion:
        response = await self._post(route, payload, consumer, False)
        raw = await self._body(route, response)
        if response.status != 200:
            raise _response_error(route, response, raw, self.redact)
        try:
            data = json.loads(raw)
        except ValueError:
            raise status_error(route, 502, "the response is not JSON") from None
        prompt, completion = _usage_of(data)
        return Completion(raw, prompt, completion)

    async def stream(self, route: Route, payload: dict[str, Any], consumer: str) -> ChunkStream:
        response = await self._post(route, payload, consumer, True)
        if response.status != 200:
            raw = await self._body(route, response)
            raise _response_error(route, response, raw, self.redact)
        return DirectStream(response, route, self.timeout)


# --------------------------------------------------------------------------- litellm (every other provider)


class LitellmStream(ChunkStream):
    def __init__(self, wrapper: Any, upstream: LitellmUpstream, route: Route) -> None:
        self._wrapper = wrapper
        self._upstream = upstream
        self._route = route

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._wrapper:
                data = chunk.model_dump(exclude_none=True)
                self._take_usage(data.get("usage"))
                yield json.dumps(data, default=str).encode()
        except Exception as exc:  # noqa: BLE001 - litellm raises its own hierarchy; map all of it
            raise self._upstream.map_error(self._route, exc) from None


class LitellmUpstream:
    """``litellm.acompletion`` with the route's key and base; imported when the gateway starts."""

    def __init__(self, *, timeout: float, redact: Redact) -> None:
        self.timeout = timeout
        self.redact = redact
        self._litellm: Any = None

    async def start(self) -> None:
        if self._litellm is None:
            from hiclaw.plugins.gateways.embedded.pricing import import_litellm

            self._litellm = await asyncio.to_thread(import_litellm)  # ~3 s: keep the event loop free

    async def close(self) -> None:
        """Nothing to release: litellm keeps its own client cache."""

    def _kwargs(self, route: Route, payload: dict[str, Any], consumer: str, stream: bool) -> dict[str, Any]:
        # The allow-listed OpenAI parameters only: litellm also reads api_base, api_key,
        # extra_headers, custom_llm_provider… from its keyword arguments, and none of those may
        # ever come from a caller. litellm forwards `user` only where it knows the provider takes
        # it; the header always reaches the provider (the scripted server reads either).
        kwargs = forwarded(payload)
        kwargs.update(model=route.model, messages=payload["messages"], user=consumer, timeout=self.timeout,
                      num_retries=0, drop_params=True, stream=stream, extra_headers={CONSUMER_HEADER: consumer})
        if stream:
            kwargs["stream_options"] = {"include_usage": True}
        if route.api_base:
            kwargs["api_base"] = route.api_base
        if route.api_key is not None:
            kwargs["api_key"] = route.api_key.get_secret_value()
        if route.price.known:
            # Our price (the ledger's): litellm then prices the call itself instead of failing to
            # look up a custom model and formatting a traceback in its logging thread on every call.
            kwargs.update(input_cost_per_token=route.price.input_per_token,
                          output_cost_per_token=route.price.output_per_token)
        return kwargs

    def map_error(self, route: Route, exc: Exception) -> UpstreamError:
        litellm = self._litellm
        message = self.redact(" ".join(str(exc).split())[:500])
        if isinstance(exc, UpstreamError):
            return exc
        if isinstance(exc, litellm.Timeout | asyncio.TimeoutError):
            return timeout_error(route, self.timeout)
        if isinstance(exc, litellm.APIConnectionError):
            return connection_error(route, message)
        status = getattr(exc, "status_code", None)
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        code = "context_length_exceeded" if isinstance(exc, litellm.ContextWindowExceededError) else getattr(exc, "code", None)
        return status_error(route, status if isinstance(status, int) and status >= 400 else 502, message,
                            code=code if isinstance(code, str) else None, retry_after=headers.get("retry-after"))

    async def complete(self, route: Route, payload: dict[str, Any], consumer: str) -> Completion:
        try:
            response = await self._litellm.acompletion(**self._kwargs(route, payload, consumer, False))
        except Exception as exc:  # noqa: BLE001
            raise self.map_error(route, exc) from None
        data = response.model_dump()
        prompt, completion = _usage_of(data)
        return Completion(json.dumps(data, default=str).encode(), prompt, completion)

    async def stream(self, route: Route, payload: dict[str, Any], consumer: str) -> ChunkStream:
        try:
            wrapper = await self._litellm.acompletion(**self._kwargs(route, payload, consumer, True))
        except Exception as exc:  # noqa: BLE001
            raise self.map_error(route, exc) from None
        return LitellmStream(wrapper, self, route)
