"""The environment for a subprocess a test starts (``hiclaw up``, ``hiclaw demo``, a CLI command)."""
from __future__ import annotations

import os
from pathlib import Path

from hiclaw.host import ENTRY_POINTS_ENV

#: Prefix of the variables that configure hiclaw; a test's subprocess must not inherit them.
CONFIG_PREFIXES = ("HICLAW_",)


def clean_env(home: Path | str | None = None, *, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """``os.environ`` without ``HICLAW_*`` (and the ``drop`` prefixes), with ``HICLAW_HOME`` if given.

    The session's :data:`~hiclaw.host.ENTRY_POINTS_ENV` is kept, so installed plugins stay out of
    the subprocess's team just as they stay out of the test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES + drop)}
    if ENTRY_POINTS_ENV in os.environ:
        env[ENTRY_POINTS_ENV] = os.environ[ENTRY_POINTS_ENV]
    if home is not None:
        env["HICLAW_HOME"] = str(home)
    return env | extra
