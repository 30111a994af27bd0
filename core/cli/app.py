"""Shared state of one CLI invocation, and output helpers every noun uses."""
from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from hiclaw.config import HiclawConfig, Secrets, hiclaw_home, load_config
from hiclaw.errors import ConfigError, HiclawError
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


@contextmanager
def offline_state(app: App, *, readonly: bool = False) -> Iterator[Any]:
    """The state DB of a team that is not running (a :class:`hiclaw.state.StateDB`)."""
    from hiclaw.state import StateDB

    path = app.home / "state.db"
    if not path.exists():
        raise HiclawError(f"no team state in {app.home}",
                          hint="start the team once with `hiclaw up` and create a worker, or set HICLAW_HOME")
    state = StateDB(path, readonly=readonly)
    try:
        yield state
    finally:
        state.close()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


#: Terminal escape sequences, whole: CSI (``ESC [`` … final byte), OSC / DCS / SOS / PM / APC
#: strings up to BEL or ST (or the end of the line), and the two-byte ``ESC x`` forms; also their
#: 8-bit C1 introducers.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"                       # CSI: colours, cursor moves, clear screen
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"  # OSC title/hyperlink, DCS…
    r"|\x1b[ -/]*[0-~]"                                       # ESC x: charset, keypad, reset (ESC c)
)
#: What is left after the sequences: every C0 control but tab and newline (BEL, backspace, ``\r``,
#: a lone ESC…), DEL and C1 controls, and the Unicode bidi controls that reorder what is shown
#: (embeddings/overrides U+202A–U+202E, isolates U+2066–U+2069, marks U+200E/U+200F/U+061C).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: Any, *, one_line: bool = False) -> str:
    """``text`` (written by an agent, a worker, a skill, a registry…) made safe to print on the
    admin's terminal: escape sequences and control characters removed, so nothing it says can
    set the window title, clear or repaint the screen, move the cursor, overwrite a line with
    ``\\r`` or reorder it with bidi overrides. Tabs and newlines stay (``one_line``: they become
    spaces, for a table cell). ``\\r\\n`` counts as a newline."""
    text = "" if text is None else str(text)
    text = _CONTROLS.sub("", _ESCAPES.sub("", text.replace("\r\n", "\n").replace("\u2028", "\n").replace("\u2029", "\n")))
    return " ".join(text.split()) if one_line else text


def echo_safe(text: Any, *, nl: bool = True, err: bool = False) -> None:
    """``click.echo`` of text that holds anything agent-controlled (see :func:`terminal_safe`)."""
    click.echo(terminal_safe(text), nl=nl, err=err)


def root_warning(euid: int | None = None) -> str | None:
    """The one-line warning for running the team as root (``euid``: default, this process's)."""
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    return ("warning: running as root: a worker that escaped its sandbox would be root on this machine "
            "— run hiclaw as an ordinary user (e.g. `sudo -u <user> hiclaw up`)")


def warn_if_root() -> None:
    """Print :func:`root_warning` on stderr if it applies; the command goes on (not an error)."""
    warning = root_warning()
    if warning:
        click.echo(warning, err=True)


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str], *, file: Any = None) -> None:
    """Print a plain, aligned table (readable over SSH, no colours needed). Every cell is made
    :func:`terminal_safe` and kept to one line: cells are often an agent's words (roles, titles)."""
    text_rows = [[terminal_safe(cell, one_line=True) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    out = file or sys.stdout
    line = "  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()
    click.echo(line, file=out)
    for row in text_rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip(), file=out)
