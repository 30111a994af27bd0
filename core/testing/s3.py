"""A real S3 server on loopback for tests: moto's server mode (``moto[server]`` from PyPI).

Fixtures (session-scoped; each starts its own ``moto_server`` process on a free port):

``s3_server``
    Default mode: any credentials are accepted. For functional tests and presigned URLs.
``s3_server_auth``
    Enforced-auth mode (``INITIAL_NO_AUTH_ACTION_COUNT``): the first requests bootstrap an admin
    IAM user whose keys become the server's root keys; after that every request is checked
    against real IAM users, access keys and policies (AccessDenied across prefixes). Presigned
    URLs do not work in this mode (moto answers 500).
``minio_admin_server``
    A loopback server enforcing the recorded contract of MinIO's admin API (see
    :mod:`hiclaw.testing.minio_admin`) — no MinIO server can be installed here.

Each :class:`S3Server` can build the ``minio`` storage plugin against itself::

    def test_roundtrip(s3_server):
        storage = s3_server.make_storage()          # a fresh bucket
        asyncio.run(storage.put("agents/a/x", b"1"))
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hiclaw.testing.minio_admin import minio_admin_server  # noqa: F401 - re-exported fixture

REGION = "us-east-1"
#: Requests moto serves without checking credentials in enforced mode: CreateUser,
#: PutUserPolicy and CreateAccessKey of the bootstrap admin.
BOOTSTRAP_REQUESTS = 3
ADMIN_POLICY = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'


@dataclass
class S3Server:
    """A running moto server and the credentials that administer it."""

    endpoint: str  # "127.0.0.1:PORT"
    access_key: str
    secret_key: str
    enforce_auth: bool
    process: subprocess.Popen[bytes]
    log_path: Path
    region: str = REGION
    _storages: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def settings(self, bucket: str | None = None, **overrides: Any) -> dict[str, Any]:
        """``[storage.settings]`` for the ``minio`` plugin against this server (a new bucket by default)."""
        settings = {"endpoint": self.url, "bucket": bucket or f"t-{uuid.uuid4().hex[:16]}", "region": self.region,
                    "admin_api": "iam" if self.enforce_auth else "none"}
        return {**settings, **overrides}

    def make_storage(self, bucket: str | None = None, *, home: Path | None = None, **overrides: Any) -> Any:
        """A control-side ``minio`` storage on this server, built by the plugin's own factory."""
        return build_s3_storage(self.settings(bucket, **overrides), self.access_key, self.secret_key, home=home)

    def worker_storage(self, settings: dict[str, Any]) -> Any:
        """A worker-side storage from the settings ``grant`` returned."""
        from hiclaw.host import ComponentContext
        from hiclaw.plugins.storage.minio import make_s3_storage
        from hiclaw.plugins.storage.minio.settings import S3StorageSettings

        ctx = ComponentContext(home=Path(tempfile.gettempdir()), side="worker")
        return make_s3_storage(S3StorageSettings.model_validate(settings), ctx)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def build_s3_storage(settings: dict[str, Any], access_key: str, secret_key: str, *, home: Path | None = None) -> Any:
    """A control-side ``minio`` storage from ``settings`` and root keys, via the plugin's factory."""
    from pydantic import SecretStr

    from hiclaw.host import ComponentContext
    from hiclaw.plugins.storage.minio import make_s3_storage
    from hiclaw.plugins.storage.minio.settings import S3StorageSettings

    secrets = {"s3_access_key": SecretStr(access_key), "s3_secret_key": SecretStr(secret_key)}
    # The control plane's home holds the keys issued to workers (run/storage-keys.json): a fresh
    # one per storage unless the caller shares one (a restarted control plane).
    ctx = ComponentContext(home=home or Path(tempfile.mkdtemp(prefix="hiclaw-s3-home-")), side="control", secrets=secrets)
    return make_s3_storage(S3StorageSettings.model_validate(settings), ctx)


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"Running on http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}: {log_path.read_text()[-500:]}")
        time.sleep(0.02)
    process.kill()
    raise TimeoutError(f"moto_server did not start within {timeout:.0f}s (log: {log_path})")


async def _bootstrap_admin(url: str) -> tuple[str, str]:
    from hiclaw.plugins.storage.minio.iam import IamClient

    client = IamClient(url, access_key="bootstrap", secret_key="bootstrap", region=REGION)
    try:
        await client.call("CreateUser", UserName="hiclaw-root")
        await client.call("PutUserPolicy", UserName="hiclaw-root", PolicyName="admin", PolicyDocument=ADMIN_POLICY)
        created = await client.call("CreateAccessKey", UserName="hiclaw-root")
    finally:
        await client.aclose()
    return created.findtext(".//AccessKeyId") or "", created.findtext(".//SecretAccessKey") or ""


def start_moto(*, enforce_auth: bool = False, timeout: float = 20.0) -> S3Server:
    """Start ``moto_server`` on a free loopback port; with ``enforce_auth`` bootstrap an admin."""
    log_dir = Path(tempfile.mkdtemp(prefix="hiclaw-moto-"))
    log_path = log_dir / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_", "INITIAL_NO_AUTH"))}
    if enforce_auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(BOOTSTRAP_REQUESTS)
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    port = _wait_for_port(process, log_path, timeout)
    endpoint = f"127.0.0.1:{port}"
    access_key, secret_key = "testing", "testing"
    if enforce_auth:
        access_key, secret_key = asyncio.run(_bootstrap_admin(f"http://{endpoint}"))
    return S3Server(endpoint, access_key, secret_key, enforce_auth, process, log_path)


@pytest.fixture(scope="session")
def s3_server() -> Any:
    """moto in default mode (credentials not checked)."""
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server_auth() -> Any:
    """moto with enforced IAM auth; ``access_key``/``secret_key`` are the bootstrap admin's."""
    server = start_moto(enforce_auth=True)
    yield server
    server.stop()
