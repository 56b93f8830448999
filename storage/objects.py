"""The object store Loupe keeps every byte in: a local folder (embedded) or any S3 endpoint.

Only this app talks to boto3. This module starts with what the service needs to know it can reach
its store; the ingest capability builds the full interface on it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from django.conf import settings


def s3_client() -> Any:
    import boto3
    from botocore.config import Config

    addressing = {"path": "path", "virtual": "virtual", "auto": "auto"}[settings.LOUPE_S3_ADDRESSING]
    return boto3.client(
        "s3",
        endpoint_url=settings.LOUPE_S3_ENDPOINT_URL,
        region_name=settings.LOUPE_S3_REGION,
        config=Config(
            s3={"addressing_style": addressing},
            connect_timeout=3,
            read_timeout=10,
            retries={"max_attempts": 2, "mode": "standard"},
        ),
    )


def object_store_check() -> None:
    """Raise if the configured object store cannot be written to (local) or reached (S3)."""
    if settings.LOUPE_STORAGE == "s3":
        s3_client().head_bucket(Bucket=settings.LOUPE_S3_BUCKET)
        return
    root = settings.LOUPE_OBJECTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=root, prefix=".ready-", delete=True) as probe:
        probe.write(b"ok")
        probe.flush()
        os.fsync(probe.fileno())
