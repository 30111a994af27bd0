"""``hiclaw registry serve DIR`` — run a private skills registry (skills.sh-compatible)."""
from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click

from hiclaw.cli.app import App, pass_app
from hiclaw.errors import HiclawError


@click.group("registry")
def registry_group() -> None:
    """Run a private skills registry that `hiclaw skills` and `npx skills` both use."""


@registry_group.command("serve")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True, help="0 picks a free port.")
@pass_app
def serve_command(app: App, directory: Path, host: str, port: int) -> None:
    """Serve the skills in DIRECTORY, laid out as <owner>/<repo>/…/<skill>/SKILL.md.

    Then: SKILLS_API_URL=http://HOST:PORT hiclaw skills find WORD, or
    npx skills add http://HOST:PORT --skill NAME. Send SIGHUP to re-read DIRECTORY.
    """
    from hiclaw.registry.models import Limits
    from hiclaw.registry.server import RegistryApp, serve_forever

    config = app.config.skills
    registry = RegistryApp(directory, limits=Limits(max_files=config.max_files, max_bytes=config.max_bytes))

    def report() -> None:
        index = registry.index
        for problem in index.problems + index.name_clashes():
            click.echo(f"warning: {problem}", err=True)

    def ready(url: str) -> None:
        report()
        click.echo(f"serving {len(registry.index.skills)} skill(s) from {registry.index.root} at {url}")
        click.echo(f"  SKILLS_API_URL={url} hiclaw skills find <word>")
        sys.stdout.flush()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def reload() -> None:
            registry.reload()
            click.echo(f"reloaded: {len(registry.index.skills)} skill(s)")
            report()
            sys.stdout.flush()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)
        server = asyncio.create_task(serve_forever(registry, host, port, ready))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
        server.cancel()
        stopper.cancel()
        await asyncio.gather(server, return_exceptions=True)
        for task in done:
            if task is server and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    try:
        asyncio.run(main())
    except OSError as exc:
        raise HiclawError(f"cannot listen on {host}:{port}: {exc.strerror}", hint="pick another --port (0 = any free port)") from None
    click.echo("stopped")
