"""Directory ↔ prefix synchronisation shared by every backend.

``direction="up"`` copies ``local_dir`` to ``prefix``; ``"down"`` copies ``prefix`` to
``local_dir``. A file is transferred when the target lacks it, its size differs, or:

* default: the source is newer than the target (mtime, to the second when either side keeps
  whole seconds as S3 does; after a download the local file gets the object's mtime, so an
  unchanged object is never fetched twice);
* ``checksum=True``: the content digests differ (sha256 the S3 backend stores at upload time,
  else the S3 ETag when it is a plain MD5, else a full read).

``include``/``exclude`` are glob patterns on the path relative to the synced folder: a pattern
without ``/`` matches a file name anywhere (``*.log``), one ending in ``/`` matches a folder
anywhere (``node_modules/``), any other matches the whole relative path (``src/*.py``; ``*``
also crosses ``/``). With ``delete=True`` target files missing from the source are removed,
except those the filters exclude. Local symbolic links are never followed nor uploaded.
Every single file is written atomically by the backend; nothing is changed before all keys have
been validated.
"""
from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hiclaw.errors import InvalidInputError
from hiclaw.storage import layout
from hiclaw.storage.models import SyncDirection, SyncResult

DEFAULT_CONCURRENCY = 8
_CHUNK = 1024 * 1024


