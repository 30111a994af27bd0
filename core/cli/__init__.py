"""The ``hiclaw`` command line: a thin click layer, one module per noun.

Built-in nouns are imported only when used (``LAZY_COMMANDS``) so ``hiclaw --help`` stays fast;
plugins add their own commands through the ``hiclaw_register_commands`` hook. User errors
(:class:`hiclaw.errors.HiclawError`) print one line and exit 1; usage errors exit 2.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from hiclaw import __version__
from hiclaw.cli.app import App, terminal_safe
from hiclaw.errors import HiclawError

#: noun -> "module:attribute" of its click command. Add a line here for a new built-in noun.
LAZY_COMMANDS: dict[str, str] = {
    "init": "hiclaw.cli.init:init_command",
    "plugins": "hiclaw.cli.plugins:plugins_group",
    "homeserver": "hiclaw.cli.homeserver:homeserver_group",
    "chat": "hiclaw.cli.chat:chat_command",
    "skills": "hiclaw.cli.skills:skills_group",
    "registry": "hiclaw.cli.registry:registry_group",
    "gateway": "hiclaw.cli.gateway:gateway_group",
    "model": "hiclaw.cli.model:model_group",
    "usage": "hiclaw.cli.usage:usage_command",
    "fs": "hiclaw.cli.fs:fs_group",
    "sandbox": "hiclaw.cli.sandbox:sandbox_group",
    "worker": "hiclaw.cli.workers:worker_group",
    "up": "hiclaw.cli.up:up_command",
    "demo": "hiclaw.cli.demo:demo_command",
    "project": "hiclaw.cli.projects:project_group",
    "task": "hiclaw.cli.projects:task_group",
    "status": "hiclaw.cli.up:status_command",
    "down": "hiclaw.cli.up:down_command",
    "console": "hiclaw.cli.up:console_command",
    "schedule": "hiclaw.cli.schedule:schedule_group",
    "mcp": "hiclaw.cli.access:mcp_group",
    "egress": "hiclaw.cli.access:egress_group",
    "approvals": "hiclaw.cli.approvals:approvals_group",
}


class LazyGroup(click.Group):
    """A group whose built-in sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module_name, attr = LAZY_COMMANDS[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="hiclaw")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run a team of AI agents — a Manager and Workers — from a Matrix room.

    Start with `hiclaw demo`, then `hiclaw init` and `hiclaw up`.
    """
    ctx.ensure_object(App)


_plugin_commands: dict[str, bool] = {"added": False}


def _add_plugin_commands() -> None:
    """Let plugins add commands; a broken plugin must not take the CLI down."""
    if _plugin_commands["added"]:
        return
    _plugin_commands["added"] = True
    try:
        host = App().host_for_cli()
    except HiclawError:
        return
    host.register_commands(cli)


def main(argv: list[str] | None = None) -> Any:
    args = sys.argv[1:] if argv is None else argv
    noun = next((a for a in args if not a.startswith("-")), None)
    if noun not in LAZY_COMMANDS:  # a plugin's command, or a listing of all commands
        _add_plugin_commands()
    try:
        return cli.main(args=argv, prog_name="hiclaw", standalone_mode=False)
    except HiclawError as exc:
        click.echo(f"error: {terminal_safe(exc, one_line=True)}", err=True)  # may quote a worker's words
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
