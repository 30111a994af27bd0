"""Checks every skill passes before anything touches the disk, and safe archive unpacking.

A skill is a ``{relative_path: bytes}`` mapping in memory. :func:`check_files` refuses absolute
paths, ``..``, backslashes, NUL and control characters, empty or ``.`` components, more than
``max_files`` files or ``max_bytes`` bytes. Archives are unpacked into such a mapping with the
limits enforced *while* reading (a gzip bomb stops at the budget), and links, devices and other
special entries are refused rather than skipped, so what is installed is what was announced.
"""
from __future__ import annotations

import io
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterable, Mapping

from hiclaw.registry.errors import UnsafeSkillError
from hiclaw.registry.frontmatter import SKILL_FILE, parse_skill_md, strip_controls
from hiclaw.registry.hashing import hashes_match
from hiclaw.registry.models import FetchedSkill, Limits, Provenance

_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
MAX_PATH = 1024


def _shown(path: str) -> str:
    return repr(strip_controls(path)[:120])


def path_problem(path: str) -> str | None:
    """Why ``path`` may not be written inside a skill folder, or ``None``."""
    if not path:
        return "an empty path"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return f"an absolute path {_shown(path)}"
    if _BAD_CHARS.search(path):
        return f"a path with a backslash or control character {_shown(path)}"
    parts = path.split("/")
    if ".." in parts:
        return f"a path that leaves the skill folder {_shown(path)}"
    if any(part in ("", ".") for part in parts):
        return f"a malformed path {_shown(path)}"
    if len(path) > MAX_PATH:
        return f"a path longer than {MAX_PATH} characters {_shown(path)}"
    return None


def check_files(files: Mapping[str, bytes], limits: Limits, *, where: str) -> None:
    """Refuse unsafe paths and oversized skills (see the module docstring)."""
    if len(files) > limits.max_files:
        raise UnsafeSkillError(
            f"{where} has {len(files)} files (limit {limits.max_files})",
            hint="raise [skills] max_files if you trust this source",
        )
    total = 0
    for path, content in files.items():
        problem = path_problem(path)
        if problem:
            raise UnsafeSkillError(f"{where} contains {problem}", hint="refusing to install it")
        # A file and a folder of the same name (a/ and a) cannot both be written.
        for i in range(1, path.count("/") + 1):
            if "/".join(path.split("/")[:i]) in files:
                raise UnsafeSkillError(f"{where} contains {_shown(path)} inside a file of the same name")
        total += len(content)
    if total > limits.max_bytes:
        raise UnsafeSkillError(
            f"{where} unpacks to {total} bytes (limit {limits.max_bytes})",
            hint="raise [skills] max_bytes if you trust this source",
        )
    if SKILL_FILE not in files:
        raise UnsafeSkillError(f"{where} has no {SKILL_FILE} at its root", hint="a skill is a folder with a SKILL.md")


