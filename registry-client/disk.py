"""Skills from folders on this machine: local paths and git checkouts.

Only the chosen skill folder is read, with links refused (a symlink could point at
``~/.ssh``; a hardlink could alias a file outside the folder) and the limits enforced while
reading, so a huge repository costs nothing beyond its listing.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import stat
import subprocess
import tempfile
from pathlib import Path

from hiclaw.registry.errors import RegistryError, UnsafeSkillError
from hiclaw.registry.frontmatter import SKILL_FILE
from hiclaw.registry.http import NOT_REACHABLE, NOT_REACHABLE_HINT, FetchPolicy, FetchRefused, parse_origin
from hiclaw.registry.models import Limits

log = logging.getLogger(__name__)

SKIP_DIRS = frozenset({".git", "node_modules", "__pycache__"})
GIT_TIMEOUT = 120.0


def list_tree(root: Path, *, max_entries: int = 200_000) -> list[str]:
    """Relative paths of regular files and symlinks under ``root`` (VCS and caches skipped)."""
    found: list[str] = []
    for current, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        rel = Path(current).relative_to(root)
        for name in files:
            found.append((rel / name).as_posix())
            if len(found) > max_entries:
                raise UnsafeSkillError(f"{root} holds more than {max_entries} files", hint="point at the skill's folder")
    return found


def read_folder(folder: Path, limits: Limits, *, where: str) -> dict[str, bytes]:
    """Every file under ``folder`` as ``{relative_path: bytes}``; refuses links and special files."""
    if folder.is_symlink():
        raise UnsafeSkillError(f"{where} is a symlink", hint="skills may not contain links")
    files: dict[str, bytes] = {}
    total = 0
    for current, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(dirs) + sorted(names):
            path = Path(current, name)
            rel = path.relative_to(folder).as_posix()
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise UnsafeSkillError(f"{where} contains a symlink {rel!r}", hint="skills may not contain links")
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeSkillError(f"{where} contains a special file {rel!r}")
            if info.st_nlink > 1:
                raise UnsafeSkillError(f"{where} contains a hardlink {rel!r}", hint="skills may not contain links")
            total += info.st_size
            if len(files) + 1 > limits.max_files:
                raise UnsafeSkillError(f"{where} has more than {limits.max_files} files", hint="raise [skills] max_files if you trust it")
            if total > limits.max_bytes:
                raise UnsafeSkillError(f"{where} is larger than {limits.max_bytes} bytes", hint="raise [skills] max_bytes if you trust it")
            files[rel] = path.read_bytes()
    return files


def _git(args: list[str], *, cwd: Path | None = None, what: str, env: dict[str, str] | None = None,
         guarded: str | None = None) -> str:
    """Run git; ``guarded``: the URL a worker chose — network failures then read like every other
    refused fetch (:data:`NOT_REACHABLE`), with git's own words in the log only."""
    env = env or {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "GIT_LFS_SKIP_SMUDGE": "1"}
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise RegistryError(f"cannot {what}: git is not installed", hint="install git, or use a registry source") from None
    except subprocess.TimeoutExpired:
        if guarded is not None:
            log.warning("skills: git clone of %r for a worker timed out", guarded)
            raise RegistryError(f"cannot fetch {guarded}: {NOT_REACHABLE}", hint=NOT_REACHABLE_HINT) from None
        raise RegistryError(f"cannot {what}: git timed out after {GIT_TIMEOUT:.0f}s") from None
    if result.returncode != 0:
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if ln.lower().startswith(("fatal", "error"))), lines[-1] if lines else "")
        if guarded is not None and "unable to access" in result.stderr:
            log.warning("skills: git clone of %r for a worker failed: %s", guarded, reason[:300])
            raise RegistryError(f"cannot fetch {guarded}: {NOT_REACHABLE}", hint=NOT_REACHABLE_HINT)
        raise RegistryError(f"cannot {what}: {reason[:300]}", hint="check the URL, the ref and your network access")
    return result.stdout.strip()


class GitCheckout:
    """A shallow clone in a temporary folder (removed on exit).

    ``policy`` (a fetch a worker chose): the URL must pass it — http(s) only, and unless its
    origin is trusted, a host resolving to public addresses only, which git is then pinned to
    (``http.curloptResolve``); git runs without the control plane's git configuration
    (credential helpers, ``insteadOf``, proxies), with only that protocol allowed and no redirects."""

    def __init__(self, url: str, ref: str | None = None, *, policy: FetchPolicy | None = None) -> None:
        self.url = url
        self.ref = ref
        self.policy = policy
        self._tmp = tempfile.TemporaryDirectory(prefix="hiclaw-skill-git-")
        self.root = Path(self._tmp.name) / "repo"

    def __enter__(self) -> GitCheckout:
        try:
            self.clone()
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def _guarded(self) -> tuple[list[str], dict[str, str]]:
        """The ``-c`` options and environment of a clone under :attr:`policy`; refuses the URL
        (one line, the same as any unreachable fetch) when the policy does."""
        assert self.policy is not None
        try:
            trusted = self.policy.check_url(self.url)
            scheme, host, port = parse_origin(self.url)
            pinned = [] if trusted else self.policy.addresses_sync(host, port)
        except FetchRefused as exc:
            log.warning("skills: refusing to clone %r for a worker: %s", self.url, exc)
            raise RegistryError(f"cannot fetch {self.url}: {NOT_REACHABLE}", hint=NOT_REACHABLE_HINT) from None
        options = ["-c", "protocol.allow=never", "-c", f"protocol.{scheme}.allow=always",
                   "-c", "http.followRedirects=false", "-c", "credential.helper=", "-c", "http.proxy=",
                   "-c", "core.hooksPath=/dev/null"]
        if pinned and not _is_ip(host):
            addresses = ",".join(f"[{a}]" if ":" in a else a for a in pinned)
            options += ["-c", f"http.curloptResolve={host}:{port}:{addresses}"]
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": self._tmp.name, "LANG": "C",
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0",
               "GIT_ASKPASS": "true", "GIT_LFS_SKIP_SMUDGE": "1", "GIT_ALLOW_PROTOCOL": scheme}
        return options, env

    def clone(self) -> None:
        what = f"clone {self.url}" + (f" at {self.ref}" if self.ref else "")
        options, env = self._guarded() if self.policy is not None else ([], None)
        guarded = self.url if self.policy is not None else None
        base = [*options, "-c", "core.symlinks=true", "clone", "--quiet", "--no-tags", "--single-branch"]
        is_sha = self.ref is not None and len(self.ref) >= 7 and all(c in "0123456789abcdef" for c in self.ref.lower())
        if self.ref and is_sha:
            _git([*base, "--no-checkout", "--", self.url, str(self.root)], what=what, env=env, guarded=guarded)
            _git([*options, "checkout", "--quiet", self.ref], cwd=self.root, what=what, env=env, guarded=guarded)
            return
        branch = ["--branch", self.ref] if self.ref else []
        _git([*base, "--depth", "1", *branch, "--", self.url, str(self.root)], what=what, env=env, guarded=guarded)

    def tree_sha(self, folder: str) -> str:
        """Git tree SHA of ``folder`` (what the global lock calls ``skillFolderHash``)."""
        spec = f"HEAD:{folder}" if folder else "HEAD^{tree}"
        try:
            return _git(["rev-parse", spec], cwd=self.root, what="read the tree hash")
        except RegistryError:
            return ""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def skill_md_path(folder: str) -> str:
    return f"{folder}/{SKILL_FILE}" if folder else SKILL_FILE
