"""Well-known skill discovery (what ``npx skills add https://host`` reads).

v0.2 (``$schema`` = :data:`DISCOVERY_SCHEMA_V2`) at ``{url}/.well-known/agent-skills/index.json``:
``{"skills": [{"name", "description", "type": "skill-md"|"archive", "url", "digest": "sha256:…"}]}``
— each artifact is downloaded and its digest checked before anything else is looked at.
v0.1 (no ``$schema``) at ``{url}/.well-known/skills/index.json``: ``{"skills": [{"name",
"description", "files": [...]}]}`` with files at ``{url}/.well-known/skills/{name}/{file}``.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any
from urllib.parse import urljoin, urlparse

from hiclaw.registry import safety
from hiclaw.registry.errors import RegistryError, SkillNotFoundError, UnsafeSkillError
from hiclaw.registry.frontmatter import NAME_RE, SKILL_FILE, strip_controls
from hiclaw.registry.hashing import sha256_digest
from hiclaw.registry.http import HttpFetcher, parse_json
from hiclaw.registry.models import FetchedSkill, Limits, Provenance

DISCOVERY_SCHEMA_V2 = "https://schemas.agentskills.io/discovery/0.2.0/schema.json"
V2_PATH = ".well-known/agent-skills"
V1_PATH = ".well-known/skills"
INDEX_FILE = "index.json"
INDEX_LIMIT = 8 * 1024 * 1024
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_SKILL_IN_URL = re.compile(r"/\.well-known/(?:agent-skills|skills)/([^/]+)/?(?:SKILL\.md)?$")


def split_url(url: str) -> tuple[str, str | None]:
    """``https://h/p/.well-known/agent-skills/x`` → (``https://h/p``, ``"x"``); any URL inside
    ``/.well-known/`` is cut back to the base it belongs to."""
    parsed = urlparse(url)
    cut = parsed.path.find("/.well-known/")
    if cut < 0:
        return url.rstrip("/"), None
    match = _SKILL_IN_URL.search(parsed.path)
    skill = match.group(1) if match and match.group(1) != INDEX_FILE else None
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path[:cut]}".rstrip("/"), skill


def source_identifier(url: str) -> str:
    """What the ``skills`` CLI records as ``source`` for a well-known URL (its host name)."""
    host = urlparse(url).hostname or "unknown"
    return host.removeprefix("www.")


def legacy_digest(files: dict[str, bytes]) -> str:
    """The CLI's digest of a v0.1 skill: paths (code-unit order) and contents, NUL-separated."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.encode("utf-16-be")):
        digest.update(path.encode("utf-8") + b"\0" + files[path] + b"\0")
    return "sha256:" + digest.hexdigest()


