"""A small OpenAI-compatible client for the gateway (httpx, no SDK, no litellm)."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from pydantic import BaseModel, Field

from hiclaw.errors import HiclawError


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


class GatewayClient:
    """Calls ``POST {base_url}/chat/completions`` with the agent's consumer token."""

    RETRY_STATUSES = (502, 503, 504)

    def __init__(self, base_url: str, token: str, *, timeout: float = 300.0, retries: int = 2,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.retries = retries
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

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
        if task_id:
            headers["X-Hiclaw-Task"] = task_id
        if project_id:
            headers["X-Hiclaw-Project"] = project_id
        attempt = 0
        while True:
            try:
                response = await self._client.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise GatewayError(0, f"cannot reach the gateway at {self.base_url} ({type(exc).__name__})") from None
            else:
                if response.status_code == 200:
                    return _parse_reply(response)
                if response.status_code not in self.RETRY_STATUSES or attempt >= self.retries:
                    raise _error(response)
            attempt += 1
            await asyncio.sleep(min(0.5 * 2**attempt, 5.0))  # back-off between retries, not synchronisation


def _error(response: httpx.Response) -> GatewayError:
    try:
        error = response.json().get("error", {})
        message = str(error.get("message") or response.text[:200])
        code = error.get("code") or error.get("type")
    except (json.JSONDecodeError, AttributeError):
        message, code = response.text[:200] or response.reason_phrase, None
    return GatewayError(response.status_code, message, code=code)


def _parse_reply(response: httpx.Response) -> ModelReply:
    data = response.json()
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
