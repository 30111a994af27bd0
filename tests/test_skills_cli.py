"""The issue's acceptance flow, as a new user runs it: `hiclaw registry serve` + `hiclaw skills …`."""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hiclaw.testing import wait_for
from hiclaw.testing.registry import skill_md


def read_line(proc: subprocess.Popen[str], stream: str = "stdout", timeout: float = 15.0) -> str:
    pipe = getattr(proc, stream)
    selector = selectors.DefaultSelector()
    selector.register(pipe, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=max(0.0, deadline - time.monotonic())):
            return pipe.readline()
    raise TimeoutError(f"no line on {stream} within {timeout}s")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    root = tmp_path_factory.mktemp("registry")
    for owner, repo, name, description in [("acme", "tools", "pdf-tools", "Extract text and tables from PDF files."),
                                           ("acme", "tools", "csv-clean", "Clean and normalise CSV files.")]:
        folder = root / owner / repo / "skills" / name
        (folder / "scripts").mkdir(parents=True)
        (folder / "SKILL.md").write_text(skill_md(name, description, "Run scripts/run.py\n"))
        (folder / "scripts" / "run.py").write_text("print('ok')\n")
    (root / "acme" / "tools" / "broken").mkdir()
    (root / "acme" / "tools" / "broken" / "SKILL.md").write_text("no frontmatter\n")
    proc = subprocess.Popen([sys.executable, "-m", "hiclaw", "registry", "serve", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HICLAW_HOME": str(root / ".h")})
    line = read_line(proc)
    assert line.startswith("serving 2 skill(s)"), line
    url = line.rsplit(" at ", 1)[1].strip()
    yield url, root, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)


def run(*args: str, url: str, cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SKILLS_API_URL": url, "HOME": str(home or cwd / "home"), "HICLAW_HOME": str(cwd / "hiclaw-home")}
    env.pop("XDG_STATE_HOME", None)
    return subprocess.run([sys.executable, "-m", "hiclaw", "skills", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_serve_reports_malformed_skills_on_start(served):
    _, _, proc = served
    line = read_line(proc, "stderr")
    assert line.startswith("warning: acme/tools/broken: SKILL.md has no frontmatter") and line.endswith("skipped\n")


def test_find_add_check_tamper_check(served, tmp_path):
    url, _, _ = served
    found = run("find", "pdf", "--json", url=url, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert hits[0]["id"] == "acme/tools/pdf-tools" and hits[0]["source"] == "acme/tools"
    target = tmp_path / "x"
    added = run("add", "acme/tools@pdf-tools", "--dir", str(target), url=url, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert "installed pdf-tools (2 files)" in added.stdout
    lock = json.loads((target / "skills-lock.json").read_text())
    assert lock["skills"]["pdf-tools"]["sourceType"] == "registry"
    assert run("check", "--dir", str(target), url=url, cwd=tmp_path).returncode == 0
    (target / "pdf-tools" / "scripts" / "run.py").write_text("import os; os.system('curl evil')\n")
    failed = run("check", "--dir", str(target), url=url, cwd=tmp_path)
    assert failed.returncode == 1
    assert "pdf-tools: modified — changed scripts/run.py" in failed.stdout
    assert failed.stderr.startswith("error: ") and str(target / "pdf-tools" / "scripts" / "run.py") in failed.stderr
    updated = run("update", "--dir", str(target), "--json", url=url, cwd=tmp_path)
    assert json.loads(updated.stdout) == [{"name": "pdf-tools", "status": "updated", "detail": "acme/tools"}]
    assert run("check", "--dir", str(target), url=url, cwd=tmp_path).returncode == 0


def test_list_remove_and_scopes(served, tmp_path):
    url, _, _ = served
    assert run("add", url, "--skill", "csv-clean", "--json", url=url, cwd=tmp_path).returncode == 0  # project scope
    assert (tmp_path / ".agents" / "skills" / "csv-clean" / "SKILL.md").is_file()
    assert json.loads((tmp_path / "skills-lock.json").read_text())["skills"]["csv-clean"]["sourceType"] == "well-known"
    listed = json.loads(run("list", "--json", url=url, cwd=tmp_path).stdout)
    assert [(s["name"], s["source"], s["scope"]) for s in listed] == [("csv-clean", "127.0.0.1", "project")]
    assert run("add", "acme/tools@pdf-tools", "-g", url=url, cwd=tmp_path).returncode == 0
    assert json.loads((tmp_path / "home" / ".agents" / ".skill-lock.json").read_text())["version"] == 3
    assert [s["name"] for s in json.loads(run("list", "-g", "--json", url=url, cwd=tmp_path).stdout)] == ["pdf-tools"]
    removed = run("remove", "csv-clean", "--json", url=url, cwd=tmp_path)
    assert json.loads(removed.stdout)["removed"] == ["csv-clean"]
    assert json.loads((tmp_path / "skills-lock.json").read_text())["skills"] == {}
    usage = run("list", "-g", "--dir", str(tmp_path), url=url, cwd=tmp_path)
    assert usage.returncode == 2 and "not both" in usage.stderr
    missing = run("remove", "nope", url=url, cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1


def test_sighup_reloads_the_folder(served, tmp_path):
    url, root, proc = served
    folder = root / "acme" / "tools" / "fresh"
    folder.mkdir()
    (folder / "SKILL.md").write_text(skill_md("fresh", "Brand new skill."))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: json.loads(run("find", "brand", "--json", url=url, cwd=tmp_path).stdout), timeout=15, what="reloaded index")


def test_unreachable_registry_is_one_clear_line(tmp_path):
    result = run("find", "pdf", url="http://127.0.0.1:9", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach http://127.0.0.1:9/api/search") and result.stderr.count("\n") == 1
