"""Resource limits of local sandboxes (bwrap, process): cgroups where possible, rlimits otherwise.

``[sandbox.settings]`` asks for ``memory_mb``, ``max_processes`` and ``max_open_files`` per
worker; :func:`plan_limits` decides how each one is enforced on this machine, and says so (``hiclaw
sandbox check`` prints it):

* **memory** — a cgroup memory limit on the whole sandbox (v2 ``memory.max``, v1
  ``memory.limit_in_bytes``; swap included where the kernel accounts it), when the control plane
  can create a child cgroup it owns; otherwise ``RLIMIT_AS`` on each process (address space, not
  resident memory: cruder, but a memory hog still stops).
* **processes** — a cgroup ``pids.max`` (processes *and* threads of the sandbox); otherwise
  ``RLIMIT_NPROC`` set inside the sandbox's own user namespace, where (Linux ≥ 5.14) the kernel
  counts only the processes of that namespace — never the control plane's, which keeps its own
  limit. It does not apply to root (uid 0 is exempt from ``RLIMIT_NPROC``) nor without a user
  namespace (the ``process`` backend: it would count all of your processes), so there is then no
  process limit, and the check says so.
* **open files** — ``RLIMIT_NOFILE``, always.

Cgroups: one folder per control home, ``hiclaw-<digest>``, under the control plane's own cgroup
(in each v1 hierarchy, or the v2 one), with one child per worker. The sandbox's first process
enters its cgroup before it runs anything (a ``/bin/sh`` that writes its own pid and then
``exec``\\ s bwrap), so nothing it starts can be outside. The control plane stays where it was:
no limit of a worker applies to it.

:func:`raise_fd_limit` raises the control plane's own soft ``RLIMIT_NOFILE`` to the hard limit:
it serves every worker's bridges.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import resource
import signal
from dataclasses import dataclass, field
from pathlib import Path

#: Files of a cgroup folder, per controller and version: (limit file, optional companion files).
_MEMORY_FILES = {2: ("memory.max", ("memory.swap.max",)), 1: ("memory.limit_in_bytes", ("memory.memsw.limit_in_bytes",))}
_CONTROLLERS = ("memory", "pids")
#: The kernel from which ``RLIMIT_NPROC`` counts per user namespace (ucounts).
_NPROC_PER_USERNS = (5, 14)


def raise_fd_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; the new soft limit.

    The control plane holds descriptors for every worker's bridged connections; the usual soft
    default (1024) is far below what the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # the kernel refuses more than fs.nr_open
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    for candidate in (target, 10240):  # macOS refuses more than OPEN_MAX
        if candidate <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (candidate, hard))
        except (ValueError, OSError):
            continue
        return candidate
    return soft


# --------------------------------------------------------------------------- cgroups


def _mountinfo() -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, fs type, super options) of every cgroup mount of this process."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            head, _, tail = line.partition(" - ")
            fields, rest = head.split(), tail.split()
            if len(fields) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
                found.append((fields[3], _unescape(fields[4]), rest[0], set(rest[2].split(","))))
    return found


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per hierarchy: ``""`` → the v2 path, controller name → its v1 path."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            number, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if number == "0" and not controllers:
                own[""] = path
            for name in controllers.split(","):
                if name:
                    own[name] = path
    return own


def _folder(mount_root: str, mount_point: str, own: str) -> Path | None:
    """Where ``own`` (a path in the hierarchy) is under ``mount_point`` (mounted at ``mount_root``)."""
    root = mount_root.rstrip("/")
    if own != root and not own.startswith(root + "/"):
        return None  # our cgroup is not visible in this mount
    return Path(mount_point) / own[len(root):].lstrip("/")


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _why(exc: OSError) -> str:
    return {errno.EBUSY: "it holds processes, so it cannot hand controllers to children",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "mounted read-only"}.get(exc.errno or 0, exc.strerror or str(exc))


@dataclass
class WorkerCgroup:
    """One worker's cgroup: a folder per hierarchy (v2: one folder for both controllers)."""

    version: int
    folders: dict[str, Path]  # controller → folder

    @property
    def paths(self) -> list[Path]:
        return sorted(set(self.folders.values()))

    def create(self, memory_bytes: int | None, processes: int | None) -> None:
        """Create (or empty and reuse) the folders and write the limits."""
        for path in self.paths:
            if path.exists() and self.processes():
                self.kill()
            with contextlib.suppress(FileExistsError):
                path.mkdir()
        if "memory" in self.folders and memory_bytes:
            limit, companions = _MEMORY_FILES[self.version]
            folder = self.folders["memory"]
            swap = folder / companions[0]
            value = str(memory_bytes)
            if self.version == 1 and swap.exists():  # memory+swap may never be below memory
                with contextlib.suppress(OSError):
                    _write(swap, value)
            _write(folder / limit, value)
            if swap.exists():
                _write(swap, "0" if self.version == 2 else value)  # v2 counts swap apart: none at all
        if "pids" in self.folders and processes:
            _write(self.folders["pids"] / "pids.max", str(processes))

    def procs_files(self) -> list[Path]:
        return [path / "cgroup.procs" for path in self.paths]

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into this cgroup, then ``exec``\\ s it
        (same pid, nothing started before the move)."""
        script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 1; shift; done; shift; exec "$@"'
        return ["/bin/sh", "-c", script, "hiclaw-cgroup", *map(str, self.procs_files()), "--", *argv]

    def processes(self) -> list[int]:
        pids: set[int] = set()
        for procs in self.procs_files():
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
        return sorted(pids)

    def kill(self) -> None:
        """SIGKILL to every process still in it (what a run left behind)."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> bool:
        """Remove the folders; False if one still holds processes."""
        removed = True
        for path in self.paths:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed

    def usage(self) -> dict[str, int]:
        """What the kernel reports: ``pids`` (now), ``pids_peak``, ``memory_peak`` (bytes)."""
        files = {"pids": ("pids", ("pids.current",)), "pids_peak": ("pids", ("pids.peak",)),
                 "memory_peak": ("memory", ("memory.peak", "memory.max_usage_in_bytes"))}
        found: dict[str, int] = {}
        for key, (controller, names) in files.items():
            folder = self.folders.get(controller)
            for name in names if folder is not None else ():
                try:
                    found[key] = int((folder / name).read_text().split()[0])  # type: ignore[operator]
                except (OSError, ValueError, IndexError):
                    continue
                break
        return found


