"""OpenAI-style error responses, and the redaction of provider keys from any text we emit."""
from __future__ import annotations

import json
from collections.abc import Iterable

from aiohttp import web
from pydantic import SecretStr


class GatewayHTTPError(Exception):
    """An error answered to the caller as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, code: str, kind: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.kind = kind
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=json.dumps(self.body()).encode(), content_type="application/json",
                            headers=self.headers)

    def sse_event(self) -> bytes:
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


class UpstreamError(Exception):
    """The provider failed. ``retryable`` errors (5xx, timeouts, connection errors) are retried
    and then fall back to the next alias; the others are answered at once."""

    def __init__(self, status: int, message: str, *, code: str, retryable: bool, kind: str = "upstream_error",
                 retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retryable = retryable
        self.kind = kind
        self.retry_after = retry_after  # the provider's Retry-After, passed on to the caller

    def answer(self) -> GatewayHTTPError:
        """What the caller gets: the error, with the provider's ``Retry-After`` when it sent one."""
        headers = {"Retry-After": self.retry_after} if self.retry_after else None
        return GatewayHTTPError(self.status, self.message, code=self.code, kind=self.kind, headers=headers)


class Redactor:
    """Replaces every known secret value in a text; applied to everything we log or answer."""

    MASK = "[redacted]"

    def __init__(self, secrets: Iterable[SecretStr]) -> None:
        # Longest first, so a key containing another key is masked whole.
        values = {s.get_secret_value() for s in secrets}
        self._values = sorted((v for v in values if len(v) >= 4), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, self.MASK)
        return text

    def data(self, body: bytes) -> bytes:
        """The same for bytes (an egress route's response body), each value as UTF-8."""
        mask = self.MASK.encode()
        for value in self._values:
            raw = value.encode()
            if raw in body:
                body = body.replace(raw, mask)
        return body

    def __contains__(self, text: str) -> bool:
        return any(value in text for value in self._values)


def unauthorized(message: str, code: str) -> GatewayHTTPError:
    return GatewayHTTPError(401, message, code=code, kind="authentication_error")


def bad_request(message: str, code: str, param: str | None = None) -> GatewayHTTPError:
    return GatewayHTTPError(400, message, code=code, param=param)
