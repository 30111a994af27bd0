"""Print the installed distributions whose version differs from a lock file (``./dev.sh test --latest``).

Usage: python scripts/lock_drift.py locks/test.txt
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]+))?")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    """Name -> pinned version, for the lines whose environment marker holds here."""
    from packaging.markers import Marker

    found: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line.strip())
        if match and (match.group(3) is None or Marker(match.group(3).strip()).evaluate()):
            found[canonical(match.group(1))] = match.group(2)
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    locked = pins(Path(argv[0]))
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    changed = [(name, locked[name], installed[name]) for name in sorted(locked)
               if name in installed and installed[name] != locked[name]]
    for name, old, new in changed:
        print(f"  {name}: {old} (lock) -> {new}")
    print(f"  {len(changed)} of {len(locked)} locked distributions differ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
