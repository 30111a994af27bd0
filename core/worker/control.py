"""The worker's client of the control API (skills and readiness), over its bridge."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from hiclaw.errors import HiclawError
from hiclaw.pause import Pause
from hiclaw.worker.http import NO_ANSWER, LazySession, Unreachable

log = logging.getLogger(__name__)


class ControlUnreachable(HiclawError):
    """The control plane did not answer (within ``outage_grace``)."""


class ControlClient:
    """``outage_grace``: how long a call waits for a control plane that does not answer (one
    restarting after a crash); :meth:`wake` retries at once (it is back)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 120.0, outage_grace: float = 0.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.outage_grace = outage_grace
        self._session = LazySession(timeout, headers={"Authorization": f"Bearer {token}"})
        self._pause = Pause()

    def wake(self) -> None:
        self._pause.wake()

    async def aclose(self) -> None:
        await self._session.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.outage_grace
        delay = 0.5
        while True:
            try:
                status, text, _ = await self._session.post_json(f"{self.base_url}{path}", body)
                break
            except Unreachable as exc:
                if loop.time() >= deadline:
                    raise ControlUnreachable(f"cannot reach the control plane at {self.base_url} ({exc})",
                                      hint="it may be restarting; try again shortly") from None
                log.warning("control plane unreachable (%s) on %s; retrying in %.1fs", exc, path, delay)
            await self._pause(delay)  # back-off while the control plane is away
            delay = min(delay * 2, 5.0)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if status != 200:
            raise HiclawError(str(data.get("error") or f"control plane answered {status}"))
        return data

    async def reachable(self, timeout: float = 10.0) -> bool:
        """Whether the control plane answers its health check (no retries)."""
        import aiohttp

        try:
            async with self._session.get().get(f"{self.base_url}/v1/health",
                                               timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                return response.status == 200
        except NO_ANSWER:
            return False

    async def ready(self, info: dict[str, Any]) -> None:
        await self._post("/v1/ready", info)

    async def notice(self, info: dict[str, Any]) -> None:
        """Something the admin must know (``{"kind": "turn-limit", "room_id": …}``)."""
        await self._post("/v1/notice", info)

    async def approval(self, call: dict[str, Any]) -> dict[str, Any]:
        """Whether a call may run now (``state`` done), waits for the admin (pending: ask again
        with the same ``call_id``) or was denied — ``POST /v1/approval`` (docs/approvals.md)."""
        return dict(await self._post("/v1/approval", call))

    async def skills_find(self, query: str, limit: int = 10) -> Any:
        return (await self._post("/v1/skills/find", {"query": query, "limit": limit}))["skills"]

    async def skills_add(self, source: str, skill: str | None) -> Any:
        return await self._post("/v1/skills/add", {"source": source, "skill": skill})
