"""What a user (or a worker) may name as a skill source, parsed into one :class:`SourceSpec`.

==========================================  ===========  =======================================
source                                      kind         fetched from
==========================================  ===========  =======================================
``owner/repo@skill``, ``owner/repo/skill``  registry     ``{download}/api/download/owner/repo/skill``
                                                         (then the repo's git, if the registry
                                                         has no such skill)
``owner/repo``                              registry     the registry's scoped well-known index,
                                                         then git
``https://github.com/o/r[/tree/ref/path]``  git          ``git clone`` (shallow)
``git@host:o/r.git``, ``ssh://…``,          git          ``git clone``
``https://host/x.git``, ``file://…``
``https://host/x.tar.gz|.tgz|.zip``         download     one archive
``https://host[/path]``                     well-known   ``/.well-known/agent-skills/index.json``
                                                         (v0.2), then ``/.well-known/skills/``
``./dir``, ``/abs/dir``, ``~/dir``          local        a folder on this machine
==========================================  ===========  =======================================
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from hiclaw.errors import InvalidInputError

SourceKind = Literal["registry", "git", "download", "well-known", "local"]
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_OWNER_REPO = re.compile(rf"^({_SEGMENT})/({_SEGMENT})(?:/({_SEGMENT}))?(?:@([A-Za-z0-9][A-Za-z0-9._-]{{0,99}}))?$")
_GIT_HOSTS = ("github.com", "gitlab.com")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source. ``skill`` is the requested skill name, if any."""

    kind: SourceKind
    raw: str
    skill: str | None = None
    owner: str | None = None
    repo: str | None = None
    url: str | None = None
    ref: str | None = None
    subpath: str | None = None
    path: Path | None = None

    @property
    def owner_repo(self) -> str | None:
        return f"{self.owner}/{self.repo}" if self.owner and self.repo else None

    @property
    def display(self) -> str:
        return self.owner_repo or self.url or str(self.path or self.raw)

    def identifiers(self) -> list[str]:
        """Names a policy pattern may match: ``owner/repo``, ``owner/repo/skill``, URL, host."""
        names = [self.raw]
        if self.owner_repo:
            names.append(self.owner_repo)
            if self.skill:
                names.append(f"{self.owner_repo}/{self.skill}")
        if self.url:
            names.append(self.url)
            host = urlparse(self.url).hostname
            if host:
                names.append(host)
        return names

    def github_url(self) -> str | None:
        return f"https://github.com/{self.owner}/{self.repo}.git" if self.owner_repo else None


def _github(url: str, skill: str | None) -> SourceSpec | None:
    parsed = urlparse(url)
    if (parsed.hostname or "").lower() not in _GIT_HOSTS:
        return None
    parts = [p for p in parsed.path.split("/") if p]
    if len(parts) < 2:
        raise InvalidInputError(f"source {url!r} names no repository", hint="use https://github.com/OWNER/REPO")
    owner, repo = parts[0], parts[1].removesuffix(".git")
    ref = subpath = None
    if len(parts) >= 4 and parts[2] in ("tree", "blob"):
        ref = parts[3]
        subpath = "/".join(parts[4:]) or None
        if subpath and subpath.endswith("SKILL.md"):
            subpath = subpath[: -len("SKILL.md")].rstrip("/") or None
    clone = f"{parsed.scheme}://{parsed.hostname}/{owner}/{repo}.git"
    return SourceSpec("git", url, skill=skill, owner=owner, repo=repo, url=clone, ref=ref, subpath=subpath)


def parse_source(raw: str, skill: str | None = None) -> SourceSpec:
    """Parse ``raw`` (see the module table); ``skill`` overrides an ``@skill`` suffix."""
    text = raw.strip()
    if not text or any(ord(c) < 32 for c in text):
        raise InvalidInputError("empty or malformed skill source", hint="give owner/repo@skill, a URL or a path")
    if text.startswith(("./", "../", "/", "~")) or text in (".", ".."):
        return SourceSpec("local", raw, skill=skill, path=Path(text).expanduser())
    if text.startswith(("git@", "ssh://", "git://", "file://")):
        return SourceSpec("git", raw, skill=skill, url=text)
    if text.startswith(("http://", "https://")):
        parsed = urlparse(text)
        if not parsed.hostname:
            raise InvalidInputError(f"source URL {text!r} has no host", hint="give a URL like https://skills.example.com")
        github = _github(text, skill)
        if github is not None:
            return github
        lower = parsed.path.lower()
        if lower.endswith(".git"):
            return SourceSpec("git", raw, skill=skill, url=text)
        if lower.endswith(_ARCHIVE_SUFFIXES):
            return SourceSpec("download", raw, skill=skill, url=text)
        return SourceSpec("well-known", raw, skill=skill, url=text.rstrip("/"))
    match = _OWNER_REPO.match(text)
    if match:
        owner, repo, third, at_skill = match.groups()
        if third and at_skill:
            raise InvalidInputError(f"source {raw!r} names the skill twice", hint="use owner/repo@skill")
        return SourceSpec("registry", raw, skill=skill or at_skill or third, owner=owner, repo=repo)
    if Path(text).expanduser().exists():
        return SourceSpec("local", raw, skill=skill, path=Path(text).expanduser())
    raise InvalidInputError(
        f"cannot read skill source {raw!r}",
        hint="use owner/repo@skill (see `hiclaw skills find`), an https:// URL, a git URL or ./path",
    )
