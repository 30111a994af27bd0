"""S3 backend specifics against a real moto server: interrupted uploads, presigned URLs, config errors."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from hiclaw.errors import ConfigError, PluginError
from hiclaw.host import ComponentContext
from hiclaw.plugins.storage import minio as minio_plugin
from hiclaw.storage import StorageError, layout
from hiclaw.testing import wait_for

MiB = 1024 * 1024


def _pending_uploads(server, bucket: str) -> int:
    answer = httpx.get(f"{server.url}/{bucket}?uploads")  # default mode: no credentials needed
    return len(re.findall(r"<Upload>", answer.text))


class _FailingReader(io.RawIOBase):
    """A source that breaks after ``fail_after`` bytes, as a vanishing disk would."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        self.data, self.fail_after, self.pos = data, fail_after, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self.pos >= self.fail_after:
            raise OSError("source disappeared mid-upload")
        n = min(len(buffer), self.fail_after - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


async def test_a_failing_multipart_upload_is_aborted_and_leaves_nothing(s3_server):
    storage = s3_server.make_storage()
    key = layout.task_workspace("t1") + "dataset.bin"
    data = os.urandom(12 * MiB)  # > 5 MiB: a multipart upload
    opened = []

    def opener():
        opened.append(1)
        return io.BytesIO(data) if len(opened) == 1 else io.BufferedReader(_FailingReader(data, 7 * MiB))

    await storage.put(key, b"previous version")
    with pytest.raises(OSError, match="disappeared"):
        await storage.put_stream(key, opener)
    assert await storage.get(key) == b"previous version"
    assert _pending_uploads(s3_server, storage.bucket) == 0  # the SDK aborted it
    await storage.stop()


UPLOADER = """
import asyncio, io, json, sys
from hiclaw.plugins.storage.minio.backend import S3Storage
from hiclaw.plugins.storage.minio.settings import S3StorageSettings
settings = S3StorageSettings.model_validate(json.loads(sys.argv[1]))
data = b"z" * (20 * 1024 * 1024)

class Stalling(io.RawIOBase):
    pos = 0
    def readable(self): return True
    def readinto(self, buffer):
        if self.pos >= 11 * 1024 * 1024:
            print("stalled", flush=True)
            sys.stdin.read()  # hangs until the test kills this process
        n = min(len(buffer), 11 * 1024 * 1024 - self.pos)
        buffer[:n] = data[:n]
        self.pos += n
        return n

opened = []
def opener():
    opened.append(1)
    return io.BytesIO(data) if len(opened) == 1 else io.BufferedReader(Stalling())

storage = S3Storage(settings, access_key="testing", secret_key="testing")
asyncio.run(storage.put_stream(sys.argv[2], opener))
"""


async def test_an_uploader_killed_mid_multipart_leaves_no_partial_object(s3_server):
    storage = s3_server.make_storage()
    await storage.list("")  # creates the bucket
    key = "shared/tasks/t1/workspace/big.bin"
    settings = json.dumps(storage.settings.model_dump(mode="json"))
    proc = subprocess.Popen([sys.executable, "-c", UPLOADER, settings, key], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "stalled"
        wait_for(lambda: _pending_uploads(s3_server, storage.bucket) == 1, what="the multipart upload to be under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert await storage.stat(key) is None
    assert await storage.list("shared/") == []
    await storage.stop()


async def test_presigned_urls_fetch_without_credentials(s3_server):
    storage = s3_server.make_storage()
    await storage.put("shared/tasks/t1/result.md", b"# Result\nall done\n")
    url = await storage.presign("shared/tasks/t1/result.md", 600)
    assert "X-Amz-Expires=600" in url and "X-Amz-Signature=" in url
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"# Result\nall done\n"
    assert answer.headers["content-type"].startswith("text/markdown")
    await storage.stop()


def _create(plugin_host, settings, *, secrets=None, side="control"):
    host = plugin_host(("minio", minio_plugin), secret_source=(secrets or {}).get)
    return host.create("storage", "minio", settings, ComponentContext(home=os.getcwd(), side=side))


def test_configuration_errors_are_one_clear_line(plugin_host, s3_server):
    from pydantic import SecretStr

    keys = {"s3_access_key": SecretStr("testing"), "s3_secret_key": SecretStr("testing")}
    cases = [
        ({"endpoint": s3_server.url}, {}, "secret 's3_access_key' is not set"),
        ({"endpoint": s3_server.url, "access_key": "root"}, keys, "root keys do not belong in config.toml"),
        ({"endpoint": s3_server.url, "bucket": "Bad_Bucket"}, keys, "[storage.settings] bucket"),
        ({"endpoint": "http://127.0.0.1:9000/path"}, keys, "without a path"),
        ({"endpoint": s3_server.url, "admin_api": "ldap"}, keys, "admin_api"),
    ]
    for settings, secrets, message in cases:
        with pytest.raises(ConfigError) as info:
            _create(plugin_host, settings, secrets=secrets)
        assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=re.escape("needs settings.access_key")):
        _create(plugin_host, {"endpoint": s3_server.url}, side="worker")


async def test_unreachable_server_and_disabled_admin_api(plugin_host):
    from pydantic import SecretStr

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    keys = {"s3_access_key": SecretStr("k"), "s3_secret_key": SecretStr("s")}
    storage = _create(plugin_host, {"endpoint": f"http://127.0.0.1:{port}", "admin_api": "none"}, secrets=keys)
    with pytest.raises(StorageError, match=f"cannot reach the S3 server at http://127.0.0.1:{port}"):
        await storage.put("agents/alice/x.md", b"x")
    with pytest.raises(PluginError, match="admin_api = 'none'"):
        await storage.grant("alice")
    await storage.stop()
