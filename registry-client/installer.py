"""Install, list, remove and check skills in a :class:`~hiclaw.registry.scopes.Scope`.

Installs are atomic: the skill is validated in memory first (a refused skill writes nothing),
written to a staging folder beside its destination, re-hashed from disk, then renamed into
place; the lock file is written last, atomically, and a failure there puts the previous version
back. Readers never see a half-written skill.
"""
from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiclaw.registry import safety
from hiclaw.registry.errors import SkillNotFoundError, UnsafeSkillError
from hiclaw.registry.frontmatter import NAME_RE, SKILL_FILE, parse_skill_md, strip_controls
from hiclaw.registry.hashing import deterministic_tar_gz, file_digests, files_hash, read_skill_folder, sha256_digest
from hiclaw.registry.models import FetchedSkill, InstalledSkill, Limits
from hiclaw.registry.scopes import Scope

STAGING_PREFIX = ".hiclaw-staging-"
OLD_PREFIX = ".hiclaw-old-"


def _check_name(name: str) -> None:
    if not NAME_RE.match(name) or len(name) > 64:
        raise SkillNotFoundError(f"{strip_controls(name)[:70]!r} is not a skill name", hint="see `hiclaw skills list`")


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    root.mkdir(mode=0o755)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        # O_EXCL|O_NOFOLLOW: never write through a link, never overwrite (paths are unique).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)


