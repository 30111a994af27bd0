"""A small OpenAI-compatible client for the gateway (httpx, no SDK, no litellm).

httpx is imported when a client is made, not with this module: a worker process talks to the
gateway through aiohttp instead (:mod:`hiclaw.worker.http`), the library its Matrix channel
already loads, and never pays for a second HTTP stack.
"""
from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from hiclaw.errors import HiclawError
from hiclaw.pause import Pause

if TYPE_CHECKING:
    import httpx


class GatewayError(HiclawError):
    """The gateway refused or failed a model call (status and OpenAI-style message)."""

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(f"gateway answered {status}: {message}")


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


class GatewayClient:
    """Calls ``POST {base_url}/chat/completions`` with the agent's consumer token.

    A gateway that does not answer is retried ``retries`` times, and beyond that for as long as
    ``outage_grace`` seconds from the first failure (a worker waits out a control-plane restart
    that way, its turn intact); :meth:`wake` retries at once (the gateway is back).

    Subclasses may replace the HTTP layer: ``__init__``, :meth:`_post` and :meth:`aclose`."""

    RETRY_STATUSES = (502, 503, 504)
    outage_grace: float = 0.0
    _pause: Pause | None = None

    def wake(self) -> None:
        """Cut the current back-off short: the gateway is reachable again."""
        if self._pause is not None:
            self._pause.wake()

    def __init__(self, base_url: str, token: str, *, timeout: float = 300.0, retries: int = 2,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self._token = token
        self.retries = retries
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, str]:
        """POST JSON; (status, body text, reason phrase), or :class:`Unreachable`."""
        import httpx

        try:
            response = await self._client.post(url, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise Unreachable(type(exc).__name__) from None
        return response.status_code, response.text, response.reason_phrase

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
        attempt = 0
        unreachable_since: float | None = None
        while True:
            try:
                status, text, reason = await self._post(f"{self.base_url}/chat/completions", body, headers)
            except Unreachable as exc:
                now = asyncio.get_running_loop().time()
                unreachable_since = unreachable_since if unreachable_since is not None else now
                if attempt >= self.retries and now - unreachable_since >= self.outage_grace:
                    raise GatewayError(0, f"cannot reach the gateway at {self.base_url} ({exc})") from None
            else:
                if status == 200:
                    return _parse_reply(text)
                if status not in self.RETRY_STATUSES or attempt >= self.retries:
                    raise _error(status, text, reason)
            attempt += 1
            self._pause = self._pause or Pause()
            await self._pause(min(0.5 * 2**attempt, 5.0))  # back-off between retries, not synchronisation


def _error(status: int, text: str, reason: str) -> GatewayError:
    try:
        error = json.loads(text).get("error", {})
        message = str(error.get("message") or text[:200])
        code = error.get("code") or error.get("type")
    except (json.JSONDecodeError, AttributeError):
        message, code = text[:200] or reason, None
    return GatewayError(status, message, code=code)


def _parse_reply(text: str) -> ModelReply:
    data = json.loads(text)
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
