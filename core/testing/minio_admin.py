"""A loopback server enforcing the recorded contract of MinIO's admin API v3 (IAM subset).

No MinIO server can be installed in hiclaw's test environment, so the ``minio`` storage plugin's
admin path is tested against this recorded contract instead. It was taken from MinIO's sources —
``cmd/admin-router.go`` (routes, methods, required query parameters), ``cmd/admin-handlers-users.go``
(AddUser, AddCannedPolicy, AttachDetachPolicyBuiltin, RemoveUser, RemoveCannedPolicy),
``cmd/api-errors.go`` / ``cmd/admin-handler-utils.go`` (error codes) — and from ``madmin-go``
(``encrypt.go``: payload encryption; ``user-commands.go``/``policy-commands.go``: body shapes).

Recorded contract (all requests SigV4-signed, service ``s3``; only the root keys are admins):

=======  ==================================  ============  ===========================================  ==================
method   path (/minio/admin/v3/…)            query         body (``E`` = encrypted with caller secret)  answer
=======  ==================================  ============  ===========================================  ==================
PUT      add-canned-policy                   name          policy JSON (``Version`` required)            200, empty
PUT      add-user                            accessKey     E ``{"secretKey", "status"}``                200, empty
POST     idp/builtin/policy/attach|detach    —             E ``{"policies": [..], "user"|"group"}``     200, E association
DELETE   remove-user                         accessKey     —                                            200, empty
DELETE   remove-canned-policy                name          —                                            200, empty
=======  ==================================  ============  ===========================================  ==================

Errors are JSON ``{"Code", "Message", "Resource", "RequestId", "HostId"}``: bad signature →
403 ``SignatureDoesNotMatch``; unknown key → 403 ``InvalidAccessKeyId``; non-admin → 403
``AccessDenied``; undecryptable/invalid body → 400 ``XMinioAdminConfigBadJSON``; policy without
Version → 400 ``MalformedPolicy``; missing body → 411 ``MissingContentLength``; attach body not
``application/octet-stream`` → 400 ``BadRequest``; unknown user → 404 ``XMinioAdminNoSuchUser``;
unknown policy → 404 ``XMinioAdminNoSuchPolicy``; attaching what is attached → 400
``XMinioAdminPolicyChangeAlreadyApplied``; removing an attached policy → 400
``XMinioIAMPolicyInUse``; removing the root user → 403 ``XMinioIAMActionNotAllowed``.
Semantics: adding an existing user replaces its secret; adding an existing policy replaces it.

Encryption (madmin ``EncryptData``): ``salt(32) | aead id(1) | nonce(8) | sio fragments``; key =
argon2id(secret, salt, t=1, m=64 MiB, p=4, 32 bytes); id 0 = AES-256-GCM, 1 = ChaCha20-Poly1305;
16 KiB fragments, fragment nonce = nonce ‖ seq (u32 LE, from 1), associated data = 0x00 ‖
tag(empty, nonce ‖ 0) with the first byte 0x80 on the final fragment. Implemented here
independently of the ``minio`` SDK (which the plugin uses to speak it).
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

PREFIX = "/minio/admin/v3/"
FRAGMENT = 16 * 1024
TAG = 16


def _kdf(password: str, salt: bytes) -> bytes:
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(password.encode(), salt, time_cost=1, memory_cost=64 * 1024, parallelism=4,
                           hash_len=32, type=Type.ID, version=19)


def _aead(aead_id: int, key: bytes, nonce: bytes) -> Any:
    from Crypto.Cipher import AES, ChaCha20_Poly1305

    if aead_id == 0:
        return AES.new(key, AES.MODE_GCM, nonce=nonce)
    if aead_id == 1:
        return ChaCha20_Poly1305.new(key=key, nonce=nonce)
    raise ValueError(f"unknown AEAD id {aead_id}")


def _associated_data(aead_id: int, key: bytes, nonce: bytes) -> bytes:
    return b"\x00" + _aead(aead_id, key, nonce + bytes(4)).digest()


def encrypt(data: bytes, password: str, *, aead_id: int = 0) -> bytes:
    salt, nonce = os.urandom(32), os.urandom(8)
    key = _kdf(password, salt)
    ad = _associated_data(aead_id, key, nonce)
    out = [salt, bytes([aead_id]), nonce]
    chunks = [data[i:i + FRAGMENT] for i in range(0, len(data), FRAGMENT)] or [b""]
    for seq, chunk in enumerate(chunks, start=1):
        cipher = _aead(aead_id, key, nonce + seq.to_bytes(4, "little"))
        cipher.update(b"\x80" + ad[1:] if seq == len(chunks) else ad)
        sealed, tag = cipher.encrypt_and_digest(chunk)
        out += [sealed, tag]
    return b"".join(out)


def decrypt(data: bytes, password: str) -> bytes:
    if len(data) < 41 + TAG:
        raise ValueError("payload too short")
    salt, aead_id, nonce, body = data[:32], data[32], data[33:41], data[41:]
    key = _kdf(password, salt)
    ad = _associated_data(aead_id, key, nonce)
    plain, pos, seq = [], 0, 1
    while True:
        fragment = body[pos:pos + FRAGMENT + TAG]
        pos += len(fragment)
        last = pos >= len(body)
        cipher = _aead(aead_id, key, nonce + seq.to_bytes(4, "little"))
        cipher.update(b"\x80" + ad[1:] if last else ad)
        plain.append(cipher.decrypt_and_verify(fragment[:-TAG], fragment[-TAG:]))
        if last:
            return b"".join(plain)
        seq += 1


class AdminError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class MinioAdminState:
    """What the fake server holds; tests inspect it directly."""

    root_access_key: str
    root_secret_key: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"secretKey", "status", "policies"}
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)  # method, route, query, body (decrypted)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _need(query: dict[str, str], *names: str) -> list[str]:
    missing = [n for n in names if n not in query]
    if missing:
        raise AdminError(400, "XMinioAdminInvalidArgument", f"Invalid arguments specified: missing {', '.join(missing)}.")
    return [query[n] for n in names]


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise AdminError(400, "XMinioAdminConfigBadJSON", "JSON configuration provided is of incorrect format") from None


def _decrypt_json(state: MinioAdminState, body: bytes, record: dict[str, Any]) -> Any:
    try:
        record["body"] = _json(decrypt(body, state.root_secret_key))
        return record["body"]
    except (ValueError, KeyError):
        raise AdminError(400, "XMinioAdminConfigBadJSON", "JSON configuration provided is of incorrect format") from None


def handle(state: MinioAdminState, method: str, route: str, query: dict[str, str], headers: dict[str, str],
           body: bytes, record: dict[str, Any]) -> tuple[int, bytes]:
    """Apply one verified admin request to ``state``; returns (status, response body). The
    decoded request body is put in ``record["body"]``."""
    key = (method, route)
    if key == ("PUT", "add-canned-policy"):
        (name,) = _need(query, "name")
        if not body:
            raise AdminError(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        policy = record["body"] = _json(body)
        if not isinstance(policy, dict) or not policy.get("Version") or not isinstance(policy.get("Statement"), list):
            raise AdminError(400, "MalformedPolicy", "Policy has invalid resource.")
        state.policies[name] = policy
        return 200, b""
    if key == ("PUT", "add-user"):
        (access_key,) = _need(query, "accessKey")
        request = _decrypt_json(state, body, record)
        if not isinstance(request, dict) or not isinstance(request.get("secretKey"), str) or len(request["secretKey"]) < 8:
            raise AdminError(400, "XMinioAdminConfigBadJSON", "JSON configuration provided is of incorrect format")
        old = state.users.get(access_key, {})
        state.users[access_key] = {"secretKey": request["secretKey"], "status": request.get("status", "enabled"),
                                   "policies": old.get("policies", [])}
        return 200, b""
    if method == "POST" and route in ("idp/builtin/policy/attach", "idp/builtin/policy/detach"):
        if headers.get("content-type") != "application/octet-stream":
            raise AdminError(400, "BadRequest", "400 BadRequest")
        request = _decrypt_json(state, body, record)
        if not isinstance(request, dict):
            raise AdminError(400, "XMinioAdminConfigBadJSON", "JSON configuration provided is of incorrect format")
        policies, user = request.get("policies") or [], request.get("user")
        if not policies or not user:
            raise AdminError(400, "XMinioAdminInvalidArgument", "Invalid arguments specified.")
        if user not in state.users:
            raise AdminError(404, "XMinioAdminNoSuchUser", "The specified user does not exist.")
        missing = [p for p in policies if p not in state.policies]
        if missing:
            raise AdminError(404, "XMinioAdminNoSuchPolicy", "The canned policy does not exist.")
        current = state.users[user]["policies"]
        attach = route.endswith("attach")
        changed = [p for p in policies if (p not in current) == attach]
        if not changed:
            raise AdminError(400, "XMinioAdminPolicyChangeAlreadyApplied", "The specified policy change is already in effect.")
        state.users[user]["policies"] = current + changed if attach else [p for p in current if p not in changed]
        answer = {"policiesAttached" if attach else "policiesDetached": changed,
                  "updatedAt": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
        return 200, encrypt(json.dumps(answer).encode(), state.root_secret_key)
    if key == ("DELETE", "remove-user"):
        (access_key,) = _need(query, "accessKey")
        if access_key == state.root_access_key:
            raise AdminError(403, "XMinioIAMActionNotAllowed", "Specified IAM action is not allowed")
        if state.users.pop(access_key, None) is None:
            raise AdminError(404, "XMinioAdminNoSuchUser", "The specified user does not exist.")
        return 200, b""
    if key == ("DELETE", "remove-canned-policy"):
        (name,) = _need(query, "name")
        if name not in state.policies:
            raise AdminError(404, "XMinioAdminNoSuchPolicy", "The canned policy does not exist.")
        if any(name in u["policies"] for u in state.users.values()):
            raise AdminError(400, "XMinioIAMPolicyInUse", "The policy cannot be removed, as it is in use")
        del state.policies[name]
        return 200, b""
    raise AdminError(400, "XMinioAdminUnknownAPI", f"{method} {PREFIX}{route} is not part of the recorded contract")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        from hiclaw.plugins.storage.minio import sigv4

        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            if not parts.path.startswith(PREFIX):
                raise AdminError(400, "XMinioAdminUnknownAPI", "not an admin API v3 path")
            secrets = {state.root_access_key: state.root_secret_key}
            for name, user in state.users.items():
                secrets.setdefault(name, user["secretKey"])
            try:
                caller = sigv4.verify(self.command, parts.path, parts.query, dict(self.headers.items()), body, secrets.get)
            except sigv4.SignatureError as exc:
                raise AdminError(403, exc.code, exc.message) from None
            if caller != state.root_access_key:
                raise AdminError(403, "AccessDenied", "Access Denied.")
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            route = parts.path[len(PREFIX):]
            record: dict[str, Any] = {"method": self.command, "route": route, "query": query}
            with state.lock:
                status, answer = handle(state, self.command, route, query, headers, body, record)
                state.calls.append({**record, "status": status})
            content_type = "application/octet-stream" if answer else "application/json"
        except AdminError as exc:
            status, content_type = exc.status, "application/json"
            answer = json.dumps({"Code": exc.code, "Message": exc.message, "Resource": parts.path,
                                 "RequestId": uuid.uuid4().hex[:16].upper(), "HostId": ""}).encode()
            with state.lock:
                state.calls.append({"method": self.command, "route": parts.path[len(PREFIX):], "status": status,
                                    "error": exc.code})
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_PUT = do_POST = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, state: MinioAdminState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@dataclass
class MinioAdminServer:
    state: MinioAdminState
    endpoint: str  # "127.0.0.1:PORT"
    _server: _Server
    _thread: threading.Thread

    @property
    def access_key(self) -> str:
        return self.state.root_access_key

    @property
    def secret_key(self) -> str:
        return self.state.root_secret_key

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_minio_admin(access_key: str = "minio-root", secret_key: str | None = None) -> MinioAdminServer:
    state = MinioAdminState(access_key, secret_key or uuid.uuid4().hex)
    server = _Server(state)
    thread = threading.Thread(target=server.serve_forever, name="minio-admin-contract", daemon=True)
    thread.start()
    return MinioAdminServer(state, f"127.0.0.1:{server.server_address[1]}", server, thread)


@pytest.fixture
def minio_admin_server() -> Any:
    """A fresh contract server (own state) on a free loopback port."""
    server = start_minio_admin()
    yield server
    server.stop()
