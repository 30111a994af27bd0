"""The generated configuration of the embedded Synapse (see FACTS.md, "Matrix homeserver").

Written as JSON (YAML is a superset of JSON, so Synapse reads it as is). Secrets never go in
the config file: the registration shared secret and the signing key are files of their own in
the private ``$HICLAW_HOME/homeserver/`` directory (mode 0700, files 0600).
"""
from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

from hiclaw.storage.files import write_text_atomically

#: Every ``rc_*`` block raised so agents (which post and join in bursts) never meet a 429
#: from the defaults (``rc_message`` 0.2/s, burst 10 would refuse the 10th message).
AGENT_RATE = {"per_second": 10000, "burst_count": 100000}
RATE_LIMITS: dict[str, Any] = {
    "rc_message": AGENT_RATE,
    "rc_registration": AGENT_RATE,
    "rc_registration_token_validity": AGENT_RATE,
    "rc_login": {"address": AGENT_RATE, "account": AGENT_RATE, "failed_attempts": AGENT_RATE},
    "rc_admin_redaction": AGENT_RATE,
    "rc_joins": {"local": AGENT_RATE, "remote": AGENT_RATE},
    "rc_joins_per_room": AGENT_RATE,
    "rc_3pid_validation": AGENT_RATE,
    "rc_invites": {"per_room": AGENT_RATE, "per_user": AGENT_RATE, "per_issuer": AGENT_RATE},
    "rc_third_party_invite": AGENT_RATE,
    "rc_media_create": AGENT_RATE,
    "rc_presence": {"per_user": AGENT_RATE},
    "rc_delayed_event_mgmt": AGENT_RATE,
    "rc_room_creation": AGENT_RATE,
    "rc_reports": AGENT_RATE,
    "rc_user_directory": AGENT_RATE,
    "rc_profile": AGENT_RATE,
}


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def ensure_signing_key(path: Path) -> None:
    """An ed25519 signing key in Synapse's format: ``ed25519 <key id> <unpadded base64 seed>``."""
    if path.exists():
        return
    seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    key_id = "a_" + secrets.token_hex(2)
    write_text_atomically(path, f"ed25519 {key_id} {seed}\n", mode=0o600)


def ensure_shared_secret(path: Path) -> str:
    if not path.exists():
        write_text_atomically(path, secrets.token_urlsafe(32), mode=0o600)
    return path.read_text(encoding="utf-8").strip()


def log_config(log_file: Path) -> dict[str, Any]:
    """Python logging config: everything to one rotating file, nothing on the terminal."""
    return {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.handlers.RotatingFileHandler",
                "formatter": "precise",
                "filename": str(log_file),
                "maxBytes": 10 * 1024 * 1024,
                "backupCount": 3,
                "filters": ["context"],
                "encoding": "utf8",
            }
        },
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}, "twisted": {"level": "WARNING"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def homeserver_config(
    *, server_name: str, host: str, port: int, data_dir: Path, log_file: Path, overrides: dict[str, Any]
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server_name": server_name,
        "report_stats": False,
        "pid_file": str(data_dir / "synapse.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": [host],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(data_dir / "homeserver.db")}},
        "media_store_path": str(data_dir / "media_store"),
        "signing_key_path": str(data_dir / "signing.key"),
        "registration_shared_secret_path": str(data_dir / "registration_shared_secret"),
        "log_config": str(data_dir / "log.config"),
        "presence": {"enabled": False},
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "enable_registration": False,
        "enable_metrics": False,
        "url_preview_enabled": False,
        "user_directory": {"enabled": True, "search_all_users": True},
        # A new database's schema updates run at once instead of a batch a second: until the
        # one indexing profiles has run, Synapse cannot reactivate an account (a worker removed,
        # then created again).
        "background_updates": {"sleep_enabled": False},
        **RATE_LIMITS,
    }
    return deep_merge(config, overrides)


def write_config(data_dir: Path, config: dict[str, Any], log_file: Path) -> Path:
    """Write homeserver.yaml and log.config (JSON, which YAML reads); keys are made once."""
    ensure_private_dir(data_dir)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    ensure_signing_key(data_dir / "signing.key")
    ensure_shared_secret(data_dir / "registration_shared_secret")
    write_text_atomically(data_dir / "log.config", json.dumps(log_config(log_file), indent=2), mode=0o600)
    path = data_dir / "homeserver.yaml"
    write_text_atomically(path, json.dumps(config, indent=2, sort_keys=True), mode=0o600)
    return path
