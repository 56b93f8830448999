"""YOLO (Ultralytics) zip: round trips, the dataset layout on disk, data.yaml, refused input, streaming."""

from __future__ import annotations

import io
import math
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labeling.formats import get_format, yolo
from labeling.formats.base import ExportItem, ItemIndex, ItemInfo, LabelClass, RecordError, region_ids

CLASSES = [
    LabelClass("box", ("bbox",)),
    LabelClass("rbox", ("rotated_bbox",)),
    LabelClass("shape", ("polygon",)),
    LabelClass("person", ("keypoints", "bbox"), keypoints=("head", "left", "right"), edges=((0, 1), (0, 2))),
    LabelClass("sunny", ("classification",)),
]
APPROXIMATE = {"1", "3"}  # class ids of OBB and pose lines, whose numbers are refitted on import


def export_zip(items: list[ExportItem], layout: str = "auto", classes: list[LabelClass] = CLASSES) -> bytes:
    out = io.BytesIO()
    yolo.export_layout(iter(items), classes, out, layout)
    return out.getvalue()


def members(data: bytes) -> dict[str, str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name).decode() for name in archive.namelist()}


def make_zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return buffer.getvalue()


def with_ids(regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = region_ids()
    return [{**r, "id": next(ids)} for r in regions]


def rotated_corners(g: dict[str, float]) -> list[tuple[float, float]]:
    cos, sin = math.cos(math.radians(g["angle"])), math.sin(math.radians(g["angle"]))
    local = ((-1, -1), (1, -1), (1, 1), (-1, 1))
    return [
        (
            g["cx"] + sx * g["width"] / 2 * cos - sy * g["height"] / 2 * sin,
            g["cy"] + sx * g["width"] / 2 * sin + sy * g["height"] / 2 * cos,
        )
        for sx, sy in local
    ]


# --- strategies ------------------------------------------------------------------------------

fraction = st.integers(0, 1000).map(lambda n: n / 1000)
score = st.integers(0, 10**6).map(lambda n: n / 10**6)


@st.composite
def interval(draw: st.DrawFn, size: int) -> tuple[float, float]:
    a, b = sorted(draw(st.lists(st.integers(0, 1000), min_size=2, max_size=2, unique=True)))
    return a / 1000 * size, (b - a) / 1000 * size


@st.composite
def region_for(draw: st.DrawFn, width: int, height: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["bbox", "rotated_bbox", "polygon", "keypoints", "classification"]))
    if kind == "bbox":
        label = "box"
        (x, w), (y, h) = draw(interval(width)), draw(interval(height))
        geometry: dict[str, Any] = {"x": x, "y": y, "width": w, "height": h}
    elif kind == "rotated_bbox":
        label = "rbox"
        w, h = draw(st.floats(0.05, 0.5)) * width, draw(st.floats(0.05, 0.5)) * height
        angle = draw(st.floats(-179.9, 180))
        cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        half_x, half_y = (w * cos + h * sin) / 2, (w * sin + h * cos) / 2
        if 2 * half_x > width or 2 * half_y > height:  # does not fit rotated: keep it upright
            angle, half_x, half_y = 0.0, w / 2, h / 2
        cx = half_x + draw(st.floats(0, 1)) * (width - 2 * half_x)
        cy = half_y + draw(st.floats(0, 1)) * (height - 2 * half_y)
        geometry = {"cx": cx, "cy": cy, "width": w, "height": h, "angle": angle}
    elif kind == "polygon":
        label = "shape"
        points = draw(st.lists(st.tuples(fraction, fraction), min_size=3, max_size=8))
        geometry = {"points": [[x * width, y * height] for x, y in points], "holes": []}
    elif kind == "keypoints":
        label = "person"
        triples = draw(st.lists(st.tuples(fraction, fraction, st.integers(0, 2)), min_size=3, max_size=3))
        geometry = {"points": [[x * width, y * height, v] for x, y, v in triples]}
    else:
        label, geometry = "sunny", {}
    made: dict[str, Any] = {"type": kind, "label": label, "attributes": {}, "geometry": geometry}
    if draw(st.booleans()):
        made["score"] = draw(score)
    return made


segment = st.text(st.sampled_from('abcXYZ019 _-,"é'), min_size=1, max_size=6).filter(
    lambda s: s.strip(" .") == s
)
item_name = st.builds(
    lambda parts, ext: "/".join(parts) + ext,
    st.lists(segment, min_size=1, max_size=3),
    st.sampled_from([".jpg", ".png"]),
)


