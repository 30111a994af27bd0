"""Worker log files: where they are, how they are written, read and followed (stdlib only)."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

#: A log is moved to ``<name>.log.1`` when a run starts and it is larger than this.
LOG_ROTATE_BYTES = 10 * 1024 * 1024
#: Lines the host itself writes into a worker's log start with this.
MARKER = "--- hiclaw: "


def utcnow() -> datetime:
    return datetime.now(UTC)


def worker_log_path(home: Path, name: str) -> Path:
    """``$HICLAW_HOME/logs/workers/<name>.log`` — where a worker's output goes by default."""
    return home / "logs" / "workers" / f"{name}.log"


def open_log(path: Path, header: str) -> int:
    """Open (rotating once past 10 MB) a worker log for appending; returns the fd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, f"{MARKER}{header} at {utcnow().isoformat(timespec='seconds')} ---\n".encode())
    return fd


def append_log(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{MARKER}{line} at {utcnow().isoformat(timespec='seconds')} ---\n")


def read_log_lines(path: Path, *, follow: bool = False, tail: int | None = None,
                   interval: float = 0.2, stop: Callable[[], bool] | None = None) -> Iterator[str | None]:
    """Lines of a log file (the last ``tail`` if given); with ``follow``, keep yielding new lines,
    surviving truncation and rotation, until ``stop()`` is true. Yields ``None`` while idle."""
    fh = open(path, "rb")  # noqa: SIM115 - reopened on rotation, closed in finally
    try:
        data = fh.read()
        buffer = b""
        if follow and not data.endswith(b"\n"):
            data, _, buffer = data.rpartition(b"\n")  # keep a half-written last line for later
        lines = data.decode("utf-8", "replace").splitlines()
        yield from (lines[-tail:] if tail else lines)
        inode = os.fstat(fh.fileno()).st_ino
        while follow and (stop is None or not stop()):
            chunk = fh.read()
            if chunk:
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                yield from (c.decode("utf-8", "replace") for c in complete)
                continue
            with contextlib.suppress(FileNotFoundError):
                current = os.stat(path)
                if current.st_ino != inode or current.st_size < fh.tell():
                    fh.close()  # rotated or truncated: start over on the new file
                    fh = open(path, "rb")  # noqa: SIM115
                    inode = os.fstat(fh.fileno()).st_ino
                    continue
            yield None
            if interval:
                time.sleep(interval)
    finally:
        fh.close()