@dataclass
class CgroupTree:
    """``hiclaw-<digest>`` folders the control plane created under its own cgroup(s). Removed
    whenever it is empty, created again (:meth:`ensure`) when a worker starts."""

    version: int
    folders: dict[str, Path]  # controller → the tree's folder in that controller's hierarchy

    def ensure(self) -> None:
        """Create the folders if missing; on v2, hand the controllers to the workers' cgroups."""
        for folder in set(self.folders.values()):
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
            if self.version == 2:
                _write(folder / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(self.folders)))

    def worker(self, name: str) -> WorkerCgroup:
        return WorkerCgroup(self.version, {c: folder / name for c, folder in self.folders.items()})

    def remove(self) -> None:
        """Remove the folders if no worker's cgroup is left in them."""
        for folder in set(self.folders.values()):
            with contextlib.suppress(OSError):
                folder.rmdir()


def tree_name(control_home: Path) -> str:
    """One tree per control home: two teams on a machine never share cgroups."""
    return "hiclaw-" + hashlib.sha256(str(control_home.resolve()).encode()).hexdigest()[:10]


def find_cgroup_tree(name: str, controllers: set[str]) -> tuple[CgroupTree | None, str]:
    """Where the tree ``name`` for ``controllers`` can be (tried by creating it, and removed again
    unless workers' cgroups are in it: :meth:`CgroupTree.ensure` creates it when a worker starts);
    ``(None, why not)`` if no cgroup hierarchy lets this process create child cgroups with them.
    Prefers cgroup v2."""
    tree, how = _find_cgroup_tree(name, controllers)
    if tree is not None:
        tree.remove()
    return tree, how


def _find_cgroup_tree(name: str, controllers: set[str]) -> tuple[CgroupTree | None, str]:
    if not controllers:
        return None, "no memory or process limit is configured"
    mounts, own = _mountinfo(), _own_cgroups()
    reasons: list[str] = []
    for root, point, fstype, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        base = _folder(root, point, own[""])
        if base is None:
            continue
        try:
            available = set((base / "cgroup.controllers").read_text().split())
        except OSError as exc:
            reasons.append(f"cgroup v2 at {base}: {_why(exc)}")
            continue
        if not controllers <= available:
            reasons.append(f"cgroup v2 at {point} offers no {', '.join(sorted(controllers - available))} controller")
            continue
        enable = " ".join(f"+{c}" for c in sorted(controllers))
        try:
            enabled = set((base / "cgroup.subtree_control").read_text().split())
            if not controllers <= enabled:
                _write(base / "cgroup.subtree_control", enable)
            found = CgroupTree(2, {c: base / name for c in controllers})
            found.ensure()
        except OSError as exc:
            reasons.append(f"cgroup v2: cannot create child cgroups of {base} with {', '.join(sorted(controllers))}: "
                           f"{_why(exc)}")
            continue
        return found, f"cgroup v2 ({base / name})"
    folders: dict[str, Path] = {}
    for controller in sorted(controllers):
        for root, point, fstype, options in mounts:
            if fstype != "cgroup" or controller not in options or controller not in own:
                continue
            base = _folder(root, point, own[controller])
            if base is None:
                continue
            try:
                with contextlib.suppress(FileExistsError):
                    (base / name).mkdir()
            except OSError as exc:
                reasons.append(f"cgroup v1 {controller} at {base}: {_why(exc)}")
                continue
            folders[controller] = base / name
            break
    if folders:
        where = ", ".join(f"{c} {p}" for c, p in sorted(folders.items()))
        return CgroupTree(1, folders), f"cgroup v1 ({where})"
    return None, "; ".join(reasons) or "no cgroup hierarchy with a memory or pids controller is mounted"