@st.composite
def datasets(draw: st.DrawFn) -> list[ExportItem]:
    names = draw(st.lists(item_name, unique=True, min_size=1, max_size=5))
    items = []
    for i, name in enumerate(names):
        width, height = draw(st.integers(1, 4000)), draw(st.integers(1, 4000))
        regions = draw(st.lists(region_for(width, height), max_size=6))
        items.append(ExportItem(ItemInfo(i + 1, name, "image", width, height), with_ids(regions)))
    return items


def assert_close(original: dict[str, Any], imported: dict[str, Any], width: int, height: int) -> None:
    assert (imported["type"], imported["label"], imported["attributes"]) == (
        original["type"],
        original["label"],
        original["attributes"],
    )
    assert imported.get("score") == pytest.approx(original.get("score"), abs=1e-9)
    pixel = 1.01e-6 * max(width, height) + 1e-9  # two 6-decimal roundings of normalized values
    g, h = original["geometry"], imported["geometry"]
    if original["type"] == "bbox":
        for key in ("x", "y", "width", "height"):
            assert h[key] == pytest.approx(g[key], abs=pixel)
    elif original["type"] == "rotated_bbox":
        for (x1, y1), (x2, y2) in zip(rotated_corners(g), rotated_corners(h), strict=True):
            assert (x2, y2) == (pytest.approx(x1, abs=4 * pixel), pytest.approx(y1, abs=4 * pixel))
        turn = (h["angle"] - g["angle"] + 180) % 360 - 180
        assert abs(turn) <= math.degrees(4 * pixel / min(g["width"], g["height"])) + 1e-6
        assert -180 < h["angle"] <= 180
    elif original["type"] == "polygon":
        assert h["holes"] == []
        assert len(h["points"]) == len(g["points"])
        for (x1, y1), (x2, y2) in zip(g["points"], h["points"], strict=True):
            assert (x2, y2) == (pytest.approx(x1, abs=pixel), pytest.approx(y1, abs=pixel))
    elif original["type"] == "keypoints":
        for (x1, y1, v1), (x2, y2, v2) in zip(g["points"], h["points"], strict=True):
            assert (x2, y2, v2) == (pytest.approx(x1, abs=pixel), pytest.approx(y1, abs=pixel), v1)
    else:
        assert h == {}


# --- round trips -----------------------------------------------------------------------------


def test_the_module_is_registered() -> None:
    module = get_format("yolo")
    assert (module.name, module.media_type, module.extension) == ("yolo", "application/zip", ".zip")
    assert module.can_import and module.can_export and module.LAYOUTS[0] == "auto"


