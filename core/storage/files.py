"""Atomic local file writes, shared by the local backend and every download to a local file."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from hiclaw.storage.layout import TEMP_PREFIX

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomically(path: Path, fill: Callable[[IO[bytes]], object], *, fsync: bool = False) -> None:
    """Write ``path`` through ``fill(fh)`` into a temporary file beside it, then rename it over.

    Readers see the old file or the whole new one, never a part; on any failure (including
    cancellation) the temporary file is removed and ``path`` is untouched. With ``fsync`` the data
    and the folder entry are on disk before this returns. Raises :class:`OSError` as is.
    """
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def prepare_local_target(dest: str | os.PathLike[str]) -> Path:
    """Absolute path for a download target, its folder created; refuses an existing folder."""
    from hiclaw.errors import InvalidInputError

    path = Path(dest).expanduser().absolute()
    if path.is_dir():
        raise InvalidInputError(f"cannot write {str(path)!r}: it is a folder", hint="give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
