"""The product never imports the test harness: `hiclaw demo` builds its team from
:mod:`hiclaw.demo.team` and waits with :mod:`hiclaw.waiting`."""
from __future__ import annotations

import subprocess
import sys

import pytest

from hiclaw.testing import clean_env


@pytest.mark.parametrize("module", ["hiclaw.demo.runner", "hiclaw.cli.demo", "hiclaw.cli"])
def test_importing_the_product_does_not_import_hiclaw_testing(module):
    code = (f"import sys, {module}\n"
            "loaded = sorted(m for m in sys.modules if m == 'hiclaw.testing' or m.startswith('hiclaw.testing.'))\n"
            "print(loaded)\n"
            "sys.exit(1 if loaded else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(),
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_harness_builds_the_demos_team():
    import hiclaw.demo.team
    import hiclaw.testing.team

    for name in ("team_config", "default_sandbox", "free_port", "PRICES", "SERVER_NAME"):
        assert getattr(hiclaw.testing.team, name) is getattr(hiclaw.demo.team, name)
