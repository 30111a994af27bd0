"""Interop with the official `skills` CLI (npm package `skills`, pinned) on the same registry and folders.

The CLI is installed once per machine into ``~/.cache/hiclaw-tests/`` (npm registry access needed
the first time). ``skills`` ≥ 1.6 needs Node ≥ 22.20; 1.5.26 runs on the Node 20 found here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SKILLS_CLI_VERSION = "1.5.26"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = [
    pytest.mark.needs_node,
    pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                       reason="node and npm are needed to run the official skills CLI"),
]


@pytest.fixture(scope="session")
def skills_cli() -> Path:
    """Path of the official CLI's entry script, installed once into a cache folder."""
    cache = Path(os.environ.get("HICLAW_TEST_CACHE", Path.home() / ".cache" / "hiclaw-tests")) / f"skills-cli-{SKILLS_CLI_VERSION}"
    entry = cache / "node_modules" / "skills" / "bin" / "cli.mjs"
    package = cache / "node_modules" / "skills" / "package.json"
    if not (entry.is_file() and json.loads(package.read_text()).get("version") == SKILLS_CLI_VERSION):
        cache.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error",
             f"skills@{SKILLS_CLI_VERSION}"], capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0 or not entry.is_file():
            pytest.fail(f"could not install skills@{SKILLS_CLI_VERSION} with npm: {result.stderr.strip()[-300:]}")
    return entry


@pytest.fixture
def registry(skills_registry):
    skills_registry.publish("acme", "tools", "pdf-tools", description="Extract text and tables from PDF files.",
                            folder="skills/pdf-tools",
                            files={"scripts/run.py": "print(1)\n", "References/Api.md": "# API\n", "readme.md": "r\n"})
    skills_registry.publish("acme", "tools", "csv-clean", description="Clean CSV files.")
    return skills_registry


class Env:
    def __init__(self, tmp_path: Path, url: str, cli: Path) -> None:
        self.home, self.cwd, self.url, self.cli = tmp_path / "home", tmp_path / "project", url, cli
        self.home.mkdir()
        self.cwd.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SKILLS_", "HICLAW_"))}
        self.env.update(HOME=str(self.home), DISABLE_TELEMETRY="1", NO_COLOR="1", SKILLS_API_URL=url,
                        HICLAW_HOME=str(tmp_path / "hiclaw-home"))

    def npx_skills(self, *args: str) -> str:
        result = subprocess.run(["node", str(self.cli), *args], cwd=self.cwd, env=self.env, capture_output=True,
                                text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
        assert result.returncode == 0, f"skills {' '.join(args)} failed: {result.stdout[-800:]} {result.stderr[-800:]}"
        return ANSI.sub("", result.stdout)

    def hiclaw(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "hiclaw", "skills", *args], cwd=self.cwd, env=self.env,
                                capture_output=True, text=True, timeout=120, check=False)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    def hiclaw_json(self, *args: str) -> object:
        return json.loads(self.hiclaw(*args, "--json").stdout)


@pytest.fixture
def env(tmp_path, registry, skills_cli) -> Env:
    return Env(tmp_path, registry.url, skills_cli)


def test_official_find_uses_our_search(env):
    out = env.npx_skills("find", "pdf")
    assert "acme/tools@pdf-tools" in out


def test_official_global_add_from_our_registry_is_seen_by_hiclaw(env):
    env.npx_skills("add", env.url, "--skill", "pdf-tools", "-g", "-y")
    env.npx_skills("add", env.url, "--skill", "csv-clean", "-g", "-y")
    listed = env.hiclaw_json("list", "-g")
    assert [(s["name"], s["source"], s["source_type"]) for s in listed] == [
        ("csv-clean", "127.0.0.1", "well-known"), ("pdf-tools", "127.0.0.1", "well-known")]
    # No content hash in the CLI's global lock: checked through the well-known digests instead.
    assert env.hiclaw("check", "-g").stdout.splitlines() == ["csv-clean: ok", "pdf-tools: ok"]
    (env.home / ".agents" / "skills" / "csv-clean" / "SKILL.md").write_text("---\nname: csv-clean\ndescription: evil\n---\n")
    failed = env.hiclaw("check", "-g", ok=False)
    assert failed.returncode == 1 and "csv-clean: modified — changed SKILL.md" in failed.stdout
    # Our remove also drops the links the CLI made into other agents' folders.
    links = [p for p in env.home.glob(".*/skills/pdf-tools") if p.is_symlink()]
    assert links
    env.hiclaw("remove", "pdf-tools", "-g")
    assert not any(p.is_symlink() for p in links)
    assert "pdf-tools" not in json.loads((env.home / ".agents" / ".skill-lock.json").read_text())["skills"]


def test_official_project_install_hashes_like_ours(env, registry):
    env.npx_skills("add", env.url, "--skill", "pdf-tools", "-y")
    lock = json.loads((env.cwd / "skills-lock.json").read_text())
    assert lock["skills"]["pdf-tools"]["sourceType"] == "well-known"
    assert env.hiclaw("check").stdout.strip() == "pdf-tools: ok"  # their computedHash == ours
    (env.cwd / ".agents" / "skills" / "pdf-tools" / "References" / "Api.md").write_text("changed")
    failed = env.hiclaw("check", ok=False)
    assert failed.returncode == 1 and "pdf-tools: modified" in failed.stdout
    # hiclaw update re-fetches from the source the CLI recorded and repairs it.
    assert env.hiclaw_json("update") == [{"name": "pdf-tools", "status": "updated", "detail": env.url}]
    assert env.hiclaw("check").stdout.strip() == "pdf-tools: ok"


def test_official_list_and_remove_work_on_what_hiclaw_installs(env):
    env.hiclaw("add", "acme/tools@pdf-tools")
    env.hiclaw("add", "acme/tools@csv-clean", "-g")
    project = json.loads(env.npx_skills("list", "--json"))
    assert [(s["name"], s["scope"], s["source"]) for s in project] == [("pdf-tools", "project", "acme/tools")]
    global_ = json.loads(env.npx_skills("list", "-g", "--json"))
    assert [(s["name"], s["scope"]) for s in global_] == [("csv-clean", "global")]
    env.npx_skills("remove", "pdf-tools", "-y")
    assert env.hiclaw_json("list") == []
    assert json.loads((env.cwd / "skills-lock.json").read_text())["skills"] == {}
