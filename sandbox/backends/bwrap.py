"""The bubblewrap backend: one set of fresh namespaces per worker.

Filesystem view inside (everything else of the host is absent, not just unreadable):

* read-only: ``/usr`` (and the ``/bin``, ``/lib*``, ``/sbin`` links), a few files of ``/etc``
  (TLS roots, loader cache, time zone), the Python installation and the virtual environment the
  control plane runs from, the source folders of editable installs (hiclaw itself, plugins),
  ``extra_ro_paths``, and the bridges' socket folder at ``/run/hiclaw``;
* read-write: the worker's home and its read-write mounts, a private ``/tmp``;
* generated: ``/etc/passwd``, ``/etc/group``, ``/etc/hosts`` naming only the worker.

Namespaces: user (no capabilities, no nested user namespaces), pid (the launcher is PID 1),
ipc, uts (hostname = worker name), cgroup, mount and net. Without ``spec.network`` the sandbox
has only its own loopback, where the launcher's forwarders serve the bridges; with it, the
host's network, where the services are reached at their own URLs (no forwarder: it could not
listen on a port the service holds).

Syscalls: the seccomp filter of :mod:`hiclaw.sandbox.seccomp` (``--seccomp FD``), unless
``seccomp = false``. Limits: :mod:`hiclaw.sandbox.limits` (a cgroup per run, or rlimits).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hiclaw.sandbox import seccomp
from hiclaw.sandbox.backends.local import LaunchPlan, LocalSandboxBackend, read_fd_async
from hiclaw.sandbox.base import SandboxError, exposes_control_plane, last_error
from hiclaw.sandbox.bridge import format_target, reached_directly
from hiclaw.sandbox.settings import BwrapSettings
from hiclaw.sandbox.spec import WorkerSpec

#: Where the bridge sockets appear inside the sandbox.
SANDBOX_RUN_DIR = "/run/hiclaw"
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: /etc entries programs need to work (TLS, dynamic loader, time, services) — none hold secrets.
_ETC = ("/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
        "/etc/localtime", "/etc/timezone", "/etc/alternatives", "/etc/protocols", "/etc/services", "/etc/mime.types",
        "/etc/nsswitch.conf", "/etc/os-release")
_ETC_NETWORK = ("/etc/resolv.conf", "/etc/hosts", "/etc/gai.conf")

_PATHS_SCRIPT = r"""
import json, os, sys
paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix] + [p for p in sys.path if p]
for module in list(sys.modules.values()):  # setuptools editable installs map packages to source folders
    mapping = getattr(module, "MAPPING", None)
    if getattr(module, "__name__", "").startswith("__editable__") and isinstance(mapping, dict):
        paths.extend(mapping.values())
for entry in list(sys.path):  # a strict editable install: a tree of links to the source files
    if os.path.basename(entry).startswith("__editable__.") and os.path.isdir(entry):
        for folder, _, files in os.walk(entry):
            paths.extend(os.path.dirname(os.path.realpath(os.path.join(folder, f))) for f in files
                         if os.path.islink(os.path.join(folder, f)))
print(json.dumps(paths))
"""
_python_paths_cache: dict[str, list[Path]] = {}


def python_paths(python: str) -> list[Path]:
    """Folders ``python`` imports from (prefixes, ``sys.path``, editable source folders), minimal."""
    if python not in _python_paths_cache:
        result = subprocess.run([python, "-c", _PATHS_SCRIPT], capture_output=True, text=True, cwd="/",
                                env={"PATH": "/usr/bin:/bin"}, timeout=60, check=False)
        if result.returncode != 0:
            raise SandboxError(f"cannot inspect the Python at {python}: {result.stderr.strip()[-300:]}")
        found: set[Path] = set()
        for raw in json.loads(result.stdout):
            path = Path(raw)
            if path.exists():
                found.add(path)
                found.add(path.resolve())
        _python_paths_cache[python] = minimal_roots(found)
    return _python_paths_cache[python]


def open_mount_fds(spec: WorkerSpec) -> dict[int, int]:
    """Descriptors of the mounts that lie under an untrusted folder (``Mount.beneath``), each
    opened from its trusted root without following any link: a worker that replaced a folder or
    a file of a grant with a link between two runs gets its start refused, not the link's target."""
    from hiclaw.storage.safefs import Beneath, LinkRefused

    fds: dict[int, int] = {}
    try:
        for index, mount in enumerate(spec.mounts):
            if mount.beneath is None:
                continue
            rel = mount.host_path.relative_to(mount.beneath).as_posix()
            try:
                fds[index] = Beneath(mount.beneath).open_path(rel)
            except LinkRefused:
                raise SandboxError(f"cannot start {spec.name}: {rel!r} in the storage is (or lies under) a symbolic link",
                                   hint="links are never bound into a sandbox; remove the link") from None
            except FileNotFoundError:
                raise SandboxError(f"cannot start {spec.name}: {rel!r} is missing from the storage",
                                   hint="it was granted but is gone; grant again") from None
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def minimal_roots(paths: set[Path] | list[Path]) -> list[Path]:
    """Drop every path that lies inside another one of ``paths``."""
    ordered = sorted(set(paths), key=lambda p: (len(p.parts), str(p)))
    roots: list[Path] = []
    for path in ordered:
        if not any(root == path or root in path.parents for root in roots):
            roots.append(path)
    return roots


