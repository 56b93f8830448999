"""Exports of a release: every format reloads to the same labels, COCO loads in pycocotools, S3
multipart and Range downloads, media archives, and an export made once per release and format."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests
from pycocotools.coco import COCO

from labeling.formats import get_format
from labeling.formats.base import ItemIndex, ItemInfo
from labeling.jobs import label_classes
from labeling.models import LabelSchema, ReleaseExport, ReleaseItem, WebhookDelivery
from labeling.services import parsed_schema
from storage.models import Blob, Item
from storage.objects import ObjectStore, object_store
from tests.conftest import World, assert_error
from tests.labeling.conftest import API, run
from tests.labeling.releases import Shop, box

pytestmark = pytest.mark.django_db


def regions_for(name: str) -> list[dict[str, Any]]:
    n = int(name[-8:-4])
    found = [box("b1", "car", 2 + n, 3, 20, 10)]
    if n % 2 == 0:
        found.append(box("b2", "person", 30, 20, 8, 16))
    return found


def _shop(world: World, items: int = 6) -> Shop:
    shop = Shop(world, items, review="none")
    assert len(shop.label_all(regions_for)) == items
    return shop


@pytest.fixture
def released(world: World, objects_dir: Path) -> tuple[Shop, dict[str, Any]]:
    shop = _shop(world)
    return shop, shop.cut()


def export(world: World, release_id: int, who: str = "ml_engineer", **body: Any) -> dict[str, Any]:
    """Ask for an export, run its job, and return it as the API shows it when ready."""
    asked = world.client(who).post(f"{API}/releases/{release_id}/exports", body, format="json")
    assert asked.status_code in (200, 202), asked.content
    shown = asked.json()
    if asked.status_code == 202:
        assert run(shown["job"]["id"]).state == "succeeded"
        shown = world.client(who).get(f"{API}/releases/{release_id}/exports/{shown['id']}").json()
    assert shown["state"] == "succeeded" and shown["download"] is not None
    return dict(shown)


def download(world: World, url: str, **headers: str) -> Any:
    if url.startswith("http"):
        return requests.get(url, headers=headers, timeout=30)
    return world.client("manager").get(
        url, **{f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
    )


def body_of(response: Any) -> bytes:
    if hasattr(response, "streaming_content") and response.streaming:
        return b"".join(response.streaming_content)
    return bytes(response.content)


def _index(release_id: int) -> ItemIndex:
    return ItemIndex(
        ItemInfo(id=i, name=n, modality="image", width=m["width"], height=m["height"])
        for i, n, m in ReleaseItem.objects.filter(release_id=release_id).values_list(
            "item_id", "name", "meta"
        )
    )


def _comparable(regions: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        (r["type"], r["label"], *(round(float(v), 3) for _, v in sorted(r["geometry"].items())))
        for r in regions
    )


def _reloads(world: World, release: dict[str, Any], fmt: str) -> None:
    """The export in `fmt`, read back by the format's importer, gives the frozen labels."""
    made = export(world, release["id"], format=fmt)
    data = body_of(download(world, made["download"]["url"]))
    assert hashlib.sha256(data).hexdigest() == made["sha256"] and len(data) == made["size"]
    schema = LabelSchema.objects.get(project=world.project, version=release["schema_version"])
    result = get_format(fmt).import_(
        io.BytesIO(data), label_classes(parsed_schema(schema)), _index(release["id"])
    )
    assert result.errors == []
    reloaded = {r.item.id: _comparable(r.regions) for r in result.records}
    frozen = {
        item: _comparable(regions)
        for item, regions in ReleaseItem.objects.filter(release_id=release["id"]).values_list(
            "item_id", "regions"
        )
    }
    assert reloaded == frozen and len(frozen) == release["counts"]["items"]


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc", "labelstudio", "jsonl"])
def test_every_format_reloads_to_the_released_labels(released: tuple[Shop, dict[str, Any]], fmt: str) -> None:
    shop, release = released
    _reloads(shop.world, release, fmt)


