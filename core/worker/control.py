"""The worker's client of the control API (skills and readiness), over its bridge."""
from __future__ import annotations

import json
from typing import Any

from hiclaw.errors import HiclawError
from hiclaw.worker.http import Unreachable, LazySession


class ControlClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = LazySession(timeout, headers={"Authorization": f"Bearer {token}"})

    async def aclose(self) -> None:
        await self._session.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            status, text, _ = await self._session.post_json(f"{self.base_url}{path}", body)
        except Unreachable as exc:
            raise HiclawError(f"cannot reach the control plane at {self.base_url} ({exc})",
                              hint="it may be restarting; try again shortly") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if status != 200:
            raise HiclawError(str(data.get("error") or f"control plane answered {status}"))
        return data

    async def ready(self, info: dict[str, Any]) -> None:
        await self._post("/v1/ready", info)

    async def skills_find(self, query: str, limit: int = 10) -> Any:
        return (await self._post("/v1/skills/find", {"query": query, "limit": limit}))["skills"]

    async def skills_add(self, source: str, skill: str | None) -> Any:
        return await self._post("/v1/skills/add", {"source": source, "skill": skill})
