"""``hiclaw chat``: a plain terminal Matrix client for the admin (works over SSH, no UI toolkit).

Logs in as ``admin`` with the secret ``matrix_admin_password`` (or ``--user/--password``), lists
the rooms to pick from, prints the last messages and then the live stream, and sends what you
type; ``@name`` becomes a real mention (pill + ``m.mentions``) of that room member.
Commands: ``/rooms``, ``/room N``, ``/help``, ``/quit`` (or Ctrl-D).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime
from typing import Any

import click

from hiclaw.cli.app import App, echo_safe, emit_json, pass_app, table, terminal_safe
from hiclaw.cli.homeserver import matrix_settings
from hiclaw.errors import ConfigError, HiclawError, InvalidInputError
from hiclaw.wakeup import mentions_in

HELP = "type a message and press Enter · @name mentions · /rooms · /room N · /help · /quit"


class LineReader:
    """Lines from stdin without a thread (a blocked reader thread would hang the exit)."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._buffer = b""
        self._eof = False
        try:
            asyncio.get_running_loop().add_reader(self.fd, self._readable)
            self._polled = True
        except PermissionError:  # a file or /dev/null (`hiclaw chat < commands.txt`): reads never block
            self._polled = False

    def _readable(self) -> None:
        data = os.read(self.fd, 4096)
        if not data:
            self._eof = True
            asyncio.get_running_loop().remove_reader(self.fd)
            if self._buffer:
                self.queue.put_nowait(self._buffer.decode(errors="replace"))
            self.queue.put_nowait(None)
            return
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.queue.put_nowait(line.decode(errors="replace").rstrip("\r"))

    async def readline(self) -> str | None:
        while not self._polled and not self._eof and self.queue.empty():
            self._readable()
        return await self.queue.get()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)


