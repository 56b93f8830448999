"""Ingest through the API alone: datasets, every path into them, probing, thumbnails, duplicates.

The job a request starts is run in-process with the engine (job_execute) — the same code a
worker runs; tests/projects/test_jobs_on_workers.py covers the worker side of the machinery.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from projects.models import Job, JobState
from storage.models import Item
from tests.conftest import World, assert_error
from tests.storage.conftest import FileServer, manifest, run, upload

pytestmark = pytest.mark.django_db


def jpeg(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 8):  # some structure, so perceptual hashes mean something
        for y in range(height):
            image.putpixel((x, y), (x * 3 % 256, y * 5 % 256, 90))
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def png(width: int = 32, height: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 128).save(out, "PNG")
    return out.getvalue()


def test_a_manager_creates_a_dataset_linked_to_its_project(world: World, dataset: dict[str, Any]) -> None:
    assert dataset["projects"] == [world.project.id]
    assert world.client("annotator").get(f"/api/v1/datasets/{dataset['id']}").status_code == 200
    assert_error(world.client("outsider").get(f"/api/v1/datasets/{dataset['id']}"), 404)
    assert_error(world.client("member").get(f"/api/v1/datasets/{dataset['id']}"), 404)
    listed = world.client("outsider").get("/api/v1/datasets").json()["results"]
    assert dataset["id"] not in [d["id"] for d in listed]


def test_an_annotator_cannot_create_or_fill_a_dataset(world: World, dataset: dict[str, Any]) -> None:
    annotator = world.client("annotator")
    created = annotator.post(
        "/api/v1/datasets",
        {"organization": world.org.id, "name": "x", "projects": [world.project.id]},
        format="json",
    )
    assert_error(created, 403)
    assert_error(upload(annotator, dataset["id"], {"a.jpg": jpeg()}), 403)
    assert not Job.objects.filter(kind="storage.ingest").exists()


def test_direct_upload_probes_thumbnails_and_rejects_bad_files_with_reasons(
    world: World, dataset: dict[str, Any]
) -> None:
    files = {
        "cams/front/0001.jpg": jpeg(640, 480),
        "cams/front/0002.png": png(),
        "notes/readme.txt": b"hello, annotators\nsecond line\n",
        "broken.jpg": b"\xff\xd8\xff\xe0 definitely not a whole jpeg",
    }
    response = upload(
        world.client("manager"), dataset["id"], files, meta={"cams/front/0001.jpg": {"weather": "rain"}}
    )
    assert response.status_code == 202, response.content
    job = run(response.json()["id"])
    assert job["state"] == JobState.SUCCEEDED
    assert (job["done"], job["total"], job["error_count"]) == (4, 4, 1)
    assert job["result"]["created"] == 3 and job["result"]["rejected"] == 1

    errors = world.client("manager").get(f"/api/v1/jobs/{job['id']}/errors").json()["results"]
    assert [(e["item"], e["code"]) for e in errors] == [("broken.jpg", "corrupt")]

    items = {
        i["name"]: i
        for i in world.client("annotator").get(f"/api/v1/datasets/{dataset['id']}/items").json()["results"]
    }
    assert set(items) == {"cams/front/0001.jpg", "cams/front/0002.png", "notes/readme.txt"}
    photo = items["cams/front/0001.jpg"]
    assert photo["modality"] == "image" and photo["media_type"] == "image/jpeg"
    assert (photo["meta"]["width"], photo["meta"]["height"]) == (640, 480)
    assert photo["meta"]["user"] == {"weather": "rain"}
    assert photo["sha256"] == hashlib.sha256(files["cams/front/0001.jpg"]).hexdigest()
    assert items["notes/readme.txt"]["modality"] == "text"
    assert items["notes/readme.txt"]["thumbnail_url"] is None

    client = world.client("annotator")
    content = client.get(photo["content_url"])
    assert content.status_code == 200 and b"".join(content.streaming_content) == files["cams/front/0001.jpg"]
    thumb = client.get(photo["thumbnail_url"])
    image = Image.open(io.BytesIO(b"".join(thumb.streaming_content)))
    assert image.format == "WEBP" and max(image.size) == 256


def test_the_same_bytes_are_stored_once_and_reported_as_duplicates(
    world: World, dataset: dict[str, Any]
) -> None:
    photo = jpeg()
    job = run(
        upload(world.client("manager"), dataset["id"], {"a.jpg": photo, "copy-of-a.jpg": photo}).json()["id"]
    )
    assert job["result"]["created"] == 2
    assert {d["name"] for d in job["result"]["exact_duplicates"]} == {"a.jpg", "copy-of-a.jpg"}
    a, b = Item.objects.filter(dataset_id=dataset["id"]).order_by("name")
    assert a.primary_id == b.primary_id  # one blob, one object
    groups = (
        world.client("manager")
        .get(f"/api/v1/datasets/{dataset['id']}/duplicates?kind=exact")
        .json()["groups"]
    )
    assert [sorted(i["name"] for i in g["items"]) for g in groups] == [["a.jpg", "copy-of-a.jpg"]]


def photo(name: str, *, size: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    """A real photograph shipped with scikit-image, as JPEG."""
    from skimage import data

    image = Image.fromarray(getattr(data, name)())
    if size is not None:
        image = image.resize(size)
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_near_duplicate_images_are_listed(world: World, dataset: dict[str, Any]) -> None:
    files = {
        "astronaut.jpg": photo("astronaut"),
        "astronaut-small.jpg": photo("astronaut", size=(256, 256), quality=60),
        "astronaut-recoded.jpg": photo("astronaut", quality=35),
        "coffee.jpg": photo("coffee"),
        "camera.jpg": photo("camera"),
    }
    run(upload(world.client("manager"), dataset["id"], files).json()["id"])
    response = world.client("manager").get(
        f"/api/v1/datasets/{dataset['id']}/duplicates?kind=near&distance=8"
    )
    pairs = {tuple(sorted(i["name"] for i in g["items"])) for g in response.json()["groups"]}
    assert pairs == {
        ("astronaut-small.jpg", "astronaut.jpg"),
        ("astronaut-recoded.jpg", "astronaut.jpg"),
        ("astronaut-recoded.jpg", "astronaut-small.jpg"),
    }


def test_items_are_filtered_by_modality_and_metadata(world: World, dataset: dict[str, Any]) -> None:
    run(upload(world.client("manager"), dataset["id"], {"big.jpg": jpeg(640, 480), "small.jpg": jpeg(32, 24),
                                                        "t.txt": b"text"}).json()["id"])  # fmt: skip
    client = world.client("reviewer")
    url = f"/api/v1/datasets/{dataset['id']}/items"
    assert {i["name"] for i in client.get(url, {"modality": "image"}).json()["results"]} == {
        "big.jpg",
        "small.jpg",
    }
    assert [i["name"] for i in client.get(url, {"meta": json.dumps({"width": 640})}).json()["results"]] == [
        "big.jpg"
    ]
    assert_error(client.get(url, {"meta": "not json"}), 400)
    outsider = world.client("outsider")
    assert_error(outsider.get(url), 404)
    item_id = Item.objects.get(name="big.jpg").id
    assert_error(outsider.get(f"/api/v1/items/{item_id}"), 404)


def test_presigned_upload_is_verified_by_size_and_checksum(world: World, dataset: dict[str, Any]) -> None:
    client = world.client("manager")
    good, bad = jpeg(100, 80), jpeg(90, 70)
    targets = client.post(
        f"/api/v1/datasets/{dataset['id']}/upload-targets",
        {"files": [{"name": "good.jpg", "size": len(good), "content_type": "image/jpeg"},
                   {"name": "lies.jpg", "size": len(bad), "content_type": "image/jpeg"}]},
        format="json",
    )  # fmt: skip
    assert targets.status_code == 201, targets.content
    first, second = targets.json()["uploads"]
    anonymous = APIClient()  # the browser holds no Loupe credentials, only the signed target
    assert anonymous.generic("PUT", first["url"], good, content_type="image/jpeg").status_code == 204
    assert anonymous.generic("PUT", second["url"], bad, content_type="image/jpeg").status_code == 204
    done = client.post(
        f"/api/v1/datasets/{dataset['id']}/uploads/complete",
        {
            "uploads": [
                {"upload_id": first["upload_id"], "sha256": hashlib.sha256(good).hexdigest()},
                {"upload_id": second["upload_id"], "sha256": hashlib.sha256(b"something else").hexdigest()},
            ]
        },
        format="json",
    )  # fmt: skip
    assert done.status_code == 202, done.content
    job = run(done.json()["id"])
    assert job["result"]["created"] == 1 and job["result"]["rejected"] == 1
    errors = client.get(f"/api/v1/jobs/{job['id']}/errors").json()["results"]
    assert [(e["item"], e["code"]) for e in errors] == [("lies.jpg", "checksum_mismatch")]


def test_a_forged_upload_id_is_refused_and_nothing_is_written(world: World, dataset: dict[str, Any]) -> None:
    response = world.client("manager").post(
        f"/api/v1/datasets/{dataset['id']}/uploads/complete",
        {"uploads": [{"upload_id": "forged", "sha256": "0" * 64}]},
        format="json",
    )
    assert_error(response, 400)
    assert not Job.objects.filter(kind="storage.ingest").exists()


def test_url_manifest_import_is_idempotent(
    world: World, dataset: dict[str, Any], file_server: tuple[str, type[FileServer]], settings: Any
) -> None:
    base, handler = file_server
    settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS = [
        "127.0.0.1/32"
    ]  # an internal data server, allowed by the operator
    handler.files.update({"/a.jpg": jpeg(), "/b.txt": b"some text"})
    rows = [{"url": f"{base}/a.jpg", "name": "web/a.jpg", "meta": {"source": "crawl"}},
            {"url": f"{base}/b.txt", "name": "web/b.txt"}]  # fmt: skip
    first = run(manifest(world.client("manager"), dataset["id"], rows).json()["id"])
    assert first["result"]["created"] == 2, first
    again = run(manifest(world.client("manager"), dataset["id"], rows).json()["id"])
    assert (again["result"]["created"], again["result"]["unchanged"]) == (0, 2)
    assert Item.objects.filter(dataset_id=dataset["id"]).count() == 2


def test_urls_to_private_addresses_are_refused_and_never_contacted(
    world: World, dataset: dict[str, Any], file_server: tuple[str, type[FileServer]]
) -> None:
    base, handler = file_server  # listening on 127.0.0.1, which is not public
    handler.files["/secret"] = b"metadata credentials"
    job = run(
        manifest(world.client("manager"), dataset["id"], [{"url": f"{base}/secret", "name": "s"}]).json()[
            "id"
        ]
    )
    assert job["result"]["rejected"] == 1
    errors = world.client("manager").get(f"/api/v1/jobs/{job['id']}/errors").json()["results"]
    assert errors[0]["code"] == "url_address_not_allowed"
    assert handler.hits == []


@pytest.mark.parametrize(
    "body",
    [b"not json\n", b'["a list"]\n', b'{"name": "no key or url"}\n', b'{"key": "k", "url": "http://x.test/"}\n',
     b'{"url": "ftp://x.test/a"}\n', b"\xff\xfe garbage"],
)  # fmt: skip
def test_a_bad_manifest_is_refused_whole(world: World, dataset: dict[str, Any], body: bytes) -> None:
    good_row = json.dumps({"url": "https://example.test/ok.jpg"}).encode() + b"\n"
    response = world.client("manager").post(
        f"/api/v1/datasets/{dataset['id']}/imports/manifest",
        {"manifest": SimpleUploadedFile("m.jsonl", good_row + body)},
        format="multipart",
    )
    assert_error(response, 400)
    assert not Job.objects.filter(kind="storage.ingest").exists()


@pytest.mark.parametrize("endpoint,field", [("uploads", "files"), ("imports/archive", "archive"),
                                            ("imports/manifest", "manifest")])  # fmt: skip
def test_an_upload_over_the_limit_is_a_413_and_writes_nothing(
    world: World, dataset: dict[str, Any], settings: Any, objects_dir: Path, endpoint: str, field: str
) -> None:
    settings.LOUPE_UPLOAD_MAX_REQUEST_BYTES = 10_000
    response = world.client("manager").post(
        f"/api/v1/datasets/{dataset['id']}/{endpoint}",
        {field: SimpleUploadedFile("big.bin", b"x" * 20_000)},
        format="multipart",
    )
    assert_error(response, 413, "too_large")
    assert not Job.objects.filter(kind="storage.ingest").exists()
    assert not (objects_dir / "staging").exists()


def test_a_large_presigned_upload_goes_to_s3_in_parts(
    world: World, s3_store: Any, settings: Any, seaweedfs: Any
) -> None:
    import requests

    settings.LOUPE_MULTIPART_UPLOAD_BYTES = 6 * 1024 * 1024
    settings.LOUPE_MULTIPART_PART_BYTES = 5 * 1024 * 1024
    client = world.client("manager")
    dataset = client.post(
        "/api/v1/datasets", {"organization": world.org.id, "name": "big", "projects": [world.project.id]},
        format="json",
    ).json()  # fmt: skip
    text = ("a long transcript line\n" * 600_000).encode()  # ~13 MiB: three parts
    targets = client.post(
        f"/api/v1/datasets/{dataset['id']}/upload-targets",
        {"files": [{"name": "talk.txt", "size": len(text), "content_type": "text/plain"}]},
        format="json",
    ).json()["uploads"]
    [target] = targets
    assert target["method"] == "MULTIPART" and len(target["part_urls"]) == 3
    size = target["part_size"]
    parts = []
    for number, url in enumerate(target["part_urls"], start=1):
        answer = requests.put(url, data=text[(number - 1) * size : number * size], timeout=30)
        assert answer.status_code == 200, answer.text
        parts.append({"number": number, "etag": answer.headers["ETag"]})
    digest = hashlib.sha256(text).hexdigest()
    wrong = client.post(
        f"/api/v1/datasets/{dataset['id']}/uploads/complete",
        {"uploads": [{"upload_id": target["upload_id"], "sha256": digest,
                      "parts": [*parts[:2], {"number": 3, "etag": '"0123456789abcdef0123456789abcdef"'}]}]},
        format="json",
    )  # fmt: skip
    assert_error(wrong, 400)  # the store refuses a part it never received: nothing recorded
    assert not Job.objects.filter(kind="storage.ingest").exists()
    done = client.post(
        f"/api/v1/datasets/{dataset['id']}/uploads/complete",
        {"uploads": [{"upload_id": target["upload_id"], "sha256": digest, "parts": parts}]},
        format="json",
    )
    job = run(done.json()["id"])
    assert (job["result"]["created"], job["error_count"]) == (1, 0)
    item = Item.objects.get(dataset_id=dataset["id"])
    assert item.size == len(text) and item.primary.sha256 == digest


def test_an_upload_retried_with_the_same_key_is_ingested_once(world: World, dataset: dict[str, Any]) -> None:
    client = world.client("manager")
    payload = {"files": [SimpleUploadedFile("a.jpg", jpeg())], "paths": json.dumps(["a.jpg"])}
    first = client.post(f"/api/v1/datasets/{dataset['id']}/uploads", payload, format="multipart",
                        HTTP_IDEMPOTENCY_KEY="upload-7")  # fmt: skip
    payload = {"files": [SimpleUploadedFile("a.jpg", jpeg())], "paths": json.dumps(["a.jpg"])}
    again = client.post(f"/api/v1/datasets/{dataset['id']}/uploads", payload, format="multipart",
                        HTTP_IDEMPOTENCY_KEY="upload-7")  # fmt: skip
    assert again["Idempotent-Replayed"] == "true" and again.json()["id"] == first.json()["id"]
    assert Job.objects.filter(kind="storage.ingest").count() == 1


def test_staged_uploads_are_removed_once_ingested(
    world: World, dataset: dict[str, Any], objects_dir: Path
) -> None:
    job = run(
        upload(world.client("manager"), dataset["id"], {"a.jpg": jpeg(), "b.txt": b"text"}).json()["id"]
    )
    assert job["result"]["created"] == 2
    staged = (
        [p for p in (objects_dir / "staging").rglob("*") if p.is_file()]
        if (objects_dir / "staging").exists()
        else []
    )
    assert staged == []
    assert len([p for p in (objects_dir / "blobs").rglob("*") if p.is_file()]) >= 3  # 2 blobs + 1 thumbnail


def test_a_near_duplicate_search_that_runs_too_long_is_stopped_with_a_clear_error(
    world: World, dataset: dict[str, Any], settings: Any
) -> None:
    from storage.models import Blob

    blob = Blob.objects.create(sha256="0" * 64, size=1, media_type="image/png", key="blobs/00/00/" + "0" * 64)
    Item.objects.bulk_create(
        Item(dataset_id=dataset["id"], name=f"blank/{i}.png", modality="image", media_type="image/png",
             primary=blob, phash=0)
        for i in range(1000)
    )  # fmt: skip
    settings.LOUPE_DUPLICATES_TIMEOUT_MS = 1  # 1000 identical hashes: two million candidate pairs
    response = world.client("manager").get(f"/api/v1/datasets/{dataset['id']}/duplicates?kind=near")
    assert_error(response, 503, "query_timeout")
    settings.LOUPE_DUPLICATES_TIMEOUT_MS = 60_000
    groups = (
        world.client("manager").get(f"/api/v1/datasets/{dataset['id']}/duplicates?kind=near").json()["groups"]
    )
    assert len(groups) == 500 and all(g["distance"] == 0 for g in groups)  # capped, not hung
