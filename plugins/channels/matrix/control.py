"""The control plane's side of the Matrix channel: logged in as ``manager``, and the admin tool.

Besides being the Manager's session it provisions the team: agent accounts
(:meth:`ensure_account`), rooms by alias (:meth:`ensure_room`), memberships, and the settings a
worker process needs (:meth:`worker_settings`). Everything is idempotent and repeated on boot
(:meth:`reconcile`): a restart re-derives accounts, rooms and memberships from the store.

Credentials of the accounts it created live in ``$HICLAW_HOME/channel/channel.sqlite3`` (0600);
with them it makes members join right away, so rooms are complete before workers start.
"""
from __future__ import annotations

import asyncio
import logging
import secrets as random_secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nio import ErrorResponse, JoinedMembersResponse, RoomCreateResponse, RoomGetStateEventResponse, RoomPreset
from pydantic import SecretStr

from hiclaw.errors import NotFoundError
from hiclaw.plugins.channels.matrix.accounts import AccountRegistrar, quote
from hiclaw.plugins.channels.matrix.channel import MatrixChannel
from hiclaw.plugins.channels.matrix.errors import MatrixError
from hiclaw.plugins.channels.matrix.homeserver import EmbeddedHomeserver
from hiclaw.plugins.channels.matrix.settings import MatrixSettings
from hiclaw.plugins.channels.matrix.store import ChannelStore

log = logging.getLogger(__name__)
MANAGER = "manager"
ADMIN = "admin"


