"""``hiclaw init``: write ``config.toml`` and ``secrets.toml`` (interactive or not)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from hiclaw.cli.app import App, pass_app
from hiclaw.config import CONFIG_FILE, HiclawConfig, ModelAlias, Secrets, current_plugin_name, save_config, secure_home
from hiclaw.errors import ConfigError


@dataclass(frozen=True)
class Provider:
    """A preset for a model provider reachable through litellm model strings."""

    smart: str
    fast: str
    cheap: str
    secret: str | None
    api_base: str | None = None


PROVIDERS: dict[str, Provider] = {
    "openai": Provider("openai/gpt-4o", "openai/gpt-4o-mini", "openai/gpt-4o-mini", "openai_api_key"),
    "anthropic": Provider(
        "anthropic/claude-sonnet-4-5", "anthropic/claude-haiku-4-5", "anthropic/claude-haiku-4-5", "anthropic_api_key"
    ),
    "qwen": Provider("dashscope/qwen-max", "dashscope/qwen-plus", "dashscope/qwen-turbo", "dashscope_api_key"),
    "ollama": Provider("ollama/llama3.1", "ollama/llama3.1", "ollama/llama3.1", None, "http://127.0.0.1:11434"),
    # Any OpenAI-compatible server (vLLM, LM Studio, the scripted model server, …).
    "openai-compatible": Provider("openai/default", "openai/default", "openai/default", "openai_compatible_api_key"),
}
SANDBOXES = ["bwrap", "process", "docker", "kubernetes"]


def _ask(interactive: bool, value: object, prompt: str, **kwargs: Any) -> Any:
    if value is not None or not interactive:
        return value if value is not None else kwargs.get("default")
    return click.prompt(prompt, **kwargs)


@click.command("init")
@click.option("--non-interactive", is_flag=True, help="Take every answer from flags/env; never prompt.")
@click.option("--force", is_flag=True, help="Overwrite an existing config.toml.")
@click.option("--provider", type=click.Choice(sorted(PROVIDERS)), help="Model provider preset.")
@click.option("--api-key", envvar="HICLAW_INIT_API_KEY", help="Provider API key (stored in secrets.toml, 0600).")
@click.option("--api-base", help="Provider base URL (Ollama, OpenAI-compatible servers).")
@click.option("--smart-model", help="litellm model string for the `smart` alias.")
@click.option("--fast-model", help="litellm model string for the `fast` alias.")
@click.option("--cheap-model", help="litellm model string for the `cheap` alias.")
@click.option("--homeserver", help="`embedded` (Synapse started by hiclaw) or the URL of an existing homeserver.")
@click.option("--server-name", help="Matrix server name for the embedded homeserver.")
@click.option("--registration-token", envvar="HICLAW_INIT_REGISTRATION_TOKEN",
              help="Registration token for an external homeserver (stored in secrets.toml).")
@click.option("--storage", type=click.Choice(["local-storage", "minio", "local"]),
              help="Shared storage backend (`local` is the former name of `local-storage`).")
@click.option("--s3-endpoint", help="MinIO/S3 endpoint, e.g. https://minio.example.com:9000.")
@click.option("--s3-bucket", help="Bucket for the team's files.")
@click.option("--s3-access-key", envvar="HICLAW_INIT_S3_ACCESS_KEY", help="Root access key (stored in secrets.toml).")
@click.option("--s3-secret-key", envvar="HICLAW_INIT_S3_SECRET_KEY", help="Root secret key (stored in secrets.toml).")
@click.option("--sandbox", type=click.Choice(SANDBOXES), help="How workers are isolated.")
@click.option("--skills-api-url", envvar="SKILLS_API_URL", help="Skill registry (default https://skills.sh).")
@click.option("--yolo/--no-yolo", default=None, help="Start projects without asking you to confirm the plan.")
@pass_app
def init_command(app: App, non_interactive: bool, force: bool, **answers: object) -> None:
    """Create the configuration in $HICLAW_HOME (default ~/.hiclaw)."""
    interactive = not non_interactive
    secure_home(app.home)  # 0700, and what it writes 0600, whatever the umask
    path = app.home / CONFIG_FILE
    if path.exists() and not force and (
            not interactive or not click.confirm(f"{path} exists. Overwrite it?", default=False)):
        raise ConfigError(f"{path} already exists", hint="pass --force to overwrite it")
    config = HiclawConfig()
    secrets = Secrets.load(app.home) if (app.home / "secrets.toml").exists() else Secrets({}, app.home / "secrets.toml")

    provider_name = str(_ask(interactive, answers["provider"], "Model provider", default="openai",
                             type=click.Choice(sorted(PROVIDERS))))
    preset = PROVIDERS[provider_name]
    api_base = answers["api_base"]
    if api_base is None and (preset.api_base is not None or provider_name == "openai-compatible"):
        api_base = _ask(interactive, api_base, "Provider base URL", default=preset.api_base or "http://127.0.0.1:8000/v1")
    aliases = {}
    for alias in ("smart", "fast", "cheap"):
        model = _ask(interactive, answers[f"{alias}_model"], f"Model for `{alias}`", default=getattr(preset, alias))
        aliases[alias] = str(model)
    if preset.secret:
        key = answers["api_key"]
        if key is None and interactive:
            key = click.prompt(f"API key for {provider_name} (hidden; Enter to set it later)", default="",
                               hide_input=True, show_default=False)
        if key:
            secrets.set(preset.secret, str(key))
    config.models = {
        alias: ModelAlias(
            model=model,
            api_key_secret=preset.secret,
            api_base=str(api_base) if api_base else None,
            # `smart` falls back to `fast` on upstream failures when they are different models.
            fallback="fast" if alias == "smart" and aliases["fast"] != model else None,
        )
        for alias, model in aliases.items()
    }
    config.team.manager_model = "smart"
    config.team.worker_model = "smart"

    homeserver = str(_ask(interactive, answers["homeserver"], "Matrix homeserver (`embedded` or a URL)", default="embedded"))
    if homeserver == "embedded":
        config.channel.settings = {"embedded": True}
        if answers["server_name"]:
            config.channel.settings["server_name"] = answers["server_name"]
    else:
        if not homeserver.startswith(("http://", "https://")):
            raise ConfigError(f"--homeserver {homeserver!r} is neither `embedded` nor a URL",
                              hint="use e.g. https://matrix.example.com")
        config.channel.settings = {"embedded": False, "homeserver_url": homeserver}
        token = _ask(interactive, answers["registration_token"], "Registration token (Enter for none)", default="",
                     hide_input=True, show_default=False)
        if token:
            secrets.set("matrix_registration_token", str(token))

    storage = current_plugin_name("storage", str(_ask(interactive, answers["storage"], "Storage", default="local-storage",
                                                      type=click.Choice(["local-storage", "minio", "local"]))))
    config.storage.plugin = storage
    if storage == "minio":
        endpoint = _ask(interactive, answers["s3_endpoint"], "S3 endpoint")
        bucket = _ask(interactive, answers["s3_bucket"], "Bucket", default="hiclaw")
        if not endpoint:
            raise ConfigError("--storage minio needs --s3-endpoint", hint="e.g. --s3-endpoint http://127.0.0.1:9000")
        config.storage.settings = {"endpoint": str(endpoint), "bucket": str(bucket)}
        for flag, secret, prompt in (("s3_access_key", "s3_access_key", "Access key"),
                                     ("s3_secret_key", "s3_secret_key", "Secret key")):
            value = _ask(interactive, answers[flag], prompt, hide_input=True)
            if value:
                secrets.set(secret, str(value))

    config.sandbox.plugin = str(_ask(interactive, answers["sandbox"], "Sandbox", default="bwrap",
                                     type=click.Choice(SANDBOXES)))
    if answers["skills_api_url"]:
        config.skills.api_url = str(answers["skills_api_url"])
    yolo = answers["yolo"]
    if yolo is None and interactive:
        yolo = click.confirm("Start projects without asking you to confirm the plan (YOLO)?", default=False)
    config.team.yolo = bool(yolo)

    config_path = save_config(config, app.home)
    secrets_path = secrets.save()
    click.echo(f"wrote {config_path}")
    click.echo(f"wrote {secrets_path} (mode 0600; {len(secrets.names())} secret(s))")
    if preset.secret and secrets.get(preset.secret) is None:
        click.echo(f"note: no API key yet — add `{preset.secret} = \"…\"` to {secrets_path} "
                   f"or export {preset.secret.upper()}")
    click.echo("next: `hiclaw up`")
