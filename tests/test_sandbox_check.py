"""`hiclaw sandbox check` as a user runs it: bwrap passes, process honestly fails, errors are one line."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hiclaw.sandbox.check import CONTROL_PROBES, ISOLATION_PROBES, verdict
from hiclaw.testing.sandbox import bwrap_unavailable


def hiclaw(cli: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"HICLAW_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run([str(cli), *args], capture_output=True, text=True, env=env, timeout=300, check=False)


def test_verdicts_never_claim_what_was_not_verified():
    assert verdict("isolation", {"reached": True}, {"reached": True}) == "EXPOSED"
    assert verdict("isolation", {"reached": False}, {"reached": True}) == "isolated"
    assert verdict("isolation", {"reached": False}, {"reached": False}) == "unverified"
    assert verdict("control", {"reached": True}, {"reached": False}) == "works"
    assert verdict("control", {"reached": False}, {"reached": True}) == "BROKEN"


@pytest.mark.needs_bwrap
@pytest.mark.skipif(bool(bwrap_unavailable()), reason=str(bwrap_unavailable()))
def test_check_passes_with_bwrap(hiclaw_cli, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "secrets.toml").write_text('openai_api_key = "sk-real"\n')  # the real control home is probed too
    (home / "secrets.toml").chmod(0o600)
    result = hiclaw(hiclaw_cli, "sandbox", "check", "--json", home=home)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "bwrap" and report["passed"] is True
    verdicts = {p["name"]: p["verdict"] for p in report["probes"]}
    assert set(verdicts) == {n for n, _ in ISOLATION_PROBES + CONTROL_PROBES}
    for name, _ in ISOLATION_PROBES:  # blocked inside; "isolated" wherever the host could do it
        assert verdicts[name] in ("isolated", "unverified"), name
        probe = next(p for p in report["probes"] if p["name"] == name)
        assert probe["sandbox"]["reached"] is False
        assert (verdicts[name] == "isolated") == probe["baseline"]["reached"]
    for name in ("control_secrets", "other_worker_home", "proc_environ", "write_outside_home", "unbridged_port",
                 "abstract_socket", "private_tmp"):
        assert verdicts[name] == "isolated"  # the host can always do these, so they are verified
    assert all(verdicts[n] == "works" for n, _ in CONTROL_PROBES)
    assert "sk-real" not in result.stdout
    assert not list(Path.home().glob(".hiclaw-sandbox-check-*"))  # the planted canary is gone
    assert not (home / "logs").exists()  # the check keeps its own logs out of the real home

    table = hiclaw(hiclaw_cli, "sandbox", "check", home=home)
    assert table.returncode == 0
    assert "VERDICT" in table.stdout and "— PASSED" in table.stdout and "EXPOSED  " not in table.stdout


def test_check_with_the_process_backend_reports_what_is_not_isolated(hiclaw_cli, tmp_path):
    result = hiclaw(hiclaw_cli, "sandbox", "check", "--backend", "process", home=tmp_path)
    assert result.returncode == 1
    assert "does NOT isolate workers" in result.stderr
    lines = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip() and
             line.split()[0] in ("EXPOSED", "isolated", "unverified", "works", "BROKEN")}
    for name in ("control_secrets", "other_worker_home", "host_home", "proc_environ", "write_outside_home",
                 "unbridged_port", "abstract_socket", "private_tmp"):
        assert lines[name] == "EXPOSED", name
    assert all(lines[n] == "works" for n, _ in CONTROL_PROBES)
    assert "— FAILED" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--backend", "nope"], "error: no sandbox named 'nope' (available: "),
    (["--backend", "docker"], "error: cannot reach the Docker engine"),
])
def test_check_errors_are_one_line(hiclaw_cli, tmp_path, args, message):
    result = hiclaw(hiclaw_cli, "sandbox", "check", *args, home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_bad_sandbox_settings_in_config_are_one_line(hiclaw_cli, tmp_path):
    (tmp_path / "config.toml").write_text('[sandbox]\nplugin = "bwrap"\n[sandbox.settings]\nmemory_mb = "lots"\n')
    result = hiclaw(hiclaw_cli, "sandbox", "check", home=tmp_path)
    assert result.returncode == 1 and "[sandbox.settings] memory_mb" in result.stderr
    assert result.stderr.count("\n") == 1
