"""Shared storage: the layout, key rules, sync logic and data models every backend uses.

Backends are plugins (``hiclaw.plugins.storage.local``, ``hiclaw.plugins.storage.minio``);
they implement :class:`hiclaw.protocols.Storage` (and, on the control plane,
:class:`hiclaw.protocols.ControlStorage`). Callers build keys with :mod:`hiclaw.storage.layout`::

    from hiclaw.storage import layout
    await storage.put(layout.task_spec("task-001"), b"# Spec ...")
    access = await storage.grant("alice", rw=[layout.task_dir("task-001")], ro=[layout.task_spec("task-001")])

This package imports no backend SDK; it is safe to import anywhere (CLI, workers).
"""
from hiclaw.storage import layout
from hiclaw.storage.errors import AccessDeniedError, StorageError
from hiclaw.storage.models import Mount, ObjectInfo, SyncDirection, SyncResult, WorkerStorageAccess

__all__ = [
    "AccessDeniedError",
    "Mount",
    "ObjectInfo",
    "StorageError",
    "SyncDirection",
    "SyncResult",
    "WorkerStorageAccess",
    "layout",
]
