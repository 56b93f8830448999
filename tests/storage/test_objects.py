"""The object-store contract, on the local folder and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from rest_framework.test import APIClient

from storage.objects import LocalObjectStore, ObjectMissing, ObjectStore, S3ObjectStore, safe_key, sha256_file


def fetch(store: ObjectStore, url: str) -> tuple[int, bytes]:
    """GET a store URL: S3 answers itself; the local store's signed links are served by Loupe."""
    if isinstance(store, LocalObjectStore):
        response = APIClient().get(url)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        return response.status_code, body
    answer = requests.get(url, timeout=10)
    return answer.status_code, answer.content


def upload(store: ObjectStore, target: Any, data: bytes, content_type: str) -> int:
    if isinstance(store, LocalObjectStore):
        return APIClient().generic("PUT", target.url, data, content_type=content_type).status_code
    fields = {**target.fields, "Content-Type": content_type}
    return requests.post(target.url, data=fields, files={"file": ("f", data)}, timeout=10).status_code


@pytest.mark.django_db
def test_objects_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"hello loupe" * 1000)
    store.put_file("blobs/aa/bb/one", source, content_type="text/plain")
    assert store.exists("blobs/aa/bb/one")
    info = store.info("blobs/aa/bb/one")
    assert info is not None and info.size == 11_000
    with store.open("blobs/aa/bb/one") as handle:
        assert handle.read() == source.read_bytes()
    store.put_bytes("blobs/aa/bb/two", b"x", content_type="text/plain")
    assert sorted(o.key for o in store.iter_objects("blobs/")) == ["blobs/aa/bb/one", "blobs/aa/bb/two"]
    store.delete("blobs/aa/bb/one")
    assert not store.exists("blobs/aa/bb/one") and store.info("blobs/aa/bb/one") is None
    with pytest.raises(ObjectMissing):
        store.open("blobs/aa/bb/one").read()


@pytest.mark.django_db
def test_large_objects_stream_in_parts_and_keep_their_bytes(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "big"
    with source.open("wb") as handle:
        for _ in range(40):  # 40 MiB: above the 16 MiB multipart threshold
            handle.write(os.urandom(1024 * 1024))
    store.put_file("blobs/big", source, content_type="application/octet-stream")
    target = tmp_path / "back"
    store.download_to("blobs/big", target)
    assert sha256_file(target) == sha256_file(source)


@pytest.mark.django_db
def test_urls_give_the_bytes_then_expire(store: ObjectStore) -> None:
    store.put_bytes("blobs/u", b"visible", content_type="text/plain")
    assert fetch(store, store.url("blobs/u", expires_s=60)) == (200, b"visible")
    short = store.url("blobs/u", expires_s=1)
    time.sleep(2.2)
    status, _ = fetch(store, short)
    assert status == 403


@pytest.mark.django_db
def test_a_tampered_url_is_refused(store: ObjectStore) -> None:
    store.put_bytes("blobs/t", b"secret", content_type="text/plain")
    url = store.url("blobs/t", expires_s=60)
    tampered = url.replace("blobs/t", "blobs/x") if isinstance(store, S3ObjectStore) else url[:-3] + "abc"
    assert fetch(store, tampered)[0] == 403


@pytest.mark.django_db
def test_presigned_uploads_are_limited_in_size_and_type(store: ObjectStore) -> None:
    target = store.upload_target("staging/a/photo.png", max_bytes=10, content_type="image/png", expires_s=60)
    assert upload(store, target, b"0123456789ABCDEF", "image/png") in (400, 413)  # over the size
    assert not store.exists("staging/a/photo.png")
    assert upload(store, target, b"01234", "text/plain") == 403  # not the signed type
    assert not store.exists("staging/a/photo.png")
    assert upload(store, target, b"01234", "image/png") in (200, 201, 204)
    with store.open("staging/a/photo.png") as handle:
        assert handle.read() == b"01234"


@pytest.mark.django_db
def test_an_expired_upload_target_is_refused(store: ObjectStore) -> None:
    target = store.upload_target("staging/b/late.png", max_bytes=100, content_type="image/png", expires_s=1)
    time.sleep(2.2)
    assert upload(store, target, b"late", "image/png") in (400, 403)
    assert not store.exists("staging/b/late.png")


def test_the_s3_server_refuses_a_body_that_does_not_match_its_checksum(s3_store: ObjectStore) -> None:
    assert isinstance(s3_store, S3ObjectStore)
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    with pytest.raises(Exception, match=r"BadDigest|[Cc]hecksum"):
        s3_store.client.put_object(Bucket=s3_store.bucket, Key="blobs/c", Body=b"bytes", ChecksumSHA256=wrong)
    assert not s3_store.exists("blobs/c")


def test_the_s3_server_refuses_a_wrong_secret(seaweedfs: Any) -> None:
    from storage.objects import s3_client

    impostor = s3_client(endpoint_url=seaweedfs.url, region="us-east-1", addressing="path",
                         access_key=seaweedfs.access_key, secret_key="not-the-secret")  # fmt: skip
    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied"):
        impostor.list_buckets()


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/.", "a\x00b"])
def test_keys_that_could_escape_the_store_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        safe_key(key)
