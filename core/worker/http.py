"""The worker's HTTP clients (gateway, control API) on aiohttp.

aiohttp is the library the worker's Matrix channel (matrix-nio) already runs on; using it here
too means a worker process never imports httpx — which brings httpcore, anyio and, through its
command-line extras, click, rich and pygments — nor builds httpx's TLS contexts: ~8 MB of RSS
per worker (see ``bench/worker_start.py``). Sessions are opened on first use, inside the
worker's event loop.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import aiohttp

from hiclaw.agent.client import Answer, GatewayClient, Unreachable

#: What "no answer" looks like in aiohttp (refused, reset, cut off, timed out).
NO_ANSWER = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class LazySession:
    """One aiohttp session, opened on first use (there is no running loop before that)."""

    def __init__(self, timeout: float, headers: dict[str, str] | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def post_json(self, url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        """(status, body text, reason); :class:`Unreachable` if nothing answered."""
        status, text, reason, _ = await self.post(url, body, headers)
        return status, text, reason

    async def post(self, url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, str, str, dict[str, str]]:
        """(status, body text, reason, headers with lower-case names); :class:`Unreachable` if nothing answered."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            async with self.get().post(url, data=data, headers={"Content-Type": "application/json",
                                                                **(headers or {})}) as response:
                return (response.status, await response.text(errors="replace"), response.reason or "",
                        {name.lower(): value for name, value in response.headers.items()})
        except NO_ANSWER as exc:
            raise Unreachable(type(exc).__name__) from None

    async def request(self, method: str, url: str, *, params: dict[str, str] | None = None, data: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers); :class:`Unreachable` if nothing answered. No redirects followed."""
        try:
            async with self.get().request(method, url, params=params, data=data, headers=headers,
                                          allow_redirects=False) as response:
                return response.status, await response.read(), dict(response.headers.items())
        except NO_ANSWER as exc:
            raise Unreachable(type(exc).__name__) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class WorkerGatewayClient(GatewayClient):
    """:class:`hiclaw.agent.GatewayClient` (same calls, retries and errors) over aiohttp."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 300.0, retries: int = 4,
                 outage_grace: float = 0.0, max_retry_wait: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.retries = retries
        self.outage_grace = outage_grace
        self.max_retry_wait = max_retry_wait
        self._session = LazySession(timeout)

    @property
    def root(self) -> str:
        """The gateway's root (its base URL without the OpenAI ``/v1``)."""
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    async def egress(self, route: str, method: str, path: str, *, query: dict[str, str] | None = None,
                     body: bytes | None = None, headers: dict[str, str] | None = None,
                     task_id: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        """Call egress route ``route`` (``ANY {root}/egress/<route><path>``) with this consumer's token."""
        sent = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
        sent["Authorization"] = f"Bearer {self._token}"
        if task_id:
            sent["X-Hiclaw-Task"] = task_id
        return await self._session.request(method, f"{self.root}/egress/{route}{path}", params=query or None,
                                           data=body, headers=sent)

    async def mcp_post(self, server: str, body: bytes, *, headers: dict[str, str],
                       task_id: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        """POST one JSON-RPC message to MCP server ``server`` (``{root}/mcp/<server>``) with this consumer's token."""
        sent = {**{k: v for k, v in headers.items() if k.lower() != "authorization"},
                "Authorization": f"Bearer {self._token}"}
        if task_id:
            sent["X-Hiclaw-Task"] = task_id
        return await self._session.request("POST", f"{self.root}/mcp/{quote(server, safe='')}", data=body,
                                           headers=sent)

    async def granted(self, kind: str) -> list[dict[str, Any]]:
        """What this consumer is granted (``GET {root}/mcp`` or ``/egress``); empty if the gateway serves none."""
        return await self._listing(kind) or []

    async def mcp_servers(self) -> list[dict[str, Any]] | None:
        """The MCP servers granted to this consumer (``GET {root}/mcp``); None if the gateway lists none."""
        return await self._listing("mcp")

    async def _listing(self, kind: str) -> list[dict[str, Any]] | None:
        status, data, _ = await self._session.request("GET", f"{self.root}/{kind}",
                                                      headers={"Authorization": f"Bearer {self._token}"})
        if status == 404:
            return None
        if status != 200:
            raise Unreachable(f"GET /{kind} answered HTTP {status}")
        listed = json.loads(data).get("servers" if kind == "mcp" else "routes")
        return [item for item in listed or [] if isinstance(item, dict)]

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        return await self._session.post(url, body, headers)

    async def aclose(self) -> None:
        await self._session.aclose()
