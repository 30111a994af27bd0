"""A small OpenAI-compatible client for the gateway (httpx, no SDK, no litellm).

httpx is imported when a client is made, not with this module: a worker process talks to the
gateway through aiohttp instead (:mod:`hiclaw.worker.http`), the library its Matrix channel
already loads, and never pays for a second HTTP stack.
"""
from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from hiclaw.agent import recovery
from hiclaw.errors import HiclawError
from hiclaw.pause import Pause

if TYPE_CHECKING:
    import httpx


class GatewayError(HiclawError):
    """The gateway refused or failed a model call (status and OpenAI-style message).

    ``budget`` (a spent budget or quota) and ``context_overflow`` (the conversation is too long
    for the model) say what the caller can do about it; ``retry_after`` is what the server asked
    us to wait, ``attempts`` how many calls were made before giving up."""

    def __init__(self, status: int, message: str, *, code: str | None = None, kind: str | None = None,
                 retry_after: float | None = None, attempts: int = 1) -> None:
        self.status = status
        self.code = code
        self.kind = kind
        self.detail = message
        self.retry_after = retry_after
        self.attempts = attempts
        super().__init__(f"gateway answered {status}: {message}" if status else message)

    @property
    def budget(self) -> bool:
        return recovery.is_budget_refusal(self.status, self.code or self.kind, self.detail)

    @property
    def context_overflow(self) -> bool:
        return recovery.is_context_overflow(self.status, self.code, self.detail)

    @property
    def retryable(self) -> bool:
        return self.status in GatewayClient.RETRY_STATUSES and not self.budget and not self.context_overflow

    def gave_up(self, why: str) -> GatewayError:
        """The same error, saying why we stopped retrying."""
        return GatewayError(self.status, f"{self.detail} ({why})", code=self.code, kind=self.kind,
                            retry_after=self.retry_after, attempts=self.attempts)


class ModelReply(BaseModel):
    content: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    finish_reason: str | None = None

    def assistant_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


class Unreachable(Exception):
    """The HTTP request did not get an answer (connection refused, reset, timed out)."""


#: (status, body text, reason phrase, response headers) — subclasses may return the first three only.
Answer = tuple[int, str, str] | tuple[int, str, str, Mapping[str, str]]


