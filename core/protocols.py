"""Capability protocols: what a channel, gateway, storage, registry or sandbox must offer.

A plugin's factory returns an object that satisfies one of these :class:`typing.Protocol`\\ s.
All I/O methods are ``async``. The core only ever talks to components through these methods,
so a third-party plugin that implements them is a full replacement for a default one.

Components are created by :meth:`hiclaw.host.PluginHost.create` from validated settings; they
get their secrets (only the ones they declared) through ``ctx.secrets``.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from hiclaw.models import ChatMessage, ToolSpec

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

    from hiclaw.host import ComponentContext
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


# ------------------------------------------------------------------------------------------------
# Optional capabilities. The host uses each of them only if a component has it, checked with
# ``isinstance(component, <Protocol>)`` (never a bare ``getattr``), so every optional method has
# one declared, documented signature here. Without one, the behaviour named in its docstring is lost.


@runtime_checkable
class ChannelServices(Protocol):
    """A channel that runs (or connects to) its own server, e.g. the embedded homeserver.
    Without it the channel is assumed to need no server and nothing is bridged for it."""

    async def start_services(self) -> list[str]:
        """Start the server on the control plane before anyone connects; returns progress lines."""

    def service_urls(self) -> dict[str, str]:
        """Services a worker's sandbox must reach, by name (bridged to the same URL inside)."""

    async def stop_services(self) -> None:
        """Stop what :meth:`start_services` started (a server it reused keeps running)."""


@runtime_checkable
class ResyncingChannel(Protocol):
    """A channel that can reconnect at once (a worker adopted by a new control plane). Without
    it the channel reconnects on its own schedule."""

    async def resync(self, timeout: float = 15.0) -> bool:
        """Reconnect now; True once it receives again."""


@runtime_checkable
class AccountRemoval(Protocol):
    """A channel that can take a removed worker's chat account away: every token of it invalid,
    out of every room, never invited back. Without it, removing a worker only takes it out of
    its own room (:meth:`TeamChannel.remove_member`), and the chat token it held stays valid."""

    def account_removed(self, name: str) -> bool:
        """Whether :meth:`remove_account` has finished for agent ``name`` (or it has no account)."""

    async def remove_account(self, name: str) -> str:
        """Take agent ``name``'s account away (idempotent); returns how, in a word or two (e.g.
        ``deactivated``). Creating the agent again later restores it."""


@runtime_checkable
class RoomDirectory(Protocol):
    """A channel that remembers the rooms it made. Without it the control plane keeps its own
    in-memory map and asks :meth:`Channel.ensure_room` once per room and member set."""

    def known_room(self, key: str, members: Sequence[str] = ()) -> str | None:
        """The id of room ``key`` if it exists and already counts ``members``, else ``None``."""


@runtime_checkable
class RoomHistoryReader(Protocol):
    """A channel that can read a room's recent messages back. The Manager's turns get the recent
    exchange of their room from it (:mod:`hiclaw.manager.history`); without it, only the messages
    buffered since the Manager last spoke there, and the room's running summary."""

    async def history(self, room_id: str, limit: int = 20) -> list[ChatMessage]:
        """The last ``limit`` messages of ``room_id`` (its own included), oldest first."""


@runtime_checkable
class TokenChecker(Protocol):
    """A gateway that can confirm a token. Without it, a worker that outlived a crash of the
    control plane is restarted with a new token instead of being adopted."""

    async def check_token(self, name: str, token: str) -> bool:
        """Whether ``token`` is consumer ``name``'s current token."""


@runtime_checkable
class TaskAssignments(Protocol):
    """A gateway that attributes spend from the control plane's assignments. The control plane
    tells it, whenever a worker's tasks change (dispatch, finish, cancel, boot), which tasks the
    worker has and the project of each; the gateway then honours a worker's task tag only if it
    names one of those, takes the project from the assignment, and counts an untagged call toward
    every project the worker is on. Without it, a gateway can only go by the tags a worker sends,
    and a worker can charge its calls to any project, or to none."""

    async def set_assignments(self, consumer: str, assignments: Mapping[str, str | None]) -> None:
        """Replace what consumer ``consumer`` works on: ``{task id: project id, or None for a task
        outside any project}`` (empty: nothing now). Takes effect on its next request."""


