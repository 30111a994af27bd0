"""Shared state of one CLI invocation, and output helpers every noun uses."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from hiclaw.config import HiclawConfig, Secrets, hiclaw_home, load_config
from hiclaw.errors import ConfigError
from hiclaw.host import PluginHost


class App:
    """Lazily loaded home, config, secrets and plugin host for one command."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or hiclaw_home()

    @cached_property
    def config(self) -> HiclawConfig:
        return load_config(self.home)

    @cached_property
    def secrets(self) -> Secrets:
        return Secrets.load(self.home)

    @cached_property
    def host(self) -> PluginHost:
        return PluginHost(disabled=self.config.plugins.disabled,
                          secret_source=lambda name: self.secrets.get(name))  # noqa: PLW0108 - loads secrets.toml lazily

    def host_for_cli(self) -> PluginHost:
        """A host for adding plugin commands; tolerates a broken config (the command reports it)."""
        try:
            disabled = self.config.plugins.disabled
        except ConfigError:
            disabled = []
        host = PluginHost(disabled=disabled)
        self.__dict__.setdefault("host", host)
        return host


pass_app = click.make_pass_decorator(App, ensure=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str], *, file: Any = None) -> None:
    """Print a plain, aligned table (readable over SSH, no colours needed)."""
    text_rows = [[("" if cell is None else str(cell)) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    out = file or sys.stdout
    line = "  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()
    click.echo(line, file=out)
    for row in text_rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip(), file=out)