@settings(max_examples=60, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_export_import_export_keeps_regions_to_six_decimals(items: list[ExportItem]) -> None:
    first = export_zip(items)
    result = yolo.import_(io.BytesIO(first), CLASSES, ItemIndex(e.item for e in items))
    assert result.errors == []
    assert [r.item for r in result.records] == [e.item for e in items]
    for export_item, record in zip(items, result.records, strict=True):
        # label lines come first, then the classify.csv rows
        expected = sorted(export_item.regions, key=lambda r: r["type"] == "classification")
        assert [r["id"] for r in record.regions] == [f"r{i + 1}" for i in range(len(expected))]
        for original, imported in zip(expected, record.regions, strict=True):
            assert_close(original, imported, export_item.item.width or 0, export_item.item.height or 0)
    second = members(export_zip([ExportItem(r.item, r.regions) for r in result.records]))
    again = members(first)
    assert list(second) == list(again)
    sizes = {r.where: (r.item.width or 1, r.item.height or 1) for r in result.records}
    for path, text in again.items():
        if not path.startswith("labels/"):
            assert second[path] == text
            continue
        width, height = sizes[path]
        for line, reread in zip(text.splitlines(), second[path].splitlines(), strict=True):
            if line.split()[0] not in APPROXIMATE:
                assert reread == line
                continue
            # a pose box is refitted to rounded points; an oriented box to rounded corners, in
            # pixels, so an error along the longer side of a narrow image shows on the shorter
            close = 1.01e-6 if line.startswith("3 ") else 4.04e-6 * max(width, height) / min(width, height)
            numbers = [float(v) for v in reread.split()]
            assert numbers == pytest.approx([float(v) for v in line.split()], abs=close)


def test_detect_and_segment_exports_are_byte_stable() -> None:
    item = ItemInfo(1, "photos/cat.jpg", "image", 333, 217)
    regions = with_ids(
        [
            {
                "type": "bbox",
                "label": "box",
                "attributes": {},
                "geometry": {"x": 10.3, "y": 0, "width": 99.9, "height": 17},
            },
            {
                "type": "polygon",
                "label": "shape",
                "attributes": {},
                "geometry": {"points": [[1, 2], [300.7, 5], [100, 216.9]], "holes": []},
            },
            {"type": "classification", "label": "sunny", "attributes": {}, "geometry": {}, "score": 0.5},
        ]
    )
    first = export_zip([ExportItem(item, regions)])
    result = yolo.import_(io.BytesIO(first), CLASSES, ItemIndex([item]))
    assert export_zip([ExportItem(r.item, r.regions) for r in result.records]) == first
    assert export_zip([ExportItem(item, regions)]) == first  # no timestamps in the zip


# --- layout on disk --------------------------------------------------------------------------


def _mixed() -> list[ExportItem]:
    big = ItemInfo(1, "a/one.jpg", "image", 640, 480)
    small = ItemInfo(2, "two.png", "image", 10, 20)
    return [
        ExportItem(
            big,
            with_ids(
                [
                    {
                        "type": "bbox",
                        "label": "box",
                        "geometry": {"x": 64, "y": 48, "width": 320, "height": 240},
                    },
                    {
                        "type": "rotated_bbox",
                        "label": "rbox",
                        "geometry": {"cx": 320, "cy": 240, "width": 100, "height": 50, "angle": 30},
                    },
                    {
                        "type": "polygon",
                        "label": "shape",
                        "geometry": {"points": [[0, 0], [640, 0], [640, 480], [0, 480], [5, 5]]},
                    },
                    {
                        "type": "keypoints",
                        "label": "person",
                        "geometry": {"points": [[10, 10, 2], [30, 50, 1], [0, 0, 0]]},
                    },
                    {"type": "classification", "label": "sunny", "geometry": {}},
                    {"type": "polyline", "label": "shape", "geometry": {"points": [[0, 0], [1, 1]]}},
                ]
            ),
        ),
        ExportItem(
            small,
            with_ids(
                [{"type": "bbox", "label": "box", "geometry": {"x": 0, "y": 0, "width": 10, "height": 20}}]
            ),
        ),
        ExportItem(ItemInfo(3, "audio.wav", "audio"), []),
    ]


def test_the_zip_extracts_to_an_ultralytics_dataset(tmp_path: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(export_zip(_mixed()))) as archive:
        archive.extractall(tmp_path)
    data = yaml.safe_load((tmp_path / "data.yaml").read_text())
    assert data == {
        "train": "images",
        "val": "images",
        "nc": 5,
        "names": {0: "box", 1: "rbox", 2: "shape", 3: "person", 4: "sunny"},
        "kpt_shape": [3, 3],
    }
    labels = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "labels").rglob("*.txt"))
    assert labels == ["labels/a/one.txt", "labels/audio.txt", "labels/two.txt"]
    columns = {0: {5}, 1: {9}, 2: {11}, 3: {5 + 3 * 3}}
    for path in labels:
        for line in (tmp_path / path).read_text().splitlines():
            tokens = line.split()
            cls = int(tokens[0])
            assert len(tokens) in columns[cls], line
            values = [float(v) for v in tokens[1:]]
            if cls == 3:
                assert [int(v) for v in values[6::3]] == values[6::3]  # visibilities
                values = values[:4] + [v for i, v in enumerate(values[4:]) if i % 3 != 2]
            assert all(0 <= v <= 1 for v in values), line
            assert all(len(v.split(".")[1]) == 6 for v in tokens[1:] if "." in v)
    assert (tmp_path / "labels/two.txt").read_text() == "0 0.500000 0.500000 1.000000 1.000000\n"
    assert (tmp_path / "labels/audio.txt").read_text() == ""
    assert (tmp_path / "classify.csv").read_text() == "a/one.jpg,sunny\n"
    one = (tmp_path / "labels/a/one.txt").read_text().splitlines()
    assert one[0] == "0 0.350000 0.350000 0.500000 0.500000"
    assert (
        one[3]
        == "3 0.031250 0.062500 0.031250 0.083333 0.015625 0.020833 2 0.046875 0.104167 1 0.000000 0.000000 0"
    )