class PathFilter:
    """Decides which relative paths take part in a sync (see the module docstring)."""

    def __init__(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        self.include = [self._check(p) for p in include]
        self.exclude = [self._check(p) for p in exclude]

    @staticmethod
    def _check(pattern: str) -> str:
        if not isinstance(pattern, str) or not pattern.strip("/") or pattern.startswith("/"):
            raise InvalidInputError(f"invalid sync pattern {pattern!r}", hint="use a relative glob such as '*.md' or 'build/'")
        return pattern

    @staticmethod
    def _matches(pattern: str, rel: str) -> bool:
        parts = rel.split("/")
        if pattern.endswith("/"):
            folder = pattern[:-1]
            if "/" in folder:
                return any(fnmatch.fnmatchcase("/".join(parts[:i]), folder) for i in range(1, len(parts)))
            return any(fnmatch.fnmatchcase(part, folder) for part in parts[:-1])
        if "/" in pattern:
            return fnmatch.fnmatchcase(rel, pattern)
        return fnmatch.fnmatchcase(parts[-1], pattern)

    def __call__(self, rel: str) -> bool:
        if self.include and not any(self._matches(p, rel) for p in self.include):
            return False
        return not any(self._matches(p, rel) for p in self.exclude)


@dataclass(frozen=True)
class _Entry:
    rel: str
    size: int
    mtime: float


def scan_local(root: Path) -> tuple[dict[str, _Entry], list[str]]:
    """Regular files under ``root`` by relative path, and the symbolic links skipped."""
    files: dict[str, _Entry] = {}
    links: list[str] = []
    if not root.exists():
        return files, links
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                links.append((base / name).relative_to(root).as_posix())
                dirnames.remove(name)
        for name in filenames:
            if name.startswith(layout.TEMP_PREFIX):
                continue
            path = base / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if path.is_symlink():
                links.append(rel)
            elif os.path.isfile(path):
                files[rel] = _Entry(rel, st.st_size, st.st_mtime)
    return files, sorted(links)


def file_digest(source: Path | IO[bytes], algorithm: str = "sha256") -> str:
    """``"<algorithm>:<hex>"`` of a local file (a path, or a binary file object read to its end)."""
    digest = hashlib.new(algorithm)
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    else:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return f"{algorithm}:{digest.hexdigest()}"


async def _differs(storage: Any, key: str, path: Path) -> bool:
    remote = await storage.checksum(key)
    algorithm = remote.split(":", 1)[0]
    return await asyncio.to_thread(file_digest, path, algorithm) != remote


def _needs_transfer(src: _Entry, dst: _Entry | None, checksum: bool) -> bool | None:
    """True/False when size and mtime decide; None when a checksum comparison must decide."""
    if dst is None or src.size != dst.size:
        return True
    if checksum:
        return None
    if src.mtime.is_integer() or dst.mtime.is_integer():
        # S3 keeps whole seconds: an upload finished in the same second as the local edit must
        # not look older than the file it came from.
        return int(src.mtime) > int(dst.mtime)
    return src.mtime > dst.mtime


async def sync_tree(
    storage: Any,
    local_dir: str | os.PathLike[str],
    prefix: str,
    *,
    direction: SyncDirection = "up",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    delete: bool = False,
    checksum: bool = False,
    dry_run: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> SyncResult:
    """Synchronise ``local_dir`` with the folder ``prefix`` of ``storage`` (see module docstring)."""
    if direction not in ("up", "down"):
        raise InvalidInputError(f"invalid sync direction {direction!r}", hint="use 'up' (local → storage) or 'down'")
    prefix = layout.validate_folder(prefix, what="sync prefix")
    root = Path(local_dir).expanduser().absolute()  # noqa: ASYNC240 - names only: expands ~, joins the cwd
    if direction == "up" and not root.is_dir():
        raise InvalidInputError(f"cannot sync up from {str(root)!r}: not a folder", hint="give an existing local folder")
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"cannot sync down into {str(root)!r}: it is a file", hint="give a folder path")
    keep = PathFilter(include, exclude)
    local, links = scan_local(root)
    remote = {
        layout.relative(info["key"], prefix): _Entry(layout.relative(info["key"], prefix), info["size"], info["mtime"] or 0.0)
        for info in await storage.list(prefix, recursive=True)
        if not info["is_dir"]
    }
    local = {rel: e for rel, e in local.items() if keep(rel)}
    remote = {rel: e for rel, e in remote.items() if keep(rel)}
    source, target = (local, remote) if direction == "up" else (remote, local)
    for rel in source:  # validate everything before changing anything
        layout.validate_key(prefix + rel, what=f"key for {rel!r}")
    result = SyncResult(direction=direction, prefix=prefix, local_dir=root, skipped_links=links, dry_run=dry_run)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def transfer(entry: _Entry) -> None:
        async with gate:
            key, path = prefix + entry.rel, root / entry.rel
            decision = _needs_transfer(entry, target.get(entry.rel), checksum)
            if decision is None:
                decision = await _differs(storage, key, path)
            if not decision:
                result.unchanged += 1
                return
            if not dry_run:
                if direction == "up":
                    await storage.put_file(key, path)
                else:
                    await storage.get_file(key, path)
                    os.utime(path, (entry.mtime, entry.mtime))
            result.transferred.append(entry.rel)
            result.bytes += entry.size

    async def remove(rel: str) -> None:
        async with gate:
            if not dry_run:
                if direction == "up":
                    await storage.delete(prefix + rel)
                else:
                    (root / rel).unlink(missing_ok=True)
            result.deleted.append(rel)

    jobs = [transfer(entry) for entry in source.values()]
    if delete:
        jobs += [remove(rel) for rel in target if rel not in source]
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise errors[0]
    result.transferred.sort()
    result.deleted.sort()
    return result


class SyncMixin:
    """Gives a backend :meth:`sync` through :func:`sync_tree` (``sync_concurrency`` transfers at once)."""

    sync_concurrency: int = DEFAULT_CONCURRENCY

    async def sync(
        self,
        local_dir: str | os.PathLike[str],
        prefix: str,
        *,
        direction: SyncDirection = "up",
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        delete: bool = False,
        checksum: bool = False,
        dry_run: bool = False,
    ) -> SyncResult:
        """Synchronise ``local_dir`` with the storage folder ``prefix`` (see :mod:`hiclaw.storage.sync`)."""
        return await sync_tree(self, local_dir, prefix, direction=direction, include=include, exclude=exclude,
                               delete=delete, checksum=checksum, dry_run=dry_run, concurrency=self.sync_concurrency)
