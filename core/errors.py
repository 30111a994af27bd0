"""User-facing error types.

Every error a user can cause (bad config, bad input, a refused operation) is a
:class:`HiclawError` whose message says what went wrong, where, and how to fix it.
The CLI prints it as one line and exits 1; it never shows a traceback for these.
"""
from __future__ import annotations


class HiclawError(Exception):
    """An error with a message meant for the user (what, where, how to fix)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} — {hint}")

    def __str__(self) -> str:  # one line, always
        text = self.message if not self.hint else f"{self.message} — {self.hint}"
        return " ".join(text.split())


class ConfigError(HiclawError):
    """The configuration (file, environment or plugin settings) is invalid."""


class PluginError(HiclawError):
    """A plugin is missing, broken, or refused an operation."""


class NotFoundError(HiclawError):
    """A named thing (worker, task, skill, token…) does not exist."""


class InvalidInputError(HiclawError):
    """Input from a user, a registry or a message was malformed or unsafe."""
