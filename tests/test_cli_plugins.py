"""`hiclaw plugins …` end to end: real pip installs into the running environment."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from hiclaw.testing import clean_env

EXAMPLE = ROOT / "examples" / "hiclaw-filechannel"
BROKEN = ROOT / "tests" / "plugins_fixtures" / "hiclaw-broken-plugin"


def hiclaw(hiclaw_cli, home, *args, env=None):
    # These tests are about installed plugins: they ask for them (the session loads none).
    full_env = clean_env(home, HICLAW_ENTRY_POINT_PLUGINS="*")
    full_env.update(env or {})
    return subprocess.run([str(hiclaw_cli), *args], capture_output=True, text=True, env=full_env, timeout=300, check=False)


def pip_uninstall(*names):
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", *names], capture_output=True, check=False)


@pytest.fixture
def clean_plugins():
    pip_uninstall("hiclaw-filechannel", "hiclaw-broken-plugin")
    yield
    pip_uninstall("hiclaw-filechannel", "hiclaw-broken-plugin")


def test_install_list_trace_uninstall_example_plugin(hiclaw_cli, hiclaw_home, clean_plugins):
    result = hiclaw(hiclaw_cli, hiclaw_home, "plugins", "install", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "plugin filechannel 0.1.0 (channel:file): ok" in result.stdout

    listed = json.loads(hiclaw(hiclaw_cli, hiclaw_home, "plugins", "list", "--json").stdout)
    (entry,) = [p for p in listed if p["name"] == "filechannel"]
    assert entry["source"] == "entry point" and entry["status"] == "ok"
    assert entry["kinds"] == ["channel"] and entry["distribution"] == "hiclaw-filechannel"

    # A process of the test session that does not ask for installed plugins does not load it.
    unasked = subprocess.run([str(hiclaw_cli), "plugins", "list", "--json"], capture_output=True, text=True,
                             env=clean_env(hiclaw_home), timeout=120, check=True)
    assert not [p for p in json.loads(unasked.stdout) if p["name"] == "filechannel"]

    traced = hiclaw(hiclaw_cli, hiclaw_home, "plugins", "list", env={"HICLAW_TRACE_PLUGINS": "1"})
    assert "hiclaw trace: hiclaw_register_channels(register=function) plugin=filechannel -> 1 registered" in traced.stderr

    disabled = hiclaw(hiclaw_cli, hiclaw_home, "plugins", "disable", "filechannel")
    assert disabled.returncode == 0
    listed = json.loads(hiclaw(hiclaw_cli, hiclaw_home, "plugins", "list", "--json").stdout)
    assert [p["status"] for p in listed if p["name"] == "filechannel"] == ["disabled"]
    assert hiclaw(hiclaw_cli, hiclaw_home, "plugins", "enable", "filechannel").returncode == 0

    removed = hiclaw(hiclaw_cli, hiclaw_home, "plugins", "uninstall", "filechannel")
    assert removed.returncode == 0 and "uninstalled hiclaw-filechannel" in removed.stdout
    listed = json.loads(hiclaw(hiclaw_cli, hiclaw_home, "plugins", "list", "--json").stdout)
    assert not [p for p in listed if p["name"] == "filechannel"]


def test_broken_plugin_is_listed_and_everything_else_works(hiclaw_cli, hiclaw_home, clean_plugins):
    result = hiclaw(hiclaw_cli, hiclaw_home, "plugins", "install", str(BROKEN))
    assert result.returncode == 1
    assert result.stderr.startswith("error: plugin broken-example is installed but broken: import failed: ImportError")
    assert "Traceback" not in result.stderr

    listed = json.loads(hiclaw(hiclaw_cli, hiclaw_home, "plugins", "list", "--json").stdout)
    (entry,) = [p for p in listed if p["name"] == "broken-example"]
    assert entry["status"] == "broken"
    assert "this plugin is broken on purpose" in entry["error"]

    table = hiclaw(hiclaw_cli, hiclaw_home, "plugins", "list")
    assert table.returncode == 0 and "broken: import failed" in table.stdout
    assert hiclaw(hiclaw_cli, hiclaw_home, "--version").returncode == 0
    init = hiclaw(hiclaw_cli, hiclaw_home, "init", "--non-interactive", "--provider", "ollama")
    assert init.returncode == 0, init.stderr


def test_plugin_command_errors(hiclaw_cli, hiclaw_home):
    missing = hiclaw(hiclaw_cli, hiclaw_home, "plugins", "uninstall", "no-such-plugin-xyz")
    assert missing.returncode == 1 and "no installed plugin or package named 'no-such-plugin-xyz'" in missing.stderr
    bad = hiclaw(hiclaw_cli, hiclaw_home, "plugins", "install", str(ROOT / "does-not-exist"))
    assert bad.returncode == 1 and bad.stderr.startswith("error: pip could not install")
    nothing = hiclaw(hiclaw_cli, hiclaw_home, "plugins", "disable", "nope")
    assert nothing.returncode == 1 and "no plugin named 'nope'" in nothing.stderr
    usage = hiclaw(hiclaw_cli, hiclaw_home, "plugins", "frobnicate")
    assert usage.returncode == 2
