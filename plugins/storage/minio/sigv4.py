"""AWS Signature Version 4, small and dependency-free.

Used to sign IAM API requests (the ``minio`` SDK signs S3 and MinIO-admin requests itself) and,
by :mod:`hiclaw.testing.minio_admin`, to verify the signatures the SDK sends — an independent
implementation on each side of the wire.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class SignatureError(Exception):
    """A request's signature does not verify; ``code`` is the S3-style error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _encode(value: str, safe: str = "-_.~") -> str:
    return quote(value, safe=safe)


def canonical_query(raw_query: str) -> str:
    pairs = []
    for part in filter(None, raw_query.split("&")):
        key, _, value = part.partition("=")
        pairs.append((_encode(unquote(key)), _encode(unquote(value))))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _canonical_request(method: str, path: str, raw_query: str, headers: Mapping[str, str],
                       signed: list[str], payload_hash: str) -> str:
    lowered = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    header_lines = "".join(f"{name}:{lowered.get(name, '')}\n" for name in signed)
    uri = _encode(unquote(path or "/"), safe="/-_.~")
    return "\n".join([method.upper(), uri, canonical_query(raw_query), header_lines, ";".join(signed), payload_hash])


def _signature(secret_key: str, date: str, region: str, service: str, string_to_sign: str) -> str:
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """Headers to send: ``headers`` plus ``Host``, ``X-Amz-Date``, ``X-Amz-Content-Sha256`` and
    ``Authorization``."""
    now = now or datetime.now(UTC)
    parts = urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    payload_hash = hashlib.sha256(body).hexdigest()
    out = {**headers, "Host": parts.netloc, "X-Amz-Date": amz_date, "X-Amz-Content-Sha256": payload_hash}
    signed = sorted(k.lower() for k in out)
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    canonical = _canonical_request(method, parts.path, parts.query, out, signed, payload_hash)
    signature = _signature(secret_key, amz_date[:8], region, service, _string_to_sign(amz_date, scope, canonical))
    out["Authorization"] = f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    return out


def verify(
    method: str,
    path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], str | None],
    *,
    service: str = "s3",
    max_skew_seconds: int = 900,
    now: datetime | None = None,
) -> str:
    """Check a signed request; return its access key or raise :class:`SignatureError`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    auth = lowered.get("authorization", "")
    if not auth.startswith(ALGORITHM + " "):
        raise SignatureError("AccessDenied", "Access Denied.")
    fields = dict(p.strip().split("=", 1) for p in auth[len(ALGORITHM) + 1:].split(",") if "=" in p)
    try:
        access_key, date, region, svc, terminal = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        given = fields["Signature"]
    except (KeyError, ValueError):
        raise SignatureError("AuthorizationHeaderMalformed", "The authorization header is malformed.") from None
    if svc != service or terminal != "aws4_request" or "host" not in signed:
        raise SignatureError("AuthorizationHeaderMalformed", "The authorization header is malformed.")
    secret = secret_for(access_key)
    if secret is None:
        raise SignatureError("InvalidAccessKeyId", "The Access Key Id you provided does not exist in our records.")
    amz_date = lowered.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("AccessDenied", "X-Amz-Date is missing or malformed.") from None
    if abs(((now or datetime.now(UTC)) - when).total_seconds()) > max_skew_seconds or amz_date[:8] != date:
        raise SignatureError("RequestTimeTooSkewed", "The difference between the request time and the server's time is too large.")
    payload_hash = lowered.get("x-amz-content-sha256", EMPTY_SHA256)
    if payload_hash != "UNSIGNED-PAYLOAD" and payload_hash != hashlib.sha256(body).hexdigest():
        raise SignatureError("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
    scope = f"{date}/{region}/{svc}/aws4_request"
    canonical = _canonical_request(method, path, raw_query, headers, signed, payload_hash)
    expected = _signature(secret, date, region, svc, _string_to_sign(amz_date, scope, canonical))
    if not hmac.compare_digest(expected, given):
        raise SignatureError("SignatureDoesNotMatch",
                             "The request signature we calculated does not match the signature you provided.")
    return access_key
