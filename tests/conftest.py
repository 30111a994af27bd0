"""Shared test configuration. Component fixtures live in ``hiclaw.testing`` (shipped to plugin authors)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def hiclaw_cli() -> Path:
    """Path of the ``hiclaw`` console script of the environment running the tests."""
    return VENV_BIN / "hiclaw"
