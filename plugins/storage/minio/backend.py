"""The S3 storage backend on the ``minio`` SDK (any S3-compatible server: MinIO, AWS, moto…).

The SDK is synchronous (urllib3); every call runs in a worker thread. ``put`` never exposes a
partial object: small objects are one PUT, large ones a multipart upload that the SDK aborts on
any failure (a multipart object only appears when it is completed). Each object carries its
sha256 in ``x-amz-meta-sha256`` so checksum syncs cost one HEAD, not a download.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import mimetypes
import os
import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from hiclaw.errors import InvalidInputError, NotFoundError, PluginError
from hiclaw.plugins.storage.minio.settings import S3StorageSettings
from hiclaw.storage import grants, layout
from hiclaw.storage.errors import AccessDeniedError, StorageError
from hiclaw.storage.files import prepare_local_target, write_atomically
from hiclaw.storage.models import ObjectInfo, WorkerStorageAccess
from hiclaw.storage.sync import SyncMixin

T = TypeVar("T")
SHA256_META = "sha256"
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the SigV4 limit
_CHUNK = 1024 * 1024
_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "ResourceNotFound", "NotFound"}
_DENIED = {"AccessDenied", "AllAccessDisabled"}
_BAD_KEYS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}


def _pool(settings: S3StorageSettings) -> Any:
    """A small urllib3 pool: bounded retries, so a dead server fails in seconds, not minutes."""
    import certifi
    import urllib3

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=120),
        maxsize=settings.concurrency + 2,
        cert_reqs="CERT_REQUIRED" if settings.cert_check else "CERT_NONE",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
    )


class S3Storage(SyncMixin):
    plugin = "minio"

    def __init__(self, settings: S3StorageSettings, *, access_key: str, secret_key: str, side: str = "control",
                 keys_file: Path | None = None) -> None:
        from minio import Minio

        from hiclaw.plugins.storage.minio.keys import IssuedKeys

        self.settings = settings
        self.bucket = settings.bucket
        self.sync_concurrency = settings.concurrency
        self.side = side
        self._root = (access_key, secret_key) if side == "control" else None
        self.identity = settings.worker or ("the control plane" if side == "control" else access_key)
        self.client = Minio(settings.endpoint, access_key=access_key, secret_key=secret_key, secure=bool(settings.secure),
                            region=settings.region, cert_check=settings.cert_check, http_client=_pool(settings))
        self._ready = side != "control" or not settings.create_bucket
        self._ready_lock = asyncio.Lock()
        self._access: Any = None
        self._issued = IssuedKeys(keys_file)  # per-worker keys, reused while granted (see .keys)

    @property
    def endpoint_url(self) -> str:
        """The S3 server's URL: the control plane bridges it into sandboxes (a loopback server)."""
        return self.settings.url

    # ------------------------------------------------------------------ plumbing

    def _error(self, exc: Exception, op: str, key: str) -> Exception:
        from minio.error import MinioException, S3Error, ServerError
        from urllib3.exceptions import HTTPError

        if isinstance(exc, S3Error):
            code = exc.code or ""
            if code in _NOT_FOUND:
                return NotFoundError(f"no object {key!r} in storage", hint="check the path with `hiclaw fs ls`")
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket!r} does not exist at {self.settings.url}",
                                    hint="create it, or set create_bucket = true in [storage.settings]")
            if code in _DENIED:
                return AccessDeniedError(f"access denied: {self.identity} may not {op} {key!r}",
                                         hint="it is outside what this identity was granted")
            if code in _BAD_KEYS:
                return AccessDeniedError(f"the S3 server rejected the credentials of {self.identity} ({code}) during {op} {key!r}",
                                         hint="they were revoked or are wrong; workers get fresh ones from grant()")
            return StorageError(f"S3 {op} {key!r} failed: {code}: {exc.message}")
        if isinstance(exc, ServerError):
            return StorageError(f"S3 server error {exc.status_code} during {op} {key!r}", hint="check the S3 server's logs")
        if isinstance(exc, HTTPError):
            reason = getattr(exc, "reason", None) or exc
            return StorageError(f"cannot reach the S3 server at {self.settings.url}: {reason}",
                                hint="is it running? check [storage.settings] endpoint and secure")
        if isinstance(exc, MinioException):
            return StorageError(f"S3 {op} {key!r} failed: {exc}")
        return exc

    async def _call(self, op: str, key: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        await self._ensure_bucket()
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            mapped = self._error(exc, op, key)
            if mapped is exc:
                raise
            raise mapped from None

    async def _ensure_bucket(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            try:
                if not await asyncio.to_thread(self.client.bucket_exists, self.bucket):
                    await asyncio.to_thread(self.client.make_bucket, self.bucket, self.settings.region)
            except Exception as exc:  # noqa: BLE001
                from minio.error import S3Error

                if not (isinstance(exc, S3Error) and exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")):
                    mapped = self._error(exc, "create bucket", self.bucket)
                    raise (mapped if mapped is not exc else StorageError(f"cannot create bucket {self.bucket!r}: {exc}")) from None
            self._ready = True

    @staticmethod
    def _content_type(key: str, given: str | None) -> str:
        return given or mimetypes.guess_type(key)[0] or "application/octet-stream"

    # ------------------------------------------------------------------ Storage

    async def put(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        key = layout.validate_key(key)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError(f"put {key!r}: data must be bytes, not {type(data).__name__}", hint="encode text first")
        data = bytes(data)
        meta = {SHA256_META: hashlib.sha256(data).hexdigest()}
        await self._call("write", key, self.client.put_object, self.bucket, key, io.BytesIO(data), len(data),
                         content_type=self._content_type(key, content_type), metadata=meta)

    async def put_file(self, key: str, path: str | os.PathLike[str], *, content_type: str | None = None) -> None:
        key = layout.validate_key(key)
        source = Path(path)
        if not source.is_file():  # noqa: ASYNC240 - a single stat of a local file
            raise InvalidInputError(f"cannot upload {str(source)!r}: not a file", hint="give an existing file")
        await self.put_stream(key, lambda: open(source, "rb"), content_type=content_type)  # noqa: SIM115 - put_stream closes it

    async def put_stream(self, key: str, opener: Callable[[], BinaryIO], *, content_type: str | None = None) -> None:
        """Upload what ``opener()`` yields (read twice: once to hash, once to send). A stream that
        fails or comes up short aborts the upload; no object appears."""
        key = layout.validate_key(key)

        def run() -> None:
            digest, size = hashlib.sha256(), 0
            with opener() as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
            with opener() as fh:
                self.client.put_object(self.bucket, key, fh, size, content_type=self._content_type(key, content_type),
                                       metadata={SHA256_META: digest.hexdigest()})

        await self._call("write", key, run)

    async def get(self, key: str) -> bytes:
        key = layout.validate_key(key)

        def run() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._call("read", key, run)

    async def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        key = layout.validate_key(key)
        target = prepare_local_target(path)

        def run() -> None:
            response = self.client.get_object(self.bucket, key)
            try:
                write_atomically(target, lambda fh: [fh.write(c) for c in response.stream(_CHUNK)])
            finally:
                response.close()
                response.release_conn()

        await self._call("read", key, run)

    async def stat(self, key: str) -> ObjectInfo | None:
        key = layout.validate_key(key)
        try:
            obj = await self._call("read", key, self.client.stat_object, self.bucket, key)
        except NotFoundError:
            return None
        return {"key": key, "size": obj.size or 0, "mtime": obj.last_modified.timestamp() if obj.last_modified else None,
                "etag": obj.etag, "is_dir": False}

    async def list(self, prefix: str = "", *, recursive: bool = True) -> list[ObjectInfo]:
        prefix = layout.validate_prefix(prefix)

        def run() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            for obj in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=recursive):
                name = obj.object_name or ""
                if obj.is_dir:
                    found.append({"key": name, "size": 0, "mtime": None, "etag": None, "is_dir": True})
                else:
                    mtime = obj.last_modified.timestamp() if obj.last_modified else None
                    found.append({"key": name, "size": obj.size or 0, "mtime": mtime, "etag": obj.etag, "is_dir": False})
            return sorted(found, key=lambda e: e["key"])

        return await self._call("list", prefix or "(everything)", run)

    async def delete(self, key: str) -> None:
        key = layout.validate_key(key)
        await self._call("delete", key, self.client.remove_object, self.bucket, key)

    async def copy(self, src: str, dst: str) -> None:
        from minio.commonconfig import CopySource

        src, dst = layout.validate_key(src), layout.validate_key(dst)
        await self._call("copy to", dst, self.client.copy_object, self.bucket, dst, CopySource(self.bucket, src))

    async def checksum(self, key: str) -> str:
        key = layout.validate_key(key)
        obj = await self._call("read", key, self.client.stat_object, self.bucket, key)
        meta = {k.lower(): v for k, v in (obj.metadata or {}).items()}
        stored = meta.get(f"x-amz-meta-{SHA256_META}")
        if stored and re.fullmatch(r"[0-9a-f]{64}", stored):
            return f"sha256:{stored}"
        if obj.etag and re.fullmatch(r"[0-9a-f]{32}", obj.etag):
            return f"md5:{obj.etag}"  # a single-part upload's ETag is the MD5 of its content

        def run() -> str:
            digest = hashlib.sha256()
            response = self.client.get_object(self.bucket, key)
            try:
                for chunk in response.stream(_CHUNK):
                    digest.update(chunk)
            finally:
                response.close()
                response.release_conn()
            return f"sha256:{digest.hexdigest()}"

        return await self._call("read", key, run)

    async def presign(self, key: str, expires_seconds: int = 3600) -> str:
        """A GET URL for a human (checks the object exists; at most 7 days, the SigV4 limit)."""
        key = layout.validate_key(key)
        if not isinstance(expires_seconds, int) or not 0 < expires_seconds <= MAX_PRESIGN_SECONDS:
            raise InvalidInputError(f"invalid expiry {expires_seconds!r}", hint=f"give 1 to {MAX_PRESIGN_SECONDS} seconds")
        if await self.stat(key) is None:
            raise NotFoundError(f"no object {key!r} in storage", hint="check the path with `hiclaw fs ls`")
        return await self._call("presign", key, self.client.presigned_get_object, self.bucket, key,
                                expires=timedelta(seconds=expires_seconds))

    # ------------------------------------------------------------------ control side

    def _access_manager(self) -> Any:
        if self.side != "control" or self._root is None:
            raise PluginError("grant and revoke are control-plane operations; workers cannot call them")
        if self._access is None:
            api = self.settings.admin_api
            if api == "none":
                raise PluginError("per-worker storage credentials are off (admin_api = 'none')",
                                  hint="set [storage.settings] admin_api to 'minio' or 'iam'; workers never get root keys")
            if api == "minio":
                from hiclaw.plugins.storage.minio.admin import MinioAdminAccess

                self._access = MinioAdminAccess(endpoint=self.settings.endpoint, access_key=self._root[0],
                                                secret_key=self._root[1], region=self.settings.region,
                                                secure=bool(self.settings.secure), cert_check=self.settings.cert_check,
                                                http_client=_pool(self.settings))
            else:
                from hiclaw.plugins.storage.minio.iam import IamAccess, IamClient

                url = self.settings.iam_endpoint or self.settings.url
                self._access = IamAccess(IamClient(url, access_key=self._root[0], secret_key=self._root[1],
                                                   region=self.settings.region, verify=self.settings.cert_check))
        return self._access

    async def grant(self, worker: str, *, rw: Sequence[str] = (), ro: Sequence[str] = ()) -> WorkerStorageAccess:
        """Scoped credentials for ``worker``: its policy is replaced (a running worker gets the new
        grant at once) and its keys stay the same until :meth:`revoke` — fresh ones only the first
        time, or when the ones issued earlier are gone (see :mod:`.keys`)."""
        from hiclaw.plugins.storage.minio.policy import worker_policy

        grant = grants.normalize_grant(worker, rw, ro)
        access = self._access_manager()
        await self._ensure_bucket()
        access_key, secret_key = await access.issue(worker, worker_policy(self.bucket, grant),
                                                    keep=self._issued.get(worker))
        self._issued.set(worker, (access_key, secret_key))
        settings = self.settings.worker_side(worker=worker, access_key=access_key, secret_key=secret_key)
        return WorkerStorageAccess(worker=worker, plugin=self.plugin, settings=settings,
                                   read_write=list(grant.read_write), read_only=list(grant.read_only))

    async def revoke(self, worker: str) -> None:
        layout.check_agent(worker)
        await self._access_manager().revoke(worker)
        self._issued.forget(worker)

    async def stop(self) -> None:
        if self._access is not None:
            await self._access.close()
            self._access = None
        self.client._http.clear()  # noqa: SLF001 - close pooled connections
