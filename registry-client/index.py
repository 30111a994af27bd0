"""The private registry's catalogue: skills found in a folder, ranked search, artifacts.

``DIR/<owner>/<repo>/…/<skill>/SKILL.md`` — each skill is validated exactly as an install
would be (frontmatter, name = folder, no links, limits); a malformed one is reported and
skipped. The catalogue holds the bytes it indexed, so what is served is what was hashed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from hiclaw.errors import HiclawError
from hiclaw.registry import safety
from hiclaw.registry.disk import list_tree, read_folder
from hiclaw.registry.frontmatter import SKILL_FILE
from hiclaw.registry.hashing import deterministic_tar_gz, files_hash, sha256_digest
from hiclaw.registry.models import Limits, Provenance

SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_TERM_RE = re.compile(r"[a-z0-9]+")
MAX_QUERY = 256


@dataclass
class IndexedSkill:
    owner: str
    repo: str
    name: str
    description: str
    folder: str  # relative to DIR
    files: dict[str, bytes]
    snapshot_hash: str = ""
    artifact: bytes = b""
    artifact_type: str = "skill-md"  # or "archive"
    digest: str = ""
    installs: int = 0
    _terms: tuple[set[str], set[str], str] = field(default_factory=lambda: (set(), set(), ""), repr=False)

    def __post_init__(self) -> None:
        self.snapshot_hash = files_hash(self.files)
        if set(self.files) == {SKILL_FILE}:
            self.artifact_type, self.artifact = "skill-md", self.files[SKILL_FILE]
        else:
            self.artifact_type, self.artifact = "archive", deterministic_tar_gz(self.files)
        self.digest = sha256_digest(self.artifact)
        name_terms = set(_TERM_RE.findall(self.name))
        text_terms = set(_TERM_RE.findall(f"{self.description} {self.owner} {self.repo}".lower()))
        self._terms = (name_terms, text_terms, self.description.lower())

    @property
    def source(self) -> str:
        return f"{self.owner}/{self.repo}"

    @property
    def id(self) -> str:
        return f"{self.owner}/{self.repo}/{self.name}"

    @property
    def artifact_path(self) -> str:
        """Artifact URL relative to the well-known index."""
        return f"{self.name}/{SKILL_FILE}" if self.artifact_type == "skill-md" else f"{self.name}.tar.gz"

    def score(self, phrase: str, terms: list[str]) -> int:
        """Relevance of this skill for a query; 0 = no match (every term must match somewhere)."""
        name_terms, text_terms, description = self._terms
        score = 1000 if phrase == self.name else 300 if self.name.startswith(phrase) else 0
        for term in terms:
            if term in name_terms:
                score += 100
            elif term in self.name:
                score += 40
            elif term in text_terms:
                score += 10
            elif term in description or term in self.source.lower():
                score += 3
            else:
                return 0
        return score

    def search_hit(self) -> dict[str, object]:
        return {"id": self.id, "skillId": self.name, "name": self.name, "source": self.source,
                "installs": self.installs, "description": self.description}


class RegistryIndex:
    """Skills indexed from one folder. :meth:`load` again to pick up changes."""

    def __init__(self, root: Path, *, limits: Limits | None = None) -> None:
        self.root = root.expanduser().absolute()
        self.limits = limits or Limits()
        self.skills: list[IndexedSkill] = []
        self.problems: list[str] = []

    def load(self) -> RegistryIndex:
        if not self.root.is_dir():
            raise HiclawError(f"registry folder {self.root} does not exist", hint="create it and put <owner>/<repo>/<skill>/SKILL.md in it")
        skills: list[IndexedSkill] = []
        problems: list[str] = []
        for path in [p for p in [self.root / SKILL_FILE] if p.is_file()] + sorted(self.root.glob(f"*/{SKILL_FILE}")):
            rel = path.relative_to(self.root).as_posix()
            problems.append(f"{rel}: not under <owner>/<repo>/<skill>/ — skipped")
        for owner_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for repo_dir in sorted(p for p in owner_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if not (SEGMENT_RE.match(owner_dir.name) and SEGMENT_RE.match(repo_dir.name)):
                    problems.append(f"{owner_dir.name}/{repo_dir.name}: owner and repo must be letters, digits, '.', '_' or '-' — skipped")
                    continue
                self._load_repo(owner_dir.name, repo_dir, skills, problems)
        self.skills, self.problems = skills, problems
        return self

    def _load_repo(self, owner: str, repo_dir: Path, skills: list[IndexedSkill], problems: list[str]) -> None:
        for folder in safety.skill_folders(list_tree(repo_dir)):
            if not folder:
                problems.append(f"{owner}/{repo_dir.name}/SKILL.md: a skill needs its own folder under the repo — skipped")
                continue
            rel = f"{owner}/{repo_dir.name}/{folder}"
            try:
                files = read_folder(repo_dir / folder, self.limits, where=rel)
                skill = safety.validated_skill(
                    files, folder=folder.rsplit("/", 1)[-1], limits=self.limits, where=rel,
                    provenance=Provenance(source=f"{owner}/{repo_dir.name}", source_type="registry"),
                )
            except HiclawError as exc:
                problems.append(f"{exc!s} — skipped")
                continue
            clash = next((s for s in skills if s.owner == owner and s.repo == repo_dir.name and s.name == skill.name), None)
            if clash is not None:
                problems.append(f"{rel}: a second skill named {skill.name!r} in {owner}/{repo_dir.name} (first: {clash.folder}) — skipped")
                continue
            skills.append(IndexedSkill(owner, repo_dir.name, skill.name, skill.description, rel, files))

    # ------------------------------------------------------------------ queries

    def search(self, query: str, *, limit: int = 10, owner: str | None = None) -> list[IndexedSkill]:
        phrase = " ".join(query.lower().split())
        terms = _TERM_RE.findall(phrase)
        if not terms or len(phrase) > MAX_QUERY or limit < 1:
            return []
        scored = []
        for skill in self.skills:
            if owner and skill.owner.lower() != owner.lower():
                continue
            score = skill.score(phrase.replace(" ", "-"), terms)
            if score:
                scored.append((-score, -skill.installs, skill.id, skill))
        return [item[-1] for item in sorted(scored, key=lambda t: t[:3])[:limit]]

    def get(self, owner: str, repo: str, name: str) -> IndexedSkill | None:
        key = (owner.lower(), repo.lower(), name.lower())
        return next((s for s in self.skills if (s.owner.lower(), s.repo.lower(), s.name.lower()) == key), None)

    def scoped(self, owner: str | None = None, repo: str | None = None) -> list[IndexedSkill]:
        """Skills of one repo, or (root scope) one skill per name — the first by id wins."""
        if owner is not None and repo is not None:
            return [s for s in self.skills if s.owner.lower() == owner.lower() and s.repo.lower() == repo.lower()]
        seen: dict[str, IndexedSkill] = {}
        for skill in sorted(self.skills, key=lambda s: s.id):
            seen.setdefault(skill.name, skill)
        return list(seen.values())

    def name_clashes(self) -> list[str]:
        by_name: dict[str, list[str]] = {}
        for skill in sorted(self.skills, key=lambda s: s.id):
            by_name.setdefault(skill.name, []).append(skill.source)
        return [
            f"skill name {name!r} is published by {', '.join(sources)}; the root well-known index lists only "
            f"{sources[0]}'s (the others are at /<owner>/<repo>/.well-known/agent-skills/)"
            for name, sources in by_name.items() if len(sources) > 1
        ]