def install(skill: FetchedSkill, scope: Scope, *, limits: Limits | None = None) -> InstalledSkill:
    """Validate ``skill`` again, then install it into ``scope`` atomically (see module docstring)."""
    limits = limits or Limits()
    where = f"skill {skill.name!r}"
    safety.check_files(skill.files, limits, where=where)
    meta = parse_skill_md(skill.files[SKILL_FILE], where=f"{where}: SKILL.md")
    if meta.name != skill.name:
        raise UnsafeSkillError(f"{where}: SKILL.md is named {meta.name!r}")
    target = scope.skill_dir(skill.name)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UnsafeSkillError(f"{target} exists and is not a folder", hint="remove it first")
    expected = files_hash(skill.files)
    scope.skills_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    staging = scope.skills_dir / f"{STAGING_PREFIX}{skill.name}-{token}"
    old = scope.skills_dir / f"{OLD_PREFIX}{skill.name}-{token}"
    lock = scope.lock()
    try:
        _write_tree(staging, skill.files)
        on_disk = read_skill_folder(staging)
        if on_disk.keys() != skill.files.keys() or files_hash(on_disk) != expected:
            raise UnsafeSkillError(f"{where}: what was written differs from what was verified", hint="check the disk")
        had_previous = target.exists()
        if had_previous:
            os.rename(target, old)
        os.rename(staging, target)
        try:
            lock.put(skill.name, lock.entry_for(skill, expected, file_digests(skill.files)))
            lock.save()
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            if had_previous:
                os.rename(old, target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return InstalledSkill(
        name=skill.name, description=meta.description, path=str(target), scope=scope.label,
        source=skill.provenance.source, source_type=skill.provenance.source_type, computed_hash=expected,
        files=len(skill.files),
    )


def installed(scope: Scope) -> list[InstalledSkill]:
    """Skills present in the scope's folder (with or without a lock entry), by name."""
    if not scope.skills_dir.is_dir():
        return []
    entries = scope.lock().skills
    found: list[InstalledSkill] = []
    for folder in sorted(scope.skills_dir.iterdir()):
        skill_md = folder / SKILL_FILE
        if folder.name.startswith(".") or not folder.is_dir() or not skill_md.is_file():
            continue
        try:
            meta = parse_skill_md(skill_md.read_bytes(), where=str(skill_md))
        except (UnsafeSkillError, OSError):
            continue
        entry = entries.get(folder.name) or entries.get(meta.name) or {}
        found.append(InstalledSkill(
            name=meta.name, description=meta.description, path=str(folder), scope=scope.label,
            source=entry.get("source"), source_type=entry.get("sourceType"),
            computed_hash=entry.get("computedHash"),
            files=sum(len(files) for _, _, files in os.walk(folder)),
        ))
    return found


def _agent_links(scope: Scope, name: str, target: Path) -> list[Path]:
    """Symlinks other agents' folders hold to ``target`` (the CLI makes them on install)."""
    if scope.agents_root is None or not target.exists():
        return []
    real = target.resolve()
    links = []
    for pattern in (".*/skills", ".*/*/skills", ".*/*/*/skills"):
        for skills_dir in scope.agents_root.glob(pattern):
            candidate = skills_dir / name
            if candidate.is_symlink() and candidate.resolve() == real:
                links.append(candidate)
    return links


def remove(scope: Scope, name: str) -> Path:
    """Remove an installed skill, its lock entry and the CLI's agent symlinks to it."""
    _check_name(name)
    target = scope.skill_dir(name)
    lock = scope.lock()
    if not (target.exists() or target.is_symlink()) and name not in lock.skills:
        raise SkillNotFoundError(f"skill {name!r} is not installed in {scope.skills_dir}", hint="see `hiclaw skills list`")
    links = _agent_links(scope, name, target)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        doomed = scope.skills_dir / f"{OLD_PREFIX}{name}-{secrets.token_hex(4)}"
        os.rename(target, doomed)  # disappears at once for readers; deleted below
        shutil.rmtree(doomed)
    for link in links:
        link.unlink(missing_ok=True)
    if lock.remove(name):
        lock.save()
    return target


@dataclass
class CheckResult:
    name: str
    status: str  # ok | modified | missing | untracked | unverified
    path: str
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("modified", "missing")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _compare(name: str, folder: Path, entry: dict[str, Any]) -> CheckResult:
    files = read_skill_folder(folder)
    result = CheckResult(name, "ok", str(folder))
    expected = entry.get("computedHash")
    per_file = entry.get("fileHashes")
    if isinstance(per_file, dict):
        actual = file_digests(files)
        result.changed = sorted(p for p in per_file if p in actual and actual[p] != per_file[p])
        result.removed = sorted(p for p in per_file if p not in actual)
        result.added = sorted(p for p in actual if p not in per_file)
    if isinstance(expected, str) and expected:
        if files_hash(files) != expected:
            result.status = "modified"
    elif entry.get("wellKnownDigest") and set(files) == {SKILL_FILE}:
        # A one-file well-known skill: its digest is the SKILL.md's own hash.
        if sha256_digest(files[SKILL_FILE]) != entry["wellKnownDigest"]:
            result.status, result.changed = "modified", [SKILL_FILE]
    elif entry.get("wellKnownDigest") and sha256_digest(deterministic_tar_gz(files)) == entry["wellKnownDigest"]:
        pass  # an archive from a hiclaw registry: rebuilt byte for byte, so the files are intact
    elif not isinstance(per_file, dict):
        result.status, result.detail = "unverified", "its lock entry has no content hash (installed by another tool)"
        return result
    if result.changed or result.added or result.removed:
        result.status = "modified"
    if result.status == "modified" and not (result.changed or result.added or result.removed):
        result.detail = "content differs from the locked hash"
    return result


def check(scope: Scope) -> list[CheckResult]:
    """Re-hash every locked skill against its lock entry; report untracked folders too."""
    lock = scope.lock()
    results = []
    for name in sorted(lock.skills):
        folder = scope.skill_dir(name)
        entry = lock.skills[name] if isinstance(lock.skills[name], dict) else {}
        if folder.is_symlink() or not folder.is_dir():
            results.append(CheckResult(name, "missing", str(folder), detail="locked but not installed"))
            continue
        results.append(_compare(name, folder, entry))
    if scope.skills_dir.is_dir():
        for folder in sorted(scope.skills_dir.iterdir()):
            if folder.name.startswith(".") or folder.name in lock.skills or not (folder / SKILL_FILE).is_file():
                continue
            results.append(CheckResult(folder.name, "untracked", str(folder), detail="installed without a lock entry"))
    return results
