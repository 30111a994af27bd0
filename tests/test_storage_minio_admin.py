"""The MinIO admin-API path, tested against the recorded contract of MinIO's admin API v3
(``hiclaw.testing.minio_admin``) because no MinIO server can run here. The contract server checks
SigV4 signatures, decrypts madmin-encrypted bodies and enforces MinIO's answers."""
from __future__ import annotations

import json

import httpx
import pytest

from hiclaw.plugins.storage.minio import sigv4
from hiclaw.plugins.storage.minio.policy import worker_policy
from hiclaw.storage import StorageError, grants, layout
from hiclaw.testing.minio_admin import encrypt
from hiclaw.testing.s3 import build_s3_storage


def _storage(server, secret_key=None):
    # Only the admin API exists on the contract server: no bucket to create or check.
    settings = {"endpoint": f"http://{server.endpoint}", "bucket": "team", "admin_api": "minio", "create_bucket": False}
    return build_s3_storage(settings, server.access_key, secret_key or server.secret_key)


async def test_grant_creates_user_policy_and_attachment_and_revoke_removes_them(minio_admin_server):
    storage = _storage(minio_admin_server)
    access = await storage.grant("alice", rw=[layout.task_dir("t1")], ro=[layout.task_spec("t1")])
    state = minio_admin_server.state
    assert access.settings["access_key"] == "hiclaw-alice"
    assert state.users["hiclaw-alice"]["secretKey"] == access.settings["secret_key"]
    assert state.users["hiclaw-alice"]["policies"] == ["hiclaw-worker-alice"]
    expected = worker_policy("team", grants.normalize_grant("alice", [layout.task_dir("t1")], [layout.task_spec("t1")]))
    assert state.policies["hiclaw-worker-alice"] == expected
    assert minio_admin_server.secret_key not in json.dumps(access.settings)
    assert [c["route"] for c in state.calls] == ["add-canned-policy", "add-user", "idp/builtin/policy/attach"]
    assert state.calls[1]["body"] == {"status": "enabled", "secretKey": access.settings["secret_key"]}

    again = await storage.grant("alice", rw=[layout.task_dir("t1"), layout.task_dir("t3")])
    assert again.settings == access.settings  # same keys: a running worker keeps working
    assert state.users["hiclaw-alice"]["secretKey"] == access.settings["secret_key"]
    assert state.calls[-2]["body"] == {"status": "enabled", "secretKey": access.settings["secret_key"]}
    assert "arn:aws:s3:::team/shared/tasks/t3/*" in state.policies["hiclaw-worker-alice"]["Statement"][0]["Resource"]
    assert state.calls[-1]["error"] == "XMinioAdminPolicyChangeAlreadyApplied"  # tolerated

    await storage.revoke("alice")
    assert state.users == {} and state.policies == {}
    await storage.revoke("alice")  # absent user and policy: fine
    fresh = await storage.grant("alice")  # after a revoke: a new secret
    assert fresh.settings["secret_key"] != access.settings["secret_key"]
    await storage.stop()


async def test_wrong_root_keys_give_one_clear_error(minio_admin_server):
    storage = _storage(minio_admin_server, secret_key="not-the-secret")
    with pytest.raises(StorageError) as info:
        await storage.grant("alice")
    assert "SignatureDoesNotMatch" in str(info.value) and "\n" not in str(info.value)
    assert minio_admin_server.state.users == {}
    await storage.stop()


async def test_unreachable_admin_api(minio_admin_server):
    storage = _storage(minio_admin_server)
    minio_admin_server.stop()
    with pytest.raises(StorageError, match="cannot reach the MinIO admin API"):
        await storage.grant("alice")
    await storage.stop()


def _raw(server, method: str, route: str, body: bytes = b"", *, secret: str | None = None,
         content_type: str = "application/octet-stream") -> httpx.Response:
    url = f"http://{server.endpoint}/minio/admin/v3/{route}"
    headers = sigv4.sign(method, url, {"Content-Type": content_type}, body, access_key=server.access_key,
                         secret_key=secret or server.secret_key, region="us-east-1", service="s3")
    return httpx.request(method, url, content=body, headers=headers)


def test_the_contract_server_enforces_what_minio_does(minio_admin_server):
    server = minio_admin_server
    secret = server.secret_key
    unsigned = httpx.put(f"http://{server.endpoint}/minio/admin/v3/add-user?accessKey=x", content=b"{}")
    assert unsigned.status_code == 403 and unsigned.json()["Code"] == "AccessDenied"
    assert _raw(server, "PUT", "add-user?accessKey=eve", b"x", secret="wrong").json()["Code"] == "SignatureDoesNotMatch"
    plain = _raw(server, "PUT", "add-user?accessKey=eve", json.dumps({"secretKey": "12345678"}).encode())
    assert (plain.status_code, plain.json()["Code"]) == (400, "XMinioAdminConfigBadJSON")  # must be encrypted
    wrong_key = encrypt(json.dumps({"secretKey": "12345678", "status": "enabled"}).encode(), "another password")
    assert _raw(server, "PUT", "add-user?accessKey=eve", wrong_key).json()["Code"] == "XMinioAdminConfigBadJSON"
    no_version = _raw(server, "PUT", "add-canned-policy?name=p", b'{"Statement": []}')
    assert no_version.json()["Code"] == "MalformedPolicy"

    user = encrypt(json.dumps({"secretKey": "12345678", "status": "enabled"}).encode(), secret)
    assert _raw(server, "PUT", "add-user?accessKey=eve", user).status_code == 200
    attach = encrypt(json.dumps({"policies": ["p"], "user": "eve"}).encode(), secret)
    assert _raw(server, "POST", "idp/builtin/policy/attach", attach).json()["Code"] == "XMinioAdminNoSuchPolicy"
    assert _raw(server, "PUT", "add-canned-policy?name=p", b'{"Version": "2012-10-17", "Statement": []}').status_code == 200
    form = _raw(server, "POST", "idp/builtin/policy/attach", attach, content_type="application/x-www-form-urlencoded")
    assert form.json()["Code"] == "BadRequest"
    assert _raw(server, "POST", "idp/builtin/policy/attach", attach).status_code == 200
    in_use = _raw(server, "DELETE", "remove-canned-policy?name=p")
    assert (in_use.status_code, in_use.json()["Code"]) == (400, "XMinioIAMPolicyInUse")
    assert _raw(server, "DELETE", f"remove-user?accessKey={server.access_key}").json()["Code"] == "XMinioIAMActionNotAllowed"
    assert _raw(server, "DELETE", "remove-user?accessKey=eve").status_code == 200
    missing = _raw(server, "DELETE", "remove-user?accessKey=eve")
    assert (missing.status_code, missing.json()["Code"]) == (404, "XMinioAdminNoSuchUser")
    assert _raw(server, "GET", "list-users").json()["Code"] == "XMinioAdminUnknownAPI"  # outside the recorded contract
