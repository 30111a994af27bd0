"""The web console (``hiclaw up`` prints its address): server-rendered pages of the team, its
projects and plans, usage and shared storage, for the admin only. See docs/console.md."""
from __future__ import annotations

from hiclaw.console.server import ConsoleServer

__all__ = ["ConsoleServer"]
