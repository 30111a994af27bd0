"""The engine's view of the channel: idempotent posts, the transactional outbox's delivery, and
the team's rooms."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from hiclaw.errors import InvalidInputError
from hiclaw.protocols import RoomDirectory
from hiclaw.state import ROOM_MANAGER, Project, StateDB

if TYPE_CHECKING:
    from hiclaw.control.outbox import Outbox


class ControlChat:
    """Posts through the control-side channel (logged in as the Manager), recording every keyed
    message in the state DB's outbox so a restarted control plane never posts it again."""

    def __init__(self, channel: Any, state: StateDB, *, admin: str = "admin") -> None:
        self.channel, self.state, self.admin = channel, state, admin
        self.manager_room = ""
        #: Set by the control plane once they exist: the transactional outbox (posted first by
        #: :meth:`flush`) and the idle policy's wake-up of sleeping workers before they are mentioned.
        self.outbox: Outbox | None = None
        self.wake_mentioned: Callable[[Sequence[str]], Awaitable[Any]] | None = None
        self._rooms: dict[str, str] = {}

    @property
    def members(self) -> list[str]:
        return [self.admin, "manager"]

    async def post(self, room_id: str, text: str, *, mentions: Sequence[str] = (), key: str | None = None) -> str:
        """Post now — a message no state change waits for (those go through the outbox:
        ``state.enqueue_message`` then :meth:`flush`). What the outbox holds is posted first."""
        await self.flush()
        return await self.send(room_id, text, mentions=mentions, key=key)

    async def flush(self) -> None:
        """Deliver the messages recorded with state changes (:mod:`hiclaw.control.outbox`)."""
        if self.outbox is not None:
            await self.outbox.deliver_pending()

    async def resolve(self, room: str) -> str:
        """The room id of a pending message's room key (``manager``, ``worker:<name>``,
        ``project:<id>``), creating the room if needed; a room id is returned as it is."""
        if room.startswith("!"):
            return room
        if room == ROOM_MANAGER:
            return self.manager_room or await self.ensure_manager_room()
        kind, _, name = room.partition(":")
        if kind == "worker" and name:
            return await self.worker_room(name)
        if kind == "project" and name:
            room_id = self.state.project(name).room_id
            if room_id:
                return str(room_id)
            raise InvalidInputError(f"{name} has no room yet", hint="it is created when the plan is confirmed")
        raise InvalidInputError(f"unknown room key {room!r}")

    async def send(self, room_id: str, text: str, *, mentions: Sequence[str] = (), key: str | None = None) -> str:
        """Post now, once per ``key`` (recorded in the state DB's outbox of sent keys)."""
        state = self.state
        if key is not None:
            sent = state.outbox_get(key)
            if sent is not None:
                return sent
        if self.wake_mentioned is not None and mentions:
            await self.wake_mentioned(mentions)  # a sleeping worker is ready before it is mentioned
        event_id = await self.channel.send(room_id, text, mentions=list(mentions), idempotency_key=key)
        if key is not None:
            state.outbox_put(key, room_id, event_id)
        return event_id

    async def room(self, key: str, name: str, members: Sequence[str], topic: str = "") -> str:
        """The room ``key`` with at least these members (created or completed if needed)."""
        everyone = [*self.members, *members]
        channel = self.channel
        room_id = (channel.known_room(key, everyone) if isinstance(channel, RoomDirectory)
                   else self._rooms.get(f"{key}:{sorted(everyone)}"))
        if room_id is None:  # new room, or new members: ensure_room is idempotent
            room_id = await self.channel.ensure_room(key, name=name, members=everyone, admins=self.members,
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

