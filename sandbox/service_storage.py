"""The storage probes: ``result_link_swap`` and ``skills_folder_link``, against the real local storage.

Both attack a local storage on the check's scratch root (:class:`ServiceComponents` ``storage``),
whose task folder is bound into the sandbox as a real grant is (:meth:`LocalStorage.grant`, by
descriptor). ``result_link_swap``: inside, ``result.md`` is swapped between a file and a link to
the scratch ``secrets.toml`` while the host reads it through the storage API :data:`READS`
times. ``skills_folder_link``: inside, every way to turn the read-only skills folder into a link
or write into it; then the host installs a bundled skill the way the control plane does
(:func:`hiclaw.control.skills.in_worker_skills`).
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiclaw.sandbox.service_components import Verdict, outcome
from hiclaw.sandbox.spec import Mount

if TYPE_CHECKING:
    from hiclaw.sandbox.service_rig import ServiceRig

TASK = "task-check"
SKILL = "find-skills"
READS = 2000
RESULT_CONTENT = "# done\n"


async def setup_storage(rig: ServiceRig) -> None:
    from hiclaw.protocols import NeutralPaths
    from hiclaw.storage import layout

    storage = rig.storage = rig.options.components.storage(rig.canaries.control)
    rig.closers.append(storage.stop)
    await storage.put(layout.task_spec(TASK), b"# the check's task\n")
    await storage.put(layout.task_result(TASK), RESULT_CONTENT.encode())
    access = await storage.grant(rig.worker, rw=[layout.task_dir(TASK)], ro=[layout.task_spec(TASK)])
    inside = storage.root
    if isinstance(rig.backend, NeutralPaths):  # as the provisioner shows it to a worker
        access, inside = access.relocated(rig.backend.storage_root_inside), rig.backend.storage_root_inside
    rig.inside_root = Path(inside)
    rig.mounts = [Mount(host_path=m.host_path, sandbox_path=m.sandbox_path, read_only=m.read_only, beneath=m.beneath)
                  for m in access.mounts]
    if rig.options.wants("result_link_swap"):
        rig.sandbox_plan["link_swap"] = {"result": str(rig.inside_root / layout.task_result(TASK)),
                                         "target": str(rig.canaries.control / "secrets.toml"), "content": RESULT_CONTENT}
    if rig.options.wants("skills_folder_link"):
        rig.sandbox_plan["skills"] = {"folder": str(rig.inside_root / layout.agent_skills_dir(rig.worker).rstrip("/")),
                                      "link_to": str(rig.canaries.other_home)}


async def link_swap(rig: ServiceRig, message: dict[str, Any]) -> dict[str, Any]:
    from hiclaw.errors import HiclawError
    from hiclaw.storage import layout

    canary = rig.canaries.values["secrets"].encode()
    outcomes: Counter[str] = Counter()
    for _ in range(READS):
        try:
            data = await rig.storage.get(layout.task_result(TASK))
        except (HiclawError, OSError):
            outcomes["refused"] += 1
            continue
        outcomes["canary" if canary in data else "file" if data == RESULT_CONTENT.encode() else "other"] += 1
    rig.found["result_link_swap"] = dict(outcomes)
    return {"reads": READS}


async def install_skill(rig: ServiceRig, message: dict[str, Any]) -> dict[str, Any]:
    from hiclaw.control.skills import in_worker_skills
    from hiclaw.storage import layout
    from hiclaw.storage.safefs import Beneath, LinkRefused

    root = Path(rig.storage.root)
    home = root / layout.agent_home(rig.worker).rstrip("/")
    skills = root / layout.agent_skills_dir(rig.worker).rstrip("/")
    changed = _skills_changed(home, skills)
    before = _snapshot(root, skills)  # everything but the worker's skills: the install must touch nothing else
    service = rig.options.components.skills(rig.config.skills)
    install_error = ""
    try:
        await in_worker_skills(rig.storage, rig.worker, lambda target: service.seed(rig.worker, [SKILL], target))
    except Exception as exc:  # noqa: BLE001 - refusing the install is a fine outcome; reported
        install_error = f"{type(exc).__name__}: {exc}"
    finally:
        await service.aclose()
    after = _snapshot(root, skills)
    landed = sorted(k for k in after if after[k] != before.get(k)) + sorted(set(before) - set(after))
    try:
        installed = Beneath(root).stat(f"{layout.agent_skills_dir(rig.worker)}{SKILL}/SKILL.md") is not None
    except LinkRefused:
        installed = False
    rig.found["skills_folder_link"] = {"changed": changed, "landed_outside": landed, "installed": installed,
                                       "install_error": install_error,
                                       "target_writable": os.access(rig.canaries.other_home, os.W_OK)}
    return {"installed": installed}


def judge_link_swap(rig: ServiceRig, seen: dict[str, Any]) -> Verdict:
    outcomes = rig.found["result_link_swap"]
    swaps = int(seen.get("swaps") or 0)
    detail = (f"{READS} reads through the storage API while the worker swapped result.md {swaps} times: "
              f"{outcomes.get('file', 0)} got the file, {outcomes.get('refused', 0)} refused the link, "
              f"{outcomes.get('canary', 0)} returned secrets.toml")
    with tempfile.TemporaryDirectory(dir=rig.work) as tmp:  # does following the link really read it?
        link = Path(tmp) / "result.md"
        link.symlink_to(rig.canaries.control / "secrets.toml")
        readable = rig.canaries.values["secrets"].encode() in link.read_bytes()
    raced = outcomes.get("file", 0) > 0 and outcomes.get("refused", 0) + outcomes.get("canary", 0) > 0
    baseline = outcome(readable and raced, ("a plain open() through the link reads the canary; " if readable else
                                            "the link target is not readable here; ")
                       + ("the reads met both the file and the link" if raced else
                          "the swaps never met the reads both ways (nothing raced)"))
    return outcome(outcomes.get("canary", 0) > 0, detail), baseline


def judge_skills(rig: ServiceRig, seen: dict[str, Any]) -> Verdict:
    found = rig.found["skills_folder_link"]
    tried = ", ".join(f"{how}: {result}" for how, result in (seen.get("attempts") or {}).items())
    bad = [*found["changed"], *(f"the install wrote {p}" for p in found["landed_outside"][:5])]
    detail = (f"tried — {tried}; " if tried else "") + (
        "; ".join(bad) if bad else f"the skill was installed into agents/{rig.worker}/skills/ only")
    if found["install_error"]:
        detail += f"; the install was refused ({found['install_error'][:160]})"
    baseline = outcome(found["installed"] and found["target_writable"],
                       "the installer installs into the worker's skills, and the link target is writable by the host"
                       if found["installed"] else "the skill was not installed, so the install proved nothing")
    return outcome(bool(bad), detail), baseline


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """``relative path → (mode, size, mtime)`` of everything under ``root`` but ``skip`` (no link followed)."""
    found: dict[str, tuple[int, int, int]] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d != skip]
        for name in [*dirs, *files]:
            path = here / name
            with contextlib.suppress(OSError):
                st = path.lstat()
                found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def _skills_changed(home: Path, skills: Path) -> list[str]:
    """What the worker changed about its skills folder, as the host sees it (no link followed)."""
    changed = []
    try:
        if not stat.S_ISDIR(skills.lstat().st_mode):
            changed.append(f"{skills.name}/ is no longer a folder")
    except FileNotFoundError:
        changed.append(f"{skills.name}/ is gone")
    for name, what in (("skills.moved", "moved away"), ("skills/planted.md", "a file written into it"),
                       ("skills/planted-link", "a link made in it")):
        if os.path.lexists(home / name):
            changed.append(what)
    return changed
