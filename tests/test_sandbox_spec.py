"""WorkerSpec validation, the bridge argument format, and the sandbox plugins' registration."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from hiclaw.host import PluginHost
from hiclaw.sandbox.bridge import format_target, parse_target
from hiclaw.sandbox.spec import Bridge, Mount, WorkerSpec


def spec(**fields):
    return WorkerSpec(**{"name": "alice", "argv": ["python", "-V"], **fields})


def test_minimal_spec_defaults():
    s = spec()
    assert s.network is False and s.mounts == [] and s.bridges == [] and s.env == {}
    assert s.working_dir is None


@pytest.mark.parametrize("name", ["Alice", "1abc", "a" * 32, "al_ice", "", "al ice"])
def test_bad_worker_names_are_refused(name):
    with pytest.raises(ValidationError, match="worker name"):
        spec(name=name)


@pytest.mark.parametrize("fields, message", [
    ({"argv": []}, "at least 1"),
    ({"argv": ["a\0b"]}, "NUL"),
    ({"env": {"BAD-NAME": "x"}}, "invalid"),
    ({"env": {"OK": "a\0"}}, "NUL"),
    ({"home": Path("relative/home")}, "absolute"),
    ({"cwd": Path("/a/../etc")}, "'..'"),
    ({"mounts": [{"host_path": "rel", "read_only": True}]}, "absolute"),
    ({"bridges": [{"name": "a", "port": 1}, {"name": "b", "port": 1}]}, "same port"),
    ({"bridges": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}, "same name"),
    ({"bridges": [{"name": "a", "port": 70000}]}, "less than or equal"),
    ({"bridges": [{"name": "Gate way", "port": 1}]}, "bridge name"),
    ({"bridges": [{"name": "a", "port": 1, "target_port": 2, "target_unix": "/x.sock"}]}, "not both"),
    ({"home": Path("/h"), "mounts": [{"host_path": "/x", "sandbox_path": "/h"}]}, "same sandbox path"),
    ({"unknown": 1}, "Extra inputs"),
])
def test_invalid_specs_say_what_is_wrong(fields, message):
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


def test_bridge_targets_and_mount_paths():
    assert Bridge(name="gateway", port=4000).tcp_target == ("127.0.0.1", 4000)
    assert Bridge(name="g", port=4000, target_host="10.0.0.2", target_port=80).tcp_target == ("10.0.0.2", 80)
    assert Bridge(name="c", port=9, target_unix=Path("/run/c.sock")).tcp_target is None
    assert Mount(host_path=Path("/a")).target == Path("/a")
    assert Mount(host_path=Path("/a"), sandbox_path=Path("/b")).target == Path("/b")
    s = spec(home=Path("/h"), mounts=[Mount(host_path=Path("/rw"), read_only=False), Mount(host_path=Path("/ro"))])
    assert s.writable_paths() == [Path("/h"), Path("/rw")]
    assert s.working_dir == Path("/h")


def test_spec_round_trips_through_json():
    s = spec(env={"A": "1"}, home=Path("/h"), bridges=[Bridge(name="gateway", port=4000)],
             mounts=[Mount(host_path=Path("/x"), read_only=False)], network=True)
    assert WorkerSpec.model_validate_json(s.model_dump_json()) == s


def test_bridge_argument_format_round_trips():
    assert parse_target(format_target(4000, unix="/run/hiclaw/gateway.sock")) == (4000, ("unix", "/run/hiclaw/gateway.sock"))
    assert parse_target(format_target(8008, tcp=("10.0.0.5", 18008))) == (8008, ("tcp", ("10.0.0.5", 18008)))
    assert parse_target("443=tcp:[::1]:8443") == (443, ("tcp", ("::1", 8443)))
    for bad in ("4000", "x=unix:/a", "0=unix:/a", "4000=unix:relative", "4000=tcp:host", "4000=udp:h:1", "70000=tcp:h:1"):
        with pytest.raises(ValueError, match="bad bridge"):
            parse_target(bad)
    with pytest.raises(ValueError):
        format_target(1)


def test_all_four_backends_register_with_settings_models():
    regs = PluginHost(load_entry_points=False).registrations("sandbox")
    assert {"bwrap", "process", "docker", "kubernetes"} <= set(regs)
    for name in ("bwrap", "process", "docker", "kubernetes"):
        assert regs[name].settings_model is not None and regs[name].secrets == ()


def test_bad_sandbox_settings_name_the_key():
    host = PluginHost(load_entry_points=False)
    from hiclaw.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[sandbox.settings\] memory_mb"):
        host.validate_settings("sandbox", "bwrap", {"memory_mb": 1}, section="sandbox.settings")
    with pytest.raises(ConfigError, match="extra_ro_pathz"):
        host.validate_settings("sandbox", "bwrap", {"extra_ro_pathz": []}, section="sandbox.settings")


def test_entry_modules_and_launcher_stay_light():
    code = ("import sys, hiclaw.sandbox.bwrap, hiclaw.sandbox.process, hiclaw.sandbox.docker, hiclaw.sandbox.kubernetes;"
            "import hiclaw.sandbox.launch;"
            "print(sorted(m for m in ('docker', 'kubernetes', 'asyncio', 'nio', 'minio', 'litellm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
