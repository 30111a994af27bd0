"""Account provisioning on any homeserver, and restart = reconcile for rooms and memberships."""
from __future__ import annotations

import re

import httpx
import pytest
from pydantic import SecretStr

from hiclaw.errors import ConfigError, NotFoundError
from hiclaw.plugins.channels.matrix.control import ControlMatrixChannel
from hiclaw.plugins.channels.matrix.errors import MatrixError
from hiclaw.plugins.channels.matrix.settings import MatrixSettings


def control_for(synapse, home, prefix: str, secrets: dict[str, str], **settings) -> ControlMatrixChannel:
    model = MatrixSettings.model_validate(synapse.channel_settings(prefix, **settings))
    return ControlMatrixChannel(model, home=home, secrets={k: SecretStr(v) for k, v in secrets.items()})


def can_log_in(synapse, user_id: str, password: str) -> bool:
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}, "password": password}
    return synapse.http.post("/_matrix/client/v3/login", json=body).status_code == 200


@pytest.mark.parametrize("mode", ["token", "admin_api"])
async def test_external_server_registration_modes(synapse, tmp_path, mode):
    secrets = ({"matrix_registration_token": synapse.create_registration_token()} if mode == "token"
               else {"matrix_admin_token": synapse.admin.access_token})
    control = control_for(synapse, tmp_path, synapse.unique_prefix(), secrets, registration=mode)
    await control.start()
    try:
        first = await control.ensure_account("alice", display_name="Alice")
        again = await control.ensure_account("alice", display_name="Alice")
        assert first["user_id"] == again["user_id"] == control.user_id("alice")
        assert first["access_token"] == again["access_token"]
        profile = synapse.http.get(f"/_matrix/client/v3/profile/{first['user_id']}/displayname",
                                   headers={"Authorization": f"Bearer {first['access_token']}"}).json()
        assert profile["displayname"] == "Alice"
    finally:
        await control.stop()


async def test_missing_registration_secret_is_a_one_line_config_error(synapse, tmp_path):
    control = control_for(synapse, tmp_path, synapse.unique_prefix(), {}, registration="auto")
    with pytest.raises(ConfigError) as err:
        await control.start()
    assert "matrix_registration_token" in str(err.value) and "\n" not in str(err.value)
    token_only = control_for(synapse, tmp_path, synapse.unique_prefix(), {}, registration="token")
    with pytest.raises(ConfigError, match="needs the secret 'matrix_registration_token'"):
        await token_only.start()


async def test_unreachable_homeserver_is_reported(tmp_path):
    settings = MatrixSettings(embedded=False, homeserver_url="http://127.0.0.1:9", registration="shared_secret")
    control = ControlMatrixChannel(settings, home=tmp_path,
                                   secrets={"matrix_registration_shared_secret": SecretStr("x")})
    with pytest.raises(MatrixError, match=re.escape("cannot reach the homeserver at http://127.0.0.1:9")):
        await control.start()
    await control.stop()


async def test_lost_passwords_are_repaired_with_an_admin_token(synapse, matrix_control, tmp_path):
    first = await matrix_control()
    prefix = first.settings.user_prefix
    await first.ensure_account("alice")
    await first.stop()
    # A fresh $HICLAW_HOME against the same server: the accounts exist, their passwords are unknown.
    stranded = control_for(synapse, tmp_path / "fresh", prefix, {"matrix_registration_shared_secret": synapse.shared_secret})
    with pytest.raises(MatrixError, match=r"does not know its password.*matrix_admin_token"):
        await stranded.start()
    await stranded.stop()
    repaired = control_for(synapse, tmp_path / "fresh", prefix, {"matrix_registration_shared_secret": synapse.shared_secret,
                                                                 "matrix_admin_token": synapse.admin.access_token})
    await repaired.start()
    try:
        creds = await repaired.ensure_account("alice")
        assert creds["user_id"] == repaired.user_id("alice")
    finally:
        await repaired.stop()


async def test_changed_admin_password_is_applied(synapse, matrix_control):
    control = await matrix_control()
    creds = await control.ensure_account("admin", password="first-password", admin=True)
    await control.ensure_account("admin", password="second-password", admin=True)
    assert can_log_in(synapse, creds["user_id"], "second-password")
    assert not can_log_in(synapse, creds["user_id"], "first-password")


