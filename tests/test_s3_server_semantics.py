"""The test S3 server must evaluate policies the way AWS and MinIO document them.

Our per-worker policy (``plugins/storage/minio/policy.py``) lets a worker list only inside its grant
with the IAM action ``s3:ListBucket`` and an ``s3:prefix`` condition — AWS's own "home folder"
example, and what MinIO documents for ``ListObjects``/``ListObjectsV2``. There is no IAM action
called ``s3:ListObjectsV2``: it is the name of an API operation, authorised as ``s3:ListBucket``.

moto 5.2.6 authorises ``ListObjectsV2`` as ``s3:ListObjectsV2`` (its routing now names the action
after the operation), so a correct policy is refused there and our storage tests fail. moto is
therefore capped below 5.2.6 in ``pyproject.toml``; these tests show the difference directly, so a
moto release that fixes or repeats it is seen by name, not as a mystery in the isolation tests.
"""
from __future__ import annotations

import asyncio
import io
import json
import uuid

import pytest

from hiclaw.plugins.storage.minio.iam import IamClient


def _policy(action: str, bucket: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": [action], "Resource": [f"arn:aws:s3:::{bucket}"]}]})


async def _user_allowed_only(server, bucket: str, action: str) -> tuple[str, str]:
    client = IamClient(server.url, access_key=server.access_key, secret_key=server.secret_key, region=server.region)
    name = f"probe-{uuid.uuid4().hex[:8]}"
    try:
        await client.call("CreateUser", UserName=name)
        await client.call("PutUserPolicy", UserName=name, PolicyName="p", PolicyDocument=_policy(action, bucket))
        created = await client.call("CreateAccessKey", UserName=name)
    finally:
        await client.aclose()
    return created.findtext(".//AccessKeyId") or "", created.findtext(".//SecretAccessKey") or ""


def _list(server, keys: tuple[str, str], bucket: str) -> list[str]:
    from minio import Minio

    client = Minio(server.endpoint, access_key=keys[0], secret_key=keys[1], secure=False, region=server.region)
    return [obj.object_name for obj in client.list_objects(bucket, prefix="agents/", recursive=True)]


@pytest.fixture
def bucket(s3_server_auth):
    from minio import Minio

    name = f"sem-{uuid.uuid4().hex[:12]}"
    root = Minio(s3_server_auth.endpoint, access_key=s3_server_auth.access_key, secret_key=s3_server_auth.secret_key,
                 secure=False, region=s3_server_auth.region)
    root.make_bucket(name)
    root.put_object(name, "agents/a/x.md", io.BytesIO(b"x"), 1)
    return name


async def test_list_objects_v2_is_authorised_as_s3_listbucket(s3_server_auth, bucket):
    keys = await _user_allowed_only(s3_server_auth, bucket, "s3:ListBucket")
    listed = await asyncio.to_thread(_list, s3_server_auth, keys, bucket)
    assert listed == ["agents/a/x.md"], (
        "the S3 server refused ListObjectsV2 to a user allowed s3:ListBucket — AWS documents s3:ListBucket as the "
        "permission for ListObjectsV2 (moto 5.2.6 regressed here; see the cap on moto in pyproject.toml)")


async def test_s3_listobjectsv2_is_not_an_iam_action(s3_server_auth, bucket):
    from minio.error import S3Error

    keys = await _user_allowed_only(s3_server_auth, bucket, "s3:ListObjectsV2")
    with pytest.raises(S3Error, match="AccessDenied"):
        await asyncio.to_thread(_list, s3_server_auth, keys, bucket)
