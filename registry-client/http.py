"""HTTP for registries: timeouts, retries with back-off on 5xx/429/connection errors, body caps.

Every error names the URL it was fetching, so "which registry is broken?" never needs a
traceback.
"""
from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx

from hiclaw import __version__
from hiclaw.registry.errors import RegistryError, UnsafeSkillError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = f"hiclaw/{__version__} (skills client)"


class HttpFetcher:
    """A small async HTTP client; one per command or service (keeps connections alive)."""

    def __init__(
        self,
        *,
        timeout: float = 15.0,
        retries: int = 3,
        backoff: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = max(1, retries)
        self.backoff = backoff
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
            trust_env=False,  # registries are named explicitly (SKILLS_API_URL); no proxy surprises
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after", "")
            if retry_after.isdigit():
                return min(float(retry_after), 10.0)
        return self.backoff * (2**attempt) * (0.75 + random.random() / 2)

    async def get(
        self,
        url: str,
        *,
        max_bytes: int,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        not_found_ok: bool = False,
    ) -> tuple[int, bytes, dict[str, str]]:
        """GET ``url``; returns ``(status, body, headers)``. Raises :class:`RegistryError` on
        network failure or an error status (404 returned when ``not_found_ok``)."""
        last = ""
        for attempt in range(self.retries):
            response: httpx.Response | None = None
            try:
                async with self._client.stream("GET", url, params=params, headers=headers) as response:
                    if response.status_code in RETRY_STATUSES and attempt + 1 < self.retries:
                        last = f"HTTP {response.status_code}"
                        await asyncio.sleep(self._delay(attempt, response))
                        continue
                    length = response.headers.get("content-length", "")
                    if length.isdigit() and int(length) > max_bytes:
                        raise UnsafeSkillError(f"{url} is {length} bytes (limit {max_bytes})", hint="refusing to download it")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            raise UnsafeSkillError(f"{url} is larger than {max_bytes} bytes", hint="refusing to download it")
                    status = response.status_code
                    if status == 404 and not_found_ok:
                        return status, bytes(body), dict(response.headers)
                    if status >= 400:
                        raise RegistryError(
                            f"{url} answered HTTP {status}{_detail(bytes(body))}",
                            hint="check the registry URL (SKILLS_API_URL / SKILLS_DOWNLOAD_URL) and the skill name",
                        )
                    return status, bytes(body), dict(response.headers)
            except (httpx.TransportError, httpx.InvalidURL) as exc:
                last = type(exc).__name__ + (f": {exc}" if str(exc) else "")
                if attempt + 1 < self.retries and not isinstance(exc, httpx.InvalidURL):
                    await asyncio.sleep(self._delay(attempt, None))
                    continue
                break
        raise RegistryError(
            f"cannot reach {url} ({last}) after {self.retries} attempt(s)",
            hint="check that the registry is running and SKILLS_API_URL / SKILLS_DOWNLOAD_URL point at it",
        )

    async def get_json(self, url: str, *, max_bytes: int, params: dict[str, Any] | None = None,
                       not_found_ok: bool = False) -> Any:
        status, body, _ = await self.get(url, max_bytes=max_bytes, params=params, not_found_ok=not_found_ok)
        if status == 404:
            return None
        return parse_json(body, url)


def parse_json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{url} did not answer JSON", hint="is this URL a skills registry?") from None


def _detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    message = data.get("error") if isinstance(data, dict) else None
    return f": {' '.join(str(message).split())[:200]}" if message else ""
