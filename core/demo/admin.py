"""The demo's human: an independent Matrix client over the raw Client-Server API (httpx).

It does not share code with the Matrix channel plugin, so what it sees is what any Matrix client
(Element, FluffyChat) would see: rooms, messages, ``formatted_body`` pills and ``m.mentions``.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx


@dataclass
class SeenMessage:
    room_id: str
    room_name: str
    sender: str
    body: str
    event_id: str
    content: dict[str, Any] = field(default_factory=dict)
    #: ``time.perf_counter()`` when this client's sync delivered it (bench/console_pages.py).
    received: float = field(default_factory=time.perf_counter)

    @property
    def mentions(self) -> list[str]:
        return list((self.content.get("m.mentions") or {}).get("user_ids") or [])


class AdminClient:
    def __init__(self, homeserver_url: str, user: str, password: str,
                 on_message: Callable[[SeenMessage], None] | None = None) -> None:
        self.base = homeserver_url.rstrip("/") + "/_matrix/client/v3"
        self.user = user
        self.password = password
        self.on_message = on_message
        self.token = ""
        self.user_id = ""
        self.messages: list[SeenMessage] = []
        self.room_names: dict[str, str] = {}
        self._since: str | None = None
        self._http = httpx.AsyncClient(timeout=60)
        self._task: asyncio.Task[None] | None = None
        self._txn = itertools.count(int(time.time() * 1000))

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = await self._http.request(method, self.base + path, json=body, params=params or None, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    async def login(self) -> None:
        data = await self._call("POST", "/login", {"type": "m.login.password", "password": self.password,
                                                  "identifier": {"type": "m.id.user", "user": self.user}})
        self.token, self.user_id = data["access_token"], data["user_id"]

    async def resolve(self, alias: str) -> str:
        return (await self._call("GET", f"/directory/room/{quote(alias)}"))["room_id"]

    async def send(self, room_id: str, body: str, *, mention: str | None = None) -> str:
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if mention:
            name = mention.split(":", 1)[0].lstrip("@")
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = body.replace(f"@{name}", f'<a href="https://matrix.to/#/{mention}">{name}</a>', 1)
            content["m.mentions"] = {"user_ids": [mention]}
        path = f"/rooms/{quote(room_id)}/send/m.room.message/{next(self._txn)}"
        return (await self._call("PUT", path, content))["event_id"]

    async def start(self) -> None:
        await self._sync(timeout=0)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - stopping: how the loop ended does not matter
                pass
        await self._http.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                await self._sync(timeout=10000)
            except (httpx.HTTPError, RuntimeError):
                await asyncio.sleep(0.5)  # the homeserver is restarting: back off, then resync

    async def _sync(self, *, timeout: int) -> None:
        params: dict[str, Any] = {"timeout": timeout}
        if self._since:
            params["since"] = self._since
        data = await self._call("GET", "/sync", **params)
        self._since = data["next_batch"]
        for room_id in (data.get("rooms", {}).get("invite") or {}):
            await self._call("POST", f"/join/{quote(room_id)}", {})
        for room_id, room in (data.get("rooms", {}).get("join") or {}).items():
            for event in room.get("state", {}).get("events", []) + room.get("timeline", {}).get("events", []):
                if event.get("type") == "m.room.name":
                    self.room_names[room_id] = event.get("content", {}).get("name", "")
            for event in room.get("timeline", {}).get("events", []):
                if event.get("type") != "m.room.message":
                    continue
                content = event.get("content") or {}
                seen = SeenMessage(room_id, self.room_names.get(room_id, room_id), event["sender"],
                                   str(content.get("body", "")), event["event_id"], content)
                self.messages.append(seen)
                if self.on_message is not None:
                    self.on_message(seen)

    async def room_messages(self, room_id: str, limit: int = 500) -> list[dict[str, Any]]:
        data = await self._call("GET", f"/rooms/{quote(room_id)}/messages", dir="b", limit=limit)
        return [e for e in reversed(data.get("chunk", [])) if e.get("type") == "m.room.message"]

    async def joined_rooms(self) -> list[str]:
        return list((await self._call("GET", "/joined_rooms"))["joined_rooms"])
