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


class LocalStorage(SyncMixin):
    """Objects are files under ``root``; keys map 1:1 to relative paths."""

    plugin = "local"

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
        """The file that holds ``key`` (validated; symbolic links never lead outside the root)."""
        path = self.root / layout.validate_key(key)
        parent = os.path.realpath(path.parent)
        if parent != str(self.root) and not parent.startswith(str(self.root) + os.sep):
            raise AccessDeniedError(f"refusing {key!r}: a folder on its path is a link leading outside the storage root")
        return path

    def _check(self, key: str, *, write: bool) -> Path:
        path = self.local_path(key)
        if self._scope is not None:
            allowed = grants.may_write if write else grants.may_read
            if not allowed(key, *self._scope):
                verb = "write" if write else "read"
                raise AccessDeniedError(f"access denied: this worker may not {verb} {key!r}", hint="it is not granted to it")
        return path

    def _readable(self, key: str) -> Path:
        path = self._check(key, write=False)
        if path.is_symlink() or not path.is_file():
            raise NotFoundError(f"no object {key!r} in storage", hint="check the path with `hiclaw fs ls`")
        return path

    # ------------------------------------------------------------------ atomic writes

    def _write(self, key: str, path: Path, fill: Callable[[IO[bytes]], object]) -> None:
        if path.is_dir() and not path.is_symlink():
            raise InvalidInputError(f"cannot write {key!r}: a folder with that name exists", hint="pick another name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidInputError(f"cannot write {key!r}: a file stands where a folder of its path should be",
                                    hint="pick another name") from None
        except OSError as exc:
            raise self._os_error(key, exc) from None
        try:
            write_atomically(path, fill, fsync=self.fsync)
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
        path = self._check(key, write=True)
        await asyncio.to_thread(self._write, key, path, lambda fh: fh.write(data))

    async def put_file(self, key: str, path: str | os.PathLike[str], *, content_type: str | None = None) -> None:
        target = self._check(key, write=True)
        source = Path(path)
        if not source.exists() or source.is_dir():  # noqa: ASYNC240 - local stats; pipes and devices stream fine
            raise InvalidInputError(f"cannot upload {str(source)!r}: not a file", hint="give an existing file")

        def fill(fh: IO[bytes]) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, fh, _CHUNK)

        await asyncio.to_thread(self._write, key, target, fill)

    async def get(self, key: str) -> bytes:
        path = self._readable(key)
        return await asyncio.to_thread(path.read_bytes)

    async def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        source = self._readable(key)
        await asyncio.to_thread(_copy_to_local_file, source, path)

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self._check(key, write=False)
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        if not os.path.isfile(path) or path.is_symlink():  # noqa: ASYNC240 - a local stat, like lstat above
            return None
        return _info(key, st)

    async def list(self, prefix: str = "", *, recursive: bool = True) -> list[ObjectInfo]:
        prefix = layout.validate_prefix(prefix)
        return await asyncio.to_thread(self._list, prefix, recursive)

    def _list(self, prefix: str, recursive: bool) -> builtins.list[ObjectInfo]:
        name_start = "" if prefix == "" or prefix.endswith("/") else prefix.rsplit("/", 1)[-1]
        dir_key = prefix[: len(prefix) - len(name_start)]
        base = self.root / dir_key if dir_key else self.root
        real = os.path.realpath(base)
        if real != str(self.root) and not real.startswith(str(self.root) + os.sep):
            return []
        entries: list[ObjectInfo] = []
        try:
            scan = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []
        for entry in scan:
            if not entry.name.startswith(name_start) or entry.is_symlink() or not _valid_name(entry.name):
                continue
            key = dir_key + entry.name
            if entry.is_dir():
                if recursive:
                    entries.extend(self._walk(Path(entry.path), key + "/"))
                elif _has_files(Path(entry.path)):
                    entries.append({"key": key + "/", "size": 0, "mtime": None, "etag": None, "is_dir": True})
            elif entry.is_file():
                entries.append(_info(key, entry.stat()))
        return sorted(entries, key=lambda e: e["key"])

    def _walk(self, folder: Path, key_prefix: str) -> builtins.list[ObjectInfo]:
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            rel = Path(dirpath).relative_to(folder).as_posix()
            base_key = key_prefix if rel == "." else f"{key_prefix}{rel}/"
            dirnames[:] = [d for d in dirnames if _valid_name(d) and not os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                full = os.path.join(dirpath, name)
                if _valid_name(name) and not os.path.islink(full):
                    found.append(_info(base_key + name, os.lstat(full)))
        return found

    async def delete(self, key: str) -> None:
        path = self._check(key, write=True)
        if path.is_dir() and not path.is_symlink():
            raise InvalidInputError(f"cannot delete {key!r}: it is a folder", hint="delete the files in it (`hiclaw fs rm -r`)")
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except NotADirectoryError:
            return
        except OSError as exc:
            raise self._os_error(key, exc) from None

    async def copy(self, src: str, dst: str) -> None:
        self._check(dst, write=True)
        await self.put_file(dst, self._readable(src))

    async def checksum(self, key: str) -> str:
        return await asyncio.to_thread(file_digest, self._readable(key))

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
        if entry.endswith("/"):
            path = self.local_path(entry + "x").parent
            path.mkdir(parents=True, exist_ok=True)
        else:
            path = self.local_path(entry)
            if not path.is_file():
                raise InvalidInputError(f"cannot grant {entry!r}: no such file yet", hint="write it first, or grant its folder")
        return Mount(host_path=path, sandbox_path=path, read_only=read_only)

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
        return self._readable(key).as_uri()

    async def stop(self) -> None:
        """Nothing is held open between calls."""


def _has_files(folder: Path) -> bool:
    for _dirpath, _dirnames, filenames in os.walk(folder, followlinks=False):
        if any(not n.startswith(layout.TEMP_PREFIX) for n in filenames):
            return True
    return False


def _copy_to_local_file(source: Path, dest: str | os.PathLike[str]) -> None:
    """Copy to ``dest`` atomically: a temporary file beside it, then rename."""
    target = prepare_local_target(dest)

    def fill(fh: IO[bytes]) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh, _CHUNK)

    write_atomically(target, fill)