def test_layouts_convert_or_skip_per_region_type() -> None:
    def lines(layout: str) -> tuple[list[str], dict[str, int]]:
        out = io.BytesIO()
        skipped = yolo.export_layout(iter(_mixed()[:1]), CLASSES, out, layout)
        files = members(out.getvalue())
        return files.get("labels/a/one.txt", "").splitlines() + files.get(
            "classify.csv", ""
        ).splitlines(), skipped

    detect, skipped = lines("detect")
    assert [len(line.split()) for line in detect] == [5, 5, 5]
    assert skipped == {"keypoints": 1, "classification": 1, "polyline": 1}
    assert detect[2] == "2 0.500000 0.500000 1.000000 1.000000"
    segment, skipped = lines("segment")
    assert [len(line.split()) for line in segment] == [9, 9, 11]
    obb, skipped = lines("obb")
    assert [len(line.split()) for line in obb] == [9, 9] and skipped["polygon"] == 1
    pose, skipped = lines("pose")
    assert [len(line.split()) for line in pose] == [14] and sum(skipped.values()) == 5
    classify, skipped = lines("classify")
    assert classify == ["a/one.jpg,sunny"] and sum(skipped.values()) == 5
    assert "labels/a/one.txt" not in members(export_zip(_mixed(), "classify"))
    with pytest.raises(ValueError, match="unknown YOLO layout"):
        yolo.export_layout(iter([]), CLASSES, io.BytesIO(), "mosaic")


# --- data.yaml ------------------------------------------------------------------------------


@settings(max_examples=100, database=None, deadline=None)
@given(st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=12), min_size=1, max_size=5))
def test_data_yaml_reads_back_the_same_names_in_pyyaml_and_our_parser(names: list[str]) -> None:
    text = yolo.data_yaml([LabelClass(n) for n in names])
    expected = dict(enumerate(names))
    assert yaml.safe_load(text)["names"] == expected
    assert yolo.parse_data_yaml(text)["names"] == expected


ULTRALYTICS_YAML = """\
# Ultralytics 🚀 AGPL-3.0 License - https://ultralytics.com/license
# COCO8-pose dataset (first 8 images from COCO train2017) by Ultralytics

# Train/val/test sets as 1) dir: path/to/imgs, 2) file: path/to/imgs.txt, or 3) list: [a, b]
path: coco8-pose # dataset root dir
train: images/train # train images (relative to 'path') 4 images
val: images/val # val images (relative to 'path') 4 images
test: # test images (optional)

# Keypoints
kpt_shape: [17, 3] # number of keypoints, number of dims (2 for x,y or 3 for x,y,visible)
flip_idx: [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]

# Classes
names:
  0: person
  1: 'traffic light' # a comment
  2: "it's #1"

roboflow:
  workspace: x
  project: y

# Download script/URL (optional)
download: |
  from ultralytics.utils.downloads import download
  names: [not, these]
  download(['https://example.com/coco8-pose.zip'])
"""


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (ULTRALYTICS_YAML, {0: "person", 1: "traffic light", 2: "it's #1"}),
        ("names: ['a', \"b c\", d]\nnc: 3\n", {0: "a", 1: "b c", 2: "d"}),
        ("names: [\n  a,\n  b, # two\n]\n", {0: "a", 1: "b"}),
        ("names: {0: a, 1: 'x: y'}\n", {0: "a", 1: "x: y"}),
        ("names:\n- cat\n- dog\n", {0: "cat", 1: "dog"}),
        ("names:\n  - cat\n  - 'dog'\n", {0: "cat", 1: "dog"}),
    ],
)
def test_the_yaml_parser_reads_dataset_files_as_pyyaml_does(text: str, names: dict[int, str]) -> None:
    parsed = yolo.parse_data_yaml(text)
    assert yolo._names(parsed["names"]) == names
    assert yolo._names(yaml.safe_load(text)["names"]) == names
    if text == ULTRALYTICS_YAML:
        assert parsed["kpt_shape"] == [17, 3]


@pytest.mark.parametrize(
    "text", ["names: [a, b\n", "  names: [a]\n", 'names: "open\n', "names:\n  0:\n    x: y\n"]
)
def test_the_yaml_parser_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError):
        yolo._names(yolo.parse_data_yaml(text)["names"])


# --- import ---------------------------------------------------------------------------------


