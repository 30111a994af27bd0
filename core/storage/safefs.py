"""Files under a root that untrusted processes can change, opened without ever following a link.

Workers write into their folders of the shared storage (their home, their tasks' folders) while
the control plane reads and writes the same folders. A path string checked once and used later
is a race a hostile worker wins: it swaps a file or a folder for a symbolic link between the
check and the use, and the control plane reads or writes wherever the link points. So every
operation here walks the path one component at a time from a file descriptor of the root, with
``O_NOFOLLOW`` (and ``O_DIRECTORY`` for folders), and works on the descriptors it opened:

* a link anywhere on the path (folder or file) is refused, never followed — :class:`LinkRefused`;
* only regular files are read (never a FIFO, which would block, or a device): the type is checked
  with ``fstat`` on the open descriptor, not before opening;
* writes create a new file (``O_CREAT | O_EXCL``) beside the target and rename it over the target
  within the same open folder (``renameat``), so nothing is ever written *through* an existing
  file or link, and readers see the old content or the whole new one;
* listing and removal use ``os.fwalk`` / ``shutil.rmtree(dir_fd=…)``, which do not follow links.

This is the same guarantee as ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``, built from
calls every Linux kernel and Python has. Mount points are not a concern: a worker cannot create
one in the host's namespace.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from hiclaw.storage.layout import TEMP_PREFIX

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: opening a FIFO a worker planted must not block; its type is refused right after.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_O_PATH = getattr(os, "O_PATH", 0)


class LinkRefused(PermissionError):
    """A symbolic link on a path under the root (it is never followed)."""

    def __init__(self, rel: str, component: str) -> None:
        super().__init__(errno.ELOOP, f"{rel!r}: {component!r} is a link; links are never followed")
        self.rel = rel
        self.component = component


class NotRegularFile(OSError):
    """The path names something other than a regular file (a folder, FIFO, device, socket)."""


def _refuse_link(rel: str, part: str, dir_fd: int, exc: OSError) -> None:
    """Raise :class:`LinkRefused` if opening folder ``part`` failed because it is a link (a file
    where a folder should be stays a :class:`NotADirectoryError`)."""
    if exc.errno == errno.ELOOP:
        raise LinkRefused(rel, part) from None
    if exc.errno == errno.ENOTDIR:
        try:
            is_link = stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link:
            raise LinkRefused(rel, part) from None


def _parts(rel: str) -> list[str]:
    parts = [p for p in rel.strip("/").split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{rel!r}: '.' and '..' are not allowed")
    return parts


class Beneath:
    """Operations on paths relative to ``root``; ``root`` itself is trusted (the control plane's)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.realpath(root))

    # ------------------------------------------------------------------ descriptors

    def _root_fd(self) -> int:
        return os.open(self.root, _DIR_FLAGS)

    def _open_dirs(self, rel: str, parts: list[str], *, create: bool, mode: int = 0o755) -> int:
        """An fd of the folder ``parts`` under the root (created if ``create``), no link followed."""
        try:
            fd = self._root_fd()
        except FileNotFoundError:
            if not create:
                raise
            self.root.mkdir(parents=True, exist_ok=True)  # the root is the control plane's own
            fd = self._root_fd()
        try:
            for part in parts:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, mode, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile (by us or by the worker): the open below decides
                    nxt = self._open_component(rel, part, fd)
                except OSError as exc:
                    _refuse_link(rel, part, fd, exc)
                    raise
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _open_component(rel: str, part: str, dir_fd: int) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            _refuse_link(rel, part, dir_fd, exc)
            raise

    @contextmanager
    def folder(self, rel: str, *, create: bool = False) -> Iterator[int]:
        """``with beneath.folder("agents/alice") as fd:`` — an open folder descriptor."""
        fd = self._open_dirs(rel, _parts(rel), create=create)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def parent(self, rel: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """``(fd of the parent folder, final name)`` of ``rel``."""
        parts = _parts(rel)
        if not parts:
            raise ValueError("the root itself has no parent here")
        fd = self._open_dirs(rel, parts[:-1], create=create)
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def open_path(self, rel: str) -> int:
        """An ``O_PATH`` descriptor of ``rel`` (folder or regular file), for binding it into a
        sandbox by descriptor (``bwrap --bind-fd``): what is bound is what was checked."""
        with self.parent(rel) as (pfd, name):
            try:
                fd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise LinkRefused(rel, name) from None
                raise
        st = os.fstat(fd)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            os.close(fd)
            raise LinkRefused(rel, name)  # O_PATH|O_NOFOLLOW opens the link itself
        return fd

    # ------------------------------------------------------------------ reading

    def open_read(self, rel: str) -> IO[bytes]:
        """A binary file object of the regular file ``rel``; :class:`FileNotFoundError` if absent."""
        with self.parent(rel) as (pfd, name):
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=pfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise LinkRefused(rel, name) from None
                raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(errno.EINVAL, f"{rel!r} is not a regular file")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def read_bytes(self, rel: str, *, limit: int | None = None) -> bytes:
        """The content of the regular file ``rel`` (at most ``limit`` bytes if given)."""
        with self.open_read(rel) as fh:
            return fh.read() if limit is None else fh.read(limit)

    def stat(self, rel: str) -> os.stat_result | None:
        """``lstat`` of ``rel``: ``None`` if absent or not a regular file; a link on the path raises."""
        try:
            with self.parent(rel) as (pfd, name):
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def is_dir(self, rel: str) -> bool:
        try:
            with self.folder(rel):
                return True
        except (FileNotFoundError, LinkRefused):
            return False

    def walk(self, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """``(path relative to the root, lstat)`` of every regular file under ``rel``; links and
        what they point to are skipped, never entered."""
        try:
            base = self._open_dirs(rel, _parts(rel), create=False)
        except (FileNotFoundError, LinkRefused):
            return
        prefix = "/".join(_parts(rel))
        try:
            for dirpath, _dirnames, filenames, dfd in os.fwalk(".", dir_fd=base, follow_symlinks=False):
                folder = dirpath[2:] if dirpath.startswith("./") else ("" if dirpath == "." else dirpath)
                for name in filenames:
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        yield "/".join(p for p in (prefix, folder, name) if p), st
        finally:
            os.close(base)

    def scandir(self, rel: str = "") -> list[tuple[str, bool, os.stat_result]]:
        """``(name, is_folder, lstat)`` of the entries of folder ``rel`` that are regular files or
        folders (links and others are left out)."""
        try:
            fd = self._open_dirs(rel, _parts(rel), create=False)
        except (FileNotFoundError, LinkRefused):
            return []
        try:
            found = []
            for entry in os.scandir(fd):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                    found.append((entry.name, stat.S_ISDIR(st.st_mode), st))
            return found
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ writing

    def write_atomic(self, rel: str, fill: Callable[[IO[bytes]], object], *, fsync: bool = False,
                     mode: int = 0o666) -> None:
        """Write ``rel`` through ``fill(fh)`` into a new file beside it, then rename it over ``rel``
        (never through an existing file or link). Missing folders are created."""
        with self.parent(rel, create=True) as (pfd, name):
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, f"{rel!r} is a folder")
            except FileNotFoundError:
                pass
            tmp = f"{TEMP_PREFIX}{secrets.token_hex(6)}-{name}"[:255]
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=pfd)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fill(fh)
                    fh.flush()
                    if fsync:
                        os.fsync(fh.fileno())
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=pfd)
                except OSError:
                    pass
                raise
            if fsync:
                os.fsync(pfd)

    def write_bytes(self, rel: str, data: bytes, *, fsync: bool = False) -> None:
        self.write_atomic(rel, lambda fh: fh.write(data), fsync=fsync)

    def unlink(self, rel: str) -> None:
        """Remove the file (or link) ``rel``; absent is fine; a folder raises ``IsADirectoryError``."""
        try:
            with self.parent(rel) as (pfd, name):
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, f"{rel!r} is a folder")
                os.unlink(name, dir_fd=pfd)
        except (FileNotFoundError, NotADirectoryError):
            return

    def rmtree(self, rel: str) -> None:
        """Remove folder ``rel`` and everything in it without following links (absent is fine)."""
        try:
            with self.parent(rel) as (pfd, name):
                shutil.rmtree(name, dir_fd=pfd)
        except (FileNotFoundError, NotADirectoryError):
            return

    def makedirs(self, rel: str) -> None:
        with self.folder(rel, create=True):
            pass
