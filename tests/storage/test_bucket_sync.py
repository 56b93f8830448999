"""Bucket import and incremental sync against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from projects import jobs
from projects.models import Job
from storage.models import BucketSource, Item
from tests.conftest import World, assert_error
from tests.s3 import S3Endpoint

pytestmark = pytest.mark.django_db


def run(job_id: int) -> dict[str, Any]:
    while jobs.job_execute(job_id=job_id) == "sliced":
        pass
    return Job.objects.filter(id=job_id).values()[0]


@pytest.fixture
def bucket(seaweedfs: S3Endpoint) -> tuple[Any, str]:
    client = seaweedfs.client()
    name = f"ext-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return client, name


@pytest.fixture
def dataset_id(world: World, settings: Any, tmp_path: Path) -> int:
    settings.LOUPE_STORAGE = "local"
    settings.LOUPE_OBJECTS_DIR = tmp_path / "objects"
    # The test S3 server listens on 127.0.0.1: an operator allows it, as for an in-house MinIO.
    settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    response = world.client("manager").post(
        "/api/v1/datasets", {"organization": world.org.id, "name": "Fleet", "projects": [world.project.id]},
        format="json",
    )  # fmt: skip
    return int(response.json()["id"])


def register(world: World, dataset_id: int, seaweedfs: S3Endpoint, bucket: str) -> dict[str, Any]:
    response = world.client("manager").post(
        f"/api/v1/datasets/{dataset_id}/bucket-sources",
        {"bucket": bucket, "prefix": "drive/", "endpoint_url": seaweedfs.url, "addressing": "path",
         "access_key_id": seaweedfs.access_key, "secret_access_key": seaweedfs.secret_key},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.content
    return dict(response.json())


def sync(world: World, dataset_id: int, source_id: int) -> dict[str, Any]:
    response = world.client("manager").post(f"/api/v1/datasets/{dataset_id}/bucket-sources/{source_id}/sync")
    assert response.status_code == 202, response.content
    return run(response.json()["id"])


def test_credentials_are_write_only(
    world: World, dataset_id: int, seaweedfs: S3Endpoint, bucket: Any
) -> None:
    source = register(world, dataset_id, seaweedfs, bucket[1])
    listed = world.client("manager").get(f"/api/v1/datasets/{dataset_id}/bucket-sources").json()["results"]
    for body in (source, *listed):
        assert seaweedfs.secret_key not in str(body) and seaweedfs.access_key not in str(body)
        assert body["has_credentials"] is True
    assert BucketSource.objects.get(id=source["id"]).secret_access_key == seaweedfs.secret_key


def test_a_sync_adds_new_and_changed_keys_only_and_deletes_nothing(
    world: World, dataset_id: int, seaweedfs: S3Endpoint, bucket: tuple[Any, str]
) -> None:
    client, name = bucket
    for i in range(3):
        client.put_object(Bucket=name, Key=f"drive/{i}.txt", Body=f"reading {i}".encode())
    client.put_object(Bucket=name, Key="elsewhere/skip.txt", Body=b"outside the prefix")
    source = register(world, dataset_id, seaweedfs, name)
    first = sync(world, dataset_id, source["id"])
    assert first["result"]["created"] == 3
    client.put_object(Bucket=name, Key="drive/1.txt", Body=b"reading 1, corrected")
    client.put_object(Bucket=name, Key="drive/new.txt", Body=b"new reading")
    client.delete_object(Bucket=name, Key="drive/0.txt")
    second = sync(world, dataset_id, source["id"])
    assert (second["total"], second["result"]["created"], second["result"]["updated"]) == (2, 1, 1)
    names = set(Item.objects.filter(dataset_id=dataset_id).values_list("name", flat=True))
    assert names == {"drive/0.txt", "drive/1.txt", "drive/2.txt", "drive/new.txt"}  # nothing deleted
    assert Item.objects.get(dataset_id=dataset_id, name="drive/1.txt").meta["length"] == len(
        "reading 1, corrected"
    )


def test_a_second_sync_of_an_unchanged_bucket_of_several_listing_pages_adds_nothing(
    world: World, dataset_id: int, seaweedfs: S3Endpoint, bucket: tuple[Any, str]
) -> None:
    client, name = bucket
    objects = 2_100  # three pages of S3's 1,000-key listings

    def put(i: int) -> None:
        client.put_object(Bucket=name, Key=f"drive/{i:05d}.txt", Body=f"row {i}".encode())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, range(objects)))
    source = register(world, dataset_id, seaweedfs, name)
    first = sync(world, dataset_id, source["id"])
    assert first["result"]["created"] == objects and first["error_count"] == 0
    assert Item.objects.filter(dataset_id=dataset_id).count() == objects
    stamps = dict(Item.objects.filter(dataset_id=dataset_id).values_list("name", "updated_at"))
    second = sync(world, dataset_id, source["id"])
    # Nothing to fetch: every listed object matched its item, and no item was written again.
    assert second["total"] == 0 and second["result"]["created"] == 0 and second["error_count"] == 0
    assert dict(Item.objects.filter(dataset_id=dataset_id).values_list("name", "updated_at")) == stamps


def test_an_unknown_source_is_a_404(world: World, dataset_id: int) -> None:
    response = world.client("manager").post(f"/api/v1/datasets/{dataset_id}/bucket-sources/999999/sync")
    assert_error(response, 404)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254",
        "http://10.1.2.3:9000",
        "http://[::ffff:127.0.0.1]:6379",
        "ftp://s3.example.test",
    ],
)
def test_endpoints_on_private_addresses_are_refused(
    world: World, dataset_id: int, settings: Any, endpoint: str
) -> None:
    settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS = []
    response = world.client("manager").post(
        f"/api/v1/datasets/{dataset_id}/bucket-sources",
        {"bucket": "b", "endpoint_url": endpoint},
        format="json",
    )
    error = assert_error(response, 400)
    assert error["code"].startswith("endpoint_")
    assert not BucketSource.objects.exists()


def test_a_sync_rechecks_its_endpoint(
    world: World, dataset_id: int, seaweedfs: S3Endpoint, bucket: tuple[Any, str], settings: Any
) -> None:
    source = register(world, dataset_id, seaweedfs, bucket[1])
    settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS = []  # the operator withdrew the allowance
    response = world.client("manager").post(
        f"/api/v1/datasets/{dataset_id}/bucket-sources/{source['id']}/sync"
    )
    assert_error(response, 400, "endpoint_address_not_allowed")
    assert not Job.objects.filter(kind="storage.ingest").exists()
