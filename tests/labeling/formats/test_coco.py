"""COCO JSON: round trips, pycocotools/COCOeval on the export, refused input, streaming memory."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
import tracemalloc
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from labeling.formats import coco, get_format
from labeling.formats.base import ExportItem, ItemIndex, ItemInfo, LabelClass, RecordError, region_ids

CLASSES = [
    LabelClass(
        "car", ("bbox", "polygon", "mask"), attributes=("occluded", "make", "doors", "tags", "iscrowd")
    ),
    LabelClass(
        "person", ("keypoints", "bbox"), keypoints=("head", "left_hand", "right_hand"), edges=((0, 1), (0, 2))
    ),
    LabelClass("tree", ("bbox", "polygon")),
]


def export_bytes(items: list[ExportItem], classes: list[LabelClass] = CLASSES) -> bytes:
    out = io.BytesIO()
    coco.export(iter(items), classes, out)
    return out.getvalue()


def import_bytes(data: bytes, items: list[ItemInfo], classes: list[LabelClass] = CLASSES) -> Any:
    return coco.import_(io.BytesIO(data), classes, ItemIndex(items))


def with_ids(regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = region_ids()
    return [{**r, "id": next(ids)} for r in regions]


def rle_of(pixels: np.ndarray) -> dict[str, Any]:
    encoded = mask_utils.encode(np.asfortranarray(pixels.astype(np.uint8)))
    return {"size": [int(pixels.shape[0]), int(pixels.shape[1])], "counts": encoded["counts"].decode("ascii")}


# --- strategies ------------------------------------------------------------------------------

coordinate = st.one_of(
    st.integers(-50, 5000), st.floats(-50, 5000, allow_nan=False, allow_infinity=False, allow_subnormal=False)
)
positive = st.one_of(st.integers(1, 5000), st.floats(0.01, 5000, allow_nan=False, allow_subnormal=False))
attributes = st.fixed_dictionaries(
    {},
    optional={
        "occluded": st.booleans(),
        "make": st.sampled_from(["audi", "bmw", "other"]),
        "doors": st.integers(2, 5),
        "tags": st.lists(st.sampled_from(["parked", "moving"]), unique=True),
    },
)
score = st.floats(0, 1, allow_nan=False)


@st.composite
def regions_for(draw: st.DrawFn, width: int, height: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["bbox", "polygon", "keypoints", "mask"]))
    if kind == "bbox":
        label = draw(st.sampled_from(["car", "tree"]))
        geometry: dict[str, Any] = {
            "x": draw(coordinate),
            "y": draw(coordinate),
            "width": draw(positive),
            "height": draw(positive),
        }
    elif kind == "polygon":
        label = draw(st.sampled_from(["car", "tree"]))
        points = draw(st.lists(st.tuples(coordinate, coordinate), min_size=3, max_size=8))
        geometry = {"points": [list(p) for p in points], "holes": []}
    elif kind == "keypoints":
        label = "person"
        triples = draw(st.lists(st.tuples(coordinate, coordinate, st.integers(0, 2)), min_size=3, max_size=3))
        geometry = {"points": [list(p) for p in triples]}
    else:
        label = "car"
        pixels = draw(st.lists(st.booleans(), min_size=width * height, max_size=width * height))
        grid = np.array(pixels, dtype=bool).reshape(height, width)
        if not grid.any():
            grid[0, 0] = True
        geometry = {"rle": rle_of(grid)}
    made: dict[str, Any] = {
        "type": kind,
        "label": label,
        "attributes": draw(attributes) if label == "car" else {},
        "geometry": geometry,
    }
    if draw(st.booleans()):
        made["score"] = draw(score)
    return made


@st.composite
def datasets(draw: st.DrawFn) -> list[ExportItem]:
    names = draw(
        st.lists(
            st.text(st.characters(codec="utf-8"), min_size=1, max_size=20).map(lambda s: f"dir/{s}.jpg"),
            unique=True,
            min_size=1,
            max_size=5,
        )
    )
    items = []
    for i, item_name in enumerate(names):
        width, height = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        info = ItemInfo(i + 1, item_name, "image", width, height)
        regions = draw(st.lists(regions_for(width, height), max_size=5))
        items.append(ExportItem(info, with_ids(regions)))
    return items


# --- round trips -----------------------------------------------------------------------------


def test_the_module_is_registered() -> None:
    module = get_format("coco")
    assert (module.name, module.media_type, module.extension) == ("coco", "application/json", ".json")
    assert module.can_import and module.can_export


@settings(max_examples=60, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_export_import_export_is_stable_and_lossless(items: list[ExportItem]) -> None:
    first = export_bytes(items)
    result = import_bytes(first, [e.item for e in items])
    assert result.errors == []
    assert [(r.item, r.regions) for r in result.records] == [(e.item, e.regions) for e in items]
    second = export_bytes([ExportItem(r.item, r.regions) for r in result.records])
    assert second == first


def test_what_is_written_per_region_type() -> None:
    item = ItemInfo(1, "a.jpg", "image", 20, 10)
    regions = with_ids(
        [
            {"type": "bbox", "label": "car", "geometry": {"x": 1, "y": 2, "width": 3, "height": 4}},
            {"type": "polygon", "label": "tree", "geometry": {"points": [[0, 0], [4, 0], [4, 3]]}},
            {
                "type": "keypoints",
                "label": "person",
                "geometry": {"points": [[1, 1, 2], [5, 3, 1], [9, 9, 0]]},
            },
            {"type": "classification", "label": "car", "geometry": {}},
            {
                "type": "rotated_bbox",
                "label": "car",
                "geometry": {"cx": 5, "cy": 5, "width": 2, "height": 2, "angle": 9},
            },
            {"type": "bbox", "label": "unknown", "geometry": {"x": 1, "y": 2, "width": 3, "height": 4}},
        ]
    )
    out = io.BytesIO()
    skipped = coco.write(iter([ExportItem(item, regions)]), CLASSES, out)
    assert skipped == {"classification": 1, "rotated_bbox": 1, "unknown_label": 1}
    document = json.loads(out.getvalue())
    assert list(document) == ["info", "licenses", "categories", "images", "annotations"]
    assert document["categories"][1] == {
        "id": 2,
        "name": "person",
        "supercategory": "",
        "keypoints": ["head", "left_hand", "right_hand"],
        "skeleton": [[1, 2], [1, 3]],
    }
    assert document["images"] == [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}]
    box, polygon, person = document["annotations"]
    assert box == {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "segmentation": [],
        "area": 12,
        "bbox": [1, 2, 3, 4],
        "iscrowd": 0,
        "attributes": {},
    }
    assert (
        polygon["segmentation"] == [[0, 0, 4, 0, 4, 3]]
        and polygon["area"] == 6
        and polygon["bbox"] == [0, 0, 4, 3]
    )
    assert person["keypoints"] == [1, 1, 2, 5, 3, 1, 9, 9, 0] and person["num_keypoints"] == 2
    assert person["bbox"] == [1, 1, 4, 2] and person["category_id"] == 2


def test_a_polygon_with_holes_is_written_as_a_mask() -> None:
    ring = [[2, 2], [18, 2], [18, 18], [2, 18]]
    hole = [[6, 6], [14, 6], [14, 14], [6, 14]]
    region = {"type": "polygon", "label": "car", "geometry": {"points": ring, "holes": [hole]}}
    sized = ExportItem(ItemInfo(1, "a.jpg", "image", 20, 20), with_ids([region]))
    unsized = ExportItem(ItemInfo(2, "b.jpg", "image"), with_ids([region]))
    out = io.BytesIO()
    assert coco.write(iter([sized, unsized]), CLASSES, out) == {"polygon": 1}
    (annotation,) = json.loads(out.getvalue())["annotations"]
    pixels = coco.decode_rle(annotation["segmentation"]["counts"], 20, 20)
    assert annotation["iscrowd"] == 0 and pixels.shape == (20, 20)
    assert pixels[4, 4] == 1 and pixels[10, 10] == 0 and pixels[0, 0] == 0
    assert annotation["area"] == int(pixels.sum())
    result = import_bytes(out.getvalue(), [sized.item, unsized.item])
    assert result.records[0].regions[0]["type"] == "mask"


def test_crowd_masks_and_attributes() -> None:
    grid = np.zeros((4, 5), dtype=bool)
    grid[1:3, 1:4] = True
    region = {
        "type": "mask",
        "label": "car",
        "attributes": {"iscrowd": True},
        "geometry": {"rle": rle_of(grid)},
    }
    item = ItemInfo(1, "a.jpg", "image", 5, 4)
    document = json.loads(export_bytes([ExportItem(item, with_ids([region]))]))
    (annotation,) = document["annotations"]
    assert (
        annotation["iscrowd"] == 1 and annotation["area"] == 6 and annotation["bbox"] == [1.0, 1.0, 3.0, 2.0]
    )
    assert annotation["attributes"] == {"iscrowd": True}
    # iscrowd 1 sets a declared attribute; undeclared attribute names are dropped
    annotation["attributes"] = {"make": "bmw", "colour": "red"}
    result = import_bytes(json.dumps(document).encode(), [item])
    assert result.records[0].regions[0]["attributes"] == {"make": "bmw", "iscrowd": True}


# --- pycocotools ----------------------------------------------------------------------------


def _evaluate(ground_truth: COCO, results: list[dict[str, Any]], kind: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(results)
        evaluation = COCOeval(ground_truth, detections, kind)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def test_the_export_loads_in_pycocotools_and_cocoeval_scores_itself_perfectly(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    items = []
    for i in range(6):
        info = ItemInfo(i + 1, f"images/{i:03d}.jpg", "image", 64, 48)
        regions = []
        for _ in range(3):
            x, y = int(rng.integers(0, 40)), int(rng.integers(0, 30))
            w, h = int(rng.integers(5, 20)), int(rng.integers(5, 15))
            regions.append(
                {"type": "bbox", "label": "car", "geometry": {"x": x, "y": y, "width": w, "height": h}}
            )
            points = [[x, y], [x + w, y], [x + w, y + h]]
            regions.append({"type": "polygon", "label": "tree", "geometry": {"points": points, "holes": []}})
        grid = np.zeros((48, 64), dtype=bool)
        grid[5 + i : 20 + i, 10:30] = True
        regions.append({"type": "mask", "label": "car", "geometry": {"rle": rle_of(grid)}})
        items.append(ExportItem(info, with_ids(regions)))
    path = tmp_path / "instances.json"
    with path.open("wb") as out:
        coco.export(iter(items), CLASSES, out)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(path))
    assert len(ground_truth.getImgIds()) == 6 and len(ground_truth.getAnnIds()) == 6 * 7
    assert [c["name"] for c in ground_truth.loadCats(ground_truth.getCatIds())] == ["car", "person", "tree"]
    annotations = ground_truth.loadAnns(ground_truth.getAnnIds())
    boxes = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in annotations
    ]
    assert _evaluate(ground_truth, boxes, "bbox") == 1.0
    # segm needs a segmentation on every ground-truth annotation (a COCO bbox has [])
    path = tmp_path / "segments.json"
    with path.open("wb") as out:
        segmented = [ExportItem(e.item, [r for r in e.regions if r["type"] != "bbox"]) for e in items]
        coco.export(iter(segmented), CLASSES, out)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(path))
    segments = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": ground_truth.annToRLE(a),
            "score": 1.0,
        }
        for a in ground_truth.loadAnns(ground_truth.getAnnIds())
    ]
    assert len(segments) == 6 * 4
    assert _evaluate(ground_truth, segments, "segm") == 1.0


def test_results_style_scores_are_imported() -> None:
    item = ItemInfo(1, "a.jpg", "image", 10, 10)
    document = {
        "images": [{"id": 5, "file_name": "a.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 3, "name": "tree"}],
        "annotations": [{"image_id": 5, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.25}],
    }
    (record,) = import_bytes(json.dumps(document).encode(), [item]).records
    assert record.regions == [
        {
            "id": "r1",
            "type": "bbox",
            "label": "tree",
            "attributes": {},
            "geometry": {"x": 1, "y": 2, "width": 3, "height": 4},
            "score": 0.25,
        }
    ]


def test_instances_with_keypoints_segmentation_and_uncompressed_rle() -> None:
    item = ItemInfo(1, "sub/a.jpg", "image", 4, 3)
    document = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}],
        "categories": [{"id": 1, "name": "person", "keypoints": ["h", "l", "r"]}, {"id": 2, "name": "car"}],
        "annotations": [
            # a COCO person: keypoints, a polygon and a bbox (derived: not imported)
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 3, 2],
                "iscrowd": 0,
                "segmentation": [[0, 0, 3, 0, 3, 2], [1, 1, 2, 1, 2, 2]],
                "keypoints": [1, 1, 2, 0, 0, 0, 2, 2, 1],
                "num_keypoints": 2,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 2,
                "iscrowd": 1,
                "bbox": [0, 0, 1, 1],
                "segmentation": {"size": [3, 4], "counts": [2, 3, 7]},
            },
        ],
    }
    any_tool = [LabelClass("person", keypoints=("h", "l", "r")), LabelClass("car")]
    result = import_bytes(json.dumps(document).encode(), [item], any_tool)
    assert result.errors == []
    (record,) = result.records
    assert [r["type"] for r in record.regions] == ["keypoints", "polygon", "polygon", "mask"]
    assert [r["id"] for r in record.regions] == ["r1", "r2", "r3", "r4"]
    assert record.regions[0]["geometry"] == {"points": [[1, 1, 2], [0, 0, 0], [2, 2, 1]]}
    assert record.regions[2]["geometry"] == {"points": [[1, 1], [2, 1], [2, 2]], "holes": []}
    expected = mask_utils.frPyObjects({"size": [3, 4], "counts": [2, 3, 7]}, 3, 4)["counts"].decode()
    assert record.regions[3]["geometry"] == {"rle": {"size": [3, 4], "counts": expected}}
    # the classes' tools decide: person allows keypoints and bbox, so its box stands in for the polygons
    (record,) = import_bytes(json.dumps(document).encode(), [item]).records
    assert [r["type"] for r in record.regions] == ["keypoints", "bbox", "mask"]
    assert record.regions[1]["geometry"] == {"x": 0, "y": 0, "width": 3, "height": 2}
    boxes_only = [LabelClass("person", ("bbox",)), LabelClass("car", ("polygon",))]
    result = import_bytes(json.dumps(document).encode(), [item], boxes_only)
    assert [r["type"] for r in result.records[0].regions] == ["bbox"]
    assert [(e.where, e.code) for e in result.errors] == [("annotations[1]", "unsupported")]
    assert "allows none of what the annotation has (mask, bbox)" in result.errors[0].message


def test_a_zip_of_documents_merges_an_image_seen_twice() -> None:
    item = ItemInfo(1, "a.jpg", "image", 10, 10)
    image = {"id": 1, "file_name": "a.jpg"}
    instances = {
        "images": [image],
        "categories": [{"id": 1, "name": "car"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}],
    }
    people = {
        "images": [image],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [{"image_id": 1, "category_id": 1, "keypoints": [1, 1, 2, 2, 2, 2, 3, 3, 2]}],
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("annotations/instances_default.json", json.dumps(instances))
        archive.writestr("annotations/person_keypoints_default.json", json.dumps(people))
        archive.writestr("../evil.json", json.dumps(people))
        archive.writestr("/etc/abs.json", json.dumps(people))
        archive.writestr("annotations/broken.json", "{")
    result = import_bytes(buffer.getvalue(), [item])
    (record,) = result.records
    assert [(r["id"], r["type"]) for r in record.regions] == [("r1", "bbox"), ("r2", "keypoints")]
    assert record.where == "annotations/instances_default.json images[0]"
    assert result.errors == [
        RecordError("../evil.json", "malformed", "an absolute or '..' path is refused"),
        RecordError("/etc/abs.json", "malformed", "an absolute or '..' path is refused"),
        RecordError(
            "annotations/broken.json line 1 column 2",
            "malformed",
            "invalid JSON: Expecting property name enclosed in double quotes",
        ),
    ]


def test_a_bare_document_with_a_bom_from_an_unseekable_stream() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, buffer: Any) -> int:
            chunk = self._data.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    document = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": []}
    data = b"\xef\xbb\xbf \n" + json.dumps(document).encode()
    result = coco.import_(cast(IO[bytes], Pipe(data)), CLASSES, ItemIndex([ItemInfo(1, "a.jpg", "image")]))
    assert result.errors == [] and [r.regions for r in result.records] == [[]]


# --- refused input ---------------------------------------------------------------------------


def test_malformed_json_is_refused_with_its_position() -> None:
    result = import_bytes(b'{"images": [\n  {"id": 1,,}]}', [])
    assert result.records == []
    assert [(e.where, e.code) for e in result.errors] == [("line 2 column 12", "malformed")]


def test_not_json_nor_zip_and_results_lists() -> None:
    assert [(e.where, e.code) for e in import_bytes(b"hello", []).errors] == [("file", "malformed")]
    results = json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]).encode()
    assert [(e.where, e.code) for e in import_bytes(results, []).errors] == [("file", "unsupported")]
    no_images = import_bytes(b'{"annotations": []}', [])
    assert [(e.where, e.code) for e in no_images.errors] == [("images", "malformed")]


def test_every_bad_record_is_reported_and_the_good_ones_imported() -> None:
    good = ItemInfo(1, "good.jpg", "image", 10, 10)
    document = {
        "images": [
            {"id": 1, "file_name": "good.jpg", "width": 10, "height": 10},
            {"id": 2, "file_name": "missing.jpg"},
            {"id": 3},
        ],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2]},
            {"id": 3, "image_id": 1, "category_id": 9, "bbox": [1, 1, 2, 2]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, -2, 2]},
            {"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]},  # its image is reported
            {"id": 6, "image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2]},
            {"id": 7, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 1, 1]]},
            {"id": 8, "image_id": 1, "category_id": 1, "segmentation": {"size": [10, 10], "counts": "0"}},
            {"id": 9, "image_id": 1, "category_id": 3, "keypoints": [1, 1, 2]},
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 1.5},
            "not an object",
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [1, "x", 2, 2]},
            {"id": 13, "image_id": 1, "category_id": 1, "segmentation": {"size": [5, 5], "counts": [25]}},
            {"id": 14, "image_id": 1, "category_id": 1, "segmentation": {"size": [10, 10], "counts": [100]}},
            {"id": 15, "image_id": 1, "category_id": 1, "segmentation": {"size": [10, 10], "counts": "~~~~"}},
            {"id": 16, "image_id": 1, "category_id": 1, "bbox": [3, 3, 4, 4], "attributes": []},
            {"id": 17, "image_id": 1, "category_id": 1},
            {"id": 18, "image_id": 1, "category_id": 1, "bbox": [5, 5, 1, 1]},
        ],
    }
    result = import_bytes(json.dumps(document).encode(), [good])
    assert [(e.where, e.code) for e in result.errors] == [
        ("images[1]", "unmatched_item"),
        ("images[2]", "malformed"),
        ("annotations[1]", "unknown_class"),
        ("annotations[2]", "unknown_class"),
        ("annotations[3]", "invalid_geometry"),
        ("annotations[5]", "malformed"),
        ("annotations[6]", "invalid_geometry"),
        ("annotations[7]", "invalid_geometry"),
        ("annotations[8]", "invalid_geometry"),
        ("annotations[9]", "malformed"),
        ("annotations[10]", "malformed"),
        ("annotations[11]", "malformed"),
        ("annotations[12]", "invalid_geometry"),
        ("annotations[13]", "invalid_geometry"),
        ("annotations[14]", "malformed"),
        ("annotations[15]", "malformed"),
        ("annotations[16]", "malformed"),
    ]
    assert "'dog' is not a class" in result.errors[2].message
    assert "-2" in result.errors[4].message
    (record,) = result.records
    assert record.item == good and record.where == "images[0]"
    assert [r["geometry"] for r in record.regions] == [
        {"x": 1, "y": 1, "width": 2, "height": 2},
        {"x": 5, "y": 5, "width": 1, "height": 1},
    ]


def test_an_archive_over_the_member_cap_is_refused_and_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coco, "MAX_MEMBERS", 2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(3):
            archive.writestr(f"{i}.json", "{}")
    result = import_bytes(buffer.getvalue(), [])
    assert [(e.where, e.code) for e in result.errors] == [("archive", "malformed")]
    monkeypatch.setattr(coco, "MAX_MEMBERS", 100)
    monkeypatch.setattr(coco, "MAX_UNCOMPRESSED", 5)
    result = import_bytes(buffer.getvalue(), [])
    assert [(e.where, e.code) for e in result.errors] == [("archive", "malformed")]
    assert "uncompressed" in result.errors[0].message


# --- streaming -------------------------------------------------------------------------------


class Sink(io.RawIOBase):
    """An unseekable output that keeps only the byte count."""

    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.size += len(data)
        return len(data)


def _many(count: int) -> Iterator[ExportItem]:
    for i in range(count):
        info = ItemInfo(i + 1, f"images/{i:06d}.jpg", "image", 640, 480)
        yield ExportItem(
            info,
            [
                {
                    "id": "r1",
                    "type": "bbox",
                    "label": "car",
                    "attributes": {"occluded": False},
                    "geometry": {"x": i % 600, "y": 3, "width": 20, "height": 30},
                },
                {
                    "id": "r2",
                    "type": "polygon",
                    "label": "tree",
                    "geometry": {"points": [[1, 1], [9, 1], [9, 9.5]], "holes": []},
                },
            ],
        )


def test_twenty_thousand_items_stream_through_and_are_not_kept() -> None:
    alive = 0
    most = 0

    def released() -> None:
        nonlocal alive
        alive -= 1

    def tracked() -> Iterator[ExportItem]:
        nonlocal alive, most
        for export_item in _many(20_000):
            alive += 1
            most = max(most, alive)
            weakref.finalize(export_item, released)
            yield export_item

    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        coco.export(tracked(), CLASSES, out)
        elapsed = time.perf_counter() - started
        out.seek(0)
        document = json.load(out)
    assert elapsed < 5
    assert most <= 2  # the item being written (and the generator's next one)
    assert len(document["images"]) == 20_000 and len(document["annotations"]) == 40_000
    assert document["annotations"][-1]["id"] == 40_000 and document["annotations"][-1]["image_id"] == 20_000


def test_export_memory_does_not_grow_with_the_items() -> None:
    list(_many(10))  # warm up imports and caches outside the measurement
    sink = Sink()
    tracemalloc.start()
    try:
        coco.export(_many(4_000), CLASSES, cast(IO[bytes], sink))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.size > 1_300_000
    assert peak < 400_000, peak  # chunk buffers only: neither items nor output are kept
