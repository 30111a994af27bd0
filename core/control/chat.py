"""The engine's view of the channel: idempotent posts and the team's rooms."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hiclaw.protocols import RoomDirectory
from hiclaw.state import Project


class ControlChat:
    """Posts through the control-side channel (logged in as the Manager), recording every keyed
    message in the state DB's outbox so a restarted control plane never posts it again."""

    def __init__(self, plane: Any) -> None:
        self.plane = plane
        self.manager_room = ""
        self._rooms: dict[str, str] = {}

    @property
    def members(self) -> list[str]:
        return [self.plane.admin, "manager"]

    async def post(self, room_id: str, text: str, *, mentions: Sequence[str] = (), key: str | None = None) -> str:
        state = self.plane.state
        if key is not None:
            sent = state.outbox_get(key)
            if sent is not None:
                return sent
        idle = getattr(self.plane, "idle", None)
        if idle is not None and mentions:
            await idle.wake_mentioned(mentions)  # a sleeping worker is ready before it is mentioned
        event_id = await self.plane.channel.send(room_id, text, mentions=list(mentions), idempotency_key=key)
        if key is not None:
            state.outbox_put(key, room_id, event_id)
        return event_id

    async def room(self, key: str, name: str, members: Sequence[str], topic: str = "") -> str:
        """The room ``key`` with at least these members (created or completed if needed)."""
        everyone = [*self.members, *members]
        channel = self.plane.channel
        room_id = (channel.known_room(key, everyone) if isinstance(channel, RoomDirectory)
                   else self._rooms.get(f"{key}:{sorted(everyone)}"))
        if room_id is None:  # new room, or new members: ensure_room is idempotent
            room_id = await self.plane.channel.ensure_room(key, name=name, members=everyone, admins=self.members,
                                                          topic=topic)
            self._rooms[f"{key}:{sorted(everyone)}"] = room_id
        return room_id

    async def ensure_manager_room(self) -> str:
        self.manager_room = await self.room("manager", "Manager", [], topic="Talk to your Manager here")
        return self.manager_room

    async def worker_room(self, worker: str) -> str:
        return await self.room(f"worker-{worker}", f"Worker: {worker}", [worker], topic=f"Work with {worker}")

    async def project_room(self, project: Project, members: Sequence[str]) -> str:
        return await self.room(f"project-{project.id}", f"Project: {project.title}", members,
                               topic=f"{project.id}: {project.goal}"[:200])

