"""The Matrix channel as a default plugin: registration, light entry module, factories per side."""
from __future__ import annotations

import subprocess
import sys

import pytest

from hiclaw.errors import ConfigError
from hiclaw.host import ComponentContext, PluginHost
from hiclaw.protocols import Channel


@pytest.fixture
def host() -> PluginHost:
    return PluginHost(default_plugins=[("matrix", "hiclaw.plugins.channels.matrix")], load_entry_points=False)


def test_registered_as_the_matrix_channel_with_its_secrets(host):
    reg = host.registration("channel", "matrix")
    assert reg.plugin == "matrix"
    assert set(reg.secret_names(None)) == {"matrix_registration_token", "matrix_admin_token",
                                           "matrix_registration_shared_secret", "matrix_admin_password"}
    assert host.plugin("matrix").capabilities == ["channel:matrix"]


def test_entry_module_does_not_import_matrix_nio():
    code = ("import sys, hiclaw.plugins.channels.matrix, hiclaw.wakeup, hiclaw.cli.homeserver, hiclaw.cli.chat; "
            "print(sorted(m for m in ('nio', 'synapse', 'aiohttp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_control_side_factory_builds_the_provisioning_channel(host, tmp_path):
    channel = host.create("channel", "matrix", {"server_name": "team.example"}, ComponentContext(home=tmp_path))
    assert isinstance(channel, Channel)
    assert channel.me == "@manager:team.example"
    assert channel.user_id("alice") == "@alice:team.example"
    for method in ("ensure_account", "ensure_room", "remove_member", "send", "set_typing", "on_message",
                   "worker_settings", "start", "stop"):
        assert callable(getattr(channel, method)), method


def test_worker_side_needs_its_token(host, tmp_path):
    ctx = ComponentContext(home=tmp_path, side="worker", agent="alice")
    with pytest.raises(ConfigError, match="lack user_id/access_token"):
        host.create("channel", "matrix", {"embedded": False, "homeserver_url": "http://127.0.0.1:1"}, ctx)
    channel = host.create("channel", "matrix", {"embedded": False, "homeserver_url": "http://127.0.0.1:1",
                                                "user_id": "@alice:hiclaw.local", "access_token": "t"}, ctx)
    assert channel.me == "@alice:hiclaw.local"
    assert channel.store.directory == tmp_path / "channel"  # the worker's own home, not $HICLAW_HOME


def test_bad_settings_name_the_key(host, tmp_path):
    with pytest.raises(ConfigError) as err:
        host.create("channel", "matrix", {"port": 0}, ComponentContext(home=tmp_path))
    assert "[channel.settings] port" in str(err.value)


def test_the_control_channel_is_a_team_channel(host, tmp_path):
    from hiclaw.protocols import TeamChannel

    assert isinstance(host.create("channel", "matrix", {}, ComponentContext(home=tmp_path)), TeamChannel)