def test_every_bad_line_is_reported_and_the_good_ones_imported() -> None:
    item = ItemInfo(1, "train/a.jpg", "image", 200, 100)
    unsized = ItemInfo(2, "b.jpg", "image")
    files = {
        "data.yaml": "names:\n  0: box\n  1: dog\n  2: shape\n",
        "labels/train/a.txt": "\n".join(
            [
                "0 0.5 0.5 0.2 0.2",
                "1 0.5 0.5 0.2 0.2",
                "7 0.5 0.5 0.2 0.2",
                "0 0.5 0.5 -0.2 0.2",
                "0 0.5 x 0.2 0.2",
                "0 0.5 0.5 0.2",
                "0 1.5 0.5 0.2 0.2",
                "a 0.5 0.5 0.2 0.2",
                "",
                "0 0.25 0.5 0.1 0.2 0.875",
                "0 0.25 0.5 0.1 0.2 1.875",
                "0 0.5 0.5 0 0.2",
                "2 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2 0.1 0.1 0.3",
                "2 0.5 0.5 0.2 0.2",
            ]
        ),
        "labels/missing.txt": "0 0.5 0.5 0.2 0.2\n",
        "labels/b.txt": "0 0.5 0.5 0.2 0.2\n",
        "../labels/evil.txt": "0 0.5 0.5 0.2 0.2\n",
    }
    result = yolo.import_(io.BytesIO(make_zip(files)), CLASSES, ItemIndex([item, unsized]))
    assert [(e.where, e.code) for e in result.errors] == [
        ("../labels/evil.txt", "malformed"),
        ("labels/train/a.txt:2", "unknown_class"),
        ("labels/train/a.txt:3", "unknown_class"),
        ("labels/train/a.txt:4", "invalid_geometry"),
        ("labels/train/a.txt:5", "malformed"),
        ("labels/train/a.txt:6", "malformed"),
        ("labels/train/a.txt:7", "invalid_geometry"),
        ("labels/train/a.txt:8", "malformed"),
        ("labels/train/a.txt:11", "malformed"),
        ("labels/train/a.txt:12", "invalid_geometry"),
        ("labels/train/a.txt:14", "unsupported"),
        ("labels/missing.txt", "unmatched_item"),
        ("labels/b.txt", "unsupported"),
    ]
    assert "'dog' is not a class" in result.errors[1].message
    (record,) = result.records
    assert record.item == item and record.where == "labels/train/a.txt"
    assert [(r["id"], r["type"], r.get("score")) for r in record.regions] == [
        ("r1", "bbox", None),
        ("r2", "bbox", 0.875),
        ("r3", "polygon", 0.3),
    ]
    assert record.regions[0]["geometry"] == {"x": 80.0, "y": 40.0, "width": 40.0, "height": 20.0}
    assert record.regions[2]["geometry"] == {
        "points": [[20.0, 10.0], [40.0, 10.0], [40.0, 20.0], [20.0, 20.0], [20.0, 10.0]],
        "holes": [],
    }


def test_archives_that_are_not_read() -> None:
    index = ItemIndex([])
    assert [
        (e.where, e.code) for e in yolo.import_(io.BytesIO(b"0 0.5 0.5 0.1 0.1\n"), CLASSES, index).errors
    ] == [("file", "malformed")]
    assert yolo.import_(io.BytesIO(make_zip({"README.md": "hi"})), CLASSES, index).errors == [
        RecordError("archive", "malformed", "the archive has no label files")
    ]
    broken = yolo.import_(
        io.BytesIO(make_zip({"data.yaml": "names: [a, b\n", "labels/x.txt": ""})), CLASSES, index
    )
    assert [(e.where, e.code) for e in broken.errors] == [
        ("data.yaml", "malformed"),
        ("labels/x.txt", "unmatched_item"),
    ]


def test_without_names_class_ids_index_the_classes_and_classes_txt_is_read() -> None:
    item = ItemInfo(1, "a.jpg", "image", 10, 10)
    plain = yolo.import_(
        io.BytesIO(make_zip({"labels/a.txt": "2 0.1 0.1 0.5 0.1 0.5 0.5\n"})), CLASSES, ItemIndex([item])
    )
    assert plain.records[0].regions[0]["label"] == "shape"
    # CVAT's YOLO 1.1: obj.names and obj_train_data/
    cvat = make_zip(
        {"obj.names": "sunny\nbox\n", "obj_train_data/a.txt": "1 0.5 0.5 0.2 0.2\n", "train.txt": "x"}
    )
    named = yolo.import_(io.BytesIO(cvat), CLASSES, ItemIndex([item]))
    assert named.errors == [] and named.records[0].regions[0]["label"] == "box"


