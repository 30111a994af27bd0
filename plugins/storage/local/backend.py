"""The local-directory storage backend (see the package docstring for configuration)."""
from __future__ import annotations

import asyncio
import builtins
import errno
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from hiclaw.config import hiclaw_home
from hiclaw.errors import ConfigError, InvalidInputError, NotFoundError, PluginError
from hiclaw.storage import grants, layout
from hiclaw.storage.errors import AccessDeniedError, StorageError
from hiclaw.storage.files import prepare_local_target, write_atomically
from hiclaw.storage.models import Mount, ObjectInfo, WorkerStorageAccess
from hiclaw.storage.safefs import Beneath, LinkRefused, NotRegularFile
from hiclaw.storage.sync import SyncMixin, file_digest

_CHUNK = 1024 * 1024


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return {"key": key, "size": st.st_size, "mtime": st.st_mtime, "etag": f"{st.st_size:x}-{st.st_mtime_ns:x}", "is_dir": False}


def _valid_name(name: str) -> bool:
    try:
        layout.validate_key(name)
    except InvalidInputError:
        return False
    return True


def _valid_key(key: str) -> bool:
    return all(_valid_name(part) for part in key.split("/"))


class LocalStorage(SyncMixin):
    """Objects are files under ``root``; keys map 1:1 to relative paths."""

    plugin = "local-storage"

    def __init__(
        self,
        root: Path,
        *,
        side: str = "control",
        fsync: bool = True,
        read_write: Sequence[str] | None = None,
        read_only: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(os.path.realpath(root))
        self._fs = Beneath(self.root)
        self.side = side
        self.fsync = fsync
        # Worker side: the grant, for clear errors (the bind mounts are the enforcement).
        self._scope = None if read_write is None else (list(read_write), list(read_only or ()))

    @classmethod
    def from_settings(cls, settings: Any, ctx: Any) -> LocalStorage:
        home = Path(getattr(ctx, "home", None) or hiclaw_home())
        root = settings.root
        if root is None:
            if ctx.side == "worker":
                raise ConfigError("local storage on a worker needs settings.root", hint="pass the settings grant() returned")
            root = home / "data"
        root = root.expanduser()
        if not root.is_absolute():
            root = home / root
        return cls(root, side=ctx.side, fsync=settings.fsync, read_write=settings.read_write, read_only=settings.read_only)

    # ------------------------------------------------------------------ paths

    def local_path(self, key: str) -> Path:
        """The path of ``key`` under the root (validated). For the worker side and for display:
        the control plane never opens this path string — every operation below goes through
        :class:`~hiclaw.storage.safefs.Beneath`, which follows no link."""
        return self.root / layout.validate_key(key)

    def _check(self, key: str, *, write: bool) -> str:
        key = layout.validate_key(key)
        if self._scope is not None:
            allowed = grants.may_write if write else grants.may_read
            if not allowed(key, *self._scope):
                verb = "write" if write else "read"
                raise AccessDeniedError(f"access denied: this worker may not {verb} {key!r}", hint="it is not granted to it")
        return key

    @staticmethod
    def _link_refused(key: str) -> AccessDeniedError:
        return AccessDeniedError(f"refusing {key!r}: a symbolic link is on its path, and links are never followed",
                                 hint="replace the link with the file or folder itself")

    def _open_read(self, key: str) -> IO[bytes]:
        """A file object of object ``key`` (a regular file, reached without following links)."""
        try:
            return self._fs.open_read(key)
        except LinkRefused:
            raise self._link_refused(key) from None
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, NotRegularFile):
            raise NotFoundError(f"no object {key!r} in storage", hint="check the path with `hiclaw fs ls`") from None

    def _read(self, key: str) -> bytes:
        with self._open_read(key) as fh:
            return fh.read()

    # ------------------------------------------------------------------ atomic writes

    def _write(self, key: str, fill: Callable[[IO[bytes]], object]) -> None:
        try:
            self._fs.write_atomic(key, fill, fsync=self.fsync)
        except LinkRefused:
            raise self._link_refused(key) from None
        except IsADirectoryError:
            raise InvalidInputError(f"cannot write {key!r}: a folder with that name exists", hint="pick another name") from None
        except (FileExistsError, NotADirectoryError):
            raise InvalidInputError(f"cannot write {key!r}: a file stands where a folder of its path should be",
                                    hint="pick another name") from None
        except OSError as exc:
            raise self._os_error(key, exc) from None

    @staticmethod
    def _os_error(key: str, exc: OSError) -> StorageError:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return AccessDeniedError(f"access denied: cannot write {key!r} ({exc.strerror})", hint="it is read-only here")
        if exc.errno == errno.ENOSPC:
            return StorageError(f"cannot write {key!r}: no space left on the storage disk", hint="free some space")
        return StorageError(f"cannot write {key!r}: {exc.strerror or exc}")

    # ------------------------------------------------------------------ Storage

    async def put(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError(f"put {key!r}: data must be bytes, not {type(data).__name__}", hint="encode text first")
        key = self._check(key, write=True)
        await asyncio.to_thread(self._write, key, lambda fh: fh.write(data))

    async def put_file(self, key: str, path: str | os.PathLike[str], *, content_type: str | None = None) -> None:
        key = self._check(key, write=True)
        source = Path(path)
        if not source.exists() or source.is_dir():  # noqa: ASYNC240 - local stats; pipes and devices stream fine
            raise InvalidInputError(f"cannot upload {str(source)!r}: not a file", hint="give an existing file")

        def fill(fh: IO[bytes]) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, fh, _CHUNK)

        await asyncio.to_thread(self._write, key, fill)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._read, self._check(key, write=False))

    async def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        key = self._check(key, write=False)
        await asyncio.to_thread(self._copy_out, key, path)

    def _copy_out(self, key: str, dest: str | os.PathLike[str]) -> None:
        with self._open_read(key) as src:
            write_atomically(prepare_local_target(dest), lambda fh: shutil.copyfileobj(src, fh, _CHUNK))

    async def stat(self, key: str) -> ObjectInfo | None:
        key = self._check(key, write=False)
        try:
            st = await asyncio.to_thread(self._fs.stat, key)
        except LinkRefused:
            return None
        return None if st is None else _info(key, st)

    async def list(self, prefix: str = "", *, recursive: bool = True) -> list[ObjectInfo]:
        prefix = layout.validate_prefix(prefix)
        return await asyncio.to_thread(self._list, prefix, recursive)

    def _list(self, prefix: str, recursive: bool) -> builtins.list[ObjectInfo]:
        name_start = "" if prefix == "" or prefix.endswith("/") else prefix.rsplit("/", 1)[-1]
        dir_key = prefix[: len(prefix) - len(name_start)]
        entries: list[ObjectInfo] = []
        for name, is_dir, st in self._fs.scandir(dir_key):
            if not name.startswith(name_start) or not _valid_name(name):
                continue
            key = dir_key + name
            if not is_dir:
                entries.append(_info(key, st))
            elif recursive:
                entries.extend(_info(rel, fst) for rel, fst in self._fs.walk(key) if _valid_key(rel))
            elif any(_valid_key(rel) for rel, _ in self._fs.walk(key)):
                entries.append({"key": key + "/", "size": 0, "mtime": None, "etag": None, "is_dir": True})
        return sorted(entries, key=lambda e: e["key"])

    async def delete(self, key: str) -> None:
        key = self._check(key, write=True)
        try:
            await asyncio.to_thread(self._fs.unlink, key)
        except IsADirectoryError:
            raise InvalidInputError(f"cannot delete {key!r}: it is a folder", hint="delete the files in it (`hiclaw fs rm -r`)") from None
        except LinkRefused:
            return  # a link on the path: nothing of ours is there to delete
        except OSError as exc:
            raise self._os_error(key, exc) from None

    async def copy(self, src: str, dst: str) -> None:
        src = self._check(src, write=False)
        dst = self._check(dst, write=True)

        def run() -> None:
            with self._open_read(src) as fh:
                self._write(dst, lambda out: shutil.copyfileobj(fh, out, _CHUNK))

        await asyncio.to_thread(run)

    async def checksum(self, key: str) -> str:
        key = self._check(key, write=False)

        def run() -> str:
            with self._open_read(key) as fh:
                return file_digest(fh)

        return await asyncio.to_thread(run)

    # ------------------------------------------------------------------ control side

    def _control_only(self, operation: str) -> None:
        if self.side != "control":
            raise PluginError(f"{operation} is a control-plane operation; workers cannot call it")

    async def grant(self, worker: str, *, rw: Sequence[str] = (), ro: Sequence[str] = ()) -> WorkerStorageAccess:
        """Bind mounts for ``worker``: identical paths on the host and in the sandbox, parents
        before children so a read-only ``spec.md`` is mounted over its read-write task folder.
        Folders are created; a single granted file must already exist."""
        self._control_only("grant")
        grant = grants.normalize_grant(worker, rw, ro)
        mounts = [self._mount(entry, read_only=False) for entry in grant.read_write]
        mounts += [self._mount(entry, read_only=True) for entry in grant.read_only]
        mounts.sort(key=lambda m: (len(m.host_path.parts), str(m.host_path)))
        settings = {"root": str(self.root), "fsync": self.fsync, "read_write": list(grant.read_write),
                    "read_only": list(grant.read_only)}
        return WorkerStorageAccess(worker=worker, plugin=self.plugin, settings=settings, mounts=mounts,
                                   read_write=list(grant.read_write), read_only=list(grant.read_only))

    def _mount(self, entry: str, *, read_only: bool) -> Mount:
        rel = entry.rstrip("/")
        try:
            if entry.endswith("/"):
                self._fs.makedirs(rel)
            elif self._fs.stat(rel) is None:
                raise InvalidInputError(f"cannot grant {entry!r}: no such file yet", hint="write it first, or grant its folder")
        except LinkRefused:
            raise self._link_refused(entry) from None
        path = self.root / rel
        # ``beneath``: the sandbox opens the path from the root without following links.
        return Mount(host_path=path, sandbox_path=path, read_only=read_only, beneath=self.root)

    async def revoke(self, worker: str) -> None:
        """Nothing to take back here: a worker's access exists only as its sandbox's bind mounts,
        which end with the sandbox. (Validates the name so typos are reported.)"""
        self._control_only("revoke")
        layout.check_agent(worker)

    async def presign(self, key: str, expires_seconds: int = 3600) -> str:
        """A ``file://`` URL: local storage is on the admin's own machine, so there is nothing to
        sign and no expiry (``expires_seconds`` is only validated)."""
        if not isinstance(expires_seconds, int) or expires_seconds <= 0:
            raise InvalidInputError(f"invalid expiry {expires_seconds!r}", hint="give a positive number of seconds")
        key = self._check(key, write=False)
        with self._open_read(key):  # exists, and is a regular file reached without links
            pass
        return self.local_path(key).as_uri()

    async def stop(self) -> None:
        """Nothing is held open between calls."""
