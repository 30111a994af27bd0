"""Per-worker credentials through MinIO's admin API (``minio.minioadmin.MinioAdmin``).

Each worker gets a MinIO user ``hiclaw-<worker>`` with a random secret (kept for later grants:
see :mod:`.keys`) and a canned policy ``hiclaw-worker-<worker>`` (see :mod:`.policy`) attached to it. MinIO semantics relied on: adding
an existing user replaces its secret, adding an existing policy replaces it, re-attaching an
attached policy answers ``XMinioAdminPolicyChangeAlreadyApplied`` (harmless). Revoking removes the
user (its mapping goes with it), then the policy.

Admin API v3 calls made (signed with the root keys; bodies marked * are encrypted with the root
secret, argon2id + AES-GCM, as ``madmin`` does):

=========  ==========================================  ===================================================
PUT        /minio/admin/v3/add-canned-policy?name=P     policy JSON
PUT        /minio/admin/v3/add-user?accessKey=U         * ``{"status": "enabled", "secretKey": S}``
POST       /minio/admin/v3/idp/builtin/policy/attach   * ``{"policies": [P], "user": U}`` → * association
DELETE     /minio/admin/v3/remove-user?accessKey=U
DELETE     /minio/admin/v3/remove-canned-policy?name=P
=========  ==========================================  ===================================================

No MinIO server can run in this project's test environment, so this path is tested against a
recorded contract of these calls (:mod:`hiclaw.testing.minio_admin`), see ``docs/storage.md``.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

from hiclaw.storage.errors import StorageError

SECRET_BYTES = 30  # 40 URL-safe characters; MinIO wants at least 8


def user_name(worker: str) -> str:
    return f"hiclaw-{worker}"


def policy_name(worker: str) -> str:
    return f"hiclaw-worker-{worker}"


def _admin_error(exc: Exception, action: str, endpoint: str) -> StorageError:
    from minio.error import MinioAdminException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, MinioAdminException):
        code, message = exc._code, exc._body  # noqa: SLF001 - the SDK exposes no public accessors
        try:
            body = json.loads(exc._body)  # noqa: SLF001
            code, message = body.get("Code", code), body.get("Message", message)
        except (ValueError, AttributeError):
            pass
        err = StorageError(f"MinIO admin API refused {action}: {code}: {message}",
                           hint="the storage root keys must belong to a MinIO admin (consoleAdmin policy)")
        err.code = code  # type: ignore[attr-defined]
        return err
    if isinstance(exc, HTTPError):
        return StorageError(f"cannot reach the MinIO admin API at {endpoint}: {exc}",
                            hint="check [storage.settings] endpoint and that MinIO is running")
    return StorageError(f"MinIO admin {action} failed: {type(exc).__name__}: {exc}")


class MinioAdminAccess:
    def __init__(self, *, endpoint: str, access_key: str, secret_key: str, region: str, secure: bool,
                 cert_check: bool, http_client: Any) -> None:
        from minio.credentials import StaticProvider
        from minio.minioadmin import MinioAdmin

        self.endpoint = endpoint
        self.admin = MinioAdmin(endpoint=endpoint, credentials=StaticProvider(access_key, secret_key), region=region,
                                secure=secure, cert_check=cert_check, http_client=http_client)

    async def _run(self, action: str, fn: Any, *args: Any, ok_codes: tuple[str, ...] = (), **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - mapped to one clear error below
            err = _admin_error(exc, action, self.endpoint)
            if getattr(err, "code", None) in ok_codes:
                return None
            raise err from None

    async def issue(self, worker: str, policy: dict[str, Any], keep: tuple[str, str] | None = None) -> tuple[str, str]:
        """Replace the worker's policy; (re)create its user with the ``keep`` secret if given (the
        same keys: a running worker keeps working), else with a fresh one."""
        user, pname = user_name(worker), policy_name(worker)
        secret = keep[1] if keep is not None and keep[0] == user else secrets.token_urlsafe(SECRET_BYTES)
        await self._run("add-canned-policy", self.admin.policy_add, pname, policy=policy)
        await self._run("add-user", self.admin.user_add, user, secret)
        await self._run("policy attach", self.admin.attach_policy, [pname], user=user,
                        ok_codes=("XMinioAdminPolicyChangeAlreadyApplied",))
        return user, secret

    async def revoke(self, worker: str) -> None:
        await self._run("remove-user", self.admin.user_remove, user_name(worker), ok_codes=("XMinioAdminNoSuchUser",))
        await self._run("remove-canned-policy", self.admin.policy_remove, policy_name(worker),
                        ok_codes=("XMinioAdminNoSuchPolicy",))

    async def close(self) -> None:
        """The HTTP pool belongs to the storage object."""
