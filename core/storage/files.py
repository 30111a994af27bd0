"""Atomic local file writes: the one helper for every file hiclaw writes whole — the local
backend, downloads to a local file, config and secrets, run records, state files, pid files."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from hiclaw.storage.layout import TEMP_PREFIX

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomically(path: Path, fill: Callable[[IO[bytes]], object], *, fsync: bool = False,
                     mode: int | None = None) -> None:
    """Write ``path`` through ``fill(fh)`` into a temporary file beside it, then rename it over.

    Readers see the old file or the whole new one, never a part; on any failure (including
    cancellation) the temporary file is removed and ``path`` is untouched. With ``fsync`` the data
    and the folder entry are on disk before this returns. The file gets ``mode`` (default: 0666
    less the umask); the temporary file is 0600 until then, so a private file is never readable by
    others, not even briefly. Raises :class:`OSError` as is.
    """
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, (0o666 & ~_UMASK) if mode is None else mode)
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


def write_text_atomically(path: Path, text: str, *, mode: int | None = None, fsync: bool = False) -> None:
    """:func:`write_atomically` of ``text`` (UTF-8), the folder created if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda fh: fh.write(text.encode("utf-8")), fsync=fsync, mode=mode)


def prepare_local_target(dest: str | os.PathLike[str]) -> Path:
    """Absolute path for a download target, its folder created; refuses an existing folder."""
    from hiclaw.errors import InvalidInputError

    path = Path(dest).expanduser().absolute()
    if path.is_dir():
        raise InvalidInputError(f"cannot write {str(path)!r}: it is a folder", hint="give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
