"""`hiclaw sandbox check` as a user runs it: bwrap passes, process honestly fails, errors are one line.

The service-level probes (:mod:`hiclaw.sandbox.service_probes`) are also run against
deliberately weakened components — a storage that follows links, a fetch policy that trusts
every address, a gate that lets anyone wake a worker, a bridge cap too high to bound anything —
to show that each of those probes can say EXPOSED, so its "isolated" means something.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hiclaw.host import ComponentContext, PluginHost
from hiclaw.plugins.storage.local.backend import LocalStorage
from hiclaw.registry.http import FetchPolicy, parse_origin
from hiclaw.registry.service import SkillService
from hiclaw.sandbox.check import CONTROL_PROBES, ISOLATION_PROBES, CheckReport, run_check, verdict
from hiclaw.sandbox.service_probes import IN_SANDBOX, SERVICE_PROBES, ServiceComponents, ServiceOptions
from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.wakeup import MentionGate


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
    assert set(verdicts) == {n for n, _ in ISOLATION_PROBES + CONTROL_PROBES + SERVICE_PROBES}
    for name, _ in ISOLATION_PROBES:  # blocked inside; "isolated" wherever the host could do it
        assert verdicts[name] in ("isolated", "unverified"), name
        probe = next(p for p in report["probes"] if p["name"] == name)
        assert probe["sandbox"]["reached"] is False
        assert (verdicts[name] == "isolated") == probe["baseline"]["reached"]
    for name in ("control_secrets", "other_worker_home", "proc_environ", "write_outside_home", "unbridged_port",
                 "abstract_socket", "private_tmp"):
        assert verdicts[name] == "isolated"  # the host can always do these, so they are verified
    assert all(verdicts[n] == "works" for n, _ in CONTROL_PROBES)
    # Through the services a worker reaches: every attack ran against the real component and was
    # blocked, and every negative control held (so none is merely "unverified").
    services = {p["name"]: p for p in report["probes"] if p["kind"] == "service"}
    assert set(services) == {n for n, _ in SERVICE_PROBES}
    for name, probe in services.items():
        assert probe["verdict"] == "isolated", (name, probe)
        assert probe["sandbox"]["reached"] is False and probe["baseline"]["reached"] is True, (name, probe)
    assert "0 returned secrets.toml" in services["result_link_swap"]["sandbox"]["detail"]
    assert "the attacker's server got 0 request(s)" in services["gateway_parameters"]["sandbox"]["detail"]
    assert "0 connection(s) reached the internal service" in services["ssrf_address_forms"]["sandbox"]["detail"]
    assert "needs no sandbox" in services["worker_wakes_worker"]["sandbox"]["detail"]
    assert "another worker's fresh connection was answered" in services["connection_flood"]["sandbox"]["detail"]
    assert "sk-real" not in result.stdout
    assert not list(Path.home().glob(".hiclaw-sandbox-check-*"))  # the planted canary is gone
    assert not (home / "logs").exists()  # the check keeps its own logs out of the real home

    table = hiclaw(hiclaw_cli, "sandbox", "check", home=home)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "VERDICT" in table.stdout and "— PASSED" in table.stdout and "EXPOSED  " not in table.stdout
    assert "through the services a worker reaches" in table.stdout
    assert "through services: 7 isolated, 0 EXPOSED, 0 unverified — PASSED" in table.stdout
    assert table.stderr == ""  # the refused attacks' warnings stay out of the output

    quick = hiclaw(hiclaw_cli, "sandbox", "check", "--no-services", "--json", home=home)
    assert quick.returncode == 0
    assert {p["kind"] for p in json.loads(quick.stdout)["probes"]} == {"isolation", "control"}


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
    # Without a sandbox the worker changes its own skills folder and floods the host directly;
    # the boundaries that live in the control plane's code hold whatever the backend.
    for name in ("skills_folder_link", "connection_flood"):
        assert lines[name] == "EXPOSED", name
    for name in ("result_link_swap", "gateway_parameters", "ssrf_address_forms", "worker_wakes_worker", "turn_limit"):
        assert lines[name] == "isolated", name
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


# --------------------------------------------------------------------------- the service probes can fail


async def check_with(tmp_path: Path, backend: str, only: set[str], components: ServiceComponents | None = None,
                     **settings: Any) -> CheckReport:
    """``hiclaw sandbox check`` in-process, with only the service probes ``only``."""
    host = PluginHost(load_entry_points=False)

    def make_backend(ctx: Any) -> Any:
        return host.create("sandbox", backend, settings, ComponentContext(home=ctx.home, side="control"))

    options = ServiceOptions(components=components or ServiceComponents(), only=frozenset(only))
    return await run_check(backend, make_backend, real_control_home=tmp_path, services=options)


def service(report: CheckReport, name: str) -> Any:
    (probe,) = [p for p in report.probes if p.name == name]
    assert probe.kind == "service"
    return probe


class LinkFollowingStorage(LocalStorage):
    """Attack 1's bug, on purpose: a control-plane read that opens the path with a plain open()."""

    async def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