class _Budget:
    def __init__(self, limits: Limits, where: str) -> None:
        self.limits = limits
        self.where = where
        self.files = 0
        self.bytes = 0

    def take(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > self.limits.max_files:
            raise UnsafeSkillError(f"{self.where} has more than {self.limits.max_files} files", hint="refusing to unpack it")
        if self.bytes > self.limits.max_bytes:
            raise UnsafeSkillError(
                f"{self.where} unpacks to more than {self.limits.max_bytes} bytes", hint="refusing to unpack it"
            )


def _add(files: dict[str, bytes], name: str, content: bytes, where: str) -> None:
    path = name[2:] if name.startswith("./") else name
    problem = path_problem(path)
    if problem:
        raise UnsafeSkillError(f"{where} contains {problem}", hint="refusing to unpack it")
    if path in files:
        raise UnsafeSkillError(f"{where} contains {_shown(path)} twice", hint="refusing to unpack it")
    files[path] = content


def _untar(data: bytes, limits: Limits, where: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    budget = _Budget(limits, where)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as archive:
            for member in archive:
                if member.isdir():
                    if member.name.strip("/") not in ("", ".") and path_problem(member.name.rstrip("/").removeprefix("./")):
                        raise UnsafeSkillError(f"{where} contains {path_problem(member.name.rstrip('/').removeprefix('./'))}")
                    continue
                if member.issym() or member.islnk():
                    raise UnsafeSkillError(
                        f"{where} contains a link {_shown(member.name)} -> {_shown(member.linkname)}",
                        hint="skills may not contain symlinks or hardlinks",
                    )
                if not member.isreg():
                    raise UnsafeSkillError(f"{where} contains a special file {_shown(member.name)}", hint="refusing to unpack it")
                budget.take(member.size)
                handle = archive.extractfile(member)
                content = handle.read() if handle is not None else b""
                _add(files, member.name, content, where)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise UnsafeSkillError(f"{where} is not a readable tar archive ({exc})") from None
    return files


def _unzip(data: bytes, limits: Limits, where: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    budget = _Budget(limits, where)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                mode = info.external_attr >> 16
                if info.is_dir():
                    continue
                if stat.S_ISLNK(mode):
                    raise UnsafeSkillError(f"{where} contains a link {_shown(info.filename)}", hint="skills may not contain symlinks")
                if mode and not stat.S_ISREG(mode):
                    raise UnsafeSkillError(f"{where} contains a special file {_shown(info.filename)}")
                budget.take(info.file_size)
                with archive.open(info) as handle:
                    # Read at most what the header claims (+1 to detect a lie): no zip bomb.
                    content = handle.read(info.file_size + 1)
                if len(content) != info.file_size:
                    raise UnsafeSkillError(f"{where}: {_shown(info.filename)} is larger than its header says")
                _add(files, info.filename, content, where)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise UnsafeSkillError(f"{where} is not a readable zip archive ({exc})") from None
    return files


def unpack_archive(data: bytes, limits: Limits, *, where: str) -> dict[str, bytes]:
    """Unpack a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` into memory, safely (see module docstring)."""
    if data[:2] == b"PK":
        return _unzip(data, limits, where)
    return _untar(data, limits, where)


def strip_single_top_folder(files: dict[str, bytes]) -> dict[str, bytes]:
    """``repo-main/x`` → ``x`` when everything sits in one top-level folder (GitHub tarballs)."""
    tops = {path.split("/", 1)[0] for path in files}
    if len(tops) == 1 and all("/" in path for path in files):
        return {path.split("/", 1)[1]: content for path, content in files.items()}
    return files


def skill_folders(paths: Iterable[str]) -> list[str]:
    """Folders (``""`` = root) holding a SKILL.md, sorted; a SKILL.md nested inside another
    skill's folder belongs to that skill (the root folder does not swallow others)."""
    folders = sorted({p[: -len(SKILL_FILE)].rstrip("/") for p in paths if p == SKILL_FILE or p.endswith("/" + SKILL_FILE)})
    return [f for f in folders if not any(o and f.startswith(o + "/") for o in folders)]


def subtree(files: Mapping[str, bytes], folder: str) -> dict[str, bytes]:
    """The files under ``folder`` (relative to it)."""
    if not folder:
        return dict(files)
    prefix = folder + "/"
    return {path[len(prefix):]: content for path, content in files.items() if path.startswith(prefix)}


def validated_skill(
    files: dict[str, bytes],
    *,
    folder: str | None,
    provenance: Provenance,
    limits: Limits,
    where: str,
    expected_hash: str | None = None,
) -> FetchedSkill:
    """Check paths, limits, SKILL.md and the announced hash; build the :class:`FetchedSkill`."""
    check_files(files, limits, where=where)
    meta = parse_skill_md(files["SKILL.md"], folder=folder, where=f"{where}: SKILL.md")
    if expected_hash is not None and not hashes_match(expected_hash, files):
        raise UnsafeSkillError(
            f"{where}: content does not match the hash the registry announced ({expected_hash[:16]}…)",
            hint="the registry or the network altered the skill; refusing it",
        )
    return FetchedSkill(
        name=meta.name, description=meta.description, files=files, provenance=provenance, expected_hash=expected_hash
    )
