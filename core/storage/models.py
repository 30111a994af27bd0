"""Data the storage layer hands across boundaries: object listings, grants, mounts, sync reports."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field


class ObjectInfo(TypedDict):
    """One entry of :meth:`Storage.list` / :meth:`Storage.stat` (a plain dict, JSON-ready).

    ``mtime`` is seconds since the epoch (UTC); ``etag`` identifies one version of the content
    (S3: the server's ETag; local: size and nanosecond mtime). Folders (only in non-recursive
    listings) have ``is_dir=True``, a key ending in ``/``, size 0 and no mtime/etag.
    """

    key: str
    size: int
    mtime: float | None
    etag: str | None
    is_dir: bool


SyncDirection = Literal["up", "down"]


class Mount(BaseModel):
    """A bind mount the sandbox must set up for a worker (same shape as ``hiclaw.sandbox.spec.Mount``)."""

    model_config = ConfigDict(frozen=True)

    host_path: Path
    sandbox_path: Path
    read_only: bool
    #: The storage root ``host_path`` lies under: the sandbox opens ``host_path`` from it without
    #: following any link and binds the descriptor, so a worker that swapped a folder or file
    #: for a link between two runs cannot have anything else bound in its place.
    beneath: Path | None = None


class WorkerStorageAccess(BaseModel):
    """What :meth:`ControlStorage.grant` returns for one worker.

    ``settings`` are the worker-side plugin settings (scoped credentials for S3, the root path
    for local storage) — never root keys. ``mounts`` is non-empty for the local backend only.
    """

    worker: str
    plugin: str
    settings: dict[str, Any]
    mounts: list[Mount] = Field(default_factory=list)
    read_write: list[str] = Field(default_factory=list)  # prefixes/keys the worker may change
    read_only: list[str] = Field(default_factory=list)  # prefixes/keys it may only read

    def relocated(self, inside: Path) -> WorkerStorageAccess:
        """The same access with the storage shown at ``inside`` in the sandbox: each mount under
        a storage root (``beneath``) appears at ``inside/<its key>``, and a ``root`` setting that
        names that storage root (the local backend's) becomes ``inside``, so the worker finds its
        files there — and never learns the host path."""
        roots = {m.beneath for m in self.mounts if m.beneath is not None}
        if not roots:
            return self
        mounts = [m if m.beneath is None else m.model_copy(update={"sandbox_path": inside / m.host_path.relative_to(m.beneath)})
                  for m in self.mounts]
        settings = dict(self.settings)
        if settings.get("root") in {str(r) for r in roots}:
            settings["root"] = str(inside)
        return self.model_copy(update={"mounts": mounts, "settings": settings})


class SyncResult(BaseModel):
    """What :meth:`Storage.sync` did (or, with ``dry_run``, would do)."""

    direction: SyncDirection
    prefix: str
    local_dir: Path
    transferred: list[str] = Field(default_factory=list)  # relative paths copied
    deleted: list[str] = Field(default_factory=list)  # relative paths removed on the target side
    unchanged: int = 0
    skipped_links: list[str] = Field(default_factory=list)  # local symlinks never followed
    bytes: int = 0
    dry_run: bool = False