class ControlMatrixChannel(MatrixChannel):
    """The Manager's session plus team provisioning (see the module docstring)."""

    def __init__(self, settings: MatrixSettings, *, home: Path, secrets: Mapping[str, SecretStr] | None = None) -> None:
        super().__init__(settings, agent=MANAGER, store_dir=home / "channel" / MANAGER)
        self.home = home
        self.secrets = dict(secrets or {})
        self.accounts = ChannelStore(home / "channel")
        self._registrar: AccountRegistrar | None = None
        self._homeserver: EmbeddedHomeserver | None = None
        self._room_locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ accounts

    def registrar(self) -> AccountRegistrar:
        if self._registrar is None:
            shared = EmbeddedHomeserver(self.home, self.settings).shared_secret if self.settings.embedded else None
            self._registrar = AccountRegistrar(self.settings, self.secrets, shared_secret=shared)
        return self._registrar

    async def _credentials(self) -> tuple[str, str, str | None]:
        creds = await self.ensure_account(MANAGER, display_name="Manager")
        return creds["user_id"], creds["access_token"], creds["device_id"]

    async def start(self, *, timeout: float = 30.0) -> None:
        await super().start(timeout=timeout)
        await self.reconcile()

    # ------------------------------------------------------------------ services (for `hiclaw up`)

    async def start_services(self) -> list[str]:
        """Start the embedded homeserver when configured; returns progress lines. An external
        homeserver needs nothing started.

        It runs as the team's daemon: a crash of the control plane leaves it serving (the
        human's clients stay connected) and the next start adopts it; a clean stop stops it."""
        if not self.settings.embedded:
            return [f"homeserver: external, {self.settings.url}"]
        server = EmbeddedHomeserver(self.home, self.settings)
        started = time.perf_counter()
        before = server.status()
        status = await asyncio.to_thread(server.start, detach=True, mode="team")
        self._homeserver = server
        if before["state"] == "stopped":
            how = "Synapse"
        elif server.owned:
            how = f"Synapse still running from before (pid {status['pid']})"
        else:
            how = f"reusing the running Synapse (pid {status['pid']})"
        return [f"homeserver: {how} on {status['url']} (server name {status['server_name']}, "
                f"ready in {time.perf_counter() - started:.1f}s)"]

    async def stop_services(self) -> None:
        """Stop the homeserver :meth:`start_services` started; one that was reused (a daemon from
        `hiclaw homeserver start`) keeps running."""
        server, self._homeserver = self._homeserver, None
        if server is not None and server.owned:
            await asyncio.to_thread(server.stop)

    def known_room(self, key: str, members: Sequence[str] = ()) -> str | None:
        """The id of room ``key`` if this channel made it and already counts ``members`` in it
        (memberships are re-derived at every start by :meth:`reconcile`) — else ``None``."""
        room = self.accounts.room(key)
        if room is None:
            return None
        wanted = {self.user_id(m) for m in members}
        return str(room["room_id"]) if wanted <= set(room["members"]) else None

    def service_urls(self) -> dict[str, str]:
        """Services a worker's sandbox must reach (bridged to the same URL inside)."""
        return {"homeserver": self.settings.url}

    async def stop(self) -> None:
        await super().stop()
        if self._registrar is not None:
            await self._registrar.aclose()
            self._registrar = None

    async def ensure_account(
        self, name: str, *, display_name: str | None = None, password: str | None = None, admin: bool = False
    ) -> dict[str, Any]:
        """Create (or find) agent ``name``'s account; returns ``{user_id, access_token, device_id,
        homeserver_url}``. A changed ``password`` is applied. Idempotent."""
        registrar = self.registrar()
        user_id = self.user_id(name)
        record = self.accounts.account(name)
        if record is not None and record.get("removed"):
            record = await self._restore(name, record)
        if (record is not None and (password is None or password == record["password"])
                and await registrar.token_valid(record["access_token"])):
            await self._set_display_name(record, display_name)
            return self._public(record)
        if (record is not None and password is not None and password != record["password"]
                and await registrar.change_password(user_id, record["access_token"], record["password"], password)):
            record = {**record, "password": password}
            self.accounts.save_account(name, record)
            return await self.ensure_account(name, display_name=display_name, password=password, admin=admin)
        password = password or (record or {}).get("password") or random_secrets.token_urlsafe(24)
        device_id = (record or {}).get("device_id")
        creds = await registrar.register(user_id, password, admin=admin)
        if creds is None:  # the account exists: log in, or repair its password with an admin token
            creds = await registrar.login(user_id, password, device_id)
            if (creds is None and (admin_token := self._admin_token(exclude=name))
                    and await registrar.reset_password(user_id, password, admin_token)):
                creds = await registrar.login(user_id, password, device_id)
            if creds is None:
                raise MatrixError(
                    f"the account {user_id} exists on {self.settings.url} but hiclaw does not know its password",
                    hint="set the secret matrix_admin_token (a server admin's token) so hiclaw can reset it, "
                         "or pick another user_prefix",
                )
        if creds["user_id"] != user_id:
            raise MatrixError(f"the homeserver named the account {creds['user_id']}, expected {user_id}",
                              hint=f"set [channel.settings] server_name to the homeserver's name "
                                   f"({creds['user_id'].split(':', 1)[1]})")
        record = {**creds, "password": password, "admin": admin or bool((record or {}).get("admin")), "display_name": None}
        self.accounts.save_account(name, record)
        await self._set_display_name(record, display_name)
        return self._public(record)

    async def _restore(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        """An account :meth:`remove_account` took away, wanted again (a worker re-created under
        the same name): reactivated with a server admin's token if it was deactivated."""
        if record["removed"] == "deactivated":
            admin_token = self._admin_token(exclude=name)
            why = ("no server admin's token" if admin_token is None
                   else await self.registrar().reactivate(record["user_id"], record["password"], admin_token))
            if why:
                raise MatrixError(f"the account {record['user_id']} was deactivated when worker {name} was removed, "
                                  f"and hiclaw cannot reactivate it ({why})",
                                  hint="set the secret matrix_admin_token (a server admin's token), or pick another name")
        record = {k: v for k, v in record.items() if k != "removed"} | {"display_name": None}
        self.accounts.save_account(name, record)
        log.info("account %s of %s restored", record["user_id"], name)
        return record

    def _removed_ids(self) -> set[str]:
        return {str(r["user_id"]) for r in self.accounts.accounts().values() if r.get("removed")}

    def account_removed(self, name: str) -> bool:
        """Whether :meth:`remove_account` finished for ``name`` (or hiclaw never made its account)."""
        record = self.accounts.account(name)
        return record is None or bool(record.get("removed"))

    async def remove_account(self, name: str) -> str:
        """Take agent ``name``'s account away for good; returns how (``deactivated``,
        ``logged out`` or ``no account``). Idempotent, and safe to repeat after a crash.

        First it is dropped from the members of every room hiclaw manages (so no reconcile
        invites it back) and kicked from them by the Manager. Then, with a server admin's token
        (the embedded server's admin account, or the secret ``matrix_admin_token``), the account
        is deactivated (Synapse admin API): all devices logged out, all tokens invalid, parted
        from every room, no login. Where that is not possible (an external server without the
        admin API) it leaves every room it is in and logs out all its devices, as itself; it
        never knew its password, so it cannot log in again."""
        record = self.accounts.account(name)
        if record is None:
            return "no account"
        user_id = str(record["user_id"])
        rooms = [r["room_id"] for r in self.accounts.rooms().values() if user_id in r["members"]]
        for room_id in rooms:
            self._forget_member(room_id, user_id)
        if record.get("removed"):
            return str(record["removed"])
        client = self._require_client()
        for room_id in rooms:
            resp = await client.room_kick(room_id, user_id, reason="worker removed")
            if isinstance(resp, ErrorResponse):
                log.info("kicking %s from %s: %s", user_id, room_id, resp)
        how = ""
        admin_token = self._admin_token(exclude=name)
        if admin_token is not None:
            done, why = await self.registrar().deactivate(user_id, admin_token)
            if done:
                how = "deactivated"
            else:
                log.warning("the homeserver did not deactivate %s (%s): logging its devices out instead", user_id, why)
        if not how:
            left = await self.registrar().log_out_everywhere(record["access_token"])
            how = "logged out"
            log.info("%s left %d room(s) and was logged out everywhere", user_id, len(left))
        self.accounts.save_account(name, {**record, "removed": how})
        return how

    def _forget_member(self, room_id: str, user_id: str) -> None:
        """Drop ``user_id`` from the desired members (and admins) of the managed room ``room_id``."""
        for key, room in self.accounts.rooms().items():
            if room["room_id"] == room_id and (user_id in room["members"] or user_id in room["admins"]):
                members = [m for m in room["members"] if m != user_id]
                data = {k: v for k, v in room.items() if k != "room_id"}
                self.accounts.save_room(key, room_id, {**data, "members": members,
                                                       "admins": [a for a in room["admins"] if a != user_id]})
                self.store.set_allowed_senders(room_id, set(members))

    def _public(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"user_id": record["user_id"], "access_token": record["access_token"],
                "device_id": record.get("device_id"), "homeserver_url": self.settings.url}

    def _admin_token(self, *, exclude: str | None = None) -> str | None:
        if self.secrets.get("matrix_admin_token"):
            return self.secrets["matrix_admin_token"].get_secret_value()
        admin = self.accounts.account(ADMIN) if exclude != ADMIN else None
        return admin["access_token"] if admin and admin.get("admin") else None

    async def _set_display_name(self, record: dict[str, Any], display_name: str | None) -> None:
        if not display_name or record.get("display_name") == display_name:
            return
        resp = await self.registrar().as_user(record["access_token"], "PUT",
                                              f"/profile/{quote(record['user_id'])}/displayname",
                                              {"displayname": display_name})
        if resp.status_code == 200:
            name = self.settings.name_of(record["user_id"]) or record["user_id"]
            self.accounts.save_account(name, {**record, "display_name": display_name})

    def worker_settings(self, name: str, *, store_dir: Path | str | None = None) -> dict[str, Any]:
        """The ``[channel.settings]`` a worker process runs with (its own account only)."""
        record = self.accounts.account(name)
        if record is None:
            raise NotFoundError(f"no Matrix account for worker {name!r}", hint="call ensure_account(name) first")
        return {
            "embedded": False,
            "homeserver_url": self.settings.url,
            "server_name": self.settings.server_name,
            "user_prefix": self.settings.user_prefix,
            "user_id": record["user_id"],
            "access_token": record["access_token"],
            "device_id": record.get("device_id"),
            "store_dir": str(store_dir) if store_dir is not None else None,
            "trusted_inviters": [self.user_id(MANAGER), self.user_id(ADMIN)],
            "allowed_senders": list(self.settings.allowed_senders),
            "max_message_chars": self.settings.max_message_chars,
            "sync_timeout_ms": self.settings.sync_timeout_ms,
        }

    # ------------------------------------------------------------------ rooms

    async def ensure_room(
        self, key: str, *, name: str, members: Sequence[str], admins: Sequence[str] = (), topic: str = ""
    ) -> str:
        """Create (or find, by alias ``#hiclaw-<key>``) a room; members joined; returns its id."""
        client = self._require_client()
        alias_local = self.settings.room_alias(key)
        alias = f"#{alias_local}:{self.settings.server_name}"
        removed = self._removed_ids()  # accounts taken away (removed workers) are never invited back
        admin_ids = sorted({self.user_id(a) for a in admins} - {self.me} - removed)
        member_ids = sorted(({self.user_id(m) for m in members} | set(admin_ids) | {self.me}) - removed)
        async with self._room_locks.setdefault(key, asyncio.Lock()):  # one creation per key at a time
            room_id = await self._resolve(alias)
            if room_id is None:
                # No invites at creation: should another process win the alias race, the room we
                # made stays empty instead of pulling agents into a duplicate.
                resp = await client.room_create(
                    alias=alias_local, name=name, topic=topic or None, preset=RoomPreset.private_chat,
                    # The creator (us) is not listed: room version 12 gives creators their own, top rank.
                    power_level_override={"users": {a: 100 for a in admin_ids}} if admin_ids else None,
                )
                if isinstance(resp, RoomCreateResponse):
                    room_id = resp.room_id
                else:  # the alias was taken meanwhile: use the room it points to
                    room_id = await self._resolve(alias)
                if room_id is None:
                    raise MatrixError(f"cannot create room {alias}: {resp}", hint="check the homeserver's log")
            else:
                await self._ensure_joined_self(room_id)
                await self._ensure_admins(room_id, admin_ids)
            await self._ensure_members(room_id, member_ids)
        self.accounts.save_room(key, room_id, {"name": name, "topic": topic, "members": member_ids, "admins": admin_ids})
        self.store.set_allowed_senders(room_id, set(member_ids))
        return room_id

    async def _resolve(self, alias: str) -> str | None:
        # Raw call: "no such alias" is the normal first answer, not worth nio's schema warning.
        client = self._require_client()
        resp = await self.registrar().as_user(client.access_token, "GET", f"/directory/room/{quote(alias)}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise MatrixError(f"cannot look up {alias}: HTTP {resp.status_code} {resp.text[:200]}",
                              hint="check the homeserver")
        return str(resp.json()["room_id"])

    async def joined_members(self, room_id: str) -> set[str] | None:
        """Joined members as the server sees them; ``None`` if we are not in the room."""
        resp = await self._require_client().joined_members(room_id)
        return {m.user_id for m in resp.members} if isinstance(resp, JoinedMembersResponse) else None

    async def _ensure_joined_self(self, room_id: str) -> None:
        client = self._require_client()
        if await self.joined_members(room_id) is not None:
            return
        if isinstance(await client.join(room_id), ErrorResponse):
            # Someone removed the Manager: the admin account (which hiclaw made) invites it back.
            admin = self.accounts.account(ADMIN)
            if admin is not None:
                await self.registrar().as_user(admin["access_token"], "POST", f"/rooms/{quote(room_id)}/invite",
                                               {"user_id": self.me})
            resp = await client.join(room_id)
            if isinstance(resp, ErrorResponse):
                raise MatrixError(f"the Manager cannot rejoin {room_id}: {resp}",
                                  hint="invite the manager account back from Element, then restart")

    async def _ensure_admins(self, room_id: str, admin_ids: Sequence[str]) -> None:
        client = self._require_client()
        resp = await client.room_get_state_event(room_id, "m.room.power_levels")
        if not isinstance(resp, RoomGetStateEventResponse):
            return
        users = dict(resp.content.get("users", {}))
        if all(users.get(a, 0) >= 100 for a in admin_ids):
            return
        users.update({a: 100 for a in admin_ids})
        update = await client.room_put_state(room_id, "m.room.power_levels", {**resp.content, "users": users})
        if isinstance(update, ErrorResponse):
            log.warning("could not raise admins in %s: %s", room_id, update)

    async def _ensure_members(self, room_id: str, member_ids: Sequence[str]) -> None:
        """Invite whoever is missing; make members whose credentials we hold join now."""
        client = self._require_client()
        joined = await self.joined_members(room_id) or set()
        removed = self._removed_ids()
        for user_id in member_ids:
            if user_id in joined or user_id in removed:
                continue
            resp = await client.room_invite(room_id, user_id)
            if isinstance(resp, ErrorResponse) and "already" not in (resp.message or ""):
                log.warning("inviting %s to %s: %s", user_id, room_id, resp)
            name = self.settings.name_of(user_id)
            record = self.accounts.account(name) if name else None
            if record is not None:
                join = await self.registrar().as_user(record["access_token"], "POST", f"/join/{quote(room_id)}", {})
                if join.status_code != 200:
                    log.warning("%s could not join %s: %s", user_id, room_id, join.text[:200])

    async def remove_member(self, room_id: str, member: str) -> None:
        """Remove ``member`` (name or user id) from the room, and from its desired members."""
        user_id = self.user_id(member)
        resp = await self._require_client().room_kick(room_id, user_id, reason="removed by hiclaw")
        if isinstance(resp, ErrorResponse) and resp.status_code not in ("M_NOT_FOUND",) and "not in" not in resp.message:
            raise MatrixError(f"cannot remove {user_id} from {room_id}: {resp}", hint="check the Manager's power level")
        self._forget_member(room_id, user_id)

    async def reconcile(self) -> dict[str, int]:
        """Re-derive memberships of every room hiclaw manages (run on every start)."""
        rooms = self.accounts.rooms()
        for room in rooms.values():
            try:
                await self._ensure_joined_self(room["room_id"])
                await self._ensure_members(room["room_id"], room["members"])
                self.store.set_allowed_senders(room["room_id"], set(room["members"]))
            except MatrixError as exc:
                log.error("reconciling %s: %s", room["room_id"], exc)
        return {"rooms": len(rooms)}
