"""The plugin host: loading, broken plugins, environment switches, tracing, dispatch."""
from __future__ import annotations

import asyncio
import sys
import types

import pytest
from pydantic import BaseModel, SecretStr

from hiclaw import hookimpl
from hiclaw.errors import ConfigError, PluginError
from hiclaw.host import ComponentContext, PluginHost, RuntimeContext


@pytest.fixture
def fake_modules(monkeypatch):
    """Create importable modules on the fly: fake_modules(name, source)."""

    def add(name: str, source: str) -> str:
        module = types.ModuleType(name)
        module.__spec__ = None
        spec_holder = {}

        class Finder:
            @staticmethod
            def find_spec(fullname, path=None, target=None):
                if fullname != name:
                    return None
                import importlib.util

                class Loader:
                    @staticmethod
                    def create_module(spec):
                        return None

                    @staticmethod
                    def exec_module(mod):
                        exec(compile(source, f"<{name}>", "exec"), mod.__dict__)

                return importlib.util.spec_from_loader(name, Loader())

        spec_holder["finder"] = Finder
        monkeypatch.setattr(sys, "meta_path", [Finder, *sys.meta_path])
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return add


GOOD = """
from hiclaw import hookimpl
@hookimpl
def hiclaw_register_channels(register):
    register("good", lambda settings, ctx: "channel!")
"""


def test_missing_default_plugin_is_not_listed():
    host = PluginHost(default_plugins=[("ghost", "hiclaw.plugins.channels.does_not_exist")], load_entry_points=False)
    assert host.plugins() == []


def test_default_plugin_loads(fake_modules):
    fake_modules("hiclaw_test_good", GOOD)
    host = PluginHost(default_plugins=[("good", "hiclaw_test_good")], load_entry_points=False)
    (info,) = host.plugins()
    assert (info.name, info.source, info.status, info.capabilities) == ("good", "default", "ok", ["channel:good"])


def test_plugin_that_raises_on_import_is_broken_and_host_keeps_running(fake_modules):
    fake_modules("hiclaw_test_bad", "raise RuntimeError('kaboom at import')")
    fake_modules("hiclaw_test_good", GOOD)
    host = PluginHost(default_plugins=[("bad", "hiclaw_test_bad"), ("good", "hiclaw_test_good")], load_entry_points=False)
    infos = {i.name: i for i in host.plugins()}
    assert infos["bad"].status == "broken"
    assert "RuntimeError: kaboom at import" in infos["bad"].error
    assert infos["good"].status == "ok"
    assert list(host.registrations("channel")) == ["good"]


def test_misspelt_hook_is_reported_by_plugin_name(plugin_host):
    class Typo:
        @hookimpl
        def hiclaw_regster_channels(self, register):
            pass

    host = plugin_host(("typo", Typo()))
    info = host.plugin("typo")
    assert info.status == "broken"
    assert "hiclaw_regster_channels" in info.error
    host.check_pending()  # the broken plugin was unregistered: nothing pending remains


def test_wrong_hook_arguments_are_reported(plugin_host):
    class WrongArgs:
        @hookimpl
        def hiclaw_register_channels(self, register, extra):
            pass

    info = plugin_host(("wrong", WrongArgs())).plugin("wrong")
    assert info.status == "broken" and "extra" in info.error


