"""Lock files in the ``skills`` CLI's formats, so either tool can manage what the other installed.

* Project (and ``--dir``): ``skills-lock.json``, ``{"version": 1, "skills": {name: entry}}`` with
  ``source``, ``sourceType``, ``sourceUrl``, ``ref``, ``skillPath``, ``computedHash`` (SHA-256 of
  the installed folder, see :mod:`hiclaw.registry.hashing`), ``wellKnownDigest``. Skills sorted
  by name, two-space JSON with a final newline — as the CLI writes it.
* Global: ``~/.agents/.skill-lock.json`` (or ``$XDG_STATE_HOME/skills/.skill-lock.json``),
  ``{"version": 3, "skills": {...}, "dismissed": {}}`` with ``skillFolderHash``,
  ``installedAt``/``updatedAt``, ``sourceBaseUrl`` and ``wellKnownDigest``.

Entries we write also carry ``computedHash`` and ``fileHashes`` (per-file SHA-256) in both
files; the CLI keeps unknown fields, and ``hiclaw skills check`` uses them to name the file that
changed. Unknown fields of entries written by others are preserved. Writes are atomic.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hiclaw.errors import InvalidInputError
from hiclaw.registry.models import FetchedSkill
from hiclaw.storage.files import write_text_atomically

PROJECT_LOCK_VERSION = 1
GLOBAL_LOCK_VERSION = 3


def _now() -> str:
    """ISO time as JavaScript's ``Date.toISOString()`` writes it (milliseconds, ``Z``)."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class LockFile:
    """One lock file (``flavour`` ``"project"`` = v1 or ``"global"`` = v3)."""

    def __init__(self, path: Path, flavour: str) -> None:
        self.path = path
        self.flavour = flavour
        self.version = PROJECT_LOCK_VERSION if flavour == "project" else GLOBAL_LOCK_VERSION
        self.data: dict[str, Any] = self._read()

    @property
    def skills(self) -> dict[str, dict[str, Any]]:
        return self.data["skills"]

    def _empty(self) -> dict[str, Any]:
        if self.flavour == "project":
            return {"version": self.version, "skills": {}}
        return {"version": self.version, "skills": {}, "dismissed": {}}

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self._empty()
        except OSError as exc:
            raise InvalidInputError(f"{self.path}: cannot read lock file ({exc.strerror})") from None
        try:
            data = json.loads(text)
        except ValueError:
            raise InvalidInputError(
                f"{self.path}: not valid JSON", hint="fix it or delete it (installed skills stay; re-add them to re-lock)"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("version"), int) or not isinstance(data.get("skills"), dict):
            return self._empty()
        if data["version"] < self.version:
            return self._empty()  # the CLI discards older formats the same way
        return data

    def save(self) -> None:
        if self.flavour == "project":
            body = {"version": self.data.get("version", self.version),
                    "skills": {k: self.skills[k] for k in sorted(self.skills)}}
            text = json.dumps(body, indent=2, ensure_ascii=False) + "\n"
        else:
            text = json.dumps(self.data, indent=2, ensure_ascii=False)
        write_text_atomically(self.path, text)

    def entry_for(self, skill: FetchedSkill, computed_hash: str, file_hashes: dict[str, str]) -> dict[str, Any]:
        """The entry the CLI would write for ``skill``, plus our hashes."""
        p = skill.provenance
        if self.flavour == "project":
            entry: dict[str, Any] = {"source": p.source}
            if p.source_type == "well-known":
                entry["sourceUrl"] = p.base_url
            elif p.source_url:
                entry["sourceUrl"] = p.source_url
            if p.ref:
                entry["ref"] = p.ref
            entry["sourceType"] = p.source_type
            if p.skill_path:
                entry["skillPath"] = p.skill_path
            entry["computedHash"] = computed_hash
            if p.well_known_digest:
                entry["wellKnownDigest"] = p.well_known_digest
        else:
            entry = {"source": p.source, "sourceType": p.source_type, "sourceUrl": p.source_url or p.source}
            if p.ref:
                entry["ref"] = p.ref
            if p.skill_path:
                entry["skillPath"] = p.skill_path
            entry["skillFolderHash"] = p.folder_hash
            if p.source_type == "well-known":
                entry["sourceBaseUrl"] = p.base_url
                entry["wellKnownDigest"] = p.well_known_digest
            entry["computedHash"] = computed_hash
            previous = self.skills.get(skill.name) or {}
            now = _now()
            entry["installedAt"] = previous.get("installedAt", now)
            entry["updatedAt"] = now
        entry["fileHashes"] = file_hashes
        return entry

    def put(self, name: str, entry: dict[str, Any]) -> None:
        self.skills[name] = entry

    def remove(self, name: str) -> bool:
        return self.skills.pop(name, None) is not None