# --------------------------------------------------------------------------- the plan


def _kernel_at_least(version: tuple[int, int]) -> bool:
    try:
        parts = tuple(int(p) for p in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return parts >= version


@dataclass
class LimitPlan:
    """How a backend enforces its limits on this machine (the same for every worker)."""

    tree: CgroupTree | None
    memory_bytes: int | None
    processes: int | None
    #: Launcher options: ``--rlimit-as``, ``--rlimit-nofile``, ``--rlimit-nproc`` → value.
    rlimits: dict[str, int] = field(default_factory=dict)
    #: ``memory``, ``processes``, ``open_files`` → how (one line each, for ``hiclaw sandbox check``).
    how: dict[str, str] = field(default_factory=dict)

    def cgroup(self, worker: str) -> WorkerCgroup | None:
        return self.tree.worker(worker) if self.tree else None


def plan_limits(settings: object, control_home: Path, *, user_namespace: bool) -> LimitPlan:
    """Decide how ``settings`` (``memory_mb``, ``max_processes``, ``max_open_files``, ``cgroups``)
    are enforced here. ``user_namespace``: the sandbox has its own user namespace (bwrap)."""
    memory_mb = getattr(settings, "memory_mb", None)
    processes = getattr(settings, "max_processes", None)
    open_files = getattr(settings, "max_open_files", None)
    memory_bytes = memory_mb * 1024 * 1024 if memory_mb else None
    wanted = ({"memory"} if memory_bytes else set()) | ({"pids"} if processes else set())
    tree, where = (None, "cgroups are off ([sandbox.settings] cgroups = false)")
    if wanted and getattr(settings, "cgroups", True):
        tree, where = find_cgroup_tree(tree_name(control_home), wanted)
    plan = LimitPlan(tree, memory_bytes, processes)
    controllers, version = (set(tree.folders), tree.version) if tree else (set(), 0)
    if not memory_bytes:
        plan.how["memory"] = "none (memory_mb is not set)"
    elif "memory" in controllers:
        plan.how["memory"] = f"{memory_mb} MiB for the whole sandbox (cgroup v{version} memory)"
    else:
        plan.rlimits["--rlimit-as"] = memory_bytes
        plan.how["memory"] = f"{memory_mb} MiB of address space per process (RLIMIT_AS; no cgroup: {where})"
    if not processes:
        plan.how["processes"] = "none (max_processes is not set)"
    elif "pids" in controllers:
        plan.how["processes"] = f"{processes} processes and threads for the whole sandbox (cgroup v{version} pids)"
    elif not user_namespace:
        plan.how["processes"] = (f"NONE: no cgroup ({where}), and without a user namespace RLIMIT_NPROC would "
                                 "count all of your processes")
    elif os.geteuid() == 0:
        plan.how["processes"] = f"NONE: no cgroup ({where}), and RLIMIT_NPROC does not apply to root"
    elif not _kernel_at_least(_NPROC_PER_USERNS):
        plan.how["processes"] = (f"NONE: no cgroup ({where}), and before Linux 5.14 RLIMIT_NPROC counts all of "
                                 "your processes")
    else:
        plan.rlimits["--rlimit-nproc"] = processes
        plan.how["processes"] = (f"{processes} processes and threads (RLIMIT_NPROC in the sandbox's user namespace; "
                                 f"no cgroup: {where})")
    if open_files:
        plan.rlimits["--rlimit-nofile"] = open_files
        plan.how["open_files"] = f"{open_files} per process (RLIMIT_NOFILE)"
    else:
        plan.how["open_files"] = "inherited (max_open_files is not set)"
    return plan
