"""The layout of DESIGN section 2 maps into one `hiclaw` namespace, for wheels and editable installs."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

from hiclaw.testing import clean_env


def test_namespace_imports_from_the_layout():
    expected = {
        "hiclaw": ROOT / "core",
        "hiclaw.plugins": ROOT / "plugins",
        "hiclaw.plugins.channels": ROOT / "plugins" / "channels",
        "hiclaw.registry": ROOT / "registry-client",
        "hiclaw.sandbox": ROOT / "sandbox",
        "hiclaw.skills": ROOT / "skills",
    }
    for name, folder in expected.items():
        module = importlib.import_module(name)
        assert module.__file__ is not None and folder.resolve() in __import__("pathlib").Path(module.__file__).resolve().parents


def test_core_import_is_light():
    code = "import sys, hiclaw.host, hiclaw.config, hiclaw.cli; print(sorted(m for m in ('nio','minio','litellm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_wheel_contains_every_folder(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("hiclaw-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("hiclaw/__init__.py", "hiclaw/host.py", "hiclaw/hookspecs.py", "hiclaw/plugins/__init__.py",
                     "hiclaw/registry/__init__.py", "hiclaw/sandbox/__init__.py", "hiclaw/skills/__init__.py"):
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "hiclaw = hiclaw.cli:main" in text


# What the installed wheel must carry besides modules (checked inside the wheel's own venv).
WHEEL_DATA_CHECK = r"""
import importlib.resources as r, json, sys
from pathlib import Path
import hiclaw, hiclaw.skills, hiclaw.sandbox, hiclaw.demo
from hiclaw.skills import bundled_skill
root = Path(hiclaw.__file__).parent
assert "site-packages" in str(root), root
skills = sorted(p.name for p in r.files("hiclaw.skills").iterdir() if (p / "SKILL.md").is_file())
for name in skills:
    bundled_skill(name)  # parses and validates
demo = sorted(str(p.relative_to(root)) for p in (root / "demo" / "registry").rglob("SKILL.md"))
sandbox = [p for p in ("sandbox/Dockerfile", "sandbox/kubernetes/pod.yaml", "py.typed") if (root / p).is_file()]
print(json.dumps({"skills": skills, "demo_skills": len(demo), "sandbox": sandbox}))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_built_wheel_runs_the_demo_in_a_clean_venv(tmp_path):
    """Not only the editable checkout: the wheel, installed into a fresh venv from the lock, has its
    package data (bundled skills, the demo's registry, sandbox files, py.typed) and runs `hiclaw demo`."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("hiclaw-*.whl")
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    for args in (["--require-hashes", "-r", str(ROOT / "locks" / "base.txt")], ["--no-deps", str(wheel)]):
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-2000:]

    env = clean_env()
    found = subprocess.run([str(python), "-c", WHEEL_DATA_CHECK], capture_output=True, text=True, cwd=tmp_path,
                           env=env, timeout=120, check=False)
    assert found.returncode == 0, found.stderr[-2000:]
    data = json.loads(found.stdout)
    assert set(data["skills"]) >= {"find-skills", "project-management", "project-work", "task-reporting",
                                   "team-management"}, data
    assert data["demo_skills"] >= 1 and data["sandbox"] == ["sandbox/Dockerfile", "sandbox/kubernetes/pod.yaml",
                                                            "py.typed"], data

    demo = subprocess.run([str(venv / "bin" / "hiclaw"), "demo", "--home", str(tmp_path / "demo"), "--timeout", "180"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600, check=False)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert str(ROOT) not in demo.stdout  # nothing came from the checkout
