"""The sweeper keeps store and database in agreement, on both backends."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from storage.ingest import blob_key
from storage.maintenance import store_sweep
from storage.models import Blob
from storage.objects import LocalObjectStore, ObjectStore, S3ObjectStore

pytestmark = pytest.mark.django_db

PART = 5 * 1024 * 1024  # the smallest part S3 accepts


def put(store: ObjectStore, key: str, *, age_s: int) -> None:
    store.put_bytes(key, key.encode(), content_type="application/octet-stream")
    if age_s and isinstance(store, LocalObjectStore):
        old = time.time() - age_s
        os.utime(store.root / key, (old, old))


def test_old_orphans_and_stale_staging_go_referenced_and_young_objects_stay(local_store: ObjectStore) -> None:
    referenced, orphan, young = blob_key("a" * 64), blob_key("b" * 64), blob_key("c" * 64)
    put(local_store, referenced, age_s=7200)
    Blob.objects.create(sha256="a" * 64, size=1, media_type="x", key=referenced)
    put(local_store, orphan, age_s=7200)
    put(local_store, young, age_s=0)  # maybe an ingest between its object and its row
    put(local_store, "staging/old/f", age_s=7200)
    put(local_store, "staging/new/f", age_s=0)
    report = store_sweep(grace_s=3600)
    assert (report.orphans_deleted, report.staging_deleted) == (1, 1)
    assert local_store.exists(referenced) and local_store.exists(young)
    assert not local_store.exists(orphan) and not local_store.exists("staging/old/f")
    assert local_store.exists("staging/new/f")


def test_rows_whose_object_vanished_are_flagged_not_deleted(store: ObjectStore) -> None:
    gone, kept = blob_key("d" * 64), blob_key("e" * 64)
    put(store, kept, age_s=0)
    Blob.objects.create(sha256="d" * 64, size=1, media_type="x", key=gone)
    Blob.objects.create(sha256="e" * 64, size=1, media_type="x", key=kept)
    assert store_sweep(grace_s=0).missing_flagged == 1
    assert Blob.objects.get(sha256="d" * 64).missing_since is not None
    assert Blob.objects.get(sha256="e" * 64).missing_since is None
    put(store, gone, age_s=0)  # restored from a backup
    assert store_sweep(grace_s=0).missing_cleared == 1
    assert Blob.objects.get(sha256="d" * 64).missing_since is None


def test_sweeping_twice_changes_nothing_more(local_store: ObjectStore, tmp_path: Path) -> None:
    put(local_store, blob_key("f" * 64), age_s=7200)
    assert store_sweep(grace_s=3600).orphans_deleted == 1
    assert store_sweep(grace_s=3600).orphans_deleted == 0


def test_partial_files_of_writers_killed_mid_way_are_removed_live_ones_stay(
    local_store: LocalObjectStore,
) -> None:
    key = "exports/1/coco.json"
    dead = local_store.writer(key, content_type="application/json")
    dead.write(b'{"images": [')  # its worker was killed here: never committed nor discarded
    live = local_store.writer("exports/2/coco.json", content_type="application/json")
    live.write(b"{")
    partials = sorted(p for p in local_store.root.rglob(".part-*"))
    assert len(partials) == 2 and local_store.info(key) is None
    old = time.time() - 7200
    (abandoned,) = [p for p in partials if p.parent.name == "1"]
    os.utime(abandoned, (old, old))

    report = store_sweep(grace_s=3600)

    assert report.abandoned_writes_removed == 1
    remaining = list(local_store.root.rglob(".part-*"))
    assert [p.parent.name for p in remaining] == ["2"]
    live.write(b"}")
    live.close()  # the live writer finishes as if nothing happened
    with local_store.open("exports/2/coco.json") as handle:
        assert handle.read() == b"{}"
    assert store_sweep(grace_s=3600).abandoned_writes_removed == 0


def test_what_a_writer_killed_mid_way_left_is_removed_on_both_backends(
    store: ObjectStore, settings: Any
) -> None:
    settings.LOUPE_S3_PART_BYTES = PART
    dead = store.writer("exports/3/big.bin", content_type="application/octet-stream")
    dead.write(os.urandom(PART + 1))  # on S3 the first part is uploaded: a multipart upload is open
    dead.flush()
    time.sleep(1.1)  # older than a grace of 0 s, at the store's one-second timestamps

    assert store_sweep(grace_s=0).abandoned_writes_removed == 1

    if isinstance(store, S3ObjectStore):
        assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    else:
        assert isinstance(store, LocalObjectStore)
        assert list(store.root.rglob(".part-*")) == []
    assert store.info("exports/3/big.bin") is None
