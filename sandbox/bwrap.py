"""bubblewrap sandbox backend — the default on Linux (plugin ``bwrap``, sandbox ``bwrap``).

Each worker runs in fresh user/pid/ipc/uts/cgroup/mount/net namespaces with a cleared
environment, read-only system and Python files, read-write access only to its home and granted
mounts, a private /tmp, and no network except unix-socket bridges to the services it is given.

Configure in ``config.toml``::

    [sandbox]
    plugin = "bwrap"

    [sandbox.settings]
    extra_ro_paths = ["/opt/toolchain"]   # more read-only folders
    memory_mb = 2048                      # per worker (cgroup where possible, else RLIMIT_AS); the default
    max_processes = 512                   # per worker (cgroup pids, else RLIMIT_NPROC); the default
    max_open_files = 4096                 # RLIMIT_NOFILE; the default
    seccomp = true                        # the syscall filter; the default

Verify the isolation on your machine with ``hiclaw sandbox check``. Details: ``docs/sandbox.md``.
This module only registers the backend; the implementation is :mod:`hiclaw.sandbox.backends.bwrap`.
"""
from __future__ import annotations

from hiclaw import hookimpl
from hiclaw.protocols import RegisterSandbox
from hiclaw.sandbox.settings import BwrapSettings, lazy_backend

make_backend = lazy_backend("hiclaw.sandbox.backends.bwrap", "BwrapBackend")


@hookimpl
def hiclaw_register_sandboxes(register: RegisterSandbox) -> None:
    register("bwrap", make_backend, settings_model=BwrapSettings,
             description="bubblewrap namespaces: no network but bridges, read-only system, private /tmp")