class BwrapBackend(LocalSandboxBackend):
    """Workers in bubblewrap sandboxes (the default on Linux)."""

    name = "bwrap"
    settings_model = BwrapSettings
    settings: BwrapSettings
    user_namespace = True
    #: Neutral paths inside (``hiclaw.protocols.NeutralPaths``): the sandbox's root is its own.
    storage_root_inside = Path("/data")

    def home_inside(self, name: str) -> Path:
        return Path("/home") / name

    @property
    def adoptable(self) -> bool:  # type: ignore[override]
        return self.settings.survive_crash

    def __init__(self, settings: BwrapSettings | None = None, ctx: Any = None) -> None:
        super().__init__(settings, ctx)
        self._bwrap: str | None = None

    @property
    def bwrap(self) -> str:
        if self._bwrap is None:
            found = shutil.which(self.settings.bwrap)
            if found is None:
                raise SandboxError(
                    f"bubblewrap ({self.settings.bwrap!r}) is not installed",
                    hint='install it (`apt-get install bubblewrap`, or run scripts/setup.sh), or set [sandbox] plugin = "process"',
                )
            self._bwrap = found
        return self._bwrap

    def _prepare(self, spec: WorkerSpec) -> None:
        super()._prepare(spec)
        self.bwrap  # noqa: B018 - fail early with the install hint
        if self.settings.seccomp and not seccomp.supported():
            raise SandboxError(f"the seccomp filter has no syscall table for this machine ({os.uname().machine})",
                               hint="set [sandbox.settings] seccomp = false (and report the machine type)")
        for path in self.settings.extra_ro_paths:
            if exposes_control_plane(path, self.control_home):
                raise SandboxError(f"[sandbox.settings] extra_ro_paths: {path} would expose the control plane's files",
                                   hint="list only tool folders, never $HICLAW_HOME or a parent of it")

    async def _before_start(self, spec: WorkerSpec) -> None:
        await asyncio.to_thread(python_paths, self.python)  # runs the interpreter once; cached

    def _relayed_bridges(self, spec: WorkerSpec) -> list[Any]:
        if not spec.network:
            return list(spec.bridges)
        # With the host's network a worker reaches a host-loopback service at the same URL itself;
        # a forwarder of its own could not listen on that port (the service holds it).
        return [b for b in spec.bridges if not reached_directly(b)]

    def confinement(self) -> dict[str, str]:
        return {**super().confinement(), "seccomp": seccomp.describe() if self.settings.seccomp
                else "OFF ([sandbox.settings] seccomp = false)"}

    def _add_seccomp(self, plan: LaunchPlan) -> None:
        """``--seccomp FD``: bwrap reads the filter from the fd and installs it before the launcher runs."""
        fd = seccomp.program_fd()
        plan.pass_fds += (fd,)
        plan.argv[1:1] = ["--seccomp", str(fd)]

    def readonly_paths(self) -> list[Path]:
        """Python, virtual environment and source folders bound read-only (identical paths)."""
        paths = [p for p in python_paths(self.python) if not str(p).startswith(("/usr/", "/etc/")) and p != Path("/usr")]
        paths += [p for p in self.settings.extra_ro_paths if p.exists()]
        for path in paths:
            if exposes_control_plane(path, self.control_home):
                raise SandboxError(
                    f"the Python environment folder {path} contains the control plane's home {self.control_home}",
                    hint="put $HICLAW_HOME outside the virtual environment and the source checkout",
                )
        return minimal_roots(paths)

    def _write_identity_files(self, spec: WorkerSpec, run_dir: Path) -> dict[str, Path]:
        etc = run_dir / "etc"
        etc.mkdir(exist_ok=True)
        uid, gid, home = os.getuid(), os.getgid(), spec.home_inside or "/tmp"
        files = {
            "/etc/passwd": f"{spec.name}:x:{uid}:{gid}:hiclaw worker:{home}:/bin/sh\n",
            "/etc/group": f"{spec.name}:x:{gid}:\n",
        }
        if not spec.network:
            files["/etc/hosts"] = f"127.0.0.1\tlocalhost {spec.name}\n::1\tlocalhost ip6-localhost\n"
        written = {}
        for target, content in files.items():
            path = etc / Path(target).name
            path.write_text(content)
            written[target] = path
        return written

    def command(self, spec: WorkerSpec, run_dir: Path, sockets: dict[str, Path], status_fd: int,
                ready_fd: int | None = None, mount_fds: dict[int, int] | None = None) -> list[str]:
        """The full bwrap command line for ``spec`` (public so tests and docs can show it).
        ``mount_fds``: index in ``spec.mounts`` → descriptor to bind instead of the path."""
        args = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL",
                "--new-session", "--as-pid-1", "--json-status-fd", str(status_fd), "--hostname", spec.name]
        if not self.adoptable:  # else it outlives a crash of the control plane, for the next to adopt
            args.insert(6, "--die-with-parent")
        if spec.network:
            args.append("--share-net")
        args += ["--ro-bind", "/usr", "/usr"]
        for link in _SYSTEM_LINKS:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        for path in _ETC + (_ETC_NETWORK if spec.network else ()):
            args += ["--ro-bind-try", path, path]
        for target, source in self._write_identity_files(spec, run_dir).items():
            args += ["--ro-bind", str(source), target]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]  # /tmp before any bind under it
        binds: list[tuple[Path | int, Path, bool]] = [(p, p, True) for p in self.readonly_paths()]
        if sockets:
            binds.append((run_dir, Path(SANDBOX_RUN_DIR), True))
        if spec.home is not None and spec.home_inside is not None:
            binds.append((spec.home, spec.home_inside, False))
        fds = mount_fds or {}
        binds += [(fds.get(i, m.host_path), m.target, m.read_only) for i, m in enumerate(spec.mounts)]
        for origin, inside, read_only in sorted(binds, key=lambda b: len(b[1].parts)):  # parents first
            by_fd = "-fd" if isinstance(origin, int) else ""  # bound by descriptor: what was checked
            args += [("--ro-bind" if read_only else "--bind") + by_fd, str(origin), str(inside)]
        if spec.working_dir is not None:
            args += ["--chdir", str(spec.working_dir)]
        by_name = {b.name: b for b in spec.bridges}
        forwards = [format_target(by_name[name].port, unix=f"{SANDBOX_RUN_DIR}/{sock.name}") for name, sock in sockets.items()]
        return [*args, "--", *self._launcher_args(forwards, ready_fd), "--", *spec.argv]

    def _plan(self, spec: WorkerSpec, run_dir: Path, sockets: dict[str, Path], ready_fd: int) -> LaunchPlan:
        read_fd, write_fd = os.pipe()
        plan = LaunchPlan(argv=[], pass_fds=(write_fd,), keep_fds=(read_fd,))
        try:
            mount_fds = open_mount_fds(spec)
            plan.pass_fds += tuple(mount_fds.values())
            plan.argv = self.command(spec, run_dir, sockets, write_fd, ready_fd=ready_fd, mount_fds=mount_fds)
        except BaseException:
            plan.close()
            raise
        if self.settings.seccomp:
            self._add_seccomp(plan)
        return plan

    async def _signal_pid(self, process: asyncio.subprocess.Process, plan: LaunchPlan, log_path: Path) -> int:
        doc = await read_fd_async(plan.keep_fds[0], _first_json, timeout=30)
        if doc and "child-pid" in doc:
            return int(doc["child-pid"])
        await process.wait()
        raise SandboxError(
            f"bubblewrap could not start the sandbox: {last_error(log_path)}",
            hint="if user namespaces are disabled, enable them (sysctl kernel.unprivileged_userns_clone=1, or an "
                 'AppArmor profile for bwrap on Ubuntu 24.04+), or set [sandbox] plugin = "process"',
        )

    def _start_failed_hint(self) -> str:
        return "the sandbox could not be set up: check the spec's mounts and working directory"


def _first_json(buffer: bytes) -> dict[str, Any] | None:
    try:
        doc, _ = json.JSONDecoder().raw_decode(buffer.decode().lstrip())
    except ValueError:
        return None  # incomplete yet
    return doc