def test_pose_lines_with_two_dims_and_confidences() -> None:
    item = ItemInfo(1, "a.jpg", "image", 100, 100)
    files = {
        "data.yaml": "names: [box, rbox, shape, person]\nkpt_shape: [3, 2]\n",
        "labels/a.txt": "3 0.5 0.5 0.2 0.2 0.1 0.2 0 0 0.3 0.4 0.9\n",
    }
    (record,) = yolo.import_(io.BytesIO(make_zip(files)), CLASSES, ItemIndex([item])).records
    assert record.regions == [
        {
            "id": "r1",
            "type": "keypoints",
            "label": "person",
            "attributes": {},
            "geometry": {"points": [[10.0, 20.0, 2], [0.0, 0.0, 0], [30.0, 40.0, 2]]},
            "score": 0.9,
        }
    ]
    predicted = {"labels/a.txt": "3 0.5 0.5 0.2 0.2 0.1 0.2 0.93 0.3 0.3 0.2 0.5 0.5 2 0.8\n"}
    (record,) = yolo.import_(io.BytesIO(make_zip(predicted)), CLASSES, ItemIndex([item])).records
    assert [p[2] for p in record.regions[0]["geometry"]["points"]] == [2, 0, 2]
    assert record.regions[0]["score"] == 0.8


def test_nine_columns_are_an_oriented_box_or_a_polygon() -> None:
    item = ItemInfo(1, "a.jpg", "image", 200, 100)
    either = [LabelClass("thing", ())]
    rectangle = "0 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3"
    skewed = "0 0.1 0.1 0.3 0.1 0.35 0.3 0.1 0.3"
    data = make_zip({"labels/a.txt": f"{rectangle}\n{skewed}\n{rectangle} 0.5\n"})
    (record,) = yolo.import_(io.BytesIO(data), either, ItemIndex([item])).records
    assert [r["type"] for r in record.regions] == ["rotated_bbox", "polygon", "rotated_bbox"]
    assert record.regions[0]["geometry"] == {
        "cx": 40.0,
        "cy": 20.0,
        "width": 40.0,
        "height": 20.0,
        "angle": 0.0,
    }
    assert record.regions[2]["score"] == 0.5
    # the class's tools decide first
    polygons = [LabelClass("thing", ("polygon",))]
    (record,) = yolo.import_(io.BytesIO(data), polygons, ItemIndex([item])).records
    assert [r["type"] for r in record.regions] == ["polygon", "polygon", "polygon"]


def test_classify_rows_are_classifications() -> None:
    item = ItemInfo(1, "x, y.jpg", "image", 10, 10)
    rows = [
        "name,class",
        '"x, y.jpg",sunny',
        '"x, y.jpg",rainy',
        "nope.jpg,sunny",
        '"x, y.jpg",sunny,0.25',
        "only",
    ]
    table = "\n".join([*rows, "x.jpg,box", ""])
    result = yolo.import_(io.BytesIO(make_zip({"classify.csv": table})), CLASSES, ItemIndex([item]))
    assert [(e.where, e.code) for e in result.errors] == [
        ("classify.csv:3", "unknown_class"),
        ("classify.csv:4", "unmatched_item"),
        ("classify.csv:6", "malformed"),
        ("classify.csv:7", "unsupported"),
    ]
    assert [r.get("score") for r in result.records[0].regions] == [None, 0.25]


# --- streaming -------------------------------------------------------------------------------


def _many(count: int) -> Iterator[ExportItem]:
    for i in range(count):
        yield ExportItem(
            ItemInfo(i + 1, f"images/{i:06d}.jpg", "image", 640, 480),
            [
                {
                    "id": "r1",
                    "type": "bbox",
                    "label": "box",
                    "geometry": {"x": i % 600, "y": 3, "width": 20, "height": 30},
                }
            ],
        )


class Sink(io.RawIOBase):
    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.size += len(data)
        return len(data)


def test_twenty_thousand_items_stream_to_an_unseekable_output() -> None:
    sink = Sink()
    started = time.perf_counter()
    yolo.export(_many(20_000), CLASSES, cast(IO[bytes], sink))
    assert time.perf_counter() - started < 5
    assert sink.size > 20_000 * 50
