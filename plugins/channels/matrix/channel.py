"""One agent's Matrix session (matrix-nio): sync loop, incoming messages, sending, typing.

Delivery is at-least-once with de-duplication: a message counts as handled when every handler
returned; only then is its event id marked seen, and the sync token is saved after the whole
batch. A restart resumes from the saved token (nothing lost) and skips seen ids (nothing
delivered twice). Gaps (a ``limited`` timeline after downtime) are filled from ``/messages``.
In a room joined since the last sync, only messages after our own join are delivered.

Handlers are awaited in order, one message at a time (an agent works one turn at a time).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    MessageDirection,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncError,
    SyncResponse,
)

from hiclaw.models import ChatMessage
from hiclaw.pause import Pause
from hiclaw.plugins.channels.matrix.errors import MatrixError
from hiclaw.plugins.channels.matrix.formatting import (
    detect_mentions,
    render,
    split_text,
    strip_reply_fallback,
    with_mention_prefix,
)
from hiclaw.plugins.channels.matrix.settings import AGENT_NAME, MatrixSettings
from hiclaw.plugins.channels.matrix.store import ChannelStore

log = logging.getLogger(__name__)
Handler = Callable[[ChatMessage], Awaitable[None]]
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
SYNC_FILTER = {
    "presence": {"types": []},
    "account_data": {"not_types": ["*"]},
    "room": {"timeline": {"limit": 50}, "ephemeral": {"types": []}, "state": {"lazy_load_members": False}},
}
MAX_BACKFILL = 1000  # events fetched to fill one room's gap after downtime
MSGTYPES = {"m.text", "m.notice", "m.emote"}


def txn_id(idempotency_key: str, part: int) -> str:
    """The transaction id of part ``part`` of a keyed message: Synapse replays, never reposts."""
    return "hiclaw-" + hashlib.sha256(f"{idempotency_key}\0{part}".encode()).hexdigest()[:32]


class MatrixChannel:
    """A Matrix session logged in as one agent (see the module docstring)."""

    def __init__(
        self,
        settings: MatrixSettings,
        *,
        agent: str,
        store_dir: Path | None,
        user_id: str | None = None,
        access_token: str | None = None,
        device_id: str | None = None,
        deliver_backlog: bool = True,
        filter_senders: bool = True,
    ) -> None:
        self.settings = settings
        self.agent = agent
        self.store = ChannelStore(store_dir)
        self._user_id = user_id
        self._access_token = access_token
        self._device_id = device_id
        self.deliver_backlog = deliver_backlog  # False: the first sync only marks where "new" starts
        self.filter_senders = filter_senders  # False for a human's client (hiclaw chat): show everyone
        self.client: AsyncClient | None = None
        self._handlers: list[Handler] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._fatal: BaseException | None = None
        self._failing = False  # the last sync failed; the next one is short (no long poll)
        self._pause = Pause()  # the back-off between failed syncs; resync cuts it short
        self._recovered: asyncio.Event | None = None  # set by the first good sync after failures
        self._joined: set[str] = set(self.store.get("joined_rooms", []))
        self._since: str | None = self.store.get("next_batch")
        self.counters = {"delivered": 0, "duplicates": 0, "dropped_sender": 0, "backfilled": 0, "reconnects": 0,
                         "rate_limited": 0}

    # ------------------------------------------------------------------ identity

    @property
    def me(self) -> str:
        return self._user_id or self.settings.user_id_of(self.agent)

    def user_id(self, name: str) -> str:
        """``alice`` → ``@alice:<server>``; user ids pass through."""
        return self.settings.user_id_of(name)

    def _resolve_local(self, local: str) -> str | None:
        if local.startswith(self.settings.user_prefix) and AGENT_NAME.match(local[len(self.settings.user_prefix):]):
            return f"@{local}:{self.settings.server_name}"
        return self.user_id(local) if AGENT_NAME.match(local) else None

    # ------------------------------------------------------------------ lifecycle

    async def _credentials(self) -> tuple[str, str, str | None]:
        if not self._access_token:
            raise MatrixError(f"no access token for {self.agent!r}",
                              hint="workers get theirs from the control plane (worker_settings)")
        return self.me, self._access_token, self._device_id

    def _new_client(self, user_id: str, token: str, device_id: str | None) -> AsyncClient:
        config = AsyncClientConfig(max_limit_exceeded=0, max_timeouts=0, encryption_enabled=False,
                                   request_timeout=max(60, self.settings.sync_timeout_ms / 1000 + 30))
        client = AsyncClient(self.settings.url, user_id, device_id=device_id or "", config=config)
        client.user_id, client.access_token, client.device_id = user_id, token, device_id or ""
        return client

    async def start(self, *, timeout: float = 30.0) -> None:
        """Log in, run the first sync (rooms known, invites accepted) and keep syncing."""
        if self._sync_task is not None:
            return
        user_id, token, device_id = await self._credentials()
        self._user_id = user_id
        self.client = self._new_client(user_id, token, device_id)
        self._ready = asyncio.Event()
        self._fatal = None
        self._sync_task = asyncio.create_task(self._sync_loop(), name=f"matrix-sync-{self.agent}")
        waiter = asyncio.create_task(self._ready.wait())
        await asyncio.wait({waiter, self._sync_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._fatal is not None or not self._ready.is_set():
            error = self._fatal or MatrixError(f"no answer from the homeserver at {self.settings.url} within {timeout:.0f}s",
                                               hint="start it with `hiclaw homeserver start` or check homeserver_url")
            await self.stop()
            raise error

    async def stop(self) -> None:
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - already reported by the loop
                pass
        if self.client is not None:
            await self.client.close()
            self.client = None

    def on_message(self, handler: Handler) -> None:
        """Call ``handler(ChatMessage)`` for every message from others in joined rooms."""
        self._handlers.append(handler)

    # ------------------------------------------------------------------ sync loop

    async def resync(self, timeout: float = 15.0) -> bool:
        """Reconnect now (the path to the homeserver came back, e.g. a new control plane serves
        the bridges again): cut every back-off short (sync and sends) and, if syncing was failing,
        wait for the next good sync. True once syncing works (at once if it never failed)."""
        self._pause.wake()
        if self._sync_task is None or not self._failing:
            return self._sync_task is not None
        self._recovered = self._recovered or asyncio.Event()
        recovered = self._recovered
        try:
            await asyncio.wait_for(recovered.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _sync_loop(self) -> None:
        assert self.client is not None and self._ready is not None
        delay = 0.5
        first = True
        while True:
            try:
                resp = await self.client.sync(
                    timeout=0 if first or self._failing else self.settings.sync_timeout_ms, sync_filter=SYNC_FILTER,
                    since=self._since, full_state=first and self._since is not None,
                )
            except NETWORK_ERRORS as exc:
                resp = None
                log.warning("%s: sync failed (%s); retrying in %.1fs", self.agent, exc, delay)
            if isinstance(resp, SyncError):
                if resp.status_code in ("M_UNKNOWN_TOKEN", "M_FORBIDDEN"):
                    self._fatal = MatrixError(f"the homeserver rejected the access token of {self.me} ({resp.message})",
                                              hint="re-provision the account (restart the control plane)")
                    log.error("%s: %s; the channel stopped syncing", self.agent, self._fatal)
                    return
                log.warning("%s: sync error %s; retrying in %.1fs", self.agent, resp, delay)
            if not isinstance(resp, SyncResponse):
                if first and not self._ready.is_set() and self.counters["reconnects"] >= 3:
                    self._fatal = MatrixError(f"cannot reach the homeserver at {self.settings.url}",
                                              hint="start it with `hiclaw homeserver start` or check homeserver_url")
                    return
                self.counters["reconnects"] += 1
                self._failing = True
                await self._pause(delay * (0.75 + random.random() / 2))  # back-off with jitter
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            await self._handle_sync(resp, initial=self._since is None)
            self._since = resp.next_batch
            self.store.set("next_batch", resp.next_batch)
            first = False
            self._ready.set()
            if self._failing:
                self._failing = False
                if self._recovered is not None:
                    self._recovered.set()
                    self._recovered = None

    async def _handle_sync(self, resp: SyncResponse, *, initial: bool) -> None:
        for room_id, info in resp.rooms.invite.items():
            await self._maybe_accept_invite(room_id, info)
        for room_id, room in resp.rooms.join.items():
            newly_joined = room_id not in self._joined
            events = [e.source for e in room.timeline.events]
            if initial and not self.deliver_backlog:
                events = []
            elif room.timeline.limited and room.timeline.prev_batch:
                events = await self._backfill(room_id, room.timeline.prev_batch,
                                              None if newly_joined else self._since) + events
            if newly_joined:
                events = self._after_own_join(events)
            await self._deliver(room_id, events)
            if newly_joined:
                self._joined.add(room_id)
                self.store.set("joined_rooms", sorted(self._joined))
        left = set(resp.rooms.leave) & self._joined
        if left:
            self._joined -= left
            self.store.set("joined_rooms", sorted(self._joined))

    def _after_own_join(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index in range(len(events) - 1, -1, -1):
            ev = events[index]
            if (ev.get("type") == "m.room.member" and ev.get("state_key") == self.me
                    and ev.get("content", {}).get("membership") == "join"):
                return events[index + 1:]
        return events

    async def _backfill(self, room_id: str, prev_batch: str, stop_token: str | None) -> list[dict[str, Any]]:
        """Events older than the timeline, back to ``stop_token`` (or our join), oldest first."""
        assert self.client is not None
        collected: list[dict[str, Any]] = []
        start = prev_batch
        while len(collected) < MAX_BACKFILL:
            resp = await self.client.room_messages(room_id, start=start, end=stop_token,
                                                   direction=MessageDirection.back, limit=100)
            if not isinstance(resp, RoomMessagesResponse) or not resp.chunk:
                break
            chunk = [e.source for e in resp.chunk]
            collected.extend(chunk)
            if stop_token is None and any(e.get("type") == "m.room.member" and e.get("state_key") == self.me
                                          and e.get("content", {}).get("membership") == "join" for e in chunk):
                break
            if not resp.end or resp.end == start:
                break
            start = resp.end
        self.counters["backfilled"] += len(collected)
        return list(reversed(collected))

    async def _maybe_accept_invite(self, room_id: str, info: Any) -> None:
        assert self.client is not None
        inviter = next((getattr(e, "sender", None) for e in info.invite_state
                        if getattr(e, "state_key", None) == self.me and getattr(e, "membership", None) == "invite"), None)
        trusted = set(self.settings.trusted_inviters) or {self.user_id("manager"), self.user_id("admin")}
        if inviter in trusted:
            resp = await self.client.join(room_id)
            if isinstance(resp, ErrorResponse):
                log.warning("%s: could not join %s: %s", self.agent, room_id, resp)
        else:
            log.info("%s: ignoring invite to %s from untrusted %s", self.agent, room_id, inviter)

    # ------------------------------------------------------------------ incoming

    def _allowed(self, room_id: str, sender: str) -> bool:
        if not self.filter_senders or sender in self.settings.allowed_senders:
            return True
        explicit = self.store.allowed_senders(room_id)
        if explicit is not None:
            return sender in explicit
        # No list for this room (e.g. on a worker): trust hiclaw's own accounts — the agents and
        # the admin, recognised by server name and user_prefix — and nobody else.
        return self.settings.name_of(sender) is not None

    def allow_senders(self, room_id: str, senders: Sequence[str]) -> None:
        """Accept messages in ``room_id`` only from ``senders`` (names or user ids)."""
        self.store.set_allowed_senders(room_id, {self.user_id(s) for s in senders})

    def to_message(self, room_id: str, ev: dict[str, Any]) -> ChatMessage | None:
        """A :class:`ChatMessage` for a room message event, or ``None`` for anything else."""
        content = ev.get("content") or {}
        if ev.get("type") != "m.room.message" or content.get("msgtype") not in MSGTYPES:
            return None
        if (content.get("m.relates_to") or {}).get("rel_type") == "m.replace":
            return None  # an edit: the original was delivered already
        body = content.get("body")
        if not isinstance(body, str):
            return None
        room = self.client.rooms.get(room_id) if self.client else None
        formatted = content.get("formatted_body")
        return ChatMessage(
            room_id=room_id,
            room_name=room.display_name if room else "",
            event_id=ev["event_id"],
            sender=ev["sender"],
            body=strip_reply_fallback(body),
            formatted_body=formatted if isinstance(formatted, str) else None,
            mentions=detect_mentions(content, self._resolve_local),
            is_direct=room is not None and len(room.users) == 2,
            timestamp=datetime.fromtimestamp(ev.get("origin_server_ts", 0) / 1000, tz=UTC),
        )

    async def _deliver(self, room_id: str, events: list[dict[str, Any]]) -> None:
        for ev in events:
            event_id = ev.get("event_id")
            if not event_id or ev.get("sender") == self.me:
                continue
            if self.store.seen(event_id):
                self.counters["duplicates"] += 1
                continue
            message = self.to_message(room_id, ev)
            if message is None:
                continue
            if not self._allowed(room_id, message.sender):
                self.counters["dropped_sender"] += 1
                log.info("%s: dropped a message in %s from %s (not on the room's allow-list)",
                         self.agent, room_id, message.sender)
                self.store.mark_seen(event_id)
                continue
            for handler in list(self._handlers):
                try:
                    await handler(message)
                except Exception:
                    log.exception("%s: message handler failed for %s", self.agent, event_id)
            self.store.mark_seen(event_id)
            self.counters["delivered"] += 1

    # ------------------------------------------------------------------ outgoing

    def _require_client(self) -> AsyncClient:
        if self.client is None:
            raise MatrixError(f"the Matrix channel of {self.agent!r} is not started", hint="call start() first")
        return self.client

    async def send(
        self, room_id: str, text: str, *, mentions: Sequence[str] = (), idempotency_key: str | None = None
    ) -> str:
        """Post Markdown ``text``; returns the event id of its last part (the one that mentions)."""
        if idempotency_key is not None and (done := self.store.sent_event(idempotency_key)):
            return done
        resolved = [(uid, self.settings.name_of(uid)) for uid in dict.fromkeys(self.user_id(m) for m in mentions)]
        parts = split_text(with_mention_prefix(text, resolved), self.settings.max_message_chars)
        event_id = ""
        for index, part in enumerate(parts):
            part_key = f"{idempotency_key}#{index}" if idempotency_key is not None else None
            if part_key is not None and (done := self.store.sent_event(part_key)):
                event_id = done
                continue
            content = render(part, resolved, mark_mentions=index == len(parts) - 1)
            if len(parts) > 1:
                content["org.hiclaw.part"] = {"index": index, "count": len(parts)}
            event_id = await self._room_send(room_id, content, txn_id(idempotency_key, index) if idempotency_key else None)
            if part_key is not None:
                self.store.record_sent(part_key, event_id)
        if idempotency_key is not None:
            self.store.record_sent(idempotency_key, event_id)
        return event_id

    async def _room_send(self, room_id: str, content: dict[str, Any], txn: str | None, attempts: int = 12) -> str:
        client = self._require_client()
        delay = 0.5
        for _ in range(attempts):
            try:
                resp = await client.room_send(room_id, "m.room.message", content, tx_id=txn)
            except NETWORK_ERRORS as exc:
                if txn is None:
                    raise MatrixError(f"sending to {room_id} failed: {exc}", hint="check the homeserver") from None
                log.warning("%s: send failed (%s); retrying", self.agent, exc)  # same txn id: never posts twice
                await self._pause(delay)  # cut short by resync (the way to the homeserver is back)
                delay = min(delay * 2, 10)
                continue
            if isinstance(resp, RoomSendResponse):
                return resp.event_id
            if resp.status_code == "M_LIMIT_EXCEEDED":
                self.counters["rate_limited"] += 1
                wait = retry_after_seconds(resp)
                log.info("%s: rate limited by the homeserver; retrying in %.2fs", self.agent, wait)
                await asyncio.sleep(wait)
                continue
            raise MatrixError(f"sending to {room_id} as {self.me} failed: {resp.status_code} {resp.message}",
                              hint="check that the agent is a member of the room")
        raise MatrixError(f"sending to {room_id} failed after {attempts} attempts (rate limited)",
                          hint="raise the homeserver's rc_message limits")

    async def set_typing(self, room_id: str, typing: bool, *, timeout_ms: int = 30000) -> None:
        """Show (or clear) "<agent> is typing…" in the room; failures are only logged."""
        client = self._require_client()
        try:
            resp = await client.room_typing(room_id, typing_state=typing, timeout=timeout_ms)
        except NETWORK_ERRORS as exc:
            log.warning("%s: typing notification failed: %s", self.agent, exc)
            return
        if isinstance(resp, ErrorResponse):
            log.warning("%s: typing notification refused: %s", self.agent, resp)

    # ------------------------------------------------------------------ reading rooms

    def rooms(self) -> list[dict[str, Any]]:
        """Joined rooms: ``{"room_id", "name", "members", "invited"}``, by name."""
        client = self._require_client()
        found = []
        for room_id, room in client.rooms.items():
            joined = sorted(u for u in room.users if u not in room.invited_users)
            found.append({"room_id": room_id, "name": room.display_name, "members": joined,
                          "invited": sorted(room.invited_users)})
        return sorted(found, key=lambda r: (r["name"].lower(), r["room_id"]))

    async def history(self, room_id: str, limit: int = 20) -> list[ChatMessage]:
        """The last ``limit`` messages of a room (own ones included), oldest first."""
        client = self._require_client()
        resp = await client.room_messages(room_id, start=self._since, direction=MessageDirection.back, limit=limit * 2)
        if not isinstance(resp, RoomMessagesResponse):
            raise MatrixError(f"cannot read {room_id}: {resp}", hint="check that you are a member of the room")
        messages = [m for m in (self.to_message(room_id, e.source) for e in resp.chunk) if m is not None]
        return list(reversed(messages[:limit]))


def retry_after_seconds(resp: ErrorResponse) -> float:
    """How long a 429 asks us to wait: ``retry_after_ms``, else the Retry-After header, else 1 s."""
    if resp.retry_after_ms:
        return min(resp.retry_after_ms / 1000, 60.0)
    transport = getattr(resp, "transport_response", None)
    header = transport.headers.get("Retry-After") if transport is not None else None
    try:
        return min(float(header), 60.0) if header else 1.0
    except ValueError:
        return 1.0
