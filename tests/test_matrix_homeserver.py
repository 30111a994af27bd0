"""The embedded homeserver: generated config, `hiclaw homeserver start|stop|status`, child mode."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys

import pytest
import tomli_w

from hiclaw.plugins.channels.matrix.errors import HomeserverError
from hiclaw.plugins.channels.matrix.homeserver import EmbeddedHomeserver, _alive
from hiclaw.plugins.channels.matrix.settings import MatrixSettings
from hiclaw.testing import wait_for
from hiclaw.testing.matrix import TEST_SYNAPSE_CONFIG, free_port

RATE_LIMITS = ["rc_message", "rc_registration", "rc_joins_per_room", "rc_room_creation", "rc_media_create",
               "rc_3pid_validation", "rc_profile", "rc_user_directory", "rc_delayed_event_mgmt", "rc_reports",
               "rc_admin_redaction"]


def test_generated_config_has_every_agreed_field(tmp_path):
    settings = MatrixSettings(server_name="team.example", port=18123, synapse_config={"max_upload_size": "5M"})
    path = EmbeddedHomeserver(tmp_path, settings).configure()
    config = json.loads(path.read_text())  # JSON, which is YAML for Synapse
    data = tmp_path / "homeserver"
    assert config["server_name"] == "team.example" and config["report_stats"] is False
    (listener,) = config["listeners"]
    assert listener["bind_addresses"] == ["127.0.0.1"] and listener["port"] == 18123
    assert config["database"] == {"name": "sqlite3", "args": {"database": str(data / "homeserver.db")}}
    assert config["presence"] == {"enabled": False}
    assert config["trusted_key_servers"] == [] and config["enable_registration"] is False
    assert config["max_upload_size"] == "5M"  # [channel.settings] synapse_config is merged in
    for name in RATE_LIMITS:
        assert config[name]["per_second"] >= 1000, name
    for group, keys in {"rc_login": ["address", "account", "failed_attempts"], "rc_joins": ["local", "remote"],
                        "rc_invites": ["per_room", "per_user", "per_issuer"]}.items():
        assert all(config[group][k]["burst_count"] >= 1000 for k in keys), group
    log_config = json.loads((data / "log.config").read_text())
    assert log_config["handlers"]["file"]["filename"] == str(tmp_path / "logs" / "homeserver.log")
    secret = (data / "registration_shared_secret").read_text()
    assert secret and secret not in path.read_text()  # the secret lives in its own file only
    assert (data / "signing.key").read_text().startswith("ed25519 a_")
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("registration_shared_secret", "signing.key", "homeserver.yaml"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    # Re-configuring keeps the secret and key.
    EmbeddedHomeserver(tmp_path, settings).configure()
    assert (data / "registration_shared_secret").read_text() == secret


def test_changing_server_name_of_an_existing_server_is_refused(tmp_path):
    EmbeddedHomeserver(tmp_path, MatrixSettings(server_name="one.example")).configure()
    with pytest.raises(HomeserverError, match=re.escape("created for server name 'one.example'")):
        EmbeddedHomeserver(tmp_path, MatrixSettings(server_name="two.example")).configure()


def test_a_taken_port_is_refused_clearly(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = EmbeddedHomeserver(tmp_path, MatrixSettings(port=port))
        with pytest.raises(HomeserverError) as err:
            server.start()
    assert f"port {port} on 127.0.0.1 is already in use" in str(err.value)
    assert "[channel.settings] port" in str(err.value)
    assert server.status()["state"] == "stopped"


def write_config(home, port: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    settings = {"embedded": True, "port": port, "synapse_config": TEST_SYNAPSE_CONFIG}
    (home / "config.toml").write_text(tomli_w.dumps({"channel": {"plugin": "matrix", "settings": settings}}))


def hiclaw(hiclaw_cli, home, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HICLAW_HOME": str(home)}
    return subprocess.run([str(hiclaw_cli), *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_cli_start_status_stop_as_a_daemon(hiclaw_cli, tmp_path):
    home = tmp_path / "home"
    write_config(home, free_port())
    stopped = hiclaw(hiclaw_cli, home, "homeserver", "status", "--json")
    assert json.loads(stopped.stdout)["state"] == "stopped"
    started = hiclaw(hiclaw_cli, home, "homeserver", "start", "--json")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    try:
        assert info["state"] == "running" and info["mode"] == "daemon"
        assert (home / "run" / "homeserver.pid").read_text().split()[0] == str(info["pid"])
        again = json.loads(hiclaw(hiclaw_cli, home, "homeserver", "start", "--json").stdout)
        assert again["pid"] == info["pid"]  # reused, not started twice
        assert json.loads(hiclaw(hiclaw_cli, home, "homeserver", "status", "--json").stdout)["state"] == "running"
        human = hiclaw(hiclaw_cli, home, "homeserver", "status")
        assert "running" in human.stdout and str(home / "logs" / "homeserver.log") in human.stdout
    finally:
        stop = hiclaw(hiclaw_cli, home, "homeserver", "stop")
    assert stop.stdout.strip() == "homeserver stopped"
    assert not _alive(info["pid"])
    assert hiclaw(hiclaw_cli, home, "homeserver", "stop").stdout.strip() == "homeserver was not running"


def test_cli_errors_are_one_line(hiclaw_cli, tmp_path):
    home = tmp_path / "home"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        write_config(home, busy.getsockname()[1])
        taken = hiclaw(hiclaw_cli, home, "homeserver", "start")
    assert taken.returncode == 1 and taken.stderr.startswith("error: port ") and taken.stderr.count("\n") == 1
    (home / "config.toml").write_text('[channel.settings]\nembedded = false\nhomeserver_url = "https://m.example.org"\n')
    external = hiclaw(hiclaw_cli, home, "homeserver", "status")
    assert external.returncode == 1 and "external homeserver https://m.example.org" in external.stderr
    (home / "config.toml").write_text('[channel.settings]\nport = "many"\n')
    bad = hiclaw(hiclaw_cli, home, "homeserver", "status")
    assert bad.returncode == 1 and "[channel.settings] port" in bad.stderr and bad.stderr.count("\n") == 1


PARENT = """
import sys
from pathlib import Path
from hiclaw.plugins.channels.matrix.homeserver import EmbeddedHomeserver
from hiclaw.plugins.channels.matrix.settings import MatrixSettings
settings = MatrixSettings(port=int(sys.argv[2]), synapse_config={"bcrypt_rounds": 4})
print(EmbeddedHomeserver(Path(sys.argv[1]), settings).start()["pid"], flush=True)
sys.stdin.read()  # until killed
"""


def test_a_child_homeserver_stops_with_its_parent(hiclaw_cli, tmp_path):
    home = tmp_path / "home"
    port = free_port()
    write_config(home, port)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(home), str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        refused = hiclaw(hiclaw_cli, home, "homeserver", "stop")
        assert refused.returncode == 1 and "belongs to a running `hiclaw up`" in refused.stderr
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_for(lambda: not _alive(child), timeout=15, what="Synapse to exit after its parent")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
    assert json.loads(hiclaw(hiclaw_cli, home, "homeserver", "status", "--json").stdout)["state"] == "stopped"


async def test_control_channel_runs_the_embedded_homeserver_for_hiclaw_up(tmp_path):
    from hiclaw.plugins.channels.matrix.control import ControlMatrixChannel

    settings = MatrixSettings(port=free_port(), synapse_config=TEST_SYNAPSE_CONFIG)
    control = ControlMatrixChannel(settings, home=tmp_path)
    (line,) = await control.start_services()
    try:
        assert f"Synapse on {settings.url}" in line
        assert control.service_urls() == {"homeserver": settings.url}
        status = EmbeddedHomeserver(tmp_path, settings).status()
        assert status["state"] == "running" and status["mode"] == "team"
        await control.start()  # the manager registers with the embedded server's own shared secret
        assert (await control.ensure_account("alice"))["user_id"] == "@alice:hiclaw.local"
    finally:
        await control.stop()
        await control.stop_services()
    assert EmbeddedHomeserver(tmp_path, settings).status()["state"] == "stopped"

    # A crashed control plane (no stop_services) leaves the team's Synapse serving; the next one
    # adopts it, and its clean stop stops it.
    crashed = ControlMatrixChannel(settings, home=tmp_path)
    await crashed.start_services()
    pid = EmbeddedHomeserver(tmp_path, settings).status()["pid"]
    restarted = ControlMatrixChannel(settings, home=tmp_path)
    (line,) = await restarted.start_services()
    assert f"Synapse still running from before (pid {pid})" in line
    await restarted.stop_services()
    assert EmbeddedHomeserver(tmp_path, settings).status()["state"] == "stopped"

    daemon = EmbeddedHomeserver(tmp_path, settings)
    daemon.start(detach=True)  # `hiclaw homeserver start` first: `hiclaw up` reuses it and leaves it running
    try:
        (line,) = await control.start_services()
        assert "reusing the running Synapse" in line
        await control.stop_services()
        assert daemon.status()["state"] == "running"
    finally:
        daemon.stop()
