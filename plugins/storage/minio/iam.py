"""Per-worker credentials through the IAM API (AWS, and S3 servers that speak IAM such as moto).

Each worker gets an IAM user ``hiclaw-<worker>`` with one inline policy (``hiclaw-storage``,
see :mod:`.policy`) and one access key. Granting again replaces the policy and issues a fresh key,
deleting the older ones (IAM never shows a secret twice). Revoking deletes the keys, the policy
and the user. Requests are IAM Query API calls (form-encoded POST, XML answers) signed with SigV4
by :mod:`.sigv4`; ``httpx`` carries them. On AWS, new keys take a few seconds to propagate.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

from hiclaw.plugins.storage.minio import sigv4
from hiclaw.storage.errors import StorageError

IAM_VERSION = "2010-05-08"
POLICY_NAME = "hiclaw-storage"


class IamError(StorageError):
    def __init__(self, code: str, message: str, action: str) -> None:
        super().__init__(f"IAM {action} failed: {code}: {message}")
        self.code = code


def _strip_ns(root: ET.Element) -> ET.Element:
    for el in root.iter():
        if "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


class IamClient:
    """A minimal async IAM Query API client."""

    def __init__(self, url: str, *, access_key: str, secret_key: str, region: str = "us-east-1",
                 verify: bool = True, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/") + "/"
        self._keys = (access_key, secret_key)
        self.region = region
        self._http = httpx.AsyncClient(verify=verify, timeout=timeout)

    async def call(self, action: str, **params: str) -> ET.Element:
        import httpx

        body = urlencode({"Action": action, "Version": IAM_VERSION, **params}).encode()
        headers = sigv4.sign("POST", self.url, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, body,
                             access_key=self._keys[0], secret_key=self._keys[1], region=self.region, service="iam")
        try:
            response = await self._http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise StorageError(f"cannot reach the IAM API at {self.url}: {exc}",
                               hint="check [storage.settings] iam_endpoint (or endpoint) and that the server runs") from None
        try:
            root = _strip_ns(ET.fromstring(response.content))  # noqa: S314 - our configured IAM endpoint; expat limits expansion
        except ET.ParseError:
            raise IamError(str(response.status_code), response.text[:200], action) from None
        if response.status_code >= 400:
            raise IamError(root.findtext(".//Code") or str(response.status_code), root.findtext(".//Message") or "", action)
        return root

    async def aclose(self) -> None:
        await self._http.aclose()


def user_name(worker: str) -> str:
    return f"hiclaw-{worker}"


class IamAccess:
    """Issues and revokes per-worker keys through :class:`IamClient`."""

    def __init__(self, client: IamClient) -> None:
        self.client = client

    async def issue(self, worker: str, policy: dict[str, Any], keep: tuple[str, str] | None = None) -> tuple[str, str]:
        """Replace the worker's policy; return ``keep`` if that key is still the user's (a running
        worker keeps working), else a fresh key (older ones deleted)."""
        user = user_name(worker)
        try:
            await self.client.call("CreateUser", UserName=user, Path="/hiclaw/")
        except IamError as exc:
            if exc.code != "EntityAlreadyExists":
                raise
        await self.client.call("PutUserPolicy", UserName=user, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
        if keep is not None and keep[0] in await self._key_ids(user):
            return keep
        await self._delete_keys(user)
        created = await self.client.call("CreateAccessKey", UserName=user)
        access_key = created.findtext(".//AccessKeyId")
        secret_key = created.findtext(".//SecretAccessKey")
        if not access_key or not secret_key:
            raise StorageError(f"IAM CreateAccessKey for {user!r} returned no key", hint="check the IAM server")
        return access_key, secret_key

    async def _key_ids(self, user: str) -> list[str]:
        listing = await self.client.call("ListAccessKeys", UserName=user)
        return [el.text for el in listing.iter("AccessKeyId") if el.text]

    async def _delete_keys(self, user: str) -> None:
        for key_id in await self._key_ids(user):
            await self.client.call("DeleteAccessKey", UserName=user, AccessKeyId=key_id)

    async def revoke(self, worker: str) -> None:
        user = user_name(worker)
        try:
            await self._delete_keys(user)
            await self.client.call("DeleteUserPolicy", UserName=user, PolicyName=POLICY_NAME)
        except IamError as exc:
            if exc.code != "NoSuchEntity":
                raise
        try:
            await self.client.call("DeleteUser", UserName=user)
        except IamError as exc:
            if exc.code != "NoSuchEntity":
                raise

    async def close(self) -> None:
        await self.client.aclose()