class GatewayClient:
    """Calls ``POST {base_url}/chat/completions`` with the agent's consumer token.

    Retries, with exponential back-off and jitter: a gateway that does not answer (refused,
    reset, timed out), and the statuses of :attr:`RETRY_STATUSES` (a 429 after the
    ``Retry-After`` it asks for) — at most ``retries`` times and ``max_retry_wait`` seconds of
    waiting in all; a refusal that retrying cannot change (a spent budget, a conversation too long
    for the model, any other 4xx) is raised at once. A gateway that does not answer is also
    retried for as long as ``outage_grace`` seconds from the first failure (a worker waits out a
    control-plane restart that way, its turn intact); :meth:`wake` retries at once (the gateway is
    back). Every failure ends in a :class:`GatewayError`.

    Subclasses may replace the HTTP layer: ``__init__``, :meth:`_post` and :meth:`aclose`."""

    RETRY_STATUSES = (408, 429, 500, 502, 503, 504, 529)
    outage_grace: float = 0.0
    max_retry_wait: float = 60.0
    _pause: Pause | None = None

    def wake(self) -> None:
        """Cut the current back-off short: the gateway is reachable again."""
        if self._pause is not None:
            self._pause.wake()

    def __init__(self, base_url: str, token: str, *, timeout: float = 300.0, retries: int = 4,
                 max_retry_wait: float = 60.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self._token = token
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        """POST JSON; (status, body text, reason phrase, headers), or :class:`Unreachable`."""
        import httpx

        try:
            response = await self._client.post(url, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise Unreachable(type(exc).__name__) from None
        return response.status_code, response.text, response.reason_phrase, response.headers

    @staticmethod
    def backoff(attempt: int) -> float:
        """Seconds before retry ``attempt`` (1, 2, …): 1, 2, 4, 5, 5 … spread over its upper half."""
        ceiling = min(0.5 * 2**attempt, 5.0)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def chat(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        task_id: str | None = None,
        project_id: str | None = None,
    ) -> ModelReply:
        body: dict[str, Any] = {"model": model, "messages": messages}
        if tools:
            body["tools"] = tools
        headers = {"Authorization": f"Bearer {self._token}"}
        # Tags for the ledger. For a worker they only pick one of its own tasks: the gateway takes
        # the project (and the budgets a call counts toward) from the control plane, never from here.
        if task_id:
            headers["X-Hiclaw-Task"] = task_id
        if project_id:
            headers["X-Hiclaw-Project"] = project_id
        clock = asyncio.get_running_loop()
        started = clock.time()
        attempt = 0
        waited = 0.0
        unreachable_since: float | None = None
        while True:
            try:
                status, text, reason, *rest = await self._post(f"{self.base_url}/chat/completions", body, headers)
            except Unreachable as exc:
                now = clock.time()
                unreachable_since = unreachable_since if unreachable_since is not None else now
                if attempt >= self.retries and now - unreachable_since >= self.outage_grace:
                    raise GatewayError(0, f"cannot reach the gateway at {self.base_url} ({exc}; {_attempts(attempt + 1)} "
                                       f"in {now - started:.0f} s)", attempts=attempt + 1) from None
                attempt += 1
                self._pause = self._pause or Pause()
                await self._pause(self.backoff(attempt))  # back-off between retries, not synchronisation
                continue
            error = _error(status, text, reason, rest[0] if rest else {}) if status != 200 else None
            if error is None:
                try:
                    return _parse_reply(text)
                except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
                    error = GatewayError(502, f"the model's reply is not an OpenAI chat completion ({exc})",
                                         code="invalid_reply")
            error.attempts = attempt + 1
            if error.status not in self.RETRY_STATUSES or error.budget or error.context_overflow:
                raise error
            delay = error.retry_after if error.retry_after is not None else self.backoff(attempt + 1)
            if error.retry_after is not None:  # never sooner than asked; spread a little so callers do not stampede
                delay += random.uniform(0, min(1.0, 0.1 * delay))
            if attempt >= self.retries:
                raise error.gave_up(f"gave up after {_attempts(attempt + 1)} in {clock.time() - started:.0f} s")
            if waited + delay > self.max_retry_wait:
                asked = f"asked to wait {error.retry_after:.0f} s" if error.retry_after is not None else "still failing"
                raise error.gave_up(f"{asked} after {_attempts(attempt + 1)}; this client waits at most "
                                    f"{self.max_retry_wait:.0f} s in all")
            attempt += 1
            waited += delay
            await asyncio.sleep(delay)  # what the server asked for / back-off, not synchronisation


def _attempts(n: int) -> str:
    return f"{n} attempt{'s' if n != 1 else ''}"


def _error(status: int, text: str, reason: str, headers: Mapping[str, str]) -> GatewayError:
    code = kind = None
    try:
        error = json.loads(text).get("error", {})
        if not isinstance(error, dict):
            error = {"message": str(error)}
        message = str(error.get("message") or text[:200])
        code = str(error["code"]) if error.get("code") is not None else None
        kind = str(error["type"]) if error.get("type") is not None else None
    except (json.JSONDecodeError, AttributeError):
        message = text[:200] or reason
    message = " ".join(message.split())
    return GatewayError(status, message, code=code or kind, kind=kind,
                        retry_after=recovery.retry_after_seconds(headers, message) if status in (429, 503) else None)


def _parse_reply(text: str) -> ModelReply:
    data = json.loads(text)
    if "choices" not in data and data.get("error"):  # some providers answer 200 with an error object
        raise ValueError(" ".join(str(data["error"].get("message") if isinstance(data["error"], dict)
                                      else data["error"]).split())[:300])
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    usage = data.get("usage") or {}
    return ModelReply(
        content=message.get("content"),
        tool_calls=message.get("tool_calls") or [],
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        model=data.get("model", ""),
        finish_reason=choice.get("finish_reason"),
    )
