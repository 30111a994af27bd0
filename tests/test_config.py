"""Configuration files, environment overrides, secrets and `hiclaw init`."""
from __future__ import annotations

import os
import stat
import subprocess

import pytest
from click.testing import CliRunner

from hiclaw.cli import cli
from hiclaw.config import HiclawConfig, Secrets, load_config
from hiclaw.errors import ConfigError
from hiclaw.testing import clean_env


def write(home, text):
    (home / "config.toml").write_text(text)


def run_hiclaw(hiclaw_cli, *args, env_home):
    env = clean_env()
    env["HICLAW_HOME"] = str(env_home)
    return subprocess.run([str(hiclaw_cli), *args], capture_output=True, text=True, env=env, check=False)


def test_defaults_without_a_file(hiclaw_home):
    config = load_config()
    assert config.channel.plugin == "matrix" and config.sandbox.plugin == "bwrap"
    assert config.skills.api_url == "https://skills.sh"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[team]\nyolo = \n", r"config.toml: invalid TOML: Invalid value \(at line 2, column 8\) — fix the syntax"),
        ("[team]\nyolo = true\ngatway = 1\n", r"config.toml line 3: unknown key 'team.gatway' — remove it"),
        ("[team]\nheartbeat_seconds = \"often\"\n",
         r"config.toml line 2: key 'team.heartbeat_seconds': Input should be a valid number.*\(got 'often'\)"),
        ("[models.smart]\nmodel = \"x\"\nfallback = \"nope\"\n", r"alias 'smart' falls back to unknown alias 'nope'"),
        ("[models.smart]\nmodel = \"x\"\napi_key_secret = \"sk-live-123\"\n", r"must be a secret \*name\*"),
    ],
)
def test_bad_config_gives_one_clear_line(hiclaw_home, hiclaw_cli, text, expected):
    write(hiclaw_home, text)
    with pytest.raises(ConfigError, match=expected):
        load_config()
    # The same through the CLI: one line on stderr, exit 1, no traceback.
    result = run_hiclaw(hiclaw_cli, "plugins", "list", env_home=hiclaw_home)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_env_overrides(hiclaw_home):
    write(hiclaw_home, "[team]\nyolo = false\n")
    env = {"HICLAW_TEAM__YOLO": "true", "HICLAW_GATEWAY__SETTINGS__PORT": "4001", "SKILLS_API_URL": "http://127.0.0.1:9"}
    config = load_config(environ=env)
    assert config.team.yolo is True
    assert config.gateway.settings == {"port": 4001}
    assert config.skills.api_url == "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="environment variable HICLAW_TEAM__HEARTBEAT_SECONDS"):
        load_config(environ={"HICLAW_TEAM__HEARTBEAT_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="environment variable HICLAW_TEAM__NOPE"):
        load_config(environ={"HICLAW_TEAM__NOPE": "1"})


def test_secrets_resolution_and_permissions(hiclaw_home):
    path = hiclaw_home / "secrets.toml"
    secrets = Secrets({}, path, environ={})
    secrets.set("openai_api_key", "sk-file")
    secrets.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Secrets.load(hiclaw_home, environ={})
    assert loaded.get("openai_api_key").get_secret_value() == "sk-file"
    assert "sk-file" not in repr(loaded.get("openai_api_key"))
    env = Secrets.load(hiclaw_home, environ={"OPENAI_API_KEY": "sk-env", "HICLAW_SECRET_OPENAI_API_KEY": "sk-hiclaw"})
    assert env.get("openai_api_key").get_secret_value() == "sk-hiclaw"
    with pytest.raises(ConfigError, match=r"secret 'anthropic_api_key' is not set.*add `anthropic_api_key"):
        loaded.require("anthropic_api_key", purpose="the smart model")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"readable by other users \(mode 0644\) — run `chmod 600"):
        Secrets.load(hiclaw_home)


def test_init_non_interactive(hiclaw_home):
    runner = CliRunner()
    args = ["init", "--non-interactive", "--provider", "anthropic", "--api-key", "sk-ant-canary",
            "--sandbox", "process", "--yolo"]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "sk-ant-canary" not in result.output
    config = load_config()
    assert config.models["smart"].model == "anthropic/claude-sonnet-4-5"
    assert config.models["smart"].api_key_secret == "anthropic_api_key"
    assert config.sandbox.plugin == "process" and config.team.yolo is True
    assert "sk-ant-canary" not in (hiclaw_home / "config.toml").read_text()
    assert Secrets.load().get("anthropic_api_key").get_secret_value() == "sk-ant-canary"
    assert stat.S_IMODE((hiclaw_home / "secrets.toml").stat().st_mode) == 0o600
    # A second run refuses to overwrite without --force.
    again = runner.invoke(cli, ["init", "--non-interactive"])
    assert again.exit_code == 1 and "already exists" in str(again.exception)


def test_init_interactive(hiclaw_home):
    answers = "\n".join([
        "ollama",  # provider
        "",  # base URL (default)
        "", "", "",  # models
        "https://matrix.example.org",  # homeserver
        "reg-token-1",  # registration token
        "local",  # storage
        "bwrap",  # sandbox
        "n",  # yolo
    ]) + "\n"
    result = CliRunner().invoke(cli, ["init"], input=answers, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = load_config()
    assert config.models["fast"].model == "ollama/llama3.1"
    assert config.models["fast"].api_base == "http://127.0.0.1:11434"
    assert config.channel.settings == {"embedded": False, "homeserver_url": "https://matrix.example.org"}
    assert Secrets.load().get("matrix_registration_token").get_secret_value() == "reg-token-1"
    assert config.team.yolo is False
    assert config.storage.plugin == "local-storage"  # the answer `local` is the former name


def test_component_defaults_are_the_names_plugins_list_shows(hiclaw_home):
    from hiclaw.host import PluginHost

    host = PluginHost()
    config = HiclawConfig()
    shown = {reg.plugin for kind in ("channel", "gateway", "storage", "sandbox") for reg in host.registrations(kind).values()}
    for kind in ("channel", "gateway", "storage", "sandbox"):
        name = getattr(config, kind).plugin
        assert name in shown and host.registration(kind, name).plugin == name, kind
    result = CliRunner().invoke(cli, ["init", "--non-interactive", "--provider", "ollama", "--sandbox", "process"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    written = (hiclaw_home / "config.toml").read_text()
    assert 'plugin = "local-storage"' in written and 'plugin = "embedded-gateway"' in written


def test_former_plugin_names_still_load_with_one_note(hiclaw_home, caplog, monkeypatch):
    import hiclaw.config
    from hiclaw.host import ComponentContext, PluginHost

    monkeypatch.setattr(hiclaw.config, "_noted", set())
    write(hiclaw_home, '[gateway]\nplugin = "embedded"\n[storage]\nplugin = "local"\n')
    with caplog.at_level("WARNING", logger="hiclaw.config"):
        config = load_config()
        load_config()
        env = load_config(environ={"HICLAW_STORAGE__PLUGIN": "local"})
    assert (config.gateway.plugin, config.storage.plugin, env.storage.plugin) == \
        ("embedded-gateway", "local-storage", "local-storage")
    notes = [r.getMessage() for r in caplog.records if "deprecated name" in r.getMessage()]
    assert len(notes) == 2 and any("'local' is a deprecated name: it is now 'local-storage'" in n for n in notes)
    # Code that still creates a component by its former name gets the renamed one.
    storage = PluginHost().create("storage", "local", {"root": str(hiclaw_home / "data")}, ComponentContext(home=hiclaw_home))
    assert storage.plugin == "local-storage"