def _v2_entry(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    return (
        isinstance(entry.get("name"), str) and bool(NAME_RE.match(entry["name"])) and len(entry["name"]) <= 64
        and isinstance(entry.get("description"), str) and 0 < len(entry["description"]) <= 1024
        and entry.get("type") in ("skill-md", "archive")
        and isinstance(entry.get("url"), str) and bool(entry["url"])
        and isinstance(entry.get("digest"), str) and bool(_DIGEST_RE.match(entry["digest"]))
    )


def _v1_entry(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    files = entry.get("files")
    return (
        isinstance(entry.get("name"), str) and bool(NAME_RE.match(entry["name"]))
        and isinstance(entry.get("description"), str) and bool(entry["description"])
        and isinstance(files, list) and bool(files) and all(isinstance(f, str) for f in files)
        and SKILL_FILE in files
    )


async def _index(http: HttpFetcher, base: str) -> tuple[str, str, list[dict[str, Any]]] | None:
    """``(version, index_url, entries)`` of the first index found at ``base``, or ``None``."""
    for path, version in ((V2_PATH, "0.2"), (V1_PATH, "0.1")):
        index_url = f"{base}/{path}/{INDEX_FILE}"
        status, body, _ = await http.get(index_url, max_bytes=INDEX_LIMIT, not_found_ok=True)
        if status == 404:
            continue
        try:
            data = parse_json(body, index_url)
        except RegistryError:
            continue  # a site without an index may answer HTML: that is "no index here"
        if not isinstance(data, dict) or not isinstance(data.get("skills"), list):
            continue
        schema = data.get("$schema")
        if version == "0.2" and schema == DISCOVERY_SCHEMA_V2:
            entries = [e for e in data["skills"] if _v2_entry(e)]
        elif schema is None:
            version = "0.1"
            entries = [e for e in data["skills"] if _v1_entry(e)]
        else:
            continue
        if entries:
            return version, index_url, entries
    return None


async def fetch_well_known(
    http: HttpFetcher, url: str, skill: str | None, limits: Limits, *, source: str | None = None
) -> list[FetchedSkill]:
    """Fetch ``skill`` (or every skill) published at ``url`` via well-known discovery."""
    base, skill_in_url = split_url(url)
    skill = skill or skill_in_url
    found = await _index(http, base)
    if found is None:
        raise SkillNotFoundError(
            f"no skills index at {base}/{V2_PATH}/{INDEX_FILE} (nor {V1_PATH}/)",
            hint="is this URL a skills registry? try `hiclaw registry serve` or a git URL",
        )
    version, index_url, entries = found
    if skill is not None:
        entries = [e for e in entries if e["name"].lower() == skill.lower()]
        if not entries:
            names = ", ".join(sorted(e["name"] for e in found[2])[:30])
            raise SkillNotFoundError(f"{base} has no skill {skill!r} (it has: {names})")
    fetch_one = _fetch_v2 if version == "0.2" else _fetch_v1
    identifier = source or source_identifier(base)
    return list(await asyncio.gather(*(fetch_one(http, base, index_url, e, limits, identifier) for e in entries)))


async def _fetch_v2(http: HttpFetcher, base: str, index_url: str, entry: dict[str, Any], limits: Limits,
                    identifier: str) -> FetchedSkill:
    artifact_url = urljoin(index_url, entry["url"])
    if urlparse(artifact_url).scheme not in ("http", "https"):
        raise UnsafeSkillError(f"{index_url}: skill {entry['name']!r} points at a non-HTTP URL", hint="refusing it")
    _, body, _headers = await http.get(artifact_url, max_bytes=limits.max_download_bytes)
    if sha256_digest(body) != entry["digest"]:
        raise UnsafeSkillError(
            f"{artifact_url}: digest mismatch (index says {entry['digest'][:23]}…, got {sha256_digest(body)[:23]}…)",
            hint="the registry or the network altered the skill; refusing it",
        )
    if entry["type"] == "skill-md":
        files = {SKILL_FILE: body}
    else:
        files = safety.unpack_archive(body, limits, where=artifact_url)
        if SKILL_FILE not in files:
            files = safety.strip_single_top_folder(files)
    provenance = Provenance(
        source=identifier, source_type="well-known", source_url=artifact_url, base_url=base,
        well_known_digest=entry["digest"],
    )
    return safety.validated_skill(files, folder=entry["name"], provenance=provenance, limits=limits, where=artifact_url)


async def _fetch_v1(http: HttpFetcher, base: str, index_url: str, entry: dict[str, Any], limits: Limits,
                    identifier: str) -> FetchedSkill:
    name = entry["name"]
    paths = list(dict.fromkeys(entry["files"]))
    for path in paths:
        problem = safety.path_problem(path)
        if problem:
            raise UnsafeSkillError(f"{index_url}: skill {name!r} lists {problem}", hint="refusing to install it")
    if len(paths) > limits.max_files:
        raise UnsafeSkillError(f"{index_url}: skill {name!r} lists {len(paths)} files (limit {limits.max_files})")
    skill_base = f"{base}/{V1_PATH}/{name}"
    files: dict[str, bytes] = {}
    total = 0
    for path in paths:
        _, body, _ = await http.get(f"{skill_base}/{path}", max_bytes=limits.max_bytes - total + 1)
        total += len(body)
        if total > limits.max_bytes:
            raise UnsafeSkillError(f"{skill_base}: skill {name!r} is larger than {limits.max_bytes} bytes")
        files[path] = body
    provenance = Provenance(
        source=identifier, source_type="well-known", source_url=f"{skill_base}/{SKILL_FILE}", base_url=base,
        well_known_digest=legacy_digest(files),
    )
    return safety.validated_skill(files, folder=name, provenance=provenance, limits=limits,
                                  where=strip_controls(skill_base))