def test_a_classification_release_reloads_from_csv(world: World, objects_dir: Path) -> None:
    schema = {
        "classes": [
            {"name": "day", "color": "#ffff00", "tools": ["classification"]},
            {"name": "night", "color": "#000088", "tools": ["classification"]},
        ]
    }
    shop = Shop(world, 5, review="none", schema=schema)
    label = {"id": "c1", "type": "classification", "attributes": {}, "geometry": {}}
    shop.label_all(lambda name: [{**label, "label": "night" if int(name[-8:-4]) % 2 else "day"}])
    _reloads(world, shop.cut(), "csv")


def test_coco_export_loads_in_pycocotools(released: tuple[Shop, dict[str, Any]], tmp_path: Path) -> None:
    shop, release = released
    made = export(shop.world, release["id"], format="coco")
    path = tmp_path / made["filename"]
    path.write_bytes(body_of(download(shop.world, made["download"]["url"])))
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == release["counts"]["items"] == 6
    assert len(coco.getAnnIds()) == release["counts"]["regions"] == 9
    cars = coco.getCatIds(catNms=["car"])
    assert len(coco.getAnnIds(catIds=cars)) == release["counts"]["by_class"]["car"]
    first = coco.loadImgs(coco.getImgIds())[0]
    boxes = sorted(a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[first["id"]], catIds=cars)))
    n = int(first["file_name"][-8:-4])
    assert boxes == [[2 + n, 3, 20, 10]]


def test_an_export_is_made_once_per_release_and_format(released: tuple[Shop, dict[str, Any]]) -> None:
    shop, release = released
    world = shop.world
    made = export(world, release["id"], format="jsonl")
    again = world.client("manager").post(
        f"{API}/releases/{release['id']}/exports", {"format": "jsonl"}, format="json"
    )
    assert (
        again.status_code == 200
        and again.json()["id"] == made["id"]
        and again.json()["sha256"] == made["sha256"]
    )
    assert ReleaseExport.objects.filter(release_id=release["id"]).count() == 1
    listed = world.client("reviewer").get(f"{API}/releases/{release['id']}/exports")
    assert [e["id"] for e in listed.json()["results"]] == [made["id"]]
    bad = world.client("manager").post(
        f"{API}/releases/{release['id']}/exports", {"format": "cvat"}, format="json"
    )
    assert_error(bad, 400)
    assert_error(
        world.client("annotator").post(
            f"{API}/releases/{release['id']}/exports", {"format": "coco"}, format="json"
        ),
        403,
    )


def test_a_media_archive_holds_the_labels_and_every_file(released: tuple[Shop, dict[str, Any]]) -> None:
    shop, release = released
    world = shop.world
    made = export(world, release["id"], format="yolo", include_media=True)
    assert made["filename"].endswith("-media.zip")
    archive = zipfile.ZipFile(io.BytesIO(body_of(download(world, made["download"]["url"]))))
    assert archive.testzip() is None
    names = set(archive.namelist())
    assert "data.yaml" in names
    for item in shop.items:
        assert f"images/{item.name}" in names
        assert hashlib.sha256(archive.read(f"images/{item.name}")).hexdigest() == item.primary.sha256
    assert sum(n.startswith("labels/") for n in names) == 6


def test_on_s3_an_export_streams_in_parts_and_downloads_by_range(
    world: World,
    s3_store: ObjectStore,
    settings: Any,
) -> None:
    settings.LOUPE_S3_PART_BYTES = 5 * 1024**2
    shop = Shop(world, 40, review="none")
    # Big enough for several parts: long attribute-free boxes, many per item.
    many = [box(f"b{i}", "car", i % 40, i % 30, 5, 5) for i in range(1300)]
    shop.label_all(lambda name: many)
    release = shop.cut()
    made = export(world, release["id"], format="jsonl")
    assert made["size"] > settings.LOUPE_S3_PART_BYTES  # two parts at least
    head = s3_store.client.head_object(
        Bucket=s3_store.bucket, Key=ReleaseExport.objects.get(id=made["id"]).key
    )  # type: ignore[attr-defined]
    assert str(head["ETag"]).strip('"').rsplit("-", 1)[1].isdigit()  # a multipart upload's ETag
    url = made["download"]["url"]
    whole = requests.get(url, timeout=60).content
    assert hashlib.sha256(whole).hexdigest() == made["sha256"]
    tail = requests.get(url, headers={"Range": f"bytes={len(whole) - 1000}-"}, timeout=60)
    assert tail.status_code == 206 and tail.content == whole[-1000:]
    assert json.loads(whole.splitlines()[0])["regions"][0]["label"] == "car"


