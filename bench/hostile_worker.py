"""Attacks from inside a worker that succeed: the hostile-worker suite, counted (DESIGN bar: 0).

Runs every ``tests/test_hostile_*.py`` (and the seccomp suite) on real components — each attack
from inside a real bwrap worker on a live team, or against the real component it targets — and
prints, per attack file, how many attacks were attempted and how many got through (a failing
test is an attack that succeeded, or a control that broke). The reference point of the bar is
the reference system's "untested claim": it has no such suite, so there is nothing to run beside.

    .venv/bin/python bench/hostile_worker.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = [*sorted(ROOT.glob("tests/test_hostile_*.py")), ROOT / "tests" / "test_sandbox_seccomp.py"]


def run(suite: Path) -> tuple[int, int, int, float]:
    """(attacks run, succeeded = failed tests, skipped, seconds) for one suite."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider",
                        f"--junitxml={report}"], cwd=ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if not report.exists():
            return 0, 1, 0, seconds  # the suite did not even run: count it as a hole
        totals = ET.parse(report).getroot()
        suite_el = totals if totals.tag == "testsuite" else totals.find("testsuite")
        assert suite_el is not None
        tests, failures, errors, skipped = (int(suite_el.get(k, "0")) for k in ("tests", "failures", "errors", "skipped"))
        return tests - skipped, failures + errors, skipped, seconds


def main() -> int:
    print(f"{'suite':<36} {'attacks':>8} {'succeeded':>10} {'skipped':>8} {'time':>8}")
    total = succeeded = 0
    for suite in SUITES:
        ran, failed, skipped, seconds = run(suite)
        total += ran
        succeeded += failed
        print(f"{suite.name:<36} {ran:>8} {failed:>10} {skipped:>8} {seconds:>7.1f}s")
    print()
    print(f"attacks from inside a worker that succeed: {succeeded} of {total}   (bar: 0)")
    print("reference system: untested claim — no hostile-worker suite to run beside")
    return 0 if succeeded == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