@pytest.mark.needs_bwrap
@pytest.mark.skipif(bool(bwrap_unavailable()), reason=str(bwrap_unavailable()))
async def test_the_link_swap_probe_exposes_a_storage_that_follows_links(tmp_path):
    weak = ServiceComponents(storage=lambda control_home: LinkFollowingStorage(control_home / "data", fsync=False))
    report = await check_with(tmp_path, "bwrap", {"result_link_swap"}, weak)
    probe = service(report, "result_link_swap")
    assert probe.verdict == "EXPOSED", probe
    returned = int(probe.sandbox["detail"].split(" returned secrets.toml")[0].rsplit(" ", 1)[1])
    assert returned > 0, probe.sandbox  # the canary of the scratch secrets.toml really came back
    assert report.passed is False
    assert [p.name for p in report.probes if p.kind == "service"] == ["result_link_swap"]


@pytest.mark.needs_bwrap
@pytest.mark.skipif(bool(bwrap_unavailable()), reason=str(bwrap_unavailable()))
async def test_the_flood_probe_exposes_a_bridge_cap_that_bounds_nothing(tmp_path):
    report = await check_with(tmp_path, "bwrap", {"connection_flood"}, bridge_max_connections=100_000)
    probe = service(report, "connection_flood")
    assert probe.verdict == "EXPOSED", probe
    assert "the bridge held 500 and refused 0" in probe.sandbox["detail"]
    assert report.passed is False


class TrustsEverything(FetchPolicy):
    """A fetch policy without its address check: every URL counts as the admin's own."""

    def check_url(self, url: Any) -> bool:
        parse_origin(url)
        return True

    def trusts_endpoint(self, host: str, port: int) -> bool:
        return True

    def literal_refusal(self, url: str) -> str | None:
        return None


def trusting_skill_service(config: Any) -> SkillService:
    svc = SkillService(config)
    svc.policy = TrustsEverything()
    return svc


def open_gate(spec: Any, user_id: Any, handler: Any, **_: Any) -> MentionGate:
    """A gate as it was before issue 14: anyone's mention wakes the worker, no turn limit."""
    return MentionGate(user_id(spec.name), handler)


async def test_the_host_side_probes_expose_a_trusting_fetch_policy_and_an_open_gate(tmp_path):
    """These probes need no sandbox (any backend will do): the boundary is the control plane's code."""
    assert not {"ssrf_address_forms", "worker_wakes_worker", "turn_limit"} & IN_SANDBOX
    weak = ServiceComponents(skills=trusting_skill_service, gate=open_gate)
    report = await check_with(tmp_path, "process", {"ssrf_address_forms", "worker_wakes_worker", "turn_limit"}, weak)
    ssrf = service(report, "ssrf_address_forms")
    assert ssrf.verdict == "EXPOSED", ssrf
    assert "0 connection(s)" not in ssrf.sandbox["detail"]
    wakes, limit = service(report, "worker_wakes_worker"), service(report, "turn_limit")
    assert wakes.verdict == "EXPOSED" and wakes.sandbox["detail"].startswith("2 of 2 mentions"), wakes
    assert limit.verdict == "EXPOSED" and limit.sandbox["detail"].startswith("15 of 15 mentions"), limit
    assert report.passed is False
