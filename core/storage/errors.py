"""Storage errors. Missing objects raise :class:`hiclaw.errors.NotFoundError`; bad keys raise
:class:`hiclaw.errors.InvalidInputError` (see :mod:`hiclaw.storage.layout`)."""
from __future__ import annotations

from hiclaw.errors import HiclawError


class StorageError(HiclawError):
    """The storage backend failed or refused an operation (unreachable server, bad bucket…)."""


class AccessDeniedError(StorageError):
    """The credentials in use may not touch this key (another worker's home, an ungranted task,
    a revoked worker)."""
