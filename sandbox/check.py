"""``hiclaw sandbox check``: verify a backend's isolation with probes run inside a real sandbox.

How it works (nothing here is inferred from configuration):

1. A scratch control home is laid out like ``$HICLAW_HOME`` (``secrets.toml``, ``state.db``,
   ``config.toml``, another worker's home), each file holding a random canary. A canary file is
   planted in your ``$HOME`` (removed afterwards). A decoy host process carries a canary in its
   environment and command line. The host listens on an un-bridged loopback port and on an
   abstract unix socket (both answer with a canary), and serves one bridged port.
2. A worker named ``sandbox-check`` is started through the backend's normal ``start()`` — same
   launcher, bridges and mounts as a real worker — running :mod:`hiclaw.sandbox.probes`.
3. The same probe program runs directly on the host as a **baseline**: a probe the host itself
   cannot do (e.g. no DNS server here) proves nothing, so its verdict is ``unverified``, never
   ``isolated``.
4. Writes count only if the file really appears on the host.
5. Unless ``--no-services``: the same sandbox then attacks the services a worker reaches — a
   task folder granted from a real local storage, its skills folder, the embedded gateway, a
   flooded bridge — while the check's host side drives those real components, and probes the
   control plane's own guards (the skill fetch policy, the mention gate) directly: see
   :mod:`hiclaw.sandbox.service_probes`. Each is judged by its outcome (did the canary reach
   the attacker, did anything land outside, did the service keep answering).

Verdicts: ``isolated`` (blocked inside, possible on the host), ``EXPOSED`` (got through),
``unverified`` (the baseline could not do it either); controls: ``works`` / ``BROKEN``.
:attr:`CheckReport.passed` is false if anything is ``EXPOSED`` or ``BROKEN``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hiclaw.sandbox.probes import RESULT_PREFIX
from hiclaw.sandbox.service_probes import SERVICE_PROBES, ServiceOptions
from hiclaw.sandbox.spec import Bridge, Mount, WorkerSpec

CHECK_WORKER = "sandbox-check"

#: (probe name, what it tries) — isolation probes, in display order.
ISOLATION_PROBES = [
    ("control_secrets", "read the control plane's secrets.toml"),
    ("control_state", "read the control plane's state.db / config.toml"),
    ("other_worker_home", "read another worker's home"),
    ("host_home", "read a file in your home ($HOME)"),
    ("proc_environ", "read /proc/1/environ and other processes' environments"),
    ("write_outside_home", "write outside its home (control home, other worker, $HOME, read-only mount)"),
    ("private_tmp", "write to the host's /tmp"),
    ("modify_system_files", "open Python, hiclaw or /usr files for writing"),
    ("unbridged_port", "connect to a host loopback port that is not bridged"),
    ("abstract_socket", "connect to a host abstract unix socket"),
    ("network_interfaces", "see a network interface other than loopback"),
    ("dns", "resolve a public name / reach the host's DNS server"),
]
#: Things a worker must be able to do.
CONTROL_PROBES = [
    ("home_writable", "write its own home"),
    ("bridge", "reach a bridged host service at the same URL"),
    ("granted_mount_readable", "read a granted read-only folder"),
    ("hiclaw_importable", "import hiclaw"),
]


@dataclass
class ProbeResult:
    name: str
    description: str
    kind: str  # "isolation" | "control" | "service"
    sandbox: dict[str, Any]
    baseline: dict[str, Any]
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "kind": self.kind,
                "sandbox": self.sandbox, "baseline": self.baseline, "verdict": self.verdict}


@dataclass
class CheckReport:
    backend: str
    probes: list[ProbeResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: How the backend limits a worker (memory, processes, open files, seccomp): which mechanism applies.
    confinement: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any(p.verdict in ("EXPOSED", "BROKEN") for p in self.probes)

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "passed": self.passed, "warnings": self.warnings,
                "confinement": self.confinement, "probes": [p.as_dict() for p in self.probes]}


def verdict(kind: str, sandbox: dict[str, Any], baseline: dict[str, Any]) -> str:
    if kind == "control":
        return "works" if sandbox.get("reached") else "BROKEN"
    if sandbox.get("reached"):
        return "EXPOSED"
    return "isolated" if baseline.get("reached") else "unverified"


# --------------------------------------------------------------------------- host-side fixtures


class _Canaries:
    """Everything planted on the host for one check; :meth:`close` removes it all."""

    def __init__(self, real_home: Path) -> None:
        self.tag = secrets.token_hex(6)
        self.scratch = Path(tempfile.mkdtemp(prefix="hiclaw-check-"))
        self.control = self.scratch / "control"
        self.worker_home = self.control / "workers" / CHECK_WORKER  # like a worker's state folder
        self.other_home = self.control / "data" / "agents" / "other-worker"
        self.granted = self.control / "data" / "shared" / "granted"
        self.real_home = real_home
        self.values = {k: secrets.token_hex(16) for k in ("secrets", "state", "config", "other", "home", "granted",
                                                           "process", "port", "bridge")}
        self.home_canary: Path | None = None
        self.decoy: Any = None
        self.servers: list[Any] = []
        self.abstract_name = f"hiclaw-check-{self.tag}"

    def plant_files(self) -> None:
        for folder in (self.worker_home, self.other_home, self.granted):
            folder.mkdir(parents=True)
        (self.control / "secrets.toml").write_text(f'canary = "{self.values["secrets"]}"\n')
        os.chmod(self.control / "secrets.toml", 0o600)
        (self.control / "state.db").write_text(self.values["state"])
        (self.control / "config.toml").write_text(f'# {self.values["config"]}\n')
        (self.other_home / "MEMORY.md").write_text(self.values["other"])
        (self.granted / "spec.md").write_text(self.values["granted"])
        try:
            fd, name = tempfile.mkstemp(prefix=".hiclaw-sandbox-check-", dir=Path.home())
            os.write(fd, self.values["home"].encode())
            os.close(fd)
            self.home_canary = Path(name)
        except OSError:
            self.home_canary = None

    async def start_services(self) -> tuple[int, int]:
        import subprocess

        self.decoy = subprocess.Popen(  # noqa: ASYNC220 - a long-lived decoy; Popen returns at once, killed synchronously
            [sys.executable, "-c", "import sys; sys.stdin.read()", self.values["process"]],
            stdin=subprocess.PIPE, env={"HICLAW_CHECK_CANARY": self.values["process"], "PATH": "/usr/bin:/bin"},
        )

        def answer(value: str) -> Any:
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.write(value.encode() + b"\n")
                with contextlib.suppress(OSError):
                    await writer.drain()
                writer.close()
            return handle

        unbridged = await asyncio.start_server(answer(self.values["port"]), "127.0.0.1", 0)
        bridged = await asyncio.start_server(answer(self.values["bridge"]), "127.0.0.1", 0)
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        abstract.bind("\0" + self.abstract_name)
        abstract_server = await asyncio.start_unix_server(answer(self.values["port"]), sock=abstract)
        self.servers = [unbridged, bridged, abstract_server]
        return unbridged.sockets[0].getsockname()[1], bridged.sockets[0].getsockname()[1]

    def plan(self, unbridged_port: int, bridge_port: int, real_control_home: Path) -> dict[str, Any]:
        def targets(*pairs: tuple[Path, str | None]) -> list[dict[str, Any]]:
            return [{"path": str(p), "canary": c} for p, c in pairs]

        real_secrets = [(real_control_home / "secrets.toml", None)] if (real_control_home / "secrets.toml").is_file() else []
        real_state = [(real_control_home / n, None) for n in ("state.db", "config.toml") if (real_control_home / n).is_file()]
        import hiclaw

        readonly = [os.__file__, hiclaw.__file__] + [p for p in ("/usr/lib/os-release", "/usr/bin/env") if os.path.exists(p)]
        return {
            "tag": self.tag,
            "home": str(self.worker_home),
            "secrets": targets((self.control / "secrets.toml", self.values["secrets"]), *real_secrets),
            "state": targets((self.control / "state.db", self.values["state"]),
                             (self.control / "config.toml", self.values["config"]), *real_state),
            "other_home": targets((self.other_home / "MEMORY.md", self.values["other"])),
            "host_home": targets((self.home_canary, self.values["home"])) if self.home_canary else [],
            "process_canary": self.values["process"],
            "write_targets": [str(self.control), str(self.other_home), str(self.granted), str(self.real_home)],
            "readonly_files": readonly,
            "unbridged_port": unbridged_port,
            "port_canary": self.values["port"],
            "abstract_name": self.abstract_name,
            "dns_name": "example.com",
            "dns_servers": _nameservers(),
            "bridge_port": bridge_port,
            "bridge_canary": self.values["bridge"],
            "granted": targets((self.granted / "spec.md", self.values["granted"])),
        }

    def remove_written(self, written: list[str]) -> None:
        for path in written:
            with contextlib.suppress(OSError):
                Path(path).unlink()

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        if self.decoy is not None:
            self.decoy.kill()
            self.decoy.wait()
        if self.home_canary is not None:
            self.home_canary.unlink(missing_ok=True)
        shutil.rmtree(self.scratch, ignore_errors=True)


def _nameservers() -> list[str]:
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1][:3]


def _parse_result(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None


# --------------------------------------------------------------------------- the check


async def _run_baseline(plan_path: Path, plan: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hiclaw.sandbox.probes", str(plan_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=plan["home"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home())},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    result = _parse_result(out.decode(errors="replace"))
    if result is None:
        raise RuntimeError(f"the probe program failed on the host: {out.decode(errors='replace')[-300:]}")
    return result


def _settle_writes(result: dict[str, Any], canaries: _Canaries) -> None:
    """Replace "the probe wrote it" by "it is on the host" for the write probes (paths are
    the same inside and outside), then remove what landed."""
    for name in ("write_outside_home", "private_tmp"):
        probe = result[name]
        written = probe.pop("written", [])
        landed = [p for p in written if Path(p).exists()]
        if landed:
            probe.update(reached=True, detail="landed on the host: " + ", ".join(landed))
        elif written:
            probe.update(reached=False, detail="writes stayed inside the sandbox: " + ", ".join(written))
        canaries.remove_written(landed)


async def _run_inside(backend: Any, spec: WorkerSpec, timeout: float,
                      on_started: Callable[[], None] | None = None) -> dict[str, Any]:
    """Start the probe program in a sandbox of ``backend``; its result."""
    await backend.start(spec)
    if on_started is not None:
        on_started()
    try:
        code = await asyncio.wait_for(backend.wait(CHECK_WORKER), timeout)
    finally:
        await backend.stop(CHECK_WORKER, 5)
    log_text = backend.log_path(CHECK_WORKER).read_text(errors="replace")
    inside = _parse_result(log_text)
    if inside is None:
        tail = " | ".join(log_text.strip().splitlines()[-3:])
        raise RuntimeError(f"the probe program did not report from inside the sandbox (exit code {code}): {tail}")
    return inside


async def run_check(
    backend_name: str, make_backend: Callable[[SimpleNamespace], Any], *, real_control_home: Path, timeout: float = 120.0,
    config: Any = None, services: bool | ServiceOptions = True,
) -> CheckReport:
    """Run the probes inside a sandbox and on the host; return the report (see module doc).

    ``make_backend(ctx)`` creates the backend; ``ctx.home`` is the scratch control home, so
    the check's sockets and logs never touch your real ``$HICLAW_HOME``. ``config`` (the team's
    :class:`~hiclaw.config.HiclawConfig`) shapes the service probes (``[skills]``, ``[team]``);
    ``services=False`` skips them, a :class:`ServiceOptions` selects or swaps their components."""
    report = CheckReport(backend=backend_name)
    canaries = _Canaries(Path.home())
    backend = None
    try:
        canaries.plant_files()
        if canaries.home_canary is None:
            report.warnings.append("could not plant a canary in $HOME (not writable): host_home is unverified")
        unbridged_port, bridge_port = await canaries.start_services()
        plan = canaries.plan(unbridged_port, bridge_port, real_control_home)
        plan_path = canaries.worker_home / "probe-plan.json"
        plan_path.write_text(json.dumps(plan))
        backend = make_backend(check_backend_context(canaries.control))
        if not getattr(backend, "isolates", True):
            report.warnings.append(f"WARNING: {getattr(backend, 'warning', 'this backend does not isolate workers')}")
        if callable(describe := getattr(backend, "confinement", None)):
            report.confinement = describe()
            report.warnings += [f"WARNING: {what}: {how}" for what, how in report.confinement.items()
                                if how.startswith(("NONE", "OFF"))]
        spec: dict[str, Any] = dict(name=CHECK_WORKER, argv=[sys.executable, "-m", "hiclaw.sandbox.probes",
                                                             str(plan_path)],
                                    home=canaries.worker_home, mounts=[Mount(host_path=canaries.granted, read_only=True)],
                                    bridges=[Bridge(name="probe", port=bridge_port)])
        baseline = await _run_baseline(plan_path, plan)
        _settle_writes(baseline, canaries)
        judged: dict[str, Any] = {}
        options = ServiceOptions() if services is True else services or None
        if options is None:
            inside = await _run_inside(backend, WorkerSpec(**spec), timeout)
        else:
            from hiclaw.sandbox.service_probes import service_rig

            async with service_rig(canaries, config, options, backend, CHECK_WORKER) as rig:
                plan["services"] = rig.plan()  # the host's baseline never runs these: they attack live services
                (canaries.worker_home / "probe-plan-services.json").write_text(json.dumps(plan))
                spec.update(argv=[*spec["argv"][:-1], str(canaries.worker_home / "probe-plan-services.json")],
                            mounts=[*spec["mounts"], *rig.mounts], bridges=[*spec["bridges"], *rig.bridges])
                host_side: list[asyncio.Task[None]] = []

                def started() -> None:  # only once the sandbox runs: a backend that cannot start fails fast
                    rig.sandbox_started()
                    host_side.append(asyncio.create_task(rig.host_only()))

                try:
                    inside = await _run_inside(backend, WorkerSpec(**spec), timeout, on_started=started)
                finally:
                    for task in host_side:
                        await task
                judged = rig.results(inside.get("services"))
        _settle_writes(inside, canaries)
        for kind, probes in (("isolation", ISOLATION_PROBES), ("control", CONTROL_PROBES)):
            for name, description in probes:
                report.probes.append(ProbeResult(name, description, kind, inside[name], baseline[name],
                                                 verdict(kind, inside[name], baseline[name])))
        for name, description in SERVICE_PROBES:
            if name in judged:
                got, control = judged[name]
                report.probes.append(ProbeResult(name, description, "service", got, control, verdict("service", got, control)))
    finally:
        if backend is not None:
            await backend.close()
        await canaries.close()
    return report


def check_backend_context(scratch_home: Path) -> SimpleNamespace:
    """A context for a backend that keeps its run dirs and logs in ``scratch_home``."""
    return SimpleNamespace(home=scratch_home, side="control", agent=None, config=None, secrets={}, host=None)
