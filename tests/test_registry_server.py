"""The private registry server over HTTP: search, download, well-known, bad input, reload."""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import httpx
import pytest

from hiclaw.registry.hashing import files_hash
from hiclaw.registry.wellknown import DISCOVERY_SCHEMA_V2


@pytest.fixture
def registry(skills_registry):
    skills_registry.publish("acme", "tools", "pdf-tools", description="Extract text and tables from PDF files.",
                            folder="skills/pdf-tools", files={"scripts/extract.py": "print('x')\n"})
    skills_registry.publish("acme", "tools", "csv-clean", description="Clean CSV files; handles PDF exports too.")
    skills_registry.publish("beta", "kit", "pdf", description="Minimal PDF reader.")
    skills_registry.publish("beta", "kit", "terraform-aws", description="Deploy on AWS with Terraform.")
    return skills_registry


def get(registry, path: str, **params: object) -> httpx.Response:
    return httpx.get(registry.url + path, params=params or None, timeout=10)


def test_search_ranks_by_name_then_description(registry):
    body = get(registry, "/api/search", q="pdf", limit=10).json()
    ids = [s["id"] for s in body["skills"]]
    assert ids == ["beta/kit/pdf", "acme/tools/pdf-tools", "acme/tools/csv-clean"]
    first = body["skills"][0]
    assert first == {"id": "beta/kit/pdf", "skillId": "pdf", "name": "pdf", "source": "beta/kit", "installs": 0,
                     "description": "Minimal PDF reader."}
    assert [s["id"] for s in get(registry, "/api/search", q="aws terraform").json()["skills"]] == ["beta/kit/terraform-aws"]
    assert get(registry, "/api/search", q="pdf", owner="acme").json()["skills"][0]["source"] == "acme/tools"
    assert len(get(registry, "/api/search", q="pdf", limit=1).json()["skills"]) == 1
    assert get(registry, "/api/search", q="pdf nonexistentword").json() == {"skills": []}


@pytest.mark.parametrize("params", [
    {}, {"q": ""}, {"q": "   "}, {"q": "pdf", "limit": "abc"}, {"q": "pdf", "limit": "-3"}, {"q": "x" * 5000},
    {"q": "%00\x00'; DROP"}, {"q": "pdf", "owner": "../.."}, {"q": "🙂"},
])
def test_bad_queries_get_empty_or_default_results_never_5xx(registry, params):
    response = get(registry, "/api/search", **params)
    assert response.status_code == 200
    assert isinstance(response.json()["skills"], list)


def test_download_api_serves_files_and_the_cli_hash(registry):
    body = get(registry, "/api/download/acme/tools/pdf-tools").json()
    files = {f["path"]: f["contents"].encode() for f in body["files"]}
    assert sorted(files) == ["SKILL.md", "scripts/extract.py"]
    assert body["hash"] == files_hash(files)
    assert get(registry, "/api/search", q="pdf-tools").json()["skills"][0]["installs"] == 1
    missing = get(registry, "/api/download/acme/tools/nope")
    assert missing.status_code == 404 and "not found" in missing.json()["error"]


def test_well_known_v2_index_and_artifacts_with_digests(registry):
    index = get(registry, "/.well-known/agent-skills/index.json").json()
    assert index["$schema"] == DISCOVERY_SCHEMA_V2
    entries = {e["name"]: e for e in index["skills"]}
    assert entries["pdf"]["type"] == "skill-md" and entries["pdf"]["url"] == "pdf/SKILL.md"
    assert entries["pdf-tools"]["type"] == "archive" and entries["pdf-tools"]["url"] == "pdf-tools.tar.gz"
    for entry in entries.values():
        artifact = get(registry, "/.well-known/agent-skills/" + entry["url"]).content
        assert entry["digest"] == "sha256:" + hashlib.sha256(artifact).hexdigest()
    archive = get(registry, "/.well-known/agent-skills/pdf-tools.tar.gz").content
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        assert sorted(tar.getnames()) == ["SKILL.md", "scripts/extract.py"]
    # Deterministic: the same content always gives the same digest.
    registry.reload()
    again = {e["name"]: e for e in get(registry, "/.well-known/agent-skills/index.json").json()["skills"]}
    assert again["pdf-tools"]["digest"] == entries["pdf-tools"]["digest"]


def test_well_known_v1_and_scoped_indexes(registry):
    v1 = get(registry, "/.well-known/skills/index.json").json()
    assert "$schema" not in v1
    tools = {e["name"]: e for e in v1["skills"]}["pdf-tools"]
    assert tools["files"] == ["SKILL.md", "scripts/extract.py"]
    assert get(registry, "/.well-known/skills/pdf-tools/scripts/extract.py").text == "print('x')\n"
    scoped = get(registry, "/beta/kit/.well-known/agent-skills/index.json").json()
    assert sorted(e["name"] for e in scoped["skills"]) == ["pdf", "terraform-aws"]
    assert get(registry, "/nobody/none/.well-known/agent-skills/index.json").status_code == 404
    assert get(registry, "/.well-known/agent-skills/pdf/../../etc/passwd").status_code == 404
    assert get(registry, "/.well-known/other/index.json").status_code == 404


def test_malformed_skills_are_reported_and_skipped(skills_registry):
    skills_registry.publish("acme", "tools", "good", description="Fine.")
    skills_registry.publish("acme", "tools", "wrong-folder", skill_md_text="---\nname: other\ndescription: d\n---\n")
    skills_registry.publish("acme", "tools", "nofront", skill_md_text="just text\n")
    linked = skills_registry.publish("acme", "tools", "linked", description="Has a link.")
    (linked / "passwd").symlink_to("/etc/passwd")
    (skills_registry.root / "loose").mkdir()
    (skills_registry.root / "loose" / "SKILL.md").write_text("---\nname: loose\ndescription: d\n---\n")
    skills_registry.reload()
    problems = "\n".join(skills_registry.problems)
    for fragment in ("does not match its folder", "nofront", "symlink", "loose/SKILL.md: not under"):
        assert fragment in problems
    names = [e["name"] for e in get(skills_registry, "/.well-known/agent-skills/index.json").json()["skills"]]
    assert names == ["good"]


def test_same_name_in_two_repos_is_reported_and_resolved_by_scope(skills_registry):
    skills_registry.publish("acme", "a", "pdf", description="First.")
    skills_registry.publish("zeta", "b", "pdf", description="Second.")
    assert any("published by acme/a, zeta/b" in c for c in skills_registry.registry.index.name_clashes())
    root = get(skills_registry, "/.well-known/agent-skills/index.json").json()["skills"]
    assert [e["description"] for e in root] == ["First."]
    scoped = get(skills_registry, "/zeta/b/.well-known/agent-skills/index.json").json()["skills"]
    assert [e["description"] for e in scoped] == ["Second."]
