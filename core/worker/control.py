"""The worker's client of the control API (skills and readiness), over its bridge."""
from __future__ import annotations

from typing import Any

import httpx

from hiclaw.errors import HiclawError


class ControlClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            response = await self._client.post(f"{self.base_url}{path}", json=body)
        except httpx.TransportError as exc:
            raise HiclawError(f"cannot reach the control plane at {self.base_url} ({type(exc).__name__})",
                              hint="it may be restarting; try again shortly") from None
        data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 200:
            raise HiclawError(str(data.get("error") or f"control plane answered {response.status_code}"))
        return data

    async def ready(self, info: dict[str, Any]) -> None:
        await self._post("/v1/ready", info)

    async def skills_find(self, query: str, limit: int = 10) -> Any:
        return (await self._post("/v1/skills/find", {"query": query, "limit": limit}))["skills"]

    async def skills_add(self, source: str, skill: str | None) -> Any:
        return await self._post("/v1/skills/add", {"source": source, "skill": skill})
