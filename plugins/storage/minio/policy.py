"""The per-worker S3 policy document (the same for MinIO canned policies and IAM user policies).

A worker may read and write its grant's read-write entries, only read its read-only entries,
and list only inside what it was granted. Read-only keys inside a read-write folder (a task's
``spec.md``) get an explicit Deny for writes, which wins over the folder's Allow in both MinIO
and IAM evaluation.
"""
from __future__ import annotations

from typing import Any

from hiclaw.storage.grants import Grant, covers

READ_ACTIONS = ["s3:GetObject"]
WRITE_ACTIONS = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]


def _object_arn(bucket: str, entry: str) -> str:
    return f"arn:aws:s3:::{bucket}/{entry}*" if entry.endswith("/") else f"arn:aws:s3:::{bucket}/{entry}"


def worker_policy(bucket: str, grant: Grant) -> dict[str, Any]:
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadWrite",
            "Effect": "Allow",
            "Action": READ_ACTIONS + WRITE_ACTIONS,
            "Resource": [_object_arn(bucket, e) for e in grant.read_write],
        }
    ]
    if grant.read_only:
        statements.append(
            {"Sid": "ReadOnly", "Effect": "Allow", "Action": READ_ACTIONS,
             "Resource": [_object_arn(bucket, e) for e in grant.read_only]}
        )
    carved = [e for e in grant.read_only if any(covers(rw, e) for rw in grant.read_write)]
    if carved:
        statements.append(
            {"Sid": "ReadOnlyInsideReadWrite", "Effect": "Deny", "Action": WRITE_ACTIONS,
             "Resource": [_object_arn(bucket, e) for e in carved]}
        )
    statements.append(
        {
            "Sid": "ListGranted",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}"],
            "Condition": {"StringLike": {"s3:prefix": [e + "*" if e.endswith("/") else e for e in grant.entries]}},
        }
    )
    statements.append(
        {"Sid": "Locate", "Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": [f"arn:aws:s3:::{bucket}"]}
    )
    return {"Version": "2012-10-17", "Statement": statements}