class ChatSession:
    """The state of one ``hiclaw chat``: the channel, the rooms and the current one."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.rooms: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None

    def who(self, user_id: str) -> str:
        return self.channel.settings.name_of(user_id) or user_id

    def show(self, message: Any) -> None:
        stamp = message.timestamp.astimezone().strftime("%H:%M")
        # What others write reaches the terminal without escape sequences or control characters.
        body = terminal_safe(message.body).replace("\n", "\n        ")  # continuation lines under the text
        click.echo(f"[{stamp}] {terminal_safe(self.who(message.sender), one_line=True)}: {body}")

    async def on_message(self, message: Any) -> None:
        if self.current and message.room_id == self.current["room_id"]:
            self.show(message)
        elif self.channel.me in message.mentions:
            echo_safe(f"(you were mentioned in {message.room_name or message.room_id} — /rooms to switch)")

    def list_rooms(self) -> None:
        self.rooms = self.channel.rooms()
        for number, room in enumerate(self.rooms, start=1):
            echo_safe(f"  {number:>2}  {terminal_safe(room['name'], one_line=True)}  ({len(room['members'])} members)")

    def pick(self, choice: str) -> dict[str, Any] | None:
        choice = choice.strip()
        if choice.isdigit() and 1 <= int(choice) <= len(self.rooms):
            return self.rooms[int(choice) - 1]
        for room in self.rooms:
            if choice in (room["room_id"],) or room["name"].lower() == choice.lower():
                return room
        return None

    async def enter(self, room: dict[str, Any], history: int) -> None:
        self.current = room
        echo_safe(f"── {terminal_safe(room['name'], one_line=True)} ── {HELP}")
        for message in await self.channel.history(room["room_id"], history):
            self.show(message)

    def mentions_in(self, text: str) -> list[str]:
        """User ids of room members written as ``@name`` / ``@user:server`` in ``text``."""
        assert self.current is not None
        return mentions_in(text, self.current["members"] + self.current.get("invited", []), self.channel.settings.name_of)

    async def say(self, text: str) -> None:
        assert self.current is not None
        await self.channel.send(self.current["room_id"], text, mentions=self.mentions_in(text))
        echo_safe(f"[{datetime.now().strftime('%H:%M')}] you: {text}")


async def _login(app: App, settings: Any, user: str, password: str | None) -> dict[str, Any]:
    """Reuse the saved session of this user, or log in with the password (same device)."""
    import httpx

    from hiclaw.plugins.channels.matrix.accounts import password_login

    try:
        user_id = settings.user_id_of(user)
    except ValueError as exc:
        raise InvalidInputError(f"--user: {exc}", hint="pass an agent name such as 'admin' or a user id") from None
    session_file = app.home / "channel" / "chat" / "session.json"
    saved: dict[str, Any] = {}
    if session_file.exists():
        saved = json.loads(session_file.read_text())
    async with httpx.AsyncClient(base_url=settings.url, timeout=30) as http:
        try:
            if saved.get("user_id") == user_id and password is None:
                whoami = await http.get("/_matrix/client/v3/account/whoami",
                                        headers={"Authorization": f"Bearer {saved['access_token']}"})
                if whoami.status_code == 200:
                    return saved
            if password is None:
                secret = app.secrets.get("matrix_admin_password")
                if secret is None:
                    raise ConfigError("secret 'matrix_admin_password' is not set",
                                      hint="run `hiclaw up` once, or pass --user and --password")
                password = secret.get_secret_value()
            creds = await password_login(http, user_id, password, saved.get("device_id") if saved.get("user_id") == user_id else None)
        except httpx.HTTPError as exc:
            raise HiclawError(f"cannot reach the homeserver at {settings.url} ({exc})",
                              hint="start it with `hiclaw up` or `hiclaw homeserver start`") from None
    if creds is None:
        raise InvalidInputError(f"login as {user_id} refused: wrong password", hint="check --password or matrix_admin_password (`hiclaw up` creates the admin account)")
    session_file.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(session_file.parent, 0o700)
    fd = os.open(session_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(creds, fh)
    return creds


async def _chat(app: App, user: str, password: str | None, room_choice: str | None, history: int,
                list_only: bool, as_json: bool) -> None:
    from hiclaw.plugins.channels.matrix.channel import MatrixChannel

    settings = matrix_settings(app)
    creds = await _login(app, settings, user, password)
    channel = MatrixChannel(settings, agent=user, store_dir=None, user_id=creds["user_id"],
                            access_token=creds["access_token"], device_id=creds.get("device_id"),
                            deliver_backlog=False, filter_senders=False)
    session = ChatSession(channel)
    channel.on_message(session.on_message)
    await channel.start()
    try:
        if list_only:
            rooms = channel.rooms()
            if as_json:
                emit_json(rooms)
            else:
                table([[r["name"], len(r["members"]), r["room_id"]] for r in rooms], ["room", "members", "id"])
            return
        click.echo(f"logged in as {channel.me} on {settings.url}")
        click.echo("rooms:")
        session.list_rooms()
        if not session.rooms:
            raise HiclawError(f"{channel.me} is in no room yet", hint="start the team with `hiclaw up` first")
        reader = LineReader()
        try:
            room = session.pick(room_choice) if room_choice else None
            if room_choice and room is None:
                raise InvalidInputError(f"no room {room_choice!r}", hint="use a number or a name from the list above")
            while room is None:
                click.echo(f"pick a room [1-{len(session.rooms)}]: ", nl=False)
                line = await reader.readline()
                if line is None:
                    return
                room = session.pick(line)
            await session.enter(room, history)
            await _input_loop(session, reader, history)
        finally:
            reader.close()
    finally:
        await channel.stop()


async def _input_loop(session: ChatSession, reader: LineReader, history: int) -> None:
    while (line := await reader.readline()) is not None:
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/help":
            click.echo(HELP)
        elif text == "/rooms":
            session.list_rooms()
        elif text.startswith("/room "):
            room = session.pick(text[6:])
            if room is None:
                echo_safe(f"no room {text[6:].strip()!r} (see /rooms)")
            else:
                await session.enter(room, history)
        elif text.startswith("/") and not text.startswith("//"):
            echo_safe(f"unknown command {text.split()[0]} — {HELP}")
        else:
            try:
                await session.say(text[1:] if text.startswith("//") else text)
            except HiclawError as exc:
                echo_safe(f"error: {exc}")


@click.command("chat")
@click.option("--room", "room_choice", help="Room to open (number, name or id); asked otherwise.")
@click.option("--user", default="admin", show_default=True, help="Agent name or user id to log in as.")
@click.option("--password", help="Password (default: the secret matrix_admin_password).")
@click.option("--history", default=20, show_default=True, type=click.IntRange(0, 500), help="Messages shown on entering a room.")
@click.option("--list", "list_only", is_flag=True, help="List the rooms and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --list: machine-readable output.")
@pass_app
def chat_command(app: App, room_choice: str | None, user: str, password: str | None, history: int,
                 list_only: bool, as_json: bool) -> None:
    """Talk to the team from the terminal (a Matrix client for the admin)."""
    asyncio.run(_chat(app, user, password, room_choice, history, list_only, as_json))
