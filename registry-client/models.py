"""Data that crosses the registry boundary: search hits, fetched skills, limits, install results."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MAX_FILES = 1000
DEFAULT_MAX_BYTES = 25 * 1024 * 1024

SourceType = Literal["registry", "well-known", "github", "git", "local", "download"]


class Limits(BaseModel):
    """What one skill may contain (unpacked)."""

    model_config = ConfigDict(frozen=True)

    max_files: int = Field(default=DEFAULT_MAX_FILES, ge=1)
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1)

    @property
    def max_download_bytes(self) -> int:
        """Cap on a raw response body: JSON escaping and archive headers add overhead."""
        return 2 * self.max_bytes + 512 * (self.max_files + 16) + 1024 * 1024


class SearchResult(BaseModel):
    """One hit of ``GET /api/search`` (skills.sh shape, plus ``description`` when known)."""

    id: str  # "owner/repo/skill"
    skill_id: str = Field(alias="skillId")
    name: str
    source: str  # "owner/repo"
    installs: int = 0
    description: str = ""

    model_config = ConfigDict(populate_by_name=True)

    @property
    def install_source(self) -> str:
        """What to pass to ``hiclaw skills add`` (and ``npx skills add``)."""
        return f"{self.source}@{self.skill_id}"

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "skillId": self.skill_id,
            "name": self.name,
            "source": self.source,
            "installs": self.installs,
            "description": self.description,
        }


class Provenance(BaseModel):
    """Where a skill came from — what the lock files record (``skills`` CLI field names)."""

    source: str
    source_type: SourceType
    source_url: str | None = None
    ref: str | None = None
    skill_path: str | None = None  # path of SKILL.md inside the repository
    folder_hash: str = ""  # git tree SHA of the skill folder (global lock ``skillFolderHash``)
    base_url: str | None = None  # well-known: the URL the user gave
    well_known_digest: str | None = None


class FetchedSkill(BaseModel):
    """A skill fetched and checked in memory, ready for the installer (nothing on disk yet)."""

    name: str
    description: str
    files: dict[str, bytes]
    provenance: Provenance
    expected_hash: str | None = None  # snapshot hash the registry announced

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.files.values())


class InstalledSkill(BaseModel):
    """A skill present in a scope's skills folder."""

    name: str
    description: str
    path: str
    scope: str
    source: str | None = None
    source_type: str | None = None
    computed_hash: str | None = None
    files: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()