async def test_worker_settings_carry_only_the_workers_own_account(matrix_control):
    control = await matrix_control()
    creds = await control.ensure_account("alice")
    settings = control.worker_settings("alice", store_dir="/work/alice/.channel")
    assert settings["user_id"] == creds["user_id"] and settings["access_token"] == creds["access_token"]
    assert settings["homeserver_url"] == control.settings.url and settings["embedded"] is False
    assert settings["trusted_inviters"] == [control.user_id("manager"), control.user_id("admin")]
    assert "password" not in settings
    MatrixSettings.model_validate(settings)  # the worker validates it with the same model
    with pytest.raises(NotFoundError, match="no Matrix account for worker 'bob'"):
        control.worker_settings("bob")


async def test_restart_reconciles_rooms_and_memberships(synapse, matrix_control):
    control = await matrix_control()
    await control.ensure_account("admin", password="admin-pw", admin=True)
    alice = await control.ensure_account("alice")
    await control.ensure_account("bob")
    room = await control.ensure_room("worker-alice", name="Worker: alice", members=["admin", "alice", "bob"],
                                     admins=["admin"])
    await control.remove_member(room, "bob")  # removed on purpose: must stay out
    httpx.post(f"{synapse.url}/_matrix/client/v3/rooms/{room}/leave",
               headers={"Authorization": f"Bearer {alice['access_token']}"}, json={}).raise_for_status()
    await control.client.room_leave(room)  # the Manager is gone too
    home, prefix = control.home, control.settings.user_prefix
    await control.stop()

    restarted = await matrix_control(prefix=prefix, home=home)  # start() reconciles
    admin = synapse.http.post("/_matrix/client/v3/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": restarted.user_id("admin")},
        "password": "admin-pw"}).json()
    members = set(synapse.http.get(f"/_matrix/client/v3/rooms/{room}/joined_members",
                                   headers={"Authorization": f"Bearer {admin['access_token']}"}).json()["joined"])
    assert members == {restarted.user_id("admin"), restarted.user_id("manager"), restarted.user_id("alice")}


@pytest.mark.parametrize(("mode", "how"), [("admin_api", "deactivated"), ("token", "logged out")])
async def test_a_removed_account_is_out_of_every_room_and_its_token_is_dead(synapse, tmp_path, mode, how):
    """With a server admin's token the account is deactivated; on a server where hiclaw has none
    (registration token only) it leaves every room — also one hiclaw does not manage — and logs
    out all its devices. Either way the name can be used again afterwards."""
    secrets = ({"matrix_registration_token": synapse.create_registration_token()} if mode == "token"
               else {"matrix_admin_token": synapse.admin.access_token})
    control = control_for(synapse, tmp_path, synapse.unique_prefix(), secrets, registration=mode)
    await control.start()
    try:
        alice = await control.ensure_account("alice")
        headers = {"Authorization": f"Bearer {alice['access_token']}"}
        room = await control.ensure_room("worker-alice", name="Worker: alice", members=["alice"])
        own = synapse.http.post("/_matrix/client/v3/createRoom", headers=headers, json={"name": "hers"}).json()["room_id"]
        assert not control.account_removed("alice")

        assert await control.remove_account("alice") == how
        assert await control.remove_account("alice") == how  # idempotent
        assert control.account_removed("alice")
        assert synapse.http.get("/_matrix/client/v3/account/whoami", headers=headers).status_code == 401
        assert alice["user_id"] not in (await control.joined_members(room) or set())
        assert alice["user_id"] not in control.accounts.room("worker-alice")["members"]
        admin = {"Authorization": f"Bearer {synapse.admin.access_token}"}
        gone = synapse.http.get(f"/_synapse/admin/v1/rooms/{own}/members", headers=admin).json()["members"]
        if how == "deactivated":  # Synapse parts a deactivated account from its rooms in the background
            assert synapse.http.get(f"/_synapse/admin/v2/users/{alice['user_id']}", headers=admin).json()["deactivated"]
        else:
            assert alice["user_id"] not in gone
        await control.ensure_room("worker-alice", name="Worker: alice", members=["alice"])  # never invited back
        assert alice["user_id"] not in (await control.joined_members(room) or set())

        again = await control.ensure_account("alice")  # a new worker of that name
        assert again["access_token"] != alice["access_token"] and not control.account_removed("alice")
        assert synapse.http.get("/_matrix/client/v3/account/whoami",
                                headers={"Authorization": f"Bearer {again['access_token']}"}).status_code == 200
        await control.ensure_room("worker-alice", name="Worker: alice", members=["alice"])
        assert alice["user_id"] in (await control.joined_members(room) or set())
    finally:
        await control.stop()
