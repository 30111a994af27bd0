"""Errors of the Matrix channel: one line for the user, naming what failed and the fix."""
from __future__ import annotations

from hiclaw.errors import HiclawError


class MatrixError(HiclawError):
    """The homeserver refused or could not be reached for a channel operation."""


class HomeserverError(HiclawError):
    """The embedded homeserver could not be started, reached or stopped."""