TEXTS = [
    "Alice works at Acme Corp in Paris .",
    "Bob met Carol at Globex .",
    "Nothing to see here .",
]


def _text_item(shop: Shop, n: int, text: str) -> Item:
    data = text.encode()
    sha = hashlib.sha256(data).hexdigest()
    key = f"blobs/{sha[:2]}/{sha[2:4]}/{sha}"
    object_store().put_bytes(key, data, content_type="text/plain")
    blob = Blob.objects.create(sha256=sha, size=len(data), media_type="text/plain", key=key)
    meta = {"encoding": "utf-8", "bom": False, "length": len(text), "lines": 1}
    return Item.objects.create(
        dataset=shop.dataset, name=f"docs/{n}.txt", modality="text", media_type="text/plain",
        size=len(data), meta=meta, primary=blob,
    )  # fmt: skip


def _spans(text: str) -> list[dict[str, Any]]:
    found = []
    for i, (word, label) in enumerate(
        (w, lab) for w, lab in (("Acme Corp", "org"), ("Globex", "org"), ("Paris", "place")) if w in text
    ):
        start = text.index(word)
        found.append({"id": f"s{i}", "type": "span", "label": label, "attributes": {},
                      "geometry": {"start": start, "end": start + len(word), "text": word}})  # fmt: skip
    return found


def _where(spans: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return sorted((s["label"], s["geometry"]["start"], s["geometry"]["end"]) for s in spans)


@pytest.mark.parametrize("fmt", ["conll", "jsonl", "labelstudio"])
def test_a_text_release_reloads_from_conll_and_text_formats(
    world: World, objects_dir: Path, fmt: str
) -> None:
    schema = {
        "classes": [
            {"name": "org", "color": "#ff0000", "tools": ["span"]},
            {"name": "place", "color": "#00ff00", "tools": ["span"]},
        ]
    }
    shop = Shop(world, 0, review="none", schema=schema)
    texts = {f"docs/{n}.txt": text for n, text in enumerate(TEXTS)}
    for n, text in enumerate(TEXTS):
        _text_item(shop, n, text)
    assert world.client("manager").post(shop.url("/tasks"), {}, format="json").json()["created"] == 3
    shop.label_all(lambda name: _spans(texts[name]))
    release = shop.cut()
    made = export(world, release["id"], format=fmt)
    data = body_of(download(world, made["download"]["url"]))
    index = ItemIndex(
        ItemInfo(id=i, name=n, modality="text", length=len(texts[n]), text=texts[n])
        for i, n in ReleaseItem.objects.filter(release_id=release["id"]).values_list("item_id", "name")
    )
    parsed = parsed_schema(LabelSchema.objects.get(project=world.project, version=release["schema_version"]))
    result = get_format(fmt).import_(io.BytesIO(data), label_classes(parsed), index)
    assert result.errors == []
    spans = {r.item.name: _where(r.regions) for r in result.records}
    expected = {n: _where(_spans(t)) for n, t in texts.items()}
    assert {n: v for n, v in spans.items() if v} == {n: v for n, v in expected.items() if v}


def test_subscribers_hear_of_new_releases_and_ready_exports(
    world: World, objects_dir: Path, settings: Any
) -> None:
    settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    shop = _shop(world, 2)
    hook = world.client("manager").post(
        shop.url("/webhooks"),
        {"url": "http://127.0.0.1:9/loupe", "events": ["release.created", "export.ready"]},
        format="json",
    )
    assert hook.status_code == 201, hook.content
    release = shop.cut(name="for the hook")
    made = export(world, release["id"], format="coco")
    sent = {d.event: json.loads(d.body) for d in WebhookDelivery.objects.filter(webhook_id=hook.json()["id"])}
    assert set(sent) == {"release.created", "export.ready"}
    created = sent["release.created"]["data"]
    assert (
        created["release"] == release["id"] and created["manifest"]["sha256"] == release["manifest"]["sha256"]
    )
    ready = sent["export.ready"]["data"]
    assert (ready["export"], ready["format"], ready["sha256"]) == (made["id"], "coco", made["sha256"])
