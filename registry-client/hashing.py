"""Hashes the ``skills`` CLI writes and checks, computed the same way byte for byte.

* ``computedHash`` (``skills-lock.json``) and the download API's ``hash``: SHA-256 over the
  skill's files sorted by relative path, feeding each path's UTF-8 bytes then its content.
  The CLI sorts with JavaScript's ``String.prototype.localeCompare`` (ICU root collation), so
  ``references/a.md`` sorts *before* ``SKILL.md``; :func:`collation_key` reproduces that order
  (exactly for ASCII paths, closely for others — a test compares it with Node's own sort).
* Well-known digests: ``sha256:<hex>`` of the artifact's bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

# ICU root collation order of printable ASCII (what Node's localeCompare uses): whitespace,
# punctuation and symbols, digits, then letters with lower case before upper case.
_ICU_ASCII_ORDER = " _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$0123456789abcdefghijklmnopqrstuvwxyz"
_PRIMARY = {ch: i for i, ch in enumerate(_ICU_ASCII_ORDER, start=1)}  # 0 = ignorable
for _upper in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _PRIMARY[_upper] = _PRIMARY[_upper.lower()]
_AFTER_ASCII = len(_ICU_ASCII_ORDER) + 1

#: Folder names the CLI never descends into when hashing an installed skill.
SKIPPED_DIRS = frozenset({".git", "node_modules"})


def _weights(ch: str) -> tuple[int, int, int]:
    """(primary, secondary, tertiary) weights of one character, ICU-like."""
    if ch in _PRIMARY:
        return _PRIMARY[ch], 0, 1 if ch.isupper() else 0
    if unicodedata.category(ch) == "Cc":
        return 0, 0, 0  # control characters are ignorable in ICU
    base = unicodedata.normalize("NFD", ch)
    if base and base[0] in _PRIMARY:
        accent = sum(ord(c) for c in base[1:])
        return _PRIMARY[base[0]], accent, 1 if base[0].isupper() else 0
    folded = ch.lower()
    return _AFTER_ASCII + ord(folded[0]), 0, 0 if folded == ch else 1


def collation_key(text: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str]:
    """Sort key matching ``a.localeCompare(b)`` in Node (ICU root collation, three levels)."""
    weights = [w for w in map(_weights, text) if w != (0, 0, 0)]  # ignorables drop out
    return (
        tuple(w[0] for w in weights),
        tuple(w[1] for w in weights),
        tuple(w[2] for w in weights),
        text,  # final tie-break, as ICU's identical level
    )


def files_hash(files: Mapping[str, bytes]) -> str:
    """``computedHash`` of a skill given as ``{relative_path: content}`` (hex)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=collation_key):
        digest.update(path.encode("utf-8"))
        digest.update(files[path])
    return digest.hexdigest()


def files_hash_bytewise(files: Mapping[str, bytes]) -> str:
    """Same as :func:`files_hash` with a plain code-point sort (accepted from registries that
    sort that way; both orders hash the same content, so neither is weaker)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode("utf-8"))
        digest.update(files[path])
    return digest.hexdigest()


def file_digests(files: Mapping[str, bytes]) -> dict[str, str]:
    """Per-file SHA-256 (hex), so ``hiclaw skills check`` can name the file that changed."""
    return {path: hashlib.sha256(files[path]).hexdigest() for path in sorted(files)}


def sha256_digest(data: bytes) -> str:
    """A well-known ``digest``: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_skill_folder(folder: Path) -> dict[str, bytes]:
    """Every regular file of an installed skill as ``{relative_path: content}``.

    Mirrors the CLI's hashing walk: symlinks are neither followed nor hashed, ``.git`` and
    ``node_modules`` are skipped."""
    files: dict[str, bytes] = {}
    pending = [folder]
    while pending:
        current = pending.pop()
        for entry in sorted(current.iterdir()):
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.name not in SKIPPED_DIRS:
                    pending.append(entry)
            elif entry.is_file():
                files[entry.relative_to(folder).as_posix()] = entry.read_bytes()
    return files


def folder_hash(folder: Path) -> str:
    """``computedHash`` of an installed skill folder."""
    return files_hash(read_skill_folder(folder))


def hashes_match(expected: str, files: Mapping[str, bytes]) -> bool:
    """Does ``expected`` (a registry's snapshot hash) match ``files`` in either sort order?"""
    expected = expected.lower().removeprefix("sha256:")
    return expected in (files_hash(files), files_hash_bytewise(files))


def sorted_paths(paths: Iterable[str]) -> list[str]:
    return sorted(paths, key=collation_key)


def deterministic_tar_gz(files: dict[str, bytes]) -> bytes:
    """A reproducible ``.tar.gz`` (ustar, fixed times/owners) with the files at its root."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size = len(files[path])
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(files[path]))
    return gzip.compress(raw.getvalue(), mtime=0)
