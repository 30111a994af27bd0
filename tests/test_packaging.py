"""The layout of DESIGN section 2 maps into one `hiclaw` namespace, for wheels and editable installs."""
from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile

from conftest import ROOT


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
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
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
