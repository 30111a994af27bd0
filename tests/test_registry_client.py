"""The registry client against the real private registry, a scripted hostile registry, git and disk."""
from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from aiohttp import web

from hiclaw.registry.client import RegistryClient
from hiclaw.registry.errors import RegistryError, SkillNotFoundError, UnsafeSkillError
from hiclaw.registry.hashing import files_hash, sha256_digest
from hiclaw.registry.http import HttpFetcher
from hiclaw.registry.wellknown import DISCOVERY_SCHEMA_V2
from hiclaw.testing.registry import BackgroundServer, skill_md

SKILL = skill_md("pdf-tools", "Read PDFs.").encode()


class Hostile:
    """A registry that answers whatever the test scripts: ``routes[path] = (status, body, headers)``."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, bytes, dict[str, str]]]] = {}
        self.hits: list[str] = []
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.server = BackgroundServer(app).start()
        self.url = self.server.url

    def set(self, path: str, *answers: tuple[int, object] | tuple[int, object, dict[str, str]]) -> None:
        """Answers are used in order; the last one repeats."""
        self.routes[path] = [(a[0], a[1] if isinstance(a[1], bytes) else json.dumps(a[1]).encode(), a[2] if len(a) > 2 else {})
                             for a in answers]

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        answers = self.routes.get(request.path)
        if not answers:
            return web.Response(status=404, text="{}")
        status, body, headers = answers.pop(0) if len(answers) > 1 else answers[0]
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
def hostile():
    server = Hostile()
    yield server
    server.server.stop()


def client(url: str, **kwargs: object) -> RegistryClient:
    return RegistryClient(url, fetcher=HttpFetcher(timeout=5, retries=3, backoff=0.01), **kwargs)  # type: ignore[arg-type]


def targz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for path, target in (links or {}).items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return raw.getvalue()


# ---------------------------------------------------------------------- search


async def test_search_tolerates_missing_fields_and_strips_controls(hostile):
    hostile.set("/api/search", (200, {"skills": [
        {"id": "acme/tools/pdf-tools", "name": "pdf-tools", "installs": 5},  # no skillId, no source
        {"id": "acme/tools/csv", "skillId": "csv", "source": "acme/tools", "name": "csv\x1b[31m!", "installs": "many"},
        {"id": "broken"}, "not a dict",
    ]}))
    async with client(hostile.url) as c:
        results = await c.search("pdf")
    assert [(r.source, r.skill_id, r.installs) for r in results] == [("acme/tools", "pdf-tools", 5), ("acme/tools", "csv", 0)]
    assert results[1].name == "csv!" and results[0].install_source == "acme/tools@pdf-tools"


async def test_search_retries_5xx_and_429_then_succeeds(hostile):
    hostile.set("/api/search", (503, b"busy"), (429, b"slow down", {"Retry-After": "0"}), (200, {"skills": []}))
    async with client(hostile.url) as c:
        assert await c.search("pdf") == []
    assert hostile.hits.count("/api/search") == 3


async def test_search_errors_name_the_registry(hostile):
    hostile.set("/api/search", (500, {"error": "database on fire"}))
    async with client(hostile.url) as c:
        with pytest.raises(RegistryError, match=rf"{hostile.url}/api/search answered HTTP 500: database on fire"):
            await c.search("pdf")
    hostile.set("/api/search", (200, b"<html>not json</html>"))
    async with client(hostile.url) as c:
        with pytest.raises(RegistryError, match="did not answer JSON"):
            await c.search("pdf")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with client(dead) as c:
        with pytest.raises(RegistryError, match=rf"cannot reach {dead}/api/search .* after 3 attempt"):
            await c.search("pdf")


# ---------------------------------------------------------------------- fetch from our registry


async def test_fetch_by_download_api_and_by_repo(skills_registry):
    skills_registry.publish("acme", "tools", "pdf-tools", description="Read PDFs.", files={"scripts/x.py": "1\n"})
    skills_registry.publish("acme", "tools", "csv-clean", description="Clean CSVs.")
    async with client(skills_registry.url) as c:
        (skill,) = await c.fetch("acme/tools@pdf-tools")
        assert skill.name == "pdf-tools" and sorted(skill.files) == ["SKILL.md", "scripts/x.py"]
        assert skill.provenance.source_type == "registry"
        assert skill.provenance.source_url == f"{skills_registry.url}/api/download/acme/tools/pdf-tools"
        assert sorted(s.name for s in await c.fetch("acme/tools")) == ["csv-clean", "pdf-tools"]
        with pytest.raises(SkillNotFoundError, match=f"registry {skills_registry.url} has no skill acme/tools@nope"):
            await c.fetch("acme/tools@nope")


async def test_fetch_by_well_known_v2_skill_md_and_archive(skills_registry):
    skills_registry.publish("acme", "tools", "pdf-tools", description="Read PDFs.", files={"refs/a.md": "# a\n"})
    skills_registry.publish("acme", "tools", "tiny", description="One file.")
    async with client("http://unused.invalid") as c:
        (archive_skill,) = await c.fetch(skills_registry.url, "pdf-tools")
        (md_skill,) = await c.fetch(f"{skills_registry.url}/.well-known/agent-skills/tiny")
    assert sorted(archive_skill.files) == ["SKILL.md", "refs/a.md"]
    assert archive_skill.provenance.source == "127.0.0.1"
    assert archive_skill.provenance.well_known_digest.startswith("sha256:")
    assert md_skill.files == {"SKILL.md": skill_md("tiny", "One file.").encode()}
    assert md_skill.provenance.base_url == skills_registry.url


async def test_well_known_falls_back_to_v01(hostile):
    hostile.set("/.well-known/skills/index.json", (200, {"skills": [
        {"name": "pdf-tools", "description": "Read PDFs.", "files": ["SKILL.md", "notes/n.md"]}]}))
    hostile.set("/.well-known/skills/pdf-tools/SKILL.md", (200, SKILL))
    hostile.set("/.well-known/skills/pdf-tools/notes/n.md", (200, b"n"))
    async with client(hostile.url) as c:
        (skill,) = await c.fetch(hostile.url)
    assert skill.files == {"SKILL.md": SKILL, "notes/n.md": b"n"}
    assert hostile.hits[0] == "/.well-known/agent-skills/index.json"


async def test_archive_url_with_several_skills(hostile):
    other = skill_md("csv-clean", "CSV.").encode()
    hostile.set("/repo.tar.gz", (200, targz({"repo-main/skills/pdf-tools/SKILL.md": SKILL,
                                             "repo-main/skills/csv-clean/SKILL.md": other, "repo-main/README.md": b"r"})))
    async with client(hostile.url) as c:
        (skill,) = await c.fetch(f"{hostile.url}/repo.tar.gz", "csv-clean")
        assert skill.files == {"SKILL.md": other} and skill.provenance.skill_path == "skills/csv-clean/SKILL.md"
        assert len(await c.fetch(f"{hostile.url}/repo.tar.gz")) == 2


# ---------------------------------------------------------------------- git and disk


def git_repo(root: Path, skills: dict[str, dict[str, str]]) -> str:
    for folder, files in skills.items():
        for rel, text in files.items():
            (root / folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / folder / rel).write_text(text)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "skills"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True)
    return f"file://{root}"


async def test_git_source_records_path_and_tree_hash(tmp_path):
    url = git_repo(tmp_path / "repo", {"skills/pdf-tools": {"SKILL.md": SKILL.decode(), "run.sh": "echo\n"}})
    async with client("http://unused.invalid") as c:
        (skill,) = await c.fetch(url, "pdf-tools")
    p = skill.provenance
    assert (p.source_type, p.skill_path, len(p.folder_hash)) == ("git", "skills/pdf-tools/SKILL.md", 40)
    assert sorted(skill.files) == ["SKILL.md", "run.sh"]


async def test_git_and_local_sources_refuse_links(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pdf-tools").mkdir(parents=True)
    (repo / "pdf-tools" / "key").symlink_to("/etc/hostname")
    url = git_repo(repo, {"pdf-tools": {"SKILL.md": SKILL.decode()}})
    async with client("http://unused.invalid") as c:
        with pytest.raises(UnsafeSkillError, match="symlink 'key'"):
            await c.fetch(url)
        with pytest.raises(UnsafeSkillError, match="symlink 'key'"):
            await c.fetch(str(repo / "pdf-tools"))
        os.unlink(repo / "pdf-tools" / "key")
        os.link(repo / "pdf-tools" / "SKILL.md", tmp_path / "alias")
        with pytest.raises(UnsafeSkillError, match=re.escape("hardlink 'SKILL.md'")):
            await c.fetch(str(repo / "pdf-tools"))
        with pytest.raises(RegistryError, match="cannot clone"):
            await c.fetch(f"file://{tmp_path}/nothing-here.git")


# ---------------------------------------------------------------------- hostile registries, end to end


def hiclaw(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hiclaw", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def download(files: dict[str, str], hash_: str | None = "auto") -> dict[str, object]:
    body: dict[str, object] = {"files": [{"path": p, "contents": c} for p, c in files.items()]}
    if hash_ == "auto":
        body["hash"] = files_hash({p: c.encode() for p, c in files.items()})
    elif hash_ is not None:
        body["hash"] = hash_
    return body


HOSTILE_CASES = {
    "traversal": ("acme/tools@pdf-tools", {"/api/download/acme/tools/pdf-tools": download({"SKILL.md": SKILL.decode(), "../../.bashrc": "x"})},
                  "leaves the skill folder"),
    "absolute": ("acme/tools@pdf-tools", {"/api/download/acme/tools/pdf-tools": download({"SKILL.md": SKILL.decode(), "/etc/x": "x"})},
                 "absolute path"),
    "bad-hash": ("acme/tools@pdf-tools", {"/api/download/acme/tools/pdf-tools": download({"SKILL.md": SKILL.decode()}, "0" * 64)},
                 "does not match the hash"),
    "no-hash": ("acme/tools@pdf-tools", {"/api/download/acme/tools/pdf-tools": download({"SKILL.md": SKILL.decode()}, None)},
                "gave no content hash"),
    "frontmatter": ("acme/tools@pdf-tools", {"/api/download/acme/tools/pdf-tools": download({"SKILL.md": "---\nname: PDF\n---\n"})},
                    "lower-case letters"),
    "oversize": ("acme/tools@pdf-tools", {"/api/download/acme/tools/pdf-tools": download({"SKILL.md": SKILL.decode(), "big": "x" * 3000})},
                 "limit 2048"),
    "digest": ("{url} --skill pdf-tools", {
        "/.well-known/agent-skills/index.json": {"$schema": DISCOVERY_SCHEMA_V2, "skills": [
            {"name": "pdf-tools", "description": "d", "type": "skill-md", "url": "pdf-tools/SKILL.md", "digest": "sha256:" + "0" * 64}]},
        "/.well-known/agent-skills/pdf-tools/SKILL.md": SKILL}, "digest mismatch"),
    "archive-link": ("{url} --skill pdf-tools", {
        "/.well-known/agent-skills/index.json": {"$schema": DISCOVERY_SCHEMA_V2, "skills": [
            {"name": "pdf-tools", "description": "d", "type": "archive", "url": "p.tar.gz",
             "digest": sha256_digest(targz({"SKILL.md": SKILL}, {"id_rsa": "/home/victim/.ssh/id_rsa"}))}]},
        "/.well-known/agent-skills/p.tar.gz": targz({"SKILL.md": SKILL}, {"id_rsa": "/home/victim/.ssh/id_rsa"})}, "contains a link"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CASES))
def test_hostile_registry_is_refused_with_one_line_and_nothing_written(hostile, tmp_path, case):
    source, routes, message = HOSTILE_CASES[case]
    for path, body in routes.items():
        hostile.set(path, (200, body))
    env = {**os.environ, "HOME": str(tmp_path / "home"), "HICLAW_HOME": str(tmp_path / "hiclaw"),
           "SKILLS_API_URL": hostile.url, "HICLAW_SKILLS__MAX_BYTES": "2048"}
    work = tmp_path / "work"
    work.mkdir()
    scopes = (["--dir", str(tmp_path / "target")], [], ["-g"]) if case == "traversal" else (["--dir", str(tmp_path / "target")],)
    for args in scopes:
        result = hiclaw("skills", "add", *source.format(url=hostile.url).split(), *args, cwd=work, env=env)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "target").exists() and list(work.iterdir()) == [] and not (tmp_path / "home").exists()


async def test_a_site_without_an_index_is_not_a_registry(hostile):
    hostile.set("/.well-known/agent-skills/index.json", (200, b"<html>a web page</html>"))
    async with client(hostile.url) as c:
        with pytest.raises(SkillNotFoundError, match=rf"no skills index at {hostile.url}/.well-known/agent-skills/index.json"):
            await c.fetch(f"{hostile.url}/.well-known/agent-skills/index.json")


async def test_github_repo_without_git_comes_as_a_tarball(hostile, monkeypatch):
    import hiclaw.registry.client as client_module

    monkeypatch.setattr(client_module.shutil, "which", lambda name: None)
    hostile.set("/acme/tools/tar.gz/main", (200, targz({"tools-main/skills/pdf-tools/SKILL.md": SKILL,
                                                        "tools-main/skills/pdf-tools/run.sh": b"echo\n"})))
    async with client("http://unused.invalid") as c:
        c.github_archive = hostile.url + "/{owner}/{repo}/tar.gz/{ref}"
        (skill,) = await c.fetch("https://github.com/acme/tools/tree/main/skills")
    assert sorted(skill.files) == ["SKILL.md", "run.sh"]
    p = skill.provenance
    assert (p.source, p.source_type, p.ref, p.skill_path) == ("acme/tools", "github", "main", "skills/pdf-tools/SKILL.md")