@runtime_checkable
class EgressRoutes(Protocol):
    """A gateway that proxies credentialed HTTP routes (``[egress.<name>]``, docs/egress.md): it
    serves ``ANY /egress/<route>/<path>`` to consumers granted the route, adds the route's secret
    (which it resolves from the secrets it declared at registration) and keeps it out of every
    answer and log line. Without it, a team whose config has ``[egress]`` refuses to start."""

    async def set_egress(self, routes: Mapping[str, Any], grants: Mapping[str, Sequence[str]]) -> None:
        """Replace the routes (``{name: hiclaw.config.EgressRoute}``) and who may use them
        (``{consumer: [route names]}``). Takes effect on the next request."""


@runtime_checkable
class McpServers(Protocol):
    """A gateway that serves MCP servers (``[mcp.<name>]``, docs/mcp.md) at ``/mcp/<server>`` to the
    consumers granted them: it runs or reaches each server with its secrets (which it resolves from
    those it declared at registration), lists and allows only the granted tools, and keeps the
    secrets out of every answer and log line. Without it, a team whose config has ``[mcp]``
    refuses to start."""

    async def set_mcp(self, servers: Mapping[str, Any], grants: Mapping[str, Mapping[str, Sequence[str] | None]]) -> None:
        """Replace the servers (``{name: hiclaw.config.McpServer}``) and who may use what
        (``{consumer: {server: tool names, or None for every tool it offers}}``). Takes effect on
        the next request."""

    async def mcp_tools(self, server: str) -> list[dict[str, Any]]:
        """The tools ``server`` offers (``name``, ``description``, ``input_schema``), asked afresh."""


#: ``_meta`` key of a worker's MCP ``tools/call`` (and header ``X-Hiclaw-Call-Id`` of an egress
#: request): the worker's id of this one call, the same on every retry — what an approval waits on.
CALL_ID_META = "hiclaw/call_id"
CALL_ID_HEADER = "X-Hiclaw-Call-Id"
#: ``_meta`` key of a ``tools/call`` answer (and header ``X-Hiclaw-Approval`` of an egress answer)
#: saying the call waits for the admin (``pending``: send it again) or was ``denied``.
APPROVAL_META = "hiclaw/approval"
APPROVAL_HEADER = "X-Hiclaw-Approval"

#: ``review(call, run)`` of :class:`ApprovalGate`: ``call`` is a dict of
#: :class:`hiclaw.control.approvals.GuardedCall`'s fields; ``run()`` makes the call and returns its
#: answer (JSON-ready). Returns ``{"state": "done", "result": …}`` or ``pending`` / ``denied`` /
#: ``interrupted`` with ``approval`` (its id) and ``reason``.
Review = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]]], Awaitable[dict[str, Any]]]


@runtime_checkable
class ApprovalGate(Protocol):
    """A gateway that asks the control plane before running a worker's MCP tool call or egress
    request (docs/approvals.md). Without it, a team whose ``[approvals]`` could ask anything
    refuses to start."""

    def set_approvals(self, review: Review | None) -> None:
        """Ask ``review`` before each call from now on (None: run every call)."""


@runtime_checkable
class UsageLedger(Protocol):
    """A gateway that meters usage. Without it, ``hiclaw usage`` and the Manager's usage report
    say that the gateway keeps no ledger."""

    async def usage(self, by: str | Sequence[str] = "consumer", since: Any = None, until: Any = None) -> list[dict[str, Any]]:
        """Totals (tokens, cost) grouped by ``by`` (consumer, task, project, model), of the calls
        from ``since`` to ``until`` (Unix times, datetimes, ISO dates or durations back from now;
        ``None``: unbounded). A gateway written before ``until`` existed may lack it: the control
        plane then passes it only when a range end is asked for."""


