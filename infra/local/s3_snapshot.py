"""Carry the local bucket across cluster restarts: moto keeps objects in memory only.

`cluster.py down` saves the bucket as plain files under <state dir>/s3/<bucket>/ before it stops the
endpoint, and `up` puts them back into a freshly started endpoint, so datasets, checkpoints and the MLflow
artifacts that the (on-disk) MLflow database points at survive a restart.
"""

import shutil
from pathlib import Path
from typing import Any

import boto3  # not stdlib: run with the project's venv, as the Makefile does


def _client(endpoint: str) -> Any:
    # Explicit endpoint and dummy credentials: never fall through to real AWS, whatever the caller's env says.
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def save(endpoint: str, bucket: str, dest: Path) -> tuple[int, int]:
    """Mirror the bucket into `dest` (replacing it whole); returns (objects, bytes)."""
    s3 = _client(endpoint)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    count = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):  # a folder marker (s3fs writes them), not data
                continue
            target = partial / obj["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            count, size = count + 1, size + obj["Size"]
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)  # a failed save leaves the previous snapshot in place
    return count, size


def restore(endpoint: str, bucket: str, src: Path) -> int:
    """Upload every file under `src` to the bucket under its relative path; returns the object count."""
    s3 = _client(endpoint)
    files = [p for p in sorted(src.rglob("*")) if p.is_file()]
    for path in files:
        s3.upload_file(str(path), bucket, path.relative_to(src).as_posix())
    return len(files)
