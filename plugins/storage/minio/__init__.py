"""MinIO / S3 storage: objects in one bucket of any S3-compatible server, via the ``minio`` SDK.

Configure it in ``config.toml``; the root (admin) keys go in ``secrets.toml``::

    [storage]
    plugin = "minio"

    [storage.settings]
    endpoint = "http://127.0.0.1:9000"   # host:port or URL; https sets secure = true
    bucket = "hiclaw"                    # created on first use (create_bucket = true)
    region = "us-east-1"
    admin_api = "minio"                  # "minio" (admin API users+policies), "iam" (IAM API), "none"
    # iam_endpoint = "https://iam.amazonaws.com"   # admin_api = "iam" only; default: endpoint

    # secrets.toml (or S3_ACCESS_KEY / S3_SECRET_KEY in the environment)
    s3_access_key = "…"
    s3_secret_key = "…"

On the control plane, ``grant(worker, rw=[…], ro=[…])`` issues credentials that can touch only
``agents/<worker>/`` and the granted ``shared/`` paths; ``revoke(worker)`` deletes them;
``presign(key, seconds)`` makes a download link for the human. A worker's storage is built from
the settings ``grant`` returns (endpoint, bucket and its own keys — never the root keys). This
module registers the factory only; ``minio`` is imported by the factory when it runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hiclaw import hookimpl
from hiclaw.errors import ConfigError
from hiclaw.plugins.storage.minio.settings import ROOT_SECRETS, S3StorageSettings
from hiclaw.protocols import RegisterStorage


def make_s3_storage(settings: S3StorageSettings, ctx: Any) -> Any:
    from hiclaw.plugins.storage.minio.backend import S3Storage

    if ctx.side == "worker":
        if not settings.access_key or settings.secret_key is None:
            raise ConfigError("minio storage on a worker needs settings.access_key and settings.secret_key",
                              hint="pass the settings the control plane's grant() returned")
        return S3Storage(settings, access_key=settings.access_key, secret_key=settings.secret_key.get_secret_value(),
                         side="worker")
    if settings.access_key or settings.secret_key is not None:
        raise ConfigError("[storage.settings] access_key/secret_key: root keys do not belong in config.toml",
                          hint="put them in secrets.toml as s3_access_key and s3_secret_key")
    keys = []
    for name in ROOT_SECRETS:
        value = ctx.secrets.get(name)
        if value is None or not value.get_secret_value():
            raise ConfigError(f"secret '{name}' is not set (needed by the minio storage plugin)",
                              hint=f"add {name} = \"…\" to secrets.toml or export {name.upper()}")
        keys.append(value.get_secret_value())
    return S3Storage(settings, access_key=keys[0], secret_key=keys[1], side="control",
                     keys_file=Path(ctx.home) / "run" / "storage-keys.json")


@hookimpl
def hiclaw_register_storage(register: RegisterStorage) -> None:
    register(
        "minio",
        make_s3_storage,
        settings_model=S3StorageSettings,
        secrets=ROOT_SECRETS,
        description="A bucket on MinIO or any S3-compatible server; per-worker scoped credentials",
    )
