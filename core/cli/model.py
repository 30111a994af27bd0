"""``hiclaw model``: the scripted model server (the provider used by tests and the demo)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from hiclaw.cli.app import emit_json, table
from hiclaw.errors import ConfigError

DEFAULT_SCRIPTED_PORT = 18090


@click.group("model")
def model_group() -> None:
    """Model providers for testing: the scripted OpenAI-compatible server."""


@model_group.command("serve-scripted")
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_SCRIPTED_PORT, show_default=True,
              help="Port to listen on (0 picks a free one; the URL is printed).")
@click.option("--api-key-env", metavar="VAR",
              help="Require `Authorization: Bearer $VAR` (the key is read from this environment variable).")
def serve_scripted(scenario: Path, host: str, port: int, api_key_env: str | None) -> None:
    """Serve SCENARIO (YAML or JSON) as an OpenAI-compatible model provider.

    The agent is the request's `user` field (the gateway sets it to the consumer name) or the
    X-Hiclaw-Consumer header. Format: docs/scripted-model.md.
    """
    from hiclaw.cli.gateway import serve_until_signal
    from hiclaw.scripted import ScriptedModelServer, load_scenario

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {api_key_env}: the variable is not set", hint=f"export {api_key_env}=…")
    loaded = load_scenario(scenario)
    server = ScriptedModelServer(loaded, host=host, port=port, api_key=api_key)

    def banner() -> str:
        return f"scripted model server ({loaded.name!r}, {len(loaded.agents)} agent(s)) listening on {server.base_url}"

    serve_until_signal(server, banner)


@model_group.command("check-scenario")
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def check_scenario(scenario: Path, as_json: bool) -> None:
    """Validate SCENARIO and summarise what each agent's script holds."""
    from hiclaw.scripted import load_scenario

    loaded = load_scenario(scenario)
    rows: list[dict[str, Any]] = [
        {"agent": name, "turns": len(script.turns), "rules": len(script.rules), "default": script.default is not None,
         "tools": sorted({c.name for t in [*script.turns, *script.rules, *([script.default] if script.default else [])]
                          for c in t.tool_calls})}
        for name, script in loaded.agents.items()
    ]
    if as_json:
        emit_json({"scenario": loaded.name, "models": loaded.models, "agents": rows})
        return
    click.echo(f"scenario {loaded.name!r} is valid")
    table([(r["agent"], r["turns"], r["rules"], "yes" if r["default"] else "no", ", ".join(r["tools"])) for r in rows],
          ["agent", "turns", "rules", "default", "tools called"])
