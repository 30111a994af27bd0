"""Chat in the browser: the rooms the admin is in, live, and sending as the admin.

The console holds its own chat session logged in **as the admin** (the account the control
plane created for you; the channel plugin's worker-side session, built the way a worker's is,
from ``worker_settings("admin")``), started the first time a chat page is opened. So a message
sent here is yours, exactly as from Element or ``hiclaw chat``: ``@name`` becomes a real mention
(a pill and ``m.mentions``, :func:`hiclaw.wakeup.mentions_in`), the Manager obeys it as it obeys
you, and approvals typed here (``approve apr-3``) count.

**Live:** the page renders the room's last messages from the homeserver, and
``/chat/stream`` (server-sent events, read by the small /console.js) pushes every later one.
Each message the session sees gets a sequence number; the page says which it has seen, a
reconnecting stream resumes after the last one it got (``Last-Event-ID``), and the script drops
an event it already shows, so nothing is missed and nothing shown twice. A stream that fell
behind the kept window is told to reload. Without JavaScript the page still works (reload).

**Sending** is idempotent: each form carries a random nonce, the channel's idempotency key, so a
resubmitted form (reload, double click) never posts twice.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from hiclaw.console.render import esc, markdown_html
from hiclaw.errors import HiclawError, InvalidInputError, NotFoundError
from hiclaw.host import ComponentContext
from hiclaw.models import ChatMessage
from hiclaw.wakeup import mentions_in

ADMIN = "admin"
HISTORY = 50
KEPT = 1000
MAX_TEXT = 20_000
KEEP_ALIVE_SECONDS = 15.0
NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class ChatUnavailable(HiclawError):
    """The channel plugin offers no admin session the console could read (no ``rooms``/``history``)."""


class ConsoleChat:
    """The admin's chat session and the live window of what it saw (see the module docstring)."""

    def __init__(self, plane: Any) -> None:
        self.plane = plane
        self.channel: Any = None
        self._starting = asyncio.Lock()
        self._seq = 0
        self._recent: deque[tuple[int, ChatMessage]] = deque(maxlen=KEPT)
        self._tick = asyncio.Event()
        self.closing = asyncio.Event()

    # ------------------------------------------------------------------ the session

    async def session(self) -> Any:
        """The admin's channel session, started on first use."""
        async with self._starting:
            if self.channel is not None:
                return self.channel
            plane = self.plane
            control = plane.channel
            if not hasattr(control, "worker_settings"):
                raise ChatUnavailable(f"the channel plugin {plane.config.channel.plugin!r} cannot open a session as the admin",
                                      hint="chat from your chat client, or use `hiclaw chat`")
            settings = control.worker_settings(ADMIN)
            channel = plane.host.create("channel", plane.config.channel.plugin, settings,
                                        ComponentContext(home=plane.home / "console", side="worker", agent=ADMIN))
            for needed in ("rooms", "history", "send", "on_message", "me"):
                if not hasattr(channel, needed):
                    raise ChatUnavailable(f"the channel plugin {plane.config.channel.plugin!r} has no {needed!r} "
                                          "for the console's chat", hint="chat from your chat client")
            if hasattr(channel, "deliver_backlog"):
                channel.deliver_backlog = False  # the pages read history from the homeserver
            channel.on_message(self._publish)
            await channel.start()
            self.channel = channel
            return channel

    async def stop(self) -> None:
        self.closing.set()
        self._wake()
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.stop()

    # ------------------------------------------------------------------ the live window

    @property
    def seq(self) -> int:
        """The number of the last message seen (a page shows everything up to it)."""
        return self._seq

    def _wake(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    async def _publish(self, message: ChatMessage) -> None:
        self._seq += 1
        self._recent.append((self._seq, message))
        self._wake()

    def behind(self, seq: int) -> bool:
        """Whether messages after ``seq`` have left the kept window (the reader must reload)."""
        return bool(self._recent) and seq < self._recent[0][0] - 1

    async def after(self, room_id: str, seq: int, *, timeout: float) -> list[tuple[int, ChatMessage]]:
        """The messages numbered after ``seq`` of ``room_id``, and of other rooms those that mention
        the admin, waiting up to ``timeout`` for one."""
        me = self.channel.me if self.channel is not None else None
        while True:
            found = [(n, m) for n, m in self._recent
                     if n > seq and (m.room_id == room_id or (me in m.mentions and m.sender != me))]
            if found or self.closing.is_set():
                return found
            seq = max(seq, self._seq)  # nothing of this room up to here: wait for what comes next
            tick = self._tick
            try:
                await asyncio.wait_for(tick.wait(), timeout)
            except TimeoutError:
                return []

    # ------------------------------------------------------------------ rooms and sending

    async def rooms(self) -> list[dict[str, Any]]:
        channel = await self.session()
        return list(channel.rooms())

    async def room(self, room_id: str) -> dict[str, Any]:
        for room in await self.rooms():
            if room["room_id"] == room_id:
                return room
        raise NotFoundError(f"you are in no room {room_id!r}", hint="pick one from the list of rooms")

    async def history(self, room_id: str, limit: int = HISTORY, *, upto: int | None = None) -> list[ChatMessage]:
        """The room's last ``limit`` messages, oldest first: the homeserver's history, which ends
        where this session last synced, and what the session has seen since (numbered up to
        ``upto``; all by default) — so a message just sent (or just received) is never missing."""
        channel = await self.session()
        upto = self._seq if upto is None else upto
        messages = list(await channel.history(room_id, limit))
        known = {m.event_id for m in messages}
        later = [m for n, m in self._recent if n <= upto and m.room_id == room_id and m.event_id not in known]
        return sorted(messages + later, key=lambda m: m.timestamp)[-limit:]

    async def send(self, room_id: str, text: str, nonce: str) -> ChatMessage:
        """Post ``text`` (Markdown) as the admin; ``@name`` of a room member mentions them."""
        text = text.strip()
        if not text:
            raise InvalidInputError("the message is empty", hint="type something first")
        if len(text) > MAX_TEXT:
            raise InvalidInputError(f"the message is {len(text):,} characters, more than {MAX_TEXT:,}",
                                    hint="put long texts in a file (Files → upload) and send its path")
        if not NONCE.match(nonce):
            raise InvalidInputError("the form lost its message id", hint="reload the page and send again")
        room = await self.room(room_id)
        channel = self.channel
        mentioned = mentions_in(text, room["members"] + room.get("invited", []), self.name_of_agent)
        # The form's nonce and the text: a resubmitted form posts once, another text on the same form is its own message.
        key = f"console-{nonce}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        event_id = await channel.send(room_id, text, mentions=mentioned, idempotency_key=key)
        mine = ChatMessage(room_id=room_id, room_name=room["name"], event_id=event_id, sender=channel.me, body=text,
                           mentions=tuple(mentioned))
        if not any(m.event_id == event_id for _, m in self._recent):  # a resubmitted form: shown once
            await self._publish(mine)
        return mine

    def name_of_agent(self, user_id: str) -> str | None:
        settings = getattr(self.channel, "settings", None)
        return settings.name_of(user_id) if settings is not None and hasattr(settings, "name_of") else None


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def _pills(text: str, mentions: tuple[str, ...], name_of: Callable[[str], str | None]) -> tuple[str, dict[str, str]]:
    """``text`` with each mention (``@name``, ``@user:server``, the display name) replaced by a
    placeholder (random: an agent cannot write one), and the pill HTML of each placeholder."""
    pills: dict[str, str] = {}
    salt = secrets.token_hex(8)
    for index, user_id in enumerate(mentions):
        name = name_of(user_id)
        tokens = [user_id, f"@{name}" if name else f"@{user_id[1:].split(':', 1)[0]}"]
        key = f"HICLAWPILL{salt}N{index}X"
        for token in tokens:
            pattern = re.compile(rf"(?<![\w.@/]){re.escape(token)}(?![\w:-])")
            if pattern.search(text):
                text = pattern.sub(key, text)
                pills[key] = f'<span class="pill" title="{esc(user_id)}">@{esc(name or user_id)}</span>'
    return text, pills


def message_html(message: ChatMessage, *, me: str, name_of: Callable[[str], str | None]) -> str:
    """One message as a list item: its sender, time and Markdown made safe (hiclaw.console.render),
    mentions as pills, storage paths linked to the file viewer; a message to you is marked."""
    text, pills = _pills(message.body, message.mentions, name_of)
    # A pill goes into text only, never into a tag (a link's target or title): the rendered HTML
    # escapes < and > inside attributes, so what lies between tags is text.
    pieces = re.split(r"(<[^>]*>)", markdown_html(text))
    for key, pill in pills.items():
        pieces = [p if p.startswith("<") else p.replace(key, pill) for p in pieces]
    body = "".join(pieces)
    who = name_of(message.sender) or message.sender
    classes = "msg" + (" mine" if message.sender == me else "") + (" to-me" if me in message.mentions else "")
    stamp = message.timestamp.astimezone().strftime("%H:%M")
    return (f'<li class="{classes}" data-event="{esc(message.event_id)}"><span class="who">{esc(who)}</span> '
            f'<time datetime="{esc(message.timestamp.isoformat())}">{esc(stamp)}</time>'
            f'<div class="body">{body}</div></li>')


def mention_notice(message: ChatMessage, name_of: Callable[[str], str | None]) -> str:
    """"<sender> mentioned you in <room>", linking to the room (for a page showing another room)."""
    who = name_of(message.sender) or message.sender
    return (f'<p class="notice" data-event="{esc(message.event_id)}">{esc(who)} mentioned you in '
            f'<a href="/chat?room={esc(quote(message.room_id))}">{esc(message.room_name or message.room_id)}</a>: '
            f'{esc(message.body[:140])}</p>')


def sse(event: str, data: str, event_id: int | None = None) -> bytes:
    """One server-sent event (each line of ``data`` its own ``data:`` line: a browser ends a line
    at CR too, so a CR in an agent's words cannot start a field of its own)."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines.append(f"event: {event}")
    lines += [f"data: {line}" for line in re.split(r"\r\n|\r|\n", data)]
    return ("\n".join(lines) + "\n\n").encode()


def stream_headers(base: dict[str, str]) -> dict[str, str]:
    return {**base, "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}


async def stream(request: web.Request, chat: ConsoleChat, still_logged_in: Callable[[], bool],
                 headers: dict[str, str]) -> web.StreamResponse:
    """``GET /chat/stream?room=…&since=N``: the room's messages after N as they come, until the
    session ends, the console stops or the browser goes."""
    room_id = request.query.get("room", "")
    try:
        await chat.room(room_id)
        since = int(request.headers.get("Last-Event-ID") or request.query.get("since") or "0")
    except NotFoundError as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    except ValueError:
        raise web.HTTPBadRequest(text="since must be a message number") from None
    response = web.StreamResponse(headers=stream_headers(headers))
    await response.prepare(request)
    channel = chat.channel
    try:
        await response.write(b"retry: 2000\n\n")
        while not chat.closing.is_set():
            if chat.behind(since):
                await response.write(sse("reload", "missed messages"))
                break
            batch = await chat.after(room_id, since, timeout=KEEP_ALIVE_SECONDS)
            if not still_logged_in():  # logged out (or idle too long) meanwhile: nothing more
                break
            if not batch:
                await response.write(b": still here\n\n")
                continue
            for number, message in batch:
                if message.room_id == room_id:
                    html = message_html(message, me=channel.me, name_of=chat.name_of_agent)
                    await response.write(sse("message", html, number))
                else:  # you were mentioned elsewhere: a notice with a link to that room
                    await response.write(sse("mention", mention_notice(message, chat.name_of_agent), number))
                since = number
    except ConnectionResetError:
        pass  # the browser left
    return response


class ChatPages:
    """``/chat`` (the rooms and one room's messages, with the send form), ``/chat/send`` and
    ``/chat/stream``; ``logged_in(request)``: whether the request's session is still alive."""

    def __init__(self, chat: ConsoleChat, logged_in: Callable[[web.Request], bool], headers: dict[str, str]) -> None:
        self.chat, self.logged_in, self.headers = chat, logged_in, headers

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/chat", self.page), web.post("/chat/send", self.send), web.get("/chat/stream", self.stream),
                web.post("/projects/{id}/replan", self.replan)]

    async def replan(self, request: web.Request) -> web.StreamResponse:
        """Ask the Manager, in its room and as the admin, to change a project's plan: it revises it
        with ``revise_plan`` on the version the page showed (a stale one is refused)."""
        from hiclaw.console.actions import Actions

        form = await request.post()
        project_id, back = request.match_info["id"], f"/projects/{request.match_info['id']}"
        try:
            project = self.chat.plane.state.project(project_id)
            change = str(form.get("change") or "").strip()
            if not change:
                raise InvalidInputError("say what should change in the plan", hint="type the change, then send")
            version = str(form.get("version") or "")
            if not version.isdigit():
                raise InvalidInputError("the form lost the plan version it showed", hint="reload the page and try again")
            text = (f"@manager please change the plan of **{project.id}** ({project.title}), as of plan version "
                    f"{version}: {change}")
            await self.chat.send(self.chat.plane.chat.manager_room, text, str(form.get("nonce") or ""))
        except HiclawError as exc:
            return Actions.refused(request, exc, back)
        raise web.HTTPSeeOther(f"/chat?room={quote(self.chat.plane.chat.manager_room)}")

    async def page(self, request: web.Request) -> web.StreamResponse:
        from hiclaw.console.pages import _csrf, _html

        chat = self.chat
        try:
            rooms = await chat.rooms()  # starts the session at the first visit
        except HiclawError as exc:
            return _html(request, "Chat", f'<p class="error">{esc(exc)}</p>', active="/chat",
                         status=503)
        if not rooms:
            return _html(request, "Chat", '<p class="muted">you are in no room yet: the Manager invites you '
                                          'to its room when the team starts</p>', active="/chat")
        wanted = request.query.get("room") or self.chat.plane.chat.manager_room
        room = next((r for r in rooms if r["room_id"] == wanted), None)
        if room is None and request.query.get("room"):
            return _html(request, "Chat", f'<p class="error">{esc(f"you are in no room {wanted!r}")}</p>',
                         active="/chat", status=404)
        room = room or rooms[0]
        room_id = room["room_id"]
        me, name_of = chat.channel.me, chat.name_of_agent
        seen = chat.seq  # before the history: what arrives meanwhile comes by the stream (shown once)
        items = "".join(message_html(m, me=me, name_of=name_of) for m in await chat.history(room_id, upto=seen))
        listing = "".join(
            f'<li{" class=on" if r["room_id"] == room_id else ""}><a href="/chat?room={esc(quote(r["room_id"]))}">'
            f'{esc(r["name"])}</a> <span class="muted">{len(r["members"])}</span></li>' for r in rooms)
        members = " ".join(f"@{esc(name_of(u) or u)}" for u in room["members"] if u != me)
        body = (f'<div class="chat"><aside><ul class="rooms">{listing}</ul></aside><section>'
                f'<div id="notices"></div><h2>{esc(room["name"])}</h2><p class="muted">members: {members or "only you"} · '
                '<span id="live" class="live">new messages need a reload (JavaScript is off)</span></p>'
                f'<ol id="messages" data-room="{esc(room_id)}" data-since="{seen}">'
                + (items or '<li id="no-messages" class="muted">no messages yet</li>') + "</ol>"
                f'<form method="post" action="/chat/send" class="send">'
                f'<input type="hidden" name="csrf" value="{esc(_csrf(request))}">'
                f'<input type="hidden" name="room" value="{esc(room_id)}">'
                f'<input type="hidden" name="nonce" value="{esc(new_nonce())}">'
                f'<textarea name="text" rows="3" maxlength="{MAX_TEXT}" required placeholder="Message {esc(room["name"])} '
                '(Markdown; @name mentions a member and wakes them; Enter sends, Shift+Enter a new line)"></textarea>'
                '<button>Send</button></form></section></div>')
        return _html(request, f"Chat · {room['name']}", body, active="/chat", script=True)

    async def send(self, request: web.Request) -> web.StreamResponse:
        from hiclaw.console.actions import Actions

        form = await request.post()
        room_id = str(form.get("room") or "")
        back = f"/chat?room={quote(room_id)}"
        text = form.get("text")  # a file in its place (a multipart form) is no text: refused as empty
        try:
            await self.chat.send(room_id, text if isinstance(text, str) else "", str(form.get("nonce") or ""))
        except HiclawError as exc:
            return Actions.refused(request, exc, back)
        raise web.HTTPSeeOther(back)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        return await stream(request, self.chat, lambda: self.logged_in(request), self.headers)



def replan_form(project: Any, csrf: str) -> str:
    """The project page's "ask for a change" form (see :meth:`ChatPages.replan`)."""
    return (f'<form method="post" action="/projects/{esc(project.id)}/replan" class="replan">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            f'<input type="hidden" name="version" value="{esc(project.version)}">'
            f'<input type="hidden" name="nonce" value="{esc(new_nonce())}">'
            '<input name="change" required maxlength="2000" placeholder="what should change in the plan">'
            '<button>Ask the Manager to replan</button></form>')
