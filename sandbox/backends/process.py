"""The process backend: workers as plain child processes — NO isolation.

For macOS and development only. The worker gets a cleared environment (only its own variables)
and its own session, but it can read and write whatever your user can, see your processes and
use the network. Every start logs a warning; ``hiclaw sandbox check --backend process`` shows
exactly which probes get through.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from hiclaw.sandbox.backends.local import LaunchPlan, LocalSandboxBackend
from hiclaw.sandbox.bridge import format_target
from hiclaw.sandbox.settings import ProcessSettings
from hiclaw.sandbox.spec import WorkerSpec

log = logging.getLogger(__name__)

WARNING = ("the 'process' sandbox does NOT isolate workers: they can read your files and secrets, "
           "see your processes and use the network — use it only for development")
_LOOPBACK = ("127.0.0.1", "localhost")


class ProcessBackend(LocalSandboxBackend):
    name = "process"
    settings_model = ProcessSettings
    log_note = f" — WARNING: {WARNING}"
    isolates = False
    warning = WARNING

    def _uses_bridges(self, spec: WorkerSpec) -> bool:
        return False  # the worker shares the host's network: services are reachable directly

    @staticmethod
    def direct_forwards(spec: WorkerSpec) -> list[str]:
        """Forwards still needed without isolation: bridges whose in-sandbox port is not the
        target's own loopback port (a unix-socket target, or another host or port)."""
        forwards = []
        for bridge in spec.bridges:
            tcp = bridge.tcp_target
            if tcp is None:
                forwards.append(format_target(bridge.port, unix=bridge.target_unix))
            elif not (tcp[0] in _LOOPBACK and tcp[1] == bridge.port):
                forwards.append(format_target(bridge.port, tcp=tcp))
        return forwards

    def _plan(self, spec: WorkerSpec, run_dir: Path, sockets: dict[str, Path], ready_fd: int) -> LaunchPlan:
        log.warning("worker %s: %s", spec.name, WARNING)
        launcher = self._launcher_args(self.direct_forwards(spec), ready_fd)
        argv = [*launcher, "--parent-pid", str(os.getpid()), "--", *spec.argv]
        return LaunchPlan(argv=argv, cwd=str(spec.working_dir or "/"))
