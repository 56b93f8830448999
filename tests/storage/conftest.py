from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.objects import ObjectStore, object_store
from tests.s3 import S3Endpoint, seaweedfs  # noqa: F401  (the session fixture)


@pytest.fixture
def s3_store(
    seaweedfs: S3Endpoint,  # noqa: F811  (pytest injects the imported fixture)
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ObjectStore]:
    """Loupe configured on the S3 server with a bucket of its own for this test."""
    bucket = f"loupe-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    settings.LOUPE_STORAGE = "s3"
    settings.LOUPE_S3_BUCKET = bucket
    settings.LOUPE_S3_ENDPOINT_URL = seaweedfs.url
    settings.LOUPE_S3_ADDRESSING = "path"
    yield object_store()


@pytest.fixture
def local_store(settings: Any, tmp_path: Path) -> ObjectStore:
    settings.LOUPE_STORAGE = "local"
    settings.LOUPE_OBJECTS_DIR = tmp_path / "objects"
    return object_store()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """The contract suite runs on both backends."""
    return request.getfixturevalue(f"{request.param}_store")
