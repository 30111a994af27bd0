"""Settings of the MinIO/S3 storage plugin (``[storage.settings]``); no SDK import here."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
REGION = re.compile(r"^[a-z0-9-]{1,63}$")

#: Secret names the control plane resolves for this plugin (the server's root/admin keys).
ROOT_SECRETS = ("s3_access_key", "s3_secret_key")


class S3StorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: ``host:port`` or a URL (``http://127.0.0.1:9000`` — the scheme sets ``secure``).
    endpoint: str
    bucket: str = "hiclaw"
    region: str = "us-east-1"
    #: HTTPS; default from the endpoint's scheme, else true.
    secure: bool | None = None
    #: Verify the server's TLS certificate.
    cert_check: bool = True
    #: How per-worker credentials are issued: MinIO's admin API (users + policies), the IAM API
    #: (users + access keys + inline policies, e.g. AWS), or not at all.
    admin_api: Literal["minio", "iam", "none"] = "minio"
    #: IAM API URL for ``admin_api = "iam"`` (default: the S3 endpoint, as with moto or LocalStack).
    iam_endpoint: str | None = None
    #: Create the bucket on first use if it is missing (control side only).
    create_bucket: bool = True
    #: Parallel transfers during ``sync``.
    concurrency: int = Field(default=8, ge=1, le=64)
    #: Worker side only (from ``grant``): the worker's own scoped keys, never the root keys.
    access_key: str | None = None
    secret_key: SecretStr | None = None
    worker: str | None = None

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not BUCKET_NAME.match(value) or ".." in value or re.match(r"^\d+\.\d+\.\d+\.\d+$", value):
            raise ValueError("must be 3-63 lower-case letters, digits, '.' or '-' (an S3 bucket name)")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not REGION.match(value):
            raise ValueError("must look like 'us-east-1'")
        return value

    @model_validator(mode="after")
    def _endpoint(self) -> S3StorageSettings:
        raw = self.endpoint.strip()
        match = re.match(r"^(https?)://(.*)$", raw, flags=re.I)
        if match:
            scheme, raw = match.group(1).lower(), match.group(2)
            if self.secure is None:
                self.secure = scheme == "https"
        raw = raw.rstrip("/")
        if not HOST_PORT.match(raw):
            raise ValueError(f"endpoint {self.endpoint!r} must be host[:port] or http(s)://host[:port], without a path")
        self.endpoint = raw
        if self.secure is None:
            self.secure = True
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def worker_side(self, *, worker: str, access_key: str, secret_key: str) -> dict[str, Any]:
        """Settings a worker's storage is created from: scoped keys, no admin powers."""
        return {
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "region": self.region,
            "secure": self.secure,
            "cert_check": self.cert_check,
            "admin_api": "none",
            "create_bucket": False,
            "concurrency": self.concurrency,
            "access_key": access_key,
            "secret_key": secret_key,
            "worker": worker,
        }
