"""Capability protocols: what a channel, gateway, storage, registry or sandbox must offer.

A plugin's factory returns an object that satisfies one of these :class:`typing.Protocol`\\ s.
All I/O methods are ``async``. The core only ever talks to components through these methods,
so a third-party plugin that implements them is a full replacement for a default one.

Components are created by :meth:`hiclaw.host.PluginHost.create` from validated settings; they
get their secrets (only the ones they declared) through ``ctx.secrets``.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from hiclaw.models import ChatMessage

if TYPE_CHECKING:  # pragma: no cover
    from hiclaw.storage.models import SyncResult, WorkerStorageAccess


@runtime_checkable
class Lifecycle(Protocol):
    async def start(self) -> None:
        """Connect or start serving. Idempotent."""

    async def stop(self) -> None:
        """Release every resource started by :meth:`start`. Idempotent."""


MessageHandler = Callable[[ChatMessage], Awaitable[None]]


@runtime_checkable
class Channel(Lifecycle, Protocol):
    """A chat system. One object may serve the control plane (admin operations) or one agent.

    Details of the Matrix implementation are in ``hiclaw.plugins.channels.matrix``.
    """

    async def ensure_account(
        self, name: str, *, display_name: str | None = None, password: str | None = None, admin: bool = False
    ) -> dict[str, Any]:
        """Create (or find) the account for agent ``name``; returns its credentials
        (``user_id``, ``access_token``, ``homeserver_url``, ``device_id``). Idempotent; a changed
        ``password`` is applied. Control-plane side only."""

    async def ensure_room(
        self, key: str, *, name: str, members: Sequence[str], admins: Sequence[str] = (), topic: str = ""
    ) -> str:
        """Create (or find, by ``key``) a room with these members; returns its id. Idempotent."""

    async def send(
        self, room_id: str, text: str, *, mentions: Sequence[str] = (), idempotency_key: str | None = None
    ) -> str:
        """Send Markdown ``text`` mentioning ``mentions`` (agent names or user ids); returns the
        event id. The same ``idempotency_key`` never posts twice."""

    def on_message(self, handler: MessageHandler) -> None:
        """Call ``handler`` for each message from others in the rooms this session is in (with
        ``mentions`` and ``is_direct`` filled). Gate it with :class:`hiclaw.wakeup.MentionGate`
        so the agent wakes only when mentioned."""


@runtime_checkable
class TeamChannel(Channel, Protocol):
    """What the default (Matrix) channel offers beyond :class:`Channel`; the control plane uses
    these when a channel has them."""

    def user_id(self, name: str) -> str:
        """The chat identity of agent ``name`` (``@alice:hiclaw.local``); ids pass through."""

    async def remove_member(self, room_id: str, member: str) -> None:
        """Remove ``member`` (agent name or user id) from the room."""

    async def set_typing(self, room_id: str, typing: bool) -> None:
        """Show or clear "… is typing" for this session's agent."""

    def worker_settings(self, name: str) -> dict[str, Any]:
        """The channel settings a worker process needs to run as ``name`` (no admin secrets)."""


@runtime_checkable
class Gateway(Lifecycle, Protocol):
    """The AI gateway: the only holder of provider keys; agents hold consumer tokens."""

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL agents call (``…/v1``)."""

    async def mint_token(
        self, name: str, *, models: Sequence[str] | None = None, budget_usd: float | None = None
    ) -> str:
        """Create consumer ``name`` and return its token (shown once). Replaces an earlier one."""

    async def revoke_token(self, name: str) -> None:
        """Revoke consumer ``name``; takes effect on its next request."""

    async def list_tokens(self) -> list[dict[str, Any]]:
        """Consumers with models, budget, spent, created, revoked — never token values."""

    # Optional (not part of the checked shape): ``async def check_token(name, token) -> bool`` —
    # whether ``token`` is consumer ``name``'s current token. Without it, a worker that outlived a
    # crash of the control plane is restarted with a new token instead of being adopted.


@runtime_checkable
class Storage(Protocol):
    """Shared object storage with the layout of DESIGN section 5 (keys are ``/``-separated)."""

    async def put(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        """Write atomically: readers see the old object or the whole new one."""

    async def get(self, key: str) -> bytes:
        """Read an object; raises :class:`hiclaw.errors.NotFoundError` if absent."""

    async def stat(self, key: str) -> dict[str, Any] | None:
        """``{"key", "size", "mtime", "etag"}`` or ``None`` if absent."""

    async def list(self, prefix: str = "", *, recursive: bool = True) -> list[dict[str, Any]]:
        """Objects under ``prefix``, as :meth:`stat` dictionaries, sorted by key."""

    async def delete(self, key: str) -> None:
        """Delete one object (absent is fine)."""

    async def copy(self, src: str, dst: str) -> None:
        """Copy object ``src`` to ``dst`` atomically (server-side where the backend can)."""

    async def put_file(self, key: str, path: PathLike, *, content_type: str | None = None) -> None:
        """Upload a local file atomically, streaming (never a partial object)."""

    async def get_file(self, key: str, path: PathLike) -> None:
        """Download to a local file atomically (temporary file beside it, then rename)."""

    async def checksum(self, key: str) -> str:
        """Content digest as ``"sha256:<hex>"`` (or ``"md5:<hex>"`` where only that is known)."""

    async def sync(
        self,
        local_dir: PathLike,
        prefix: str,
        *,
        direction: Literal["up", "down"] = "up",
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        delete: bool = False,
        checksum: bool = False,
        dry_run: bool = False,
    ) -> SyncResult:
        """Synchronise a local folder with a storage folder (see :mod:`hiclaw.storage.sync`)."""


@runtime_checkable
class ControlStorage(Storage, Protocol):
    """The control plane's view of storage: it also hands out and takes back per-worker access."""

    async def grant(
        self, worker: str, *, rw: Sequence[str] = (), ro: Sequence[str] = ()
    ) -> WorkerStorageAccess:
        """Give ``worker`` read-write access to its home and ``rw``, read-only to ``ro`` (folders
        end with ``/``). Returns worker-side settings (scoped, never root keys) and, for local
        storage, the bind mounts. Issuing again replaces the worker's earlier credentials."""

    async def revoke(self, worker: str) -> None:
        """Take every access of ``worker`` away (idempotent)."""

    async def presign(self, key: str, expires_seconds: int = 3600) -> str:
        """A URL that lets a human fetch ``key`` without credentials, valid for that long."""


@runtime_checkable
class SkillRegistry(Protocol):
    """Where skills are searched and fetched (skills.sh wire format)."""

    async def search(self, query: str, *, limit: int = 10) -> list[dict[str, Any]]:
        """``[{"id", "skillId", "name", "source", "installs"}]``."""

    async def fetch(self, source: str, skill: str | None = None) -> Any:
        """Fetch the files of a skill (verified), ready for the installer."""


@runtime_checkable
class SandboxBackend(Protocol):
    """Starts and stops worker processes in isolation."""

    async def start(self, spec: Any) -> Any:
        """Start a worker described by ``spec``; returns a handle with its pid/status."""

    async def stop(self, name: str) -> None:
        """Stop worker ``name`` (absent is fine)."""

    async def status(self, name: str) -> dict[str, Any]:
        """``{"name", "state": "running"|"exited"|"absent", "pid", "exit_code"}``."""


AsyncLines = AsyncIterator[str]
PathLike = str | Path
