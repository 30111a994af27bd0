"""Local-directory storage (the default): objects are files under one root folder.

Configure it in ``config.toml`` (every key is optional)::

    [storage]
    plugin = "local-storage"

    [storage.settings]
    root = "/srv/hiclaw-data"   # default: $HICLAW_HOME/data; relative paths are under $HICLAW_HOME
    fsync = true               # fsync each write (and its folder) before it becomes visible

Writes are atomic (temporary file in the same folder, fsync, rename): a reader sees the old
file or the whole new one. Workers get access as bind mounts set up by the sandbox (see
:meth:`LocalStorage.grant <hiclaw.plugins.storage.local.backend.LocalStorage.grant>`): their
own home read-write, granted ``shared/`` folders read-write, task specs read-only — inside the
sandbox only those paths exist. This module only registers the factory; the implementation is
in :mod:`hiclaw.plugins.storage.local.backend`.
"""
from __future__ import annotations

from typing import Any

from hiclaw import hookimpl
from hiclaw.plugins.storage.local.settings import LocalStorageSettings
from hiclaw.protocols import RegisterStorage


def make_local_storage(settings: LocalStorageSettings, ctx: Any) -> Any:
    from hiclaw.plugins.storage.local.backend import LocalStorage

    return LocalStorage.from_settings(settings, ctx)


@hookimpl
def hiclaw_register_storage(register: RegisterStorage) -> None:
    register(
        "local-storage",
        make_local_storage,
        settings_model=LocalStorageSettings,
        description="Files under a local folder ($HICLAW_HOME/data); workers get bind mounts",
    )
