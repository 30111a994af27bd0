"""``hiclaw demo``: the whole team, on real components, with the scripted model."""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click


@click.command("demo")
@click.option("--keep", is_flag=True, help="Leave the team running afterwards, to look at it with a Matrix client.")
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), help="Use this folder (default: a new temporary one).")
@click.option("--sandbox", type=click.Choice(["bwrap", "process"]), help="Worker isolation (default: bwrap when installed).")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds allowed for each step.")
@click.option("--show-scenario", is_flag=True, help="Print the scripted model's scenario (YAML) and exit.")
@click.option("--model", "real_model", metavar="ALIAS",
              help="Play the opening against a real model: an alias of your own config (`hiclaw init`).")
def demo_command(keep: bool, home: Path | None, sandbox: str | None, timeout: float, show_scenario: bool,
                 real_model: str | None) -> None:
    """Play the demo scenario: a Manager, four workers, one project with a revision.

    Needs no LLM key: the scripted model server answers behind the real gateway.
    """
    if show_scenario:
        import yaml

        from hiclaw.demo.scenario import demo_scenario

        click.echo(yaml.safe_dump(demo_scenario(), sort_keys=False, allow_unicode=True, width=120))
        return
    from hiclaw.cli.app import echo_safe, warn_if_root
    from hiclaw.config import hiclaw_home
    from hiclaw.demo.runner import Demo

    warn_if_root()

    # It prints what the agents say as they say it: through echo_safe, like every agent text.
    demo = Demo(home=home, keep=keep, sandbox=sandbox, timeout=timeout, real_model=real_model, real_home=hiclaw_home(),
                echo=echo_safe)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: demo.plane.request_stop() if hasattr(demo, "plane") and keep
                                    else task.cancel() if task else None)
        return await demo.run()

    try:
        code = asyncio.run(main())
    except asyncio.CancelledError:
        code = 130
    raise SystemExit(code)
