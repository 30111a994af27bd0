"""Tokens for ``hiclaw mcp serve``: issued by the admin (``hiclaw mcp token create NAME``), shown
once, stored only as SHA-256 digests in ``$HICLAW_HOME/run/mcp-tokens.json`` (0600; ``run/`` is
never mounted into a sandbox, beside the control API's ``control.json``). The file is read afresh
on every check, so a revocation applies to the next request of a session already open."""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hiclaw.errors import HiclawError, InvalidInputError, NotFoundError

TOKEN_ENV = "HICLAW_MCP_TOKEN"  # noqa: S105 - a variable name
TOKEN_PREFIX = "hcmcp_"  # noqa: S105 - a prefix
TOKEN_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def tokens_file(home: Path) -> Path:
    return home / "run" / "mcp-tokens.json"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def load_tokens(home: Path) -> dict[str, dict[str, Any]]:
    path = tokens_file(home)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise HiclawError(f"{path} is not valid JSON", hint="remove it and create the tokens again") from None
    return {str(k): v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def save_tokens(home: Path, tokens: dict[str, dict[str, Any]]) -> None:
    from hiclaw.storage.files import write_text_atomically

    path = tokens_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(tokens, indent=2, sort_keys=True), mode=0o600, fsync=True)


def create_token(home: Path, name: str) -> str:
    """A new token named ``name`` (returned once; only its digest is kept)."""
    if not TOKEN_NAME.match(name):
        raise InvalidInputError(f"token name {name!r} must be 1-64 lower-case letters, digits, '.', '_' or '-'",
                                hint="e.g. `hiclaw mcp token create desktop`")
    tokens = load_tokens(home)
    if name in tokens and tokens[name].get("revoked_at") is None:
        raise InvalidInputError(f"token {name!r} exists", hint=f"revoke it first: `hiclaw mcp token revoke {name}`")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    tokens[name] = {"sha256": _digest(token), "created_at": _now(), "revoked_at": None}
    save_tokens(home, tokens)
    return token


def revoke_token(home: Path, name: str) -> None:
    tokens = load_tokens(home)
    if name not in tokens or tokens[name].get("revoked_at") is not None:
        raise NotFoundError(f"no valid token {name!r}", hint="see `hiclaw mcp token list`")
    tokens[name]["revoked_at"] = _now()
    save_tokens(home, tokens)


def list_tokens(home: Path) -> list[dict[str, Any]]:
    """Names and dates, never values or digests."""
    return [{"name": n, "created_at": e.get("created_at"), "revoked_at": e.get("revoked_at")}
            for n, e in sorted(load_tokens(home).items())]


def token_owner(home: Path, token: str | None) -> str | None:
    """The name of the valid (not revoked) token ``token``, read afresh; None if it is not one."""
    if not token:
        return None
    wanted = _digest(token.strip())
    for name, entry in load_tokens(home).items():
        if entry.get("revoked_at") is None and hmac.compare_digest(str(entry.get("sha256", "")), wanted):
            return name
    return None


def require_token(home: Path, token: str | None) -> str:
    """``token``'s name, or the one-line error that says how to get a valid one."""
    owner = token_owner(home, token)
    if owner is None:
        raise InvalidInputError(f"{TOKEN_ENV} is {'not set' if not token else 'not a valid MCP token (unknown or revoked)'}",
                                hint="ask the admin for one (`hiclaw mcp token create NAME`) and put it in the "
                                     f"client's environment as {TOKEN_ENV}")
    return owner
