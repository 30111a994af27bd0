"""Where skills live: the ``skills`` CLI's project and global scopes, plus explicit folders.

=========  ====================================  =========================================
scope      skills folder                         lock file
=========  ====================================  =========================================
project    ``./.agents/skills/<name>/``          ``./skills-lock.json`` (v1)
global     ``~/.agents/skills/<name>/``          ``~/.agents/.skill-lock.json`` (v3; under
                                                 ``$XDG_STATE_HOME/skills/`` when set)
dir        ``D/<name>/``                         ``D/skills-lock.json`` (v1)
=========  ====================================  =========================================

``dir`` is for folders the CLI has no notion of, such as a worker's ``agents/<name>/skills/``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hiclaw.registry.lockfile import LockFile

PROJECT_LOCK = "skills-lock.json"
GLOBAL_LOCK = ".skill-lock.json"


@dataclass(frozen=True)
class Scope:
    kind: str  # "project" | "global" | "dir"
    skills_dir: Path
    lock_path: Path
    #: Folder whose ``.*/skills/<name>`` symlinks (made by the CLI for other agents) we tidy up.
    agents_root: Path | None = None

    @property
    def label(self) -> str:
        return {"project": "project", "global": "global"}.get(self.kind, str(self.skills_dir))

    def lock(self) -> LockFile:
        return LockFile(self.lock_path, "global" if self.kind == "global" else "project")

    def skill_dir(self, name: str) -> Path:
        return self.skills_dir / name


def project_scope(cwd: Path | None = None) -> Scope:
    root = (cwd or Path.cwd()).absolute()
    return Scope("project", root / ".agents" / "skills", root / PROJECT_LOCK, agents_root=root)


def global_scope(home: Path | None = None) -> Scope:
    home = home or Path.home()
    state = os.environ.get("XDG_STATE_HOME")
    lock = Path(state) / "skills" / GLOBAL_LOCK if state else home / ".agents" / GLOBAL_LOCK
    return Scope("global", home / ".agents" / "skills", lock, agents_root=home)


def dir_scope(folder: Path) -> Scope:
    folder = folder.expanduser().absolute()
    return Scope("dir", folder, folder / PROJECT_LOCK)


def resolve_scope(*, global_: bool = False, directory: Path | str | None = None, cwd: Path | None = None) -> Scope:
    if global_ and directory is not None:
        from hiclaw.errors import InvalidInputError

        raise InvalidInputError("choose either -g (global) or --dir, not both")
    if directory is not None:
        return dir_scope(Path(directory))
    return global_scope() if global_ else project_scope(cwd)