@runtime_checkable
class StorageEndpoint(Protocol):
    """Storage reached over the network (S3). Its URL is bridged into every worker's sandbox."""

    @property
    def endpoint_url(self) -> str:
        """The URL workers use (``http://host:port``)."""


@runtime_checkable
class LocalPaths(Protocol):
    """Storage kept in a local directory. Workers then write workspaces in place and skills are
    installed straight into a worker's folder; without it, both go through the storage API."""

    def local_path(self, key: str) -> Path:
        """The local path of ``key`` (control-plane side; never followed through links)."""


@runtime_checkable
class AdoptingSandbox(Protocol):
    """A sandbox backend whose runs outlive a crash of the control plane. Without it, every
    worker is started again after a crash."""

    async def adopt(self, spec: Any) -> Any:
        """Take over the run of ``spec.name`` a crashed control plane left, or ``None``."""

    async def stop_leftovers(self, keep: set[str] | frozenset[str] = frozenset(), timeout: float = 10.0) -> list[str]:
        """Stop every recorded run not in ``keep``; returns their names."""


@runtime_checkable
class NeutralPaths(Protocol):
    """A sandbox backend that shows the storage and the worker's home at neutral paths inside
    (``/data/…``, ``/home/<name>``), so a worker does not learn where the control plane keeps
    its files. Without it, the paths inside are the host's."""

    #: Where storage mounts (those with ``beneath``) appear inside: ``<storage_root_inside>/<key>``.
    storage_root_inside: Path

    def home_inside(self, name: str) -> Path:
        """Where worker ``name``'s own folder appears inside."""


@runtime_checkable
class SignallingSandbox(Protocol):
    """A sandbox backend that can signal a worker (``SIGUSR1``: "the control plane is back")."""

    async def signal(self, name: str, signum: int) -> bool:
        """Send ``signum`` to worker ``name``; False if it is not running."""


@runtime_checkable
class Stoppable(Protocol):
    """A component that holds connections or threads until :meth:`stop` (e.g. storage)."""

    async def stop(self) -> None:
        """Release them. Idempotent."""


@runtime_checkable
class Closeable(Protocol):
    """A component holding connections that :meth:`aclose` releases (e.g. a skill registry)."""

    async def aclose(self) -> None:
        """Release the connections."""


# ------------------------------------------------------------------------------------------------
# The ``register`` callbacks of the registration hooks, typed per capability: annotate your hook's
# ``register`` parameter with one of these and mypy checks your factory's return type against the
# protocol (methods and signatures), so a plugin that drifts from the host is caught before it runs.

CapabilityT = TypeVar("CapabilityT", contravariant=True)


class Register(Protocol[CapabilityT]):
    """``register(name, factory, *, settings_model=None, secrets=(), description="")``."""

    def __call__(
        self,
        name: str,
        factory: Callable[[Any, ComponentContext], CapabilityT],
        *,
        settings_model: type[BaseModel] | None = None,
        secrets: Sequence[str] | Callable[[Any], Sequence[str]] = (),
        description: str = "",
    ) -> None: ...


class RegisterTools(Protocol):
    """``register(name, factory, *, description="")``; ``factory(ctx)`` returns tools for that agent."""

    def __call__(
        self, name: str, factory: Callable[[ComponentContext], ToolSpec | Sequence[ToolSpec]], *, description: str = ""
    ) -> None: ...


RegisterChannel = Register[TeamChannel]
RegisterGateway = Register[Gateway]
RegisterStorage = Register[Storage]
RegisterSkillRegistry = Register[SkillRegistry]
RegisterSandbox = Register[SandboxBackend]


def missing_members(component: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``component`` lacks (for a one-line error)."""
    wanted = [name for name in dir(protocol) if not name.startswith("_") and name not in _PROTOCOL_BASE_MEMBERS]
    return sorted(name for name in wanted if not hasattr(component, name))


_PROTOCOL_BASE_MEMBERS = frozenset(dir(Protocol))
AsyncLines = AsyncIterator[str]
PathLike = str | Path
