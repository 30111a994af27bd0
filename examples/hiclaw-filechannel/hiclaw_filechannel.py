"""hiclaw-filechannel — a complete, minimal channel plugin (the plugin tutorial builds it).

Rooms are directories under ``root``; each holds ``events.jsonl`` (one JSON message per line)
and ``members.json``. ``send`` appends a line under an exclusive lock; a polling task reads new
lines of the rooms this agent is a member of and calls the handlers for messages from others.
Agents are identified by their names, and mentions are the names listed in a message's
``mentions``. It runs a whole team (``hiclaw up`` with ``[channel] plugin = "file"``) when every
agent can see ``root``: with ``[sandbox] plugin = "process"``, not inside bubblewrap sandboxes,
which see only their own folders.

Quick start for plugin authors:

1. implement the capability (here :class:`FileChannel`, satisfying ``hiclaw.protocols.TeamChannel``);
2. declare its settings as a pydantic model (:class:`FileChannelSettings`);
3. register a factory from ``hiclaw_register_channels``, typed with ``RegisterChannel`` so that
   mypy checks the channel against the protocol;
4. add an entry point in the ``hiclaw`` group of your ``pyproject.toml``.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from hiclaw import hookimpl
from hiclaw.host import ComponentContext
from hiclaw.models import ChatMessage
from hiclaw.protocols import RegisterChannel

Handler = Callable[[ChatMessage], Awaitable[None]]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class FileChannelSettings(BaseModel):
    """Settings read from ``[channel.settings]``."""

    root: Path | None = None  # default: $HICLAW_HOME/filechannel
    poll_seconds: float = Field(default=0.1, gt=0)


class FileChannel:
    """One agent's (or the control plane's) view of the file-backed rooms."""

    def __init__(self, root: Path, agent: str | None, poll_seconds: float) -> None:
        self.root = root
        self.agent = agent or "admin"
        self.poll_seconds = poll_seconds
        self._handlers: list[Handler] = []
        self._offsets: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for room in self._rooms():  # only messages sent from now on are delivered
            self._offsets.setdefault(room.name, (room / "events.jsonl").stat().st_size)
        if self._task is None:
            self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # -- control-plane operations ------------------------------------------------------------
    async def ensure_account(
        self, name: str, *, display_name: str | None = None, password: str | None = None, admin: bool = False
    ) -> dict[str, Any]:
        # Files need no account: the name is the identity (a real chat system creates one here).
        return {"user_id": name, "access_token": "", "homeserver_url": self.root.as_uri(), "device_id": "file"}

    def user_id(self, name: str) -> str:
        return name

    async def ensure_room(
        self, key: str, *, name: str, members: Sequence[str], admins: Sequence[str] = (), topic: str = ""
    ) -> str:
        room_id = _UNSAFE.sub("_", key)
        room = self.root / room_id
        room.mkdir(parents=True, exist_ok=True)
        (room / "events.jsonl").touch()
        self._update_members(room, lambda current: current | set(members) | set(admins), name=name, topic=topic)
        return room_id

    async def remove_member(self, room_id: str, member: str) -> None:
        room = self.root / room_id
        if (room / "members.json").exists():
            self._update_members(room, lambda current: current - {member})

    async def set_typing(self, room_id: str, typing: bool) -> None:
        return None  # files have no typing notifications

    def worker_settings(self, name: str) -> dict[str, Any]:
        return {"root": str(self.root), "poll_seconds": self.poll_seconds}

    # -- messaging ---------------------------------------------------------------------------
    async def send(
        self, room_id: str, text: str, *, mentions: Sequence[str] = (), idempotency_key: str | None = None
    ) -> str:
        path = self.root / room_id / "events.jsonl"
        if not path.exists():
            raise ValueError(f"no room {room_id!r} under {self.root}")
        event_id = f"${uuid.uuid4().hex}"
        line = {"event_id": event_id, "sender": self.agent, "body": text, "mentions": list(mentions),
                "ts": time.time(), "key": idempotency_key}
        with path.open("a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # one writer at a time; readers see whole lines
            if idempotency_key is not None:
                fh.seek(0)
                for existing in fh:
                    record = json.loads(existing)
                    if record.get("key") == idempotency_key:
                        return str(record["event_id"])
            fh.seek(0, os.SEEK_END)
            fh.write(json.dumps(line) + "\n")
        return event_id

    def on_message(self, handler: Handler) -> None:
        self._handlers.append(handler)

    # -- internals ---------------------------------------------------------------------------
    def _rooms(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if (p / "events.jsonl").exists()) if self.root.exists() else []

    @staticmethod
    def _members(room: Path) -> dict[str, Any]:
        try:
            return dict(json.loads((room / "members.json").read_text()))
        except (OSError, ValueError):
            return {"name": room.name, "topic": "", "members": []}

    def _update_members(self, room: Path, change: Callable[[set[str]], set[str]], **fields: str) -> None:
        with (room / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._members(room)
            data.update(fields)
            data["members"] = sorted(change(set(data.get("members", []))))
            tmp = room / "members.json.tmp"
            tmp.write_text(json.dumps(data))
            os.replace(tmp, room / "members.json")

    async def _poll(self) -> None:
        while True:
            for room in self._rooms():
                info = self._members(room)
                members = info.get("members", [])
                offset = self._offsets.setdefault(room.name, 0)  # a room made after start: from its beginning
                if self.agent not in members:
                    continue
                with (room / "events.jsonl").open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
                complete = data[: data.rfind(b"\n") + 1]  # never parse a half-written line
                self._offsets[room.name] = offset + len(complete)
                for raw in complete.splitlines():
                    record = json.loads(raw)
                    if record["sender"] == self.agent:
                        continue
                    message = ChatMessage(room_id=room.name, room_name=info.get("name", room.name),
                                          event_id=record["event_id"], sender=record["sender"], body=record["body"],
                                          mentions=tuple(record["mentions"]), is_direct=len(members) == 2)
                    for handler in self._handlers:
                        await handler(message)
            await asyncio.sleep(self.poll_seconds)


def make_channel(settings: FileChannelSettings, ctx: ComponentContext) -> FileChannel:
    root = settings.root or Path(ctx.home) / "filechannel"
    return FileChannel(root, ctx.agent, settings.poll_seconds)


@hookimpl
def hiclaw_register_channels(register: RegisterChannel) -> None:
    register("file", make_channel, settings_model=FileChannelSettings,
             description="rooms as JSON-lines files in a shared directory")