@pytest.mark.parametrize("style", ["wrapper", "hookwrapper"])
def test_hook_wrappers_are_refused_by_plugin_name(plugin_host, style, caplog):
    """The host calls implementations itself, so a wrapper would be listed `ok` and never run."""
    calls = []

    class Wrapping:
        @hookimpl(**{style: True})
        def hiclaw_register_channels(self, register):
            calls.append("wrapped")
            yield

    class Plain:
        @hookimpl
        def hiclaw_register_channels(self, register):
            register("plain", lambda settings, ctx: "channel!")

    host = plugin_host(("wrapping", Wrapping()), ("plain", Plain()))
    info = host.plugin("wrapping")
    assert info.status == "broken"
    assert info.error.startswith("hook wrapper(s) hiclaw_register_channels are not supported")
    assert "\n" not in info.error
    assert "plugin wrapping is broken" in caplog.text
    assert set(host.registrations("channel")) == {"plain"} and calls == []
    assert host.plugin("plain").status == "ok"


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A real installed distribution (a dist-info on sys.path) with a ``hiclaw`` entry point."""
    (tmp_path / "ep_example_plugin.py").write_text(GOOD)
    info = tmp_path / "ep_example-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-example\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hiclaw]\nep-example = ep_example_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ep-example"


@pytest.mark.parametrize(("wanted", "loaded"), [(None, True), ("*", True), ("", False), ("other", False),
                                                ("other, ep-example", True)])
def test_entry_point_plugins_load_only_when_asked(installed_plugin, monkeypatch, wanted, loaded):
    if wanted is None:
        monkeypatch.delenv("HICLAW_ENTRY_POINT_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("HICLAW_ENTRY_POINT_PLUGINS", wanted)
    host = PluginHost(load_defaults=False)
    assert (host.plugin(installed_plugin) is not None) is loaded
    assert ("good" in host.registrations("channel")) is loaded


def test_a_test_session_loads_no_installed_plugin(installed_plugin):
    """hiclaw's pytest plugin keeps installed plugins out of a test suite's hosts and teams."""
    import os

    assert os.environ["HICLAW_ENTRY_POINT_PLUGINS"] == ""
    assert PluginHost(load_defaults=False).plugin(installed_plugin) is None


def test_check_pending_names_the_plugin():
    host = PluginHost(load_defaults=False, load_entry_points=False)

    class Sneaky:
        @hookimpl
        def hiclaw_not_a_hook(self):
            pass

    host.pm.register(Sneaky(), name="sneaky")  # bypasses the host's own validation
    with pytest.raises(PluginError, match="sneaky"):
        host.check_pending()


def test_registration_that_raises_marks_plugin_broken_and_drops_its_capabilities(plugin_host):
    class Half:
        @hookimpl
        def hiclaw_register_channels(self, register):
            register("half", lambda s, c: None)
            raise ValueError("second registration failed")

    class Fine:
        @hookimpl
        def hiclaw_register_channels(self, register):
            register("fine", lambda s, c: None)

    host = plugin_host(("half", Half()), ("fine", Fine()))
    assert list(host.registrations("channel")) == ["fine"]
    assert host.plugin("half").status == "broken"
    assert "ValueError: second registration failed" in host.plugin("half").error


def test_disable_and_allow_list_env(plugin_host, monkeypatch, fake_modules):
    fake_modules("hiclaw_test_good", GOOD)
    monkeypatch.setenv("HICLAW_DISABLE_PLUGINS", "good")
    host = PluginHost(default_plugins=[("good", "hiclaw_test_good")], load_entry_points=False)
    assert host.plugin("good").status == "disabled"
    assert host.registrations("channel") == {}
    monkeypatch.delenv("HICLAW_DISABLE_PLUGINS")
    monkeypatch.setenv("HICLAW_LOAD_PLUGINS", "other")
    host = PluginHost(default_plugins=[("good", "hiclaw_test_good")], load_entry_points=False)
    assert host.plugin("good").status == "disabled"
    monkeypatch.setenv("HICLAW_LOAD_PLUGINS", "good")
    host = PluginHost(default_plugins=[("good", "hiclaw_test_good")], load_entry_points=False)
    assert host.plugin("good").status == "ok"


def test_trace_prints_every_hook_call(plugin_host, capsys, tmp_path):
    class Plugin:
        @hookimpl
        def hiclaw_register_channels(self, register):
            register("c", lambda s, c: None)

        @hookimpl
        def hiclaw_shutdown(self, ctx):
            return None

    host = plugin_host(("traced", Plugin()), trace=True)
    host.registrations("channel")
    asyncio.run(host.shutdown(RuntimeContext(side="control", home=tmp_path)))
    err = capsys.readouterr().err
    assert "hiclaw_register_channels(register=function) plugin=traced -> 1 registered" in err
    assert "hiclaw_shutdown(ctx=RuntimeContext) plugin=traced -> None" in err


def test_event_hook_failure_does_not_stop_other_plugins(plugin_host, tmp_path):
    seen = []

    class Bad:
        @hookimpl
        async def hiclaw_shutdown(self, ctx):
            raise RuntimeError("nope")

    class Good:
        @hookimpl
        def hiclaw_shutdown(self, ctx):
            seen.append("good ran")

    asyncio.run(plugin_host(("bad", Bad()), ("good", Good())).shutdown(RuntimeContext(side="control", home=tmp_path)))
    assert seen == ["good ran"]


class StrictSettings(BaseModel):
    model_config = {"extra": "forbid"}
    port: int


def test_create_validates_settings_and_hands_only_declared_secrets(plugin_host, tmp_path):
    got = {}

    class Plugin:
        @hookimpl
        def hiclaw_register_gateways(self, register):
            def factory(settings, ctx):
                got.update(settings=settings, secrets=dict(ctx.secrets))
                return "gw"

            register("gw", factory, settings_model=StrictSettings, secrets=["openai_api_key"])

    vault = {"openai_api_key": SecretStr("sk-canary"), "other_secret": SecretStr("never-handed")}
    host = plugin_host(("p", Plugin()), secret_source=vault.get)
    assert host.create("gateway", "gw", {"port": 4000}, ComponentContext(home=tmp_path)) == "gw"
    assert got["settings"].port == 4000
    assert set(got["secrets"]) == {"openai_api_key"}
    with pytest.raises(ConfigError, match=r"\[gateway.settings\] port: Input should be a valid integer"):
        host.create("gateway", "gw", {"port": "many"}, ComponentContext(home=tmp_path))
    with pytest.raises(ConfigError, match=r"\[gateway.settings\] colour: Extra inputs are not permitted"):
        host.create("gateway", "gw", {"port": 1, "colour": "red"}, ComponentContext(home=tmp_path))


def test_unknown_capability_names_available_and_broken(plugin_host, tmp_path):
    class Broken:
        @hookimpl
        def hiclaw_register_channels(self, register):
            raise RuntimeError("x")

    host = plugin_host(("broken-one", Broken()))
    with pytest.raises(PluginError, match="no channel named 'matrix' \\(available: none; broken plugins: broken-one"):
        host.registration("channel", "matrix")


def test_secrets_may_depend_on_config(plugin_host, tmp_path):
    from hiclaw.config import HiclawConfig, ModelAlias

    got = {}

    class Plugin:
        @hookimpl
        def hiclaw_register_gateways(self, register):
            def needed(config):
                return [alias.api_key_secret for alias in config.models.values() if alias.api_key_secret]

            register("gw", lambda s, ctx: got.update(dict(ctx.secrets)), secrets=needed)

    vault = {"anthropic_api_key": SecretStr("a"), "openai_api_key": SecretStr("o")}
    config = HiclawConfig(models={"smart": ModelAlias(model="anthropic/x", api_key_secret="anthropic_api_key")})
    plugin_host(("p", Plugin()), secret_source=vault.get).create(
        "gateway", "gw", {}, ComponentContext(home=tmp_path, config=config)
    )
    assert set(got) == {"anthropic_api_key"}
