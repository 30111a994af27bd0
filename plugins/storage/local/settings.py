"""Settings of the local storage plugin (``[storage.settings]``)."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

from hiclaw.storage import layout


class LocalStorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Storage root; default ``$HICLAW_HOME/data``. Relative paths are taken under ``$HICLAW_HOME``.
    root: Path | None = None
    #: fsync every write and its folder before the rename makes it visible.
    fsync: bool = True
    #: Worker side only (filled in by ``grant``): what this worker may change / only read. Used
    #: for clear errors; the bind mounts are what actually enforces it.
    read_write: list[str] | None = None
    read_only: list[str] | None = None

    @field_validator("read_write", "read_only")
    @classmethod
    def _entries(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return [layout.validate_prefix(v, what="granted path") for v in value]
