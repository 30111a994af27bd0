"""What a worker may touch: normalising grants and checking keys against them (all backends).

A grant entry is a folder (ends with ``/``: everything under it) or one key (exactly that
object). A worker always gets its own home ``agents/<self>/`` read-write, except its skills folder
``agents/<self>/skills/``, always read-only (the control plane installs skills); other entries
must lie under ``shared/`` — a worker is never granted another agent's home. Read-only entries are carved
out of read-write folders (``spec.md`` inside a read-write task folder stays read-only); a
read-write entry inside a read-only folder is refused.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hiclaw.errors import InvalidInputError
from hiclaw.storage import layout


@dataclass(frozen=True)
class Grant:
    worker: str
    read_write: tuple[str, ...]  # home first
    read_only: tuple[str, ...]

    @property
    def entries(self) -> tuple[str, ...]:
        return self.read_write + self.read_only


def _entry(value: str, worker: str) -> str:
    entry = layout.validate_prefix(value, what="granted path")
    if not entry:
        raise InvalidInputError("cannot grant the whole storage to a worker", hint="grant a folder under shared/")
    if any(c in entry for c in "*?$"):
        raise InvalidInputError(
            f"cannot grant {entry!r}: '*', '?' and '$' are policy wildcards", hint="grant a plain folder or key"
        )
    if not entry.startswith(layout.SHARED) and not entry.startswith(layout.agent_home(worker)):
        raise InvalidInputError(
            f"cannot grant {entry!r} to {worker!r}: only folders and files under shared/ can be granted",
            hint="a worker's own home is always granted; other agents' homes never are",
        )
    return entry


def normalize_grant(worker: str, rw: Iterable[str] = (), ro: Iterable[str] = ()) -> Grant:
    """Validate a grant request; returns it with the worker's home first and duplicates removed."""
    layout.check_agent(worker)
    if isinstance(rw, str) or isinstance(ro, str):
        raise InvalidInputError("grant: rw and ro must be lists of paths, not a single string", hint="wrap it in a list")
    home = layout.agent_home(worker)
    read_write = list(dict.fromkeys([home, *(_entry(v, worker) for v in rw)]))
    # A worker's skills are installed by the control plane only (a skill is code the team runs):
    # its skills folder is always read-only to it, carved out of its read-write home.
    skills = layout.agent_skills_dir(worker)
    read_only = [e for e in dict.fromkeys([skills, *(_entry(v, worker) for v in ro)]) if e not in read_write]
    for ro_entry in read_only:
        inner = [e for e in read_write if e != ro_entry and covers(ro_entry, e)]
        if inner:
            raise InvalidInputError(
                f"cannot grant {inner[0]!r} read-write inside the read-only {ro_entry!r}",
                hint="read-only entries can only narrow a read-write folder, not the other way round",
            )
    return Grant(worker, tuple(read_write), tuple(read_only))


def covers(entry: str, key: str) -> bool:
    return key.startswith(entry) if entry.endswith("/") else key == entry


def may_read(key: str, read_write: Sequence[str], read_only: Sequence[str]) -> bool:
    return any(covers(e, key) for e in (*read_write, *read_only))


def may_write(key: str, read_write: Sequence[str], read_only: Sequence[str]) -> bool:
    if any(covers(e, key) for e in read_only):
        return False
    return any(covers(e, key) for e in read_write)
