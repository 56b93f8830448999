"""Regions: validation against the schema and the item, normalization, clipping, and every refusal."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from pycocotools import mask as coco_mask
from shapely.geometry import Polygon

from labeling.regions import ItemFacts, RegionsInvalid, Schema, parse_schema, validate_many, validate_regions
from labeling.regions.geometry import rle_runs

SPEC: dict[str, Any] = {
    "settings": {"classification": "single", "out_of_bounds": "reject"},
    "classes": [
        {
            "name": "car",
            "color": "#ff0000",
            "tools": ["bbox", "rotated_bbox", "polygon", "polyline", "mask", "video_track", "cuboid"],
            "attributes": [
                {"name": "occluded", "type": "bool", "required": True},
                {"name": "make", "type": "enum", "options": ["audi", "bmw", "other"], "default": "other"},
                {"name": "tags", "type": "multi_enum", "options": ["parked", "moving"]},
                {"name": "doors", "type": "int", "min": 2, "max": 5},
                {"name": "speed", "type": "float", "min": 0},
                {"name": "plate", "type": "text", "min_length": 1, "max_length": 12},
            ],
        },
        {
            "name": "person",
            "color": "#00ff00",
            "tools": ["keypoints", "bbox"],
            "skeleton": {"keypoints": ["head", "left_hand", "right_hand"], "edges": [[0, 1], [0, 2]]},
        },
        {"name": "drives", "color": "#0000ff", "tools": ["relation"]},
        {"name": "sunny", "color": "#ffff00", "tools": ["classification"]},
        {"name": "rainy", "color": "#00ffff", "tools": ["classification"]},
        {"name": "city", "color": "#ff00ff", "tools": ["span"]},
        {"name": "speech", "color": "#111111", "tools": ["time_segment", "transcription"]},
    ],
}
SCHEMA = parse_schema(SPEC)
CLIP = parse_schema({**SPEC, "settings": {"classification": "multi", "out_of_bounds": "clip"}})
MULTI = parse_schema({**SPEC, "settings": {"classification": "multi", "out_of_bounds": "reject"}})

IMAGE = ItemFacts("image", width=640, height=480)
TEXT_CONTENT = "Alice flew from Paris to Tokyo."
TEXT = ItemFacts("text", length=len(TEXT_CONTENT), text=TEXT_CONTENT)
AUDIO = ItemFacts("audio", duration=10.0)
VIDEO = ItemFacts("video", width=640, height=480, duration=4.0, frames=100)
CLOUD = ItemFacts("pointcloud")
CAR = {"occluded": False}


def problems(
    regions: Any, item: ItemFacts = IMAGE, schema: Schema = SCHEMA, *, prediction: bool = False
) -> list[tuple[int | None, str, str]]:
    """(region, field, code) of every problem, in the order reported."""
    with pytest.raises(RegionsInvalid) as caught:
        validate_regions(regions, schema, item, prediction=prediction)
    for error in caught.value.errors:
        assert set(error) == {"region", "field", "code", "message"}
        assert error["message"]
    return [(error["region"], error["field"], error["code"]) for error in caught.value.errors]


def region(kind: Any, label: Any, geometry: Any = None, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"id": extra.pop("id", "r1"), "type": kind, "label": label}
    if "attributes" in extra:
        result["attributes"] = extra.pop("attributes")
    elif label == "car":
        result["attributes"] = dict(CAR)
    if geometry is not None:
        result["geometry"] = geometry
    result.update(extra)
    return result


def box(x: Any = 10, y: Any = 20, width: Any = 100, height: Any = 50, **extra: Any) -> dict[str, Any]:
    return region("bbox", "car", {"x": x, "y": y, "width": width, "height": height}, **extra)


def mask_counts(array: np.ndarray) -> str:
    counts = coco_mask.encode(np.asfortranarray(array.astype(np.uint8)))["counts"]
    return counts.decode("ascii")


# -- valid regions of every type and their normal form ------------------------------------------


def test_a_valid_region_of_every_type_passes_on_its_item() -> None:
    cases: list[tuple[dict[str, Any], ItemFacts]] = [
        (region("classification", "sunny"), IMAGE),
        (box(), IMAGE),
        (
            region("rotated_bbox", "car", {"cx": 100, "cy": 100, "width": 50, "height": 20, "angle": 30}),
            IMAGE,
        ),
        (region("polygon", "car", {"points": [[0, 0], [100, 0], [100, 100]]}), IMAGE),
        (region("polyline", "car", {"points": [[0, 0], [640, 480]]}), IMAGE),
        (region("keypoints", "person", {"points": [[1, 2, 2], [3, 4, 1], [0, 0, 0]]}), IMAGE),
        (region("mask", "car", {"rle": {"size": [480, 640], "counts": [1000, 50, 306150]}}), IMAGE),
        (region("span", "city", {"start": 16, "end": 21, "text": "Paris"}), TEXT),
        (region("time_segment", "speech", {"start": 0, "end": 10}), AUDIO),
        (region("transcription", "speech", {"text": "hello", "start": 1.5, "end": 2}), AUDIO),
        (
            region(
                "video_track", "car", {"keyframes": [{"frame": 0, "x": 0, "y": 0, "width": 10, "height": 10}]}
            ),
            VIDEO,
        ),
        (region("cuboid", "car", {"center": [1, 2, -0.5], "size": [4.2, 1.8, 1.5], "yaw": -3.1}), CLOUD),
    ]
    for candidate, item in cases:
        (normal,) = validate_regions([candidate], SCHEMA, item)
        assert (normal["id"], normal["type"], normal["label"]) == (
            "r1",
            candidate["type"],
            candidate["label"],
        )
        # Stored regions are validated again when edited: the normal form must pass as it is.
        assert validate_regions([normal], SCHEMA, item) == [normal]


def test_relations_and_transcriptions_of_regions_pass_on_any_item() -> None:
    regions = [
        box(id="a"),
        region("bbox", "person", {"x": 0, "y": 0, "width": 5, "height": 5}, id="b"),
        region("relation", "drives", {"from": "b", "to": "a"}, id="c"),
        region("transcription", "speech", {"text": "AB-123", "region": "a"}, id="d"),
    ]
    normal = validate_regions(regions, SCHEMA, IMAGE)
    assert normal[2]["geometry"] == {"from": "b", "to": "a"}
    assert normal[3]["geometry"] == {"text": "AB-123", "region": "a"}


def test_normal_form_uses_floats_fills_defaults_and_keeps_keys_in_order() -> None:
    regions = [box(attributes={"occluded": True, "doors": 4.0, "speed": 3, "make": None})]

    (normal,) = validate_regions(regions, SCHEMA, IMAGE)

    assert normal == {
        "id": "r1",
        "type": "bbox",
        "label": "car",
        "attributes": {"occluded": True, "doors": 4, "speed": 3.0, "make": "other"},
        "geometry": {"x": 10.0, "y": 20.0, "width": 100.0, "height": 50.0},
    }
    assert list(normal) == ["id", "type", "label", "attributes", "geometry"]
    assert all(type(value) is float for value in normal["geometry"].values())
    assert type(normal["attributes"]["doors"]) is int


def test_defaults_are_not_shared_between_regions() -> None:
    spec = copy.deepcopy(SPEC)
    spec["classes"][0]["attributes"][2]["default"] = ["parked"]
    schema = parse_schema(spec)

    first, second = validate_regions([box(id="a"), box(id="b")], schema, IMAGE)

    assert first["attributes"]["tags"] == ["parked"]
    first["attributes"]["tags"].append("moving")
    assert second["attributes"]["tags"] == ["parked"]
    assert schema.classes["car"].attributes["tags"].default == ["parked"]


def test_missing_or_null_attributes_mean_none_given() -> None:
    spec = copy.deepcopy(SPEC)
    spec["classes"][0]["attributes"][0]["required"] = False
    schema = parse_schema(spec)
    without = {
        "id": "a",
        "type": "bbox",
        "label": "car",
        "geometry": {"x": 0, "y": 0, "width": 1, "height": 1},
    }
    with_null = {**without, "id": "b", "attributes": None}

    first, second = validate_regions([without, with_null], schema, IMAGE)

    assert first["attributes"] == second["attributes"] == {"make": "other"}


def test_validation_does_not_modify_the_given_regions() -> None:
    regions = [
        box(attributes={"occluded": False, "doors": 3.0}),
        region("polygon", "car", {"points": [[-5, -5], [50, 0], [50, 50]]}, id="p"),
    ]
    before = copy.deepcopy(regions)
    validate_regions(regions, CLIP, IMAGE)
    assert regions == before


def test_each_geometry_is_normalized() -> None:
    regions = [
        region("polygon", "car", {"points": [[0, 0], [10, 0], [10, 10]]}, id="a"),
        region("keypoints", "person", {"points": [[1, 2, 2], [3, 4, 1], [0, 0, 0]]}, id="b"),
        region(
            "rotated_bbox", "car", {"cx": 100, "cy": 100, "width": 50, "height": 20, "angle": 180}, id="c"
        ),
    ]
    polygon, keypoints, rotated = validate_regions(regions, SCHEMA, IMAGE)
    assert polygon["geometry"] == {"points": [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]], "holes": []}
    assert keypoints["geometry"] == {"points": [[1.0, 2.0, 2], [3.0, 4.0, 1], [0.0, 0.0, 0]]}
    assert [type(value) for value in keypoints["geometry"]["points"][0]] == [float, float, int]
    assert rotated["geometry"] == {"cx": 100.0, "cy": 100.0, "width": 50.0, "height": 20.0, "angle": 180.0}

    (track,) = validate_regions(
        [
            region(
                "video_track", "car", {"keyframes": [{"frame": 3, "x": 1, "y": 2, "width": 3, "height": 4}]}
            )
        ],
        SCHEMA,
        VIDEO,
    )
    assert track["geometry"] == {
        "keyframes": [
            {
                "frame": 3,
                "x": 1.0,
                "y": 2.0,
                "width": 3.0,
                "height": 4.0,
                "outside": False,
                "interpolate": True,
            }
        ]
    }
    (span,) = validate_regions([region("span", "city", {"start": 0, "end": 5})], SCHEMA, TEXT)
    assert span["geometry"] == {"start": 0, "end": 5}
    (segment,) = validate_regions([region("time_segment", "speech", {"start": 1, "end": 2})], SCHEMA, AUDIO)
    assert segment["geometry"] == {"start": 1.0, "end": 2.0}
    (cuboid,) = validate_regions(
        [region("cuboid", "car", {"center": [1, 2, 3], "size": [1, 1, 1], "yaw": 0})], SCHEMA, CLOUD
    )
    assert cuboid["geometry"] == {"center": [1.0, 2.0, 3.0], "size": [1.0, 1.0, 1.0], "yaw": 0.0}
    (classification,) = validate_regions([region("classification", "sunny", {})], SCHEMA, IMAGE)
    assert classification["geometry"] == {}


def test_an_uncompressed_mask_becomes_the_compressed_string_pycocotools_writes() -> None:
    array = np.zeros((480, 640), dtype=np.uint8)
    array[100:200, 300:350] = 1
    runs = rle_runs(mask_counts(array))
    assert runs is not None

    (normal,) = validate_regions(
        [region("mask", "car", {"rle": {"size": [480, 640], "counts": runs}})], SCHEMA, IMAGE
    )

    assert normal["geometry"] == {"rle": {"size": [480, 640], "counts": mask_counts(array)}}


def test_a_score_is_kept_only_for_predictions() -> None:
    (normal,) = validate_regions([box(score=1)], SCHEMA, IMAGE, prediction=True)
    assert normal["score"] == 1.0 and type(normal["score"]) is float
    (without,) = validate_regions([box()], SCHEMA, IMAGE, prediction=True)
    assert "score" not in without


def test_an_empty_list_is_valid() -> None:
    assert validate_regions([], SCHEMA, IMAGE) == []


# -- refusals ------------------------------------------------------------------------------------

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100]]

# (name, regions, item, every expected (region, field, code))
Variant = tuple[str, list[Any], ItemFacts, list[tuple[int | None, str, str]]]
INVALID: list[Variant] = [
    # the region object
    ("region not an object", [box(), "r2"], IMAGE, [(1, "", "invalid_type")]),
    ("unknown region field", [box(color="red")], IMAGE, [(0, "color", "unknown_field")]),
    ("score outside predictions", [box(score=0.5)], IMAGE, [(0, "score", "unknown_field")]),
    ("id missing", [{k: v for k, v in box().items() if k != "id"}], IMAGE, [(0, "id", "required")]),
    ("id not a string", [box(id=7)], IMAGE, [(0, "id", "invalid_type")]),
    ("id empty", [box(id="")], IMAGE, [(0, "id", "too_short")]),
    ("id too long", [box(id="x" * 65)], IMAGE, [(0, "id", "too_long")]),
    ("duplicate id", [box(id="a"), box(id="b"), box(id="a")], IMAGE, [(2, "id", "duplicate_id")]),
    ("type missing", [{"id": "a", "label": "car", "attributes": CAR}], IMAGE, [(0, "type", "required")]),
    ("unknown type", [region("circle", "car", {"r": 1})], IMAGE, [(0, "type", "invalid_value")]),
    ("type not a string", [region(["bbox"], "car", {})], IMAGE, [(0, "type", "invalid_value")]),
    ("label missing", [{"id": "a", "type": "classification"}], IMAGE, [(0, "label", "required")]),
    ("label not a string", [region("classification", 3)], IMAGE, [(0, "label", "invalid_type")]),
    ("unknown class", [region("classification", "cloudy")], IMAGE, [(0, "label", "unknown_class")]),
    ("tool not allowed", [region("classification", "car")], IMAGE, [(0, "type", "tool_not_allowed")]),
    ("box on a text", [box()], TEXT, [(0, "type", "modality_mismatch")]),
    (
        "span on an image",
        [region("span", "city", {"start": 0, "end": 1})],
        IMAGE,
        [(0, "type", "modality_mismatch")],
    ),
    (
        "segment on an image",
        [region("time_segment", "speech", {"start": 0, "end": 1})],
        IMAGE,
        [(0, "type", "modality_mismatch")],
    ),
    (
        "track on an audio",
        [
            region(
                "video_track", "car", {"keyframes": [{"frame": 0, "x": 0, "y": 0, "width": 1, "height": 1}]}
            )
        ],
        AUDIO,
        [(0, "type", "modality_mismatch")],
    ),
    (
        "cuboid on an image",
        [region("cuboid", "car", {"center": [0, 0, 0], "size": [1, 1, 1], "yaw": 0})],
        IMAGE,
        [(0, "type", "modality_mismatch")],
    ),
    (
        "mask on a pdf",
        [region("mask", "car", {"rle": {"size": [1, 1], "counts": [0, 1]}})],
        ItemFacts("pdf"),
        [(0, "type", "modality_mismatch")],
    ),
    # attributes
    (
        "attributes not an object",
        [box(attributes=["occluded"])],
        IMAGE,
        [(0, "attributes", "invalid_type"), (0, "attributes.occluded", "required")],
    ),
    ("required attribute missing", [box(attributes={})], IMAGE, [(0, "attributes.occluded", "required")]),
    (
        "required attribute null",
        [box(attributes={"occluded": None})],
        IMAGE,
        [(0, "attributes.occluded", "required")],
    ),
    (
        "unknown attribute",
        [box(attributes={**CAR, "color": "red"})],
        IMAGE,
        [(0, "attributes.color", "unknown_field")],
    ),
    (
        "bool as string",
        [box(attributes={"occluded": "false"})],
        IMAGE,
        [(0, "attributes.occluded", "invalid_type")],
    ),
    (
        "bool as number",
        [box(attributes={"occluded": 0})],
        IMAGE,
        [(0, "attributes.occluded", "invalid_type")],
    ),
    (
        "enum not an option",
        [box(attributes={**CAR, "make": "vw"})],
        IMAGE,
        [(0, "attributes.make", "unknown_option")],
    ),
    (
        "enum not a string",
        [box(attributes={**CAR, "make": 1})],
        IMAGE,
        [(0, "attributes.make", "invalid_type")],
    ),
    (
        "multi_enum not a list",
        [box(attributes={**CAR, "tags": "parked"})],
        IMAGE,
        [(0, "attributes.tags", "invalid_type")],
    ),
    (
        "multi_enum unknown option",
        [box(attributes={**CAR, "tags": ["parked", "towed"]})],
        IMAGE,
        [(0, "attributes.tags", "unknown_option")],
    ),
    (
        "multi_enum chosen twice",
        [box(attributes={**CAR, "tags": ["moving", "moving"]})],
        IMAGE,
        [(0, "attributes.tags", "invalid_value")],
    ),
    (
        "int with a fraction",
        [box(attributes={**CAR, "doors": 2.5})],
        IMAGE,
        [(0, "attributes.doors", "invalid_type")],
    ),
    (
        "int as bool",
        [box(attributes={**CAR, "doors": True})],
        IMAGE,
        [(0, "attributes.doors", "invalid_type")],
    ),
    (
        "int below min",
        [box(attributes={**CAR, "doors": 1})],
        IMAGE,
        [(0, "attributes.doors", "out_of_range")],
    ),
    (
        "int above max",
        [box(attributes={**CAR, "doors": 6})],
        IMAGE,
        [(0, "attributes.doors", "out_of_range")],
    ),
    (
        "float as string",
        [box(attributes={**CAR, "speed": "3"})],
        IMAGE,
        [(0, "attributes.speed", "invalid_type")],
    ),
    (
        "float infinite",
        [box(attributes={**CAR, "speed": math.inf})],
        IMAGE,
        [(0, "attributes.speed", "invalid_type")],
    ),
    (
        "float below min",
        [box(attributes={**CAR, "speed": -0.1})],
        IMAGE,
        [(0, "attributes.speed", "out_of_range")],
    ),
    (
        "text too long",
        [box(attributes={**CAR, "plate": "x" * 13})],
        IMAGE,
        [(0, "attributes.plate", "too_long")],
    ),
    ("text too short", [box(attributes={**CAR, "plate": ""})], IMAGE, [(0, "attributes.plate", "too_short")]),
    (
        "text not a string",
        [box(attributes={**CAR, "plate": 123})],
        IMAGE,
        [(0, "attributes.plate", "invalid_type")],
    ),
    # classification
    (
        "classification with fields",
        [region("classification", "sunny", {"x": 1})],
        IMAGE,
        [(0, "geometry.x", "unknown_field")],
    ),
    (
        "classification geometry not an object",
        [region("classification", "sunny", [])],
        IMAGE,
        [(0, "geometry", "invalid_type")],
    ),
    (
        "two classifications when single",
        [region("classification", "sunny", id="a"), box(id="b"), region("classification", "rainy", id="c")],
        IMAGE,
        [(2, "type", "too_many")],
    ),
    # bbox
    ("bbox geometry missing", [region("bbox", "car")], IMAGE, [(0, "geometry", "required")]),
    (
        "bbox geometry not an object",
        [region("bbox", "car", [1, 2, 3, 4])],
        IMAGE,
        [(0, "geometry", "invalid_type")],
    ),
    (
        "bbox field missing",
        [region("bbox", "car", {"x": 1, "y": 1, "width": 1})],
        IMAGE,
        [(0, "geometry.height", "required")],
    ),
    (
        "bbox unknown field",
        [region("bbox", "car", {"x": 1, "y": 1, "width": 1, "height": 1, "z": 0})],
        IMAGE,
        [(0, "geometry.z", "unknown_field")],
    ),
    ("bbox x as string", [box(x="10")], IMAGE, [(0, "geometry.x", "invalid_type")]),
    ("bbox width as bool", [box(width=True)], IMAGE, [(0, "geometry.width", "invalid_type")]),
    (
        "bbox NaN and infinity",
        [box(y=math.nan, height=-math.inf)],
        IMAGE,
        [(0, "geometry.y", "invalid_type"), (0, "geometry.height", "invalid_type")],
    ),
    ("bbox zero width", [box(width=0)], IMAGE, [(0, "geometry.width", "invalid_geometry")]),
    ("bbox negative height", [box(height=-5)], IMAGE, [(0, "geometry.height", "invalid_geometry")]),
    ("bbox left of the image", [box(x=-1)], IMAGE, [(0, "geometry.x", "out_of_bounds")]),
    ("bbox above the image", [box(y=-0.5)], IMAGE, [(0, "geometry.y", "out_of_bounds")]),
    ("bbox past the right edge", [box(x=600, width=41)], IMAGE, [(0, "geometry.width", "out_of_bounds")]),
    (
        "bbox past the bottom edge",
        [box(y=400, height=80.01)],
        IMAGE,
        [(0, "geometry.height", "out_of_bounds")],
    ),
    (
        "bbox past every edge",
        [box(x=-1, y=-1, width=700, height=500)],
        IMAGE,
        [
            (0, "geometry.x", "out_of_bounds"),
            (0, "geometry.width", "out_of_bounds"),
            (0, "geometry.y", "out_of_bounds"),
            (0, "geometry.height", "out_of_bounds"),
        ],
    ),
    # rotated_bbox
    (
        "rotated angle missing",
        [region("rotated_bbox", "car", {"cx": 9, "cy": 9, "width": 2, "height": 2})],
        IMAGE,
        [(0, "geometry.angle", "required")],
    ),
    (
        "rotated angle -180",
        [region("rotated_bbox", "car", {"cx": 9, "cy": 9, "width": 2, "height": 2, "angle": -180})],
        IMAGE,
        [(0, "geometry.angle", "out_of_range")],
    ),
    (
        "rotated angle above 180",
        [region("rotated_bbox", "car", {"cx": 9, "cy": 9, "width": 2, "height": 2, "angle": 180.5})],
        IMAGE,
        [(0, "geometry.angle", "out_of_range")],
    ),
    (
        "rotated zero size",
        [region("rotated_bbox", "car", {"cx": 9, "cy": 9, "width": 0, "height": 2, "angle": 0})],
        IMAGE,
        [(0, "geometry.width", "invalid_geometry")],
    ),
    (
        "rotated centre as string",
        [region("rotated_bbox", "car", {"cx": "9", "cy": 9, "width": 1, "height": 2, "angle": 0})],
        IMAGE,
        [(0, "geometry.cx", "invalid_type")],
    ),
    (
        "rotated corner outside",
        [region("rotated_bbox", "car", {"cx": 20, "cy": 240, "width": 60, "height": 10, "angle": 0})],
        IMAGE,
        [(0, "geometry", "out_of_bounds")],
    ),
    (
        "rotated turned outside",
        [region("rotated_bbox", "car", {"cx": 320, "cy": 20, "width": 60, "height": 10, "angle": -90})],
        IMAGE,
        [(0, "geometry", "out_of_bounds")],
    ),
    # polygon
    (
        "polygon points missing",
        [region("polygon", "car", {"holes": []})],
        IMAGE,
        [(0, "geometry.points", "required")],
    ),
    (
        "polygon points not a list",
        [region("polygon", "car", {"points": "0,0 1,1"})],
        IMAGE,
        [(0, "geometry.points", "invalid_type")],
    ),
    (
        "polygon of two points",
        [region("polygon", "car", {"points": [[0, 0], [5, 5]]})],
        IMAGE,
        [(0, "geometry.points", "invalid_geometry")],
    ),
    (
        "polygon of three points closed",
        [region("polygon", "car", {"points": [[0, 0], [5, 5], [0, 0]]})],
        IMAGE,
        [(0, "geometry.points", "invalid_geometry")],
    ),
    (
        "polygon point not a pair",
        [region("polygon", "car", {"points": [[0, 0], [5], [5, 5]]})],
        IMAGE,
        [(0, "geometry.points[1]", "invalid_type")],
    ),
    (
        "polygon point as object",
        [region("polygon", "car", {"points": [[0, 0], {"x": 5, "y": 0}, [5, 5]]})],
        IMAGE,
        [(0, "geometry.points[1]", "invalid_type")],
    ),
    (
        "polygon coordinate as string",
        [region("polygon", "car", {"points": [[0, 0], ["5", 0], [5, 5]]})],
        IMAGE,
        [(0, "geometry.points[1][0]", "invalid_type")],
    ),
    (
        "polygon coordinate as bool",
        [region("polygon", "car", {"points": [[0, 0], [5, 0], [5, False]]})],
        IMAGE,
        [(0, "geometry.points[2][1]", "invalid_type")],
    ),
    (
        "polygon coordinate NaN",
        [region("polygon", "car", {"points": [[0, math.nan], [5, 0], [5, 5]]})],
        IMAGE,
        [(0, "geometry.points[0][1]", "invalid_type")],
    ),
    (
        "bow-tie polygon",
        [region("polygon", "car", {"points": [[0, 0], [10, 10], [10, 0], [0, 10]]})],
        IMAGE,
        [(0, "geometry.points", "invalid_geometry")],
    ),
    (
        "polygon on a line",
        [region("polygon", "car", {"points": [[0, 0], [5, 5], [10, 10]]})],
        IMAGE,
        [(0, "geometry.points", "invalid_geometry")],
    ),
    (
        "polygon hole outside",
        [region("polygon", "car", {"points": SQUARE, "holes": [[[200, 200], [210, 200], [210, 210]]]})],
        IMAGE,
        [(0, "geometry.holes", "invalid_geometry")],
    ),
    (
        "polygon holes not a list",
        [region("polygon", "car", {"points": SQUARE, "holes": {}})],
        IMAGE,
        [(0, "geometry.holes", "invalid_type")],
    ),
    (
        "polygon hole of two points",
        [region("polygon", "car", {"points": SQUARE, "holes": [[[1, 1], [2, 2]]]})],
        IMAGE,
        [(0, "geometry.holes[0]", "invalid_geometry")],
    ),
    (
        "polygon unknown field",
        [region("polygon", "car", {"points": SQUARE, "closed": True})],
        IMAGE,
        [(0, "geometry.closed", "unknown_field")],
    ),
    (
        "polygon outside",
        [region("polygon", "car", {"points": [[600, 0], [650, 0], [600, 50]]})],
        IMAGE,
        [(0, "geometry.points[1]", "out_of_bounds")],
    ),
    # polyline
    (
        "polyline of one point",
        [region("polyline", "car", {"points": [[0, 0]]})],
        IMAGE,
        [(0, "geometry.points", "invalid_geometry")],
    ),
    (
        "polyline without length",
        [region("polyline", "car", {"points": [[3, 3], [3, 3], [3, 3]]})],
        IMAGE,
        [(0, "geometry.points", "invalid_geometry")],
    ),
    (
        "polyline point as string",
        [region("polyline", "car", {"points": [[3, 3], "4,4"]})],
        IMAGE,
        [(0, "geometry.points[1]", "invalid_type")],
    ),
    (
        "polyline outside",
        [region("polyline", "car", {"points": [[0, 0], [10, 10], [10, 481]]})],
        IMAGE,
        [(0, "geometry.points[2]", "out_of_bounds")],
    ),
    (
        "polyline with holes",
        [region("polyline", "car", {"points": [[0, 0], [1, 1]], "holes": []})],
        IMAGE,
        [(0, "geometry.holes", "unknown_field")],
    ),
    # keypoints
    (
        "keypoints too few",
        [region("keypoints", "person", {"points": [[1, 1, 2], [2, 2, 2]]})],
        IMAGE,
        [(0, "geometry.points", "count_mismatch")],
    ),
    (
        "keypoints too many",
        [region("keypoints", "person", {"points": [[1, 1, 2]] * 4})],
        IMAGE,
        [(0, "geometry.points", "count_mismatch")],
    ),
    (
        "keypoints not a list",
        [region("keypoints", "person", {"points": None})],
        IMAGE,
        [(0, "geometry.points", "invalid_type")],
    ),
    (
        "keypoint without visibility",
        [region("keypoints", "person", {"points": [[1, 1], [1, 1, 2], [1, 1, 2]]})],
        IMAGE,
        [(0, "geometry.points[0]", "invalid_type")],
    ),
    (
        "keypoint visibility 3",
        [region("keypoints", "person", {"points": [[1, 1, 2], [1, 1, 3], [1, 1, 2]]})],
        IMAGE,
        [(0, "geometry.points[1][2]", "invalid_value")],
    ),
    (
        "keypoint visibility as bool",
        [region("keypoints", "person", {"points": [[1, 1, 2], [1, 1, 2], [1, 1, True]]})],
        IMAGE,
        [(0, "geometry.points[2][2]", "invalid_value")],
    ),
    (
        "keypoint visibility as float",
        [region("keypoints", "person", {"points": [[1, 1, 2.0], [1, 1, 2], [1, 1, 2]]})],
        IMAGE,
        [(0, "geometry.points[0][2]", "invalid_value")],
    ),
    (
        "keypoint coordinate infinite",
        [region("keypoints", "person", {"points": [[1, 1, 2], [math.inf, 1, 2], [1, 1, 2]]})],
        IMAGE,
        [(0, "geometry.points[1][0]", "invalid_type")],
    ),
    (
        "visible keypoint outside",
        [region("keypoints", "person", {"points": [[1, 1, 2], [641, 1, 1], [1, 1, 2]]})],
        IMAGE,
        [(0, "geometry.points[1]", "out_of_bounds")],
    ),
    # mask
    ("mask rle missing", [region("mask", "car", {})], IMAGE, [(0, "geometry.rle", "required")]),
    (
        "mask rle not an object",
        [region("mask", "car", {"rle": "0150"})],
        IMAGE,
        [(0, "geometry.rle", "invalid_type")],
    ),
    (
        "mask size missing",
        [region("mask", "car", {"rle": {"counts": "1"}})],
        IMAGE,
        [(0, "geometry.rle.size", "required")],
    ),
    (
        "mask size not a pair",
        [region("mask", "car", {"rle": {"size": [480], "counts": [0, 480]}})],
        IMAGE,
        [(0, "geometry.rle.size", "invalid_type")],
    ),
    (
        "mask size of floats",
        [region("mask", "car", {"rle": {"size": [480.0, 640.0], "counts": [0, 1]}})],
        IMAGE,
        [(0, "geometry.rle.size", "invalid_type")],
    ),
    (
        "mask of another size",
        [region("mask", "car", {"rle": {"size": [640, 480], "counts": [0, 307200]}})],
        IMAGE,
        [(0, "geometry.rle.size", "invalid_geometry")],
    ),
    (
        "mask counts garbage",
        [region("mask", "car", {"rle": {"size": [480, 640], "counts": "not rle!"}})],
        IMAGE,
        [(0, "geometry.rle.counts", "invalid_geometry")],
    ),
    (
        "mask counts negative run",
        [region("mask", "car", {"rle": {"size": [480, 640], "counts": [-1, 307201]}})],
        IMAGE,
        [(0, "geometry.rle.counts", "invalid_type")],
    ),
    (
        "mask counts a number",
        [region("mask", "car", {"rle": {"size": [480, 640], "counts": 5}})],
        IMAGE,
        [(0, "geometry.rle.counts", "invalid_type")],
    ),
    (
        "mask runs short of the size",
        [region("mask", "car", {"rle": {"size": [480, 640], "counts": [0, 100]}})],
        IMAGE,
        [(0, "geometry.rle.counts", "invalid_geometry")],
    ),
    (
        "mask runs past the size",
        [region("mask", "car", {"rle": {"size": [480, 640], "counts": [0, 307201]}})],
        IMAGE,
        [(0, "geometry.rle.counts", "invalid_geometry")],
    ),
    (
        "mask empty",
        [region("mask", "car", {"rle": {"size": [480, 640], "counts": [307200]}})],
        IMAGE,
        [(0, "geometry.rle.counts", "invalid_geometry")],
    ),
    (
        "mask rle unknown field",
        [region("mask", "car", {"rle": {"size": [480, 640], "counts": [0, 307200], "order": "F"}})],
        IMAGE,
        [(0, "geometry.rle.order", "unknown_field")],
    ),
    (
        "mask larger than COCO RLE holds",
        [region("mask", "car", {"rle": {"size": [70000, 70000], "counts": [0, 70000 * 70000]}})],
        ItemFacts("image"),
        [(0, "geometry.rle.size", "invalid_geometry")],
    ),
    # span
    ("span end missing", [region("span", "city", {"start": 0})], TEXT, [(0, "geometry.end", "required")]),
    (
        "span offset as float",
        [region("span", "city", {"start": 0.0, "end": 5})],
        TEXT,
        [(0, "geometry.start", "invalid_type")],
    ),
    (
        "span offset as string",
        [region("span", "city", {"start": 0, "end": "5"})],
        TEXT,
        [(0, "geometry.end", "invalid_type")],
    ),
    (
        "span before the text",
        [region("span", "city", {"start": -1, "end": 5})],
        TEXT,
        [(0, "geometry.start", "out_of_bounds")],
    ),
    (
        "span empty",
        [region("span", "city", {"start": 5, "end": 5})],
        TEXT,
        [(0, "geometry.end", "invalid_geometry")],
    ),
    (
        "span past the text",
        [region("span", "city", {"start": 25, "end": 32})],
        TEXT,
        [(0, "geometry.end", "out_of_bounds")],
    ),
    (
        "span quoting other text",
        [region("span", "city", {"start": 16, "end": 21, "text": "Tokyo"})],
        TEXT,
        [(0, "geometry.text", "invalid_value")],
    ),
    (
        "span text not a string",
        [region("span", "city", {"start": 16, "end": 21, "text": 5})],
        TEXT,
        [(0, "geometry.text", "invalid_type")],
    ),
    # relation
    (
        "relation to a missing region",
        [box(id="a"), region("relation", "drives", {"from": "a", "to": "zz"}, id="b")],
        IMAGE,
        [(1, "geometry.to", "unknown_region")],
    ),
    (
        "relation of one region",
        [box(id="a"), region("relation", "drives", {"from": "a", "to": "a"}, id="b")],
        IMAGE,
        [(1, "geometry.to", "invalid_value")],
    ),
    (
        "relation to itself",
        [box(id="a"), region("relation", "drives", {"from": "a", "to": "b"}, id="b")],
        IMAGE,
        [(1, "geometry.to", "invalid_value")],
    ),
    (
        "relation to a relation",
        [
            box(id="a"),
            box(id="b"),
            region("relation", "drives", {"from": "a", "to": "b"}, id="c"),
            region("relation", "drives", {"from": "c", "to": "a"}, id="d"),
        ],
        IMAGE,
        [(3, "geometry.from", "invalid_value")],
    ),
    (
        "relation end not a string",
        [box(id="a"), region("relation", "drives", {"from": 0, "to": "a"}, id="b")],
        IMAGE,
        [(1, "geometry.from", "invalid_type")],
    ),
    (
        "relation end missing",
        [box(id="a"), region("relation", "drives", {"from": "a"}, id="b")],
        IMAGE,
        [(1, "geometry.to", "required")],
    ),
    # transcription
    (
        "transcription text missing",
        [region("transcription", "speech", {})],
        AUDIO,
        [(0, "geometry.text", "required")],
    ),
    (
        "transcription text not a string",
        [region("transcription", "speech", {"text": ["a"]})],
        AUDIO,
        [(0, "geometry.text", "invalid_type")],
    ),
    (
        "transcription of a missing region",
        [region("transcription", "speech", {"text": "a", "region": "zz"})],
        AUDIO,
        [(0, "geometry.region", "unknown_region")],
    ),
    (
        "transcription of itself",
        [region("transcription", "speech", {"text": "a", "region": "r1"})],
        AUDIO,
        [(0, "geometry.region", "invalid_value")],
    ),
    (
        "transcription of a region and a time",
        [
            box(id="a"),
            region("transcription", "speech", {"text": "a", "region": "a", "start": 0, "end": 1}, id="b"),
        ],
        IMAGE,
        [(1, "geometry.region", "invalid_value")],
    ),
    (
        "transcription start without end",
        [region("transcription", "speech", {"text": "a", "start": 1})],
        AUDIO,
        [(0, "geometry.end", "required")],
    ),
    (
        "transcription past the end",
        [region("transcription", "speech", {"text": "a", "start": 9, "end": 10.5})],
        AUDIO,
        [(0, "geometry.end", "out_of_bounds")],
    ),
    # time_segment
    (
        "segment before zero",
        [region("time_segment", "speech", {"start": -0.5, "end": 1})],
        AUDIO,
        [(0, "geometry.start", "out_of_bounds")],
    ),
    (
        "segment past the end",
        [region("time_segment", "speech", {"start": 9, "end": 10.01})],
        AUDIO,
        [(0, "geometry.end", "out_of_bounds")],
    ),
    (
        "segment empty",
        [region("time_segment", "speech", {"start": 3, "end": 3})],
        AUDIO,
        [(0, "geometry.end", "invalid_geometry")],
    ),
    (
        "segment reversed",
        [region("time_segment", "speech", {"start": 3, "end": 2})],
        AUDIO,
        [(0, "geometry.end", "invalid_geometry")],
    ),
    (
        "segment start NaN",
        [region("time_segment", "speech", {"start": math.nan, "end": 2})],
        AUDIO,
        [(0, "geometry.start", "invalid_type")],
    ),
    (
        "segment unknown field",
        [region("time_segment", "speech", {"start": 0, "end": 2, "channel": 1})],
        AUDIO,
        [(0, "geometry.channel", "unknown_field")],
    ),
    # video_track
    (
        "track keyframes missing",
        [region("video_track", "car", {})],
        VIDEO,
        [(0, "geometry.keyframes", "required")],
    ),
    (
        "track keyframes not a list",
        [region("video_track", "car", {"keyframes": {}})],
        VIDEO,
        [(0, "geometry.keyframes", "invalid_type")],
    ),
    (
        "track without keyframes",
        [region("video_track", "car", {"keyframes": []})],
        VIDEO,
        [(0, "geometry.keyframes", "too_short")],
    ),
    (
        "keyframe not an object",
        [region("video_track", "car", {"keyframes": [[0, 0, 0, 1, 1]]})],
        VIDEO,
        [(0, "geometry.keyframes[0]", "invalid_type")],
    ),
    (
        "keyframe frame missing",
        [region("video_track", "car", {"keyframes": [{"x": 0, "y": 0, "width": 1, "height": 1}]})],
        VIDEO,
        [(0, "geometry.keyframes[0].frame", "required")],
    ),
    (
        "keyframe frame as float",
        [
            region(
                "video_track", "car", {"keyframes": [{"frame": 1.0, "x": 0, "y": 0, "width": 1, "height": 1}]}
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[0].frame", "invalid_type")],
    ),
    (
        "keyframe past the last frame",
        [
            region(
                "video_track", "car", {"keyframes": [{"frame": 100, "x": 0, "y": 0, "width": 1, "height": 1}]}
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[0].frame", "out_of_bounds")],
    ),
    (
        "keyframe before the first frame",
        [
            region(
                "video_track", "car", {"keyframes": [{"frame": -1, "x": 0, "y": 0, "width": 1, "height": 1}]}
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[0].frame", "out_of_bounds")],
    ),
    (
        "keyframes out of order",
        [
            region(
                "video_track",
                "car",
                {
                    "keyframes": [
                        {"frame": 5, "x": 0, "y": 0, "width": 1, "height": 1},
                        {"frame": 3, "x": 0, "y": 0, "width": 1, "height": 1},
                    ]
                },
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[1].frame", "invalid_geometry")],
    ),
    (
        "keyframe twice",
        [
            region(
                "video_track",
                "car",
                {
                    "keyframes": [
                        {"frame": 5, "x": 0, "y": 0, "width": 1, "height": 1},
                        {"frame": 5, "x": 1, "y": 0, "width": 1, "height": 1},
                    ]
                },
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[1].frame", "invalid_geometry")],
    ),
    (
        "keyframe outside not a bool",
        [
            region(
                "video_track",
                "car",
                {"keyframes": [{"frame": 5, "x": 0, "y": 0, "width": 1, "height": 1, "outside": 1}]},
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[0].outside", "invalid_type")],
    ),
    (
        "keyframe interpolate not a bool",
        [
            region(
                "video_track",
                "car",
                {
                    "keyframes": [
                        {"frame": 5, "x": 0, "y": 0, "width": 1, "height": 1, "interpolate": "linear"}
                    ]
                },
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[0].interpolate", "invalid_type")],
    ),
    (
        "keyframe box outside",
        [
            region(
                "video_track",
                "car",
                {
                    "keyframes": [
                        {"frame": 0, "x": 0, "y": 0, "width": 1, "height": 1},
                        {"frame": 5, "x": 630, "y": 0, "width": 20, "height": 1},
                    ]
                },
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[1]", "out_of_bounds")],
    ),
    (
        "keyframe zero width",
        [
            region(
                "video_track", "car", {"keyframes": [{"frame": 5, "x": 0, "y": 0, "width": 0, "height": 1}]}
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[0].width", "invalid_geometry")],
    ),
    (
        "keyframe coordinate as string",
        [
            region(
                "video_track", "car", {"keyframes": [{"frame": 5, "x": "0", "y": 0, "width": 1, "height": 1}]}
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[0].x", "invalid_type")],
    ),
    (
        "keyframe unknown field",
        [
            region(
                "video_track",
                "car",
                {"keyframes": [{"frame": 5, "x": 0, "y": 0, "width": 1, "height": 1, "z": 1}]},
            )
        ],
        VIDEO,
        [(0, "geometry.keyframes[0].z", "unknown_field")],
    ),
    # cuboid
    (
        "cuboid yaw missing",
        [region("cuboid", "car", {"center": [0, 0, 0], "size": [1, 1, 1]})],
        CLOUD,
        [(0, "geometry.yaw", "required")],
    ),
    (
        "cuboid centre of two",
        [region("cuboid", "car", {"center": [0, 0], "size": [1, 1, 1], "yaw": 0})],
        CLOUD,
        [(0, "geometry.center", "invalid_type")],
    ),
    (
        "cuboid centre NaN",
        [region("cuboid", "car", {"center": [math.nan, 0, 0], "size": [1, 1, 1], "yaw": 0})],
        CLOUD,
        [(0, "geometry.center[0]", "invalid_type")],
    ),
    (
        "cuboid flat",
        [region("cuboid", "car", {"center": [0, 0, 0], "size": [1, 0, 1], "yaw": 0})],
        CLOUD,
        [(0, "geometry.size[1]", "invalid_geometry")],
    ),
    (
        "cuboid negative size",
        [region("cuboid", "car", {"center": [0, 0, 0], "size": [1, 1, -2], "yaw": 0})],
        CLOUD,
        [(0, "geometry.size[2]", "invalid_geometry")],
    ),
    (
        "cuboid yaw as string",
        [region("cuboid", "car", {"center": [0, 0, 0], "size": [1, 1, 1], "yaw": "0"})],
        CLOUD,
        [(0, "geometry.yaw", "invalid_type")],
    ),
    (
        "cuboid yaw infinite",
        [region("cuboid", "car", {"center": [0, 0, 0], "size": [1, 1, 1], "yaw": math.inf})],
        CLOUD,
        [(0, "geometry.yaw", "invalid_type")],
    ),
]


@pytest.mark.parametrize(
    ("regions", "item", "expected"),
    [variant[1:] for variant in INVALID],
    ids=[variant[0] for variant in INVALID],
)
def test_each_invalid_variant_is_reported_with_region_field_and_code(
    regions: list[Any], item: ItemFacts, expected: list[tuple[int | None, str, str]]
) -> None:
    assert problems(regions, item) == expected


@pytest.mark.parametrize(
    ("score", "code"),
    [
        (1.5, "out_of_range"),
        (-0.01, "out_of_range"),
        ("0.5", "invalid_type"),
        (math.nan, "invalid_type"),
        (True, "invalid_type"),
        (None, "invalid_type"),
    ],
)
def test_a_prediction_score_outside_zero_to_one_is_refused(score: Any, code: str) -> None:
    assert problems([box(score=score)], prediction=True) == [(0, "score", code)]


@pytest.mark.parametrize("regions", [None, {}, "[]", {"regions": []}])
def test_regions_that_are_not_a_list_are_refused_as_a_whole(regions: Any) -> None:
    assert problems(regions) == [(None, "", "invalid_type")]


def test_every_problem_of_every_region_is_reported_in_region_order() -> None:
    regions = [
        box(),
        box(id="r2", x=-5, attributes={"make": "vw"}),
        region("polygon", "car", {"points": [[0, 0], [10, 10], [10, 0], [0, 10]]}, id="r3"),
        region("relation", "drives", {"from": "r1", "to": "nope"}, id="r4"),
        region("span", "car", {"start": 0, "end": 1}, id="r1"),
    ]
    assert problems(regions) == [
        (1, "attributes.make", "unknown_option"),
        (1, "attributes.occluded", "required"),
        (1, "geometry.x", "out_of_bounds"),
        (2, "geometry.points", "invalid_geometry"),
        (3, "geometry.to", "unknown_region"),
        (4, "id", "duplicate_id"),
        (4, "type", "modality_mismatch"),
        (4, "type", "tool_not_allowed"),
    ]


def test_messages_say_what_is_wrong_and_what_is_accepted() -> None:
    with pytest.raises(RegionsInvalid) as caught:
        validate_regions([region("classification", "car"), box(id="b", x=600, width=50)], SCHEMA, IMAGE)
    tool, bounds = (error["message"] for error in caught.value.errors)
    assert "'car'" in tool and "bbox" in tool and "polygon" in tool
    assert "650" in bounds and "640" in bounds


def test_several_classifications_pass_when_the_schema_allows_multi() -> None:
    regions = [region("classification", "sunny", id="a"), region("classification", "rainy", id="b")]
    assert len(validate_regions(regions, MULTI, IMAGE)) == 2


def test_an_unlabelled_keypoint_may_sit_anywhere() -> None:
    (normal,) = validate_regions(
        [region("keypoints", "person", {"points": [[1, 1, 2], [-50, 9999, 0], [640, 480, 1]]})], SCHEMA, IMAGE
    )
    assert normal["geometry"]["points"][1] == [-50.0, 9999.0, 0]


def test_a_box_may_touch_the_edges_and_overshoot_them_by_float_noise() -> None:
    regions = [
        box(x=0, y=0, width=640, height=480, id="a"),
        box(x=0.1 + 0.2, y=0, width=639.7, height=480, id="b"),
    ]
    assert len(validate_regions(regions, SCHEMA, IMAGE)) == 2


def test_an_outside_keyframe_is_not_held_to_the_frame() -> None:
    keyframes = [
        {"frame": 0, "x": 600, "y": 10, "width": 30, "height": 30},
        {"frame": 10, "x": 700, "y": 10, "width": 30, "height": 30, "outside": True},
    ]
    (normal,) = validate_regions([region("video_track", "car", {"keyframes": keyframes})], SCHEMA, VIDEO)
    assert normal["geometry"]["keyframes"][1]["x"] == 700.0


def test_unknown_facts_are_not_checked() -> None:
    estimated = ItemFacts.from_item(
        "video", {"width": 64, "height": 48, "frames": 10, "frames_estimated": True}
    )
    track = region(
        "video_track", "car", {"keyframes": [{"frame": 500, "x": 0, "y": 0, "width": 5, "height": 5}]}
    )
    assert validate_regions([track], SCHEMA, estimated)[0]["geometry"]["keyframes"][0]["frame"] == 500

    unprobed = ItemFacts("image")
    assert validate_regions([box(x=5000, width=10)], SCHEMA, unprobed)[0]["geometry"]["x"] == 5000.0
    no_text = ItemFacts("text", length=10)
    assert validate_regions([region("span", "city", {"start": 0, "end": 3, "text": "any"})], SCHEMA, no_text)


def test_problems_of_a_region_with_an_unknown_class_still_cover_its_geometry() -> None:
    assert problems([region("bbox", "boat", {"x": 0, "y": 0, "width": -1, "height": 1})]) == [
        (0, "label", "unknown_class"),
        (0, "geometry.width", "invalid_geometry"),
    ]


# -- clip mode -----------------------------------------------------------------------------------


def test_clip_mode_cuts_boxes_to_the_image() -> None:
    (normal,) = validate_regions([box(x=-10, y=470, width=100, height=20)], CLIP, IMAGE)
    assert normal["geometry"] == {"x": 0.0, "y": 470.0, "width": 90.0, "height": 10.0}


def test_clip_mode_refuses_a_box_entirely_outside() -> None:
    assert problems([box(x=700, width=10)], schema=CLIP) == [(0, "geometry", "out_of_bounds")]
    assert problems([box(x=-20, width=20)], schema=CLIP) == [(0, "geometry", "out_of_bounds")]


def test_clip_mode_cuts_polygons_to_the_image() -> None:
    geometry = {
        "points": [[-100, 100], [100, -100], [300, 100], [100, 300]],
        "holes": [[[90, 90], [110, 90], [100, 110]]],
    }

    (normal,) = validate_regions([region("polygon", "car", geometry)], CLIP, IMAGE)

    clipped = Polygon(normal["geometry"]["points"], normal["geometry"]["holes"])
    expected = Polygon(geometry["points"], geometry["holes"]).intersection(
        Polygon([(0, 0), (640, 0), (640, 480), (0, 480)])
    )
    assert clipped.is_valid and clipped.symmetric_difference(expected).area < 1e-9
    assert len(normal["geometry"]["holes"]) == 1
    assert all(0 <= x <= 640 and 0 <= y <= 480 for x, y in normal["geometry"]["points"])


def test_clip_mode_refuses_a_polygon_the_edge_cuts_in_two() -> None:
    u_shape = [[600, 10], [700, 10], [700, 100], [600, 100], [600, 80], [680, 80], [680, 30], [600, 30]]
    assert problems([region("polygon", "car", {"points": u_shape})], schema=CLIP) == [
        (0, "geometry.points", "out_of_bounds")
    ]


def test_clip_mode_refuses_a_polygon_entirely_outside() -> None:
    geometry = {"points": [[700, 10], [800, 10], [800, 100]]}
    assert problems([region("polygon", "car", geometry)], schema=CLIP) == [
        (0, "geometry.points", "out_of_bounds")
    ]


def test_clip_mode_cuts_a_polyline_that_leaves_once() -> None:
    (normal,) = validate_regions(
        [region("polyline", "car", {"points": [[100, 100], [200, 100], [200, -100]]})], CLIP, IMAGE
    )
    assert normal["geometry"]["points"] == [[100.0, 100.0], [200.0, 100.0], [200.0, 0.0]]


def test_clip_mode_refuses_a_polyline_that_leaves_and_comes_back() -> None:
    points = [[100, 100], [100, -50], [200, -50], [200, 100]]
    assert problems([region("polyline", "car", {"points": points})], schema=CLIP) == [
        (0, "geometry.points", "out_of_bounds")
    ]


def test_clip_mode_keeps_a_rotated_box_whose_centre_is_on_the_image() -> None:
    geometry = {"cx": 630, "cy": 240, "width": 60, "height": 10, "angle": 45}
    (normal,) = validate_regions([region("rotated_bbox", "car", geometry)], CLIP, IMAGE)
    assert normal["geometry"]["cx"] == 630.0 and normal["geometry"]["width"] == 60.0
    outside = {**geometry, "cx": 650}
    assert problems([region("rotated_bbox", "car", outside)], schema=CLIP) == [
        (0, "geometry", "out_of_bounds")
    ]


def test_clip_mode_cuts_keyframe_boxes() -> None:
    keyframes = [
        {"frame": 0, "x": 600, "y": -10, "width": 100, "height": 20},
        {"frame": 1, "x": 700, "y": 10, "width": 10, "height": 10},
    ]
    assert problems([region("video_track", "car", {"keyframes": keyframes})], VIDEO, CLIP) == [
        (0, "geometry.keyframes[1]", "out_of_bounds")
    ]
    (normal,) = validate_regions([region("video_track", "car", {"keyframes": keyframes[:1]})], CLIP, VIDEO)
    kept = normal["geometry"]["keyframes"][0]
    assert (kept["x"], kept["y"], kept["width"], kept["height"]) == (600.0, 0.0, 40.0, 10.0)


def test_clip_mode_still_refuses_keypoints_outside() -> None:
    geometry = {"points": [[1, 1, 2], [700, 1, 2], [1, 1, 2]]}
    assert problems([region("keypoints", "person", geometry)], schema=CLIP) == [
        (0, "geometry.points[1]", "out_of_bounds")
    ]


# -- item facts ----------------------------------------------------------------------------------


def test_item_facts_come_from_each_modality_s_probe() -> None:
    assert ItemFacts.from_item("image", {"width": 640, "height": 480, "format": "JPEG"}) == IMAGE
    assert ItemFacts.from_item("dicom", {"rows": 512, "columns": 256, "frames": 1}) == ItemFacts(
        "dicom", width=256, height=512
    )
    assert ItemFacts.from_item(
        "video", {"width": 1920, "height": 1080, "duration_s": 12.5, "frames": 300, "frames_estimated": False}
    ) == ItemFacts("video", width=1920, height=1080, duration=12.5, frames=300)
    assert (
        ItemFacts.from_item(
            "video", {"width": 2, "height": 2, "duration_s": 1, "frames": 30, "frames_estimated": True}
        ).frames
        is None
    )
    assert ItemFacts.from_item("audio", {"duration_s": 3.25, "channels": 2}) == ItemFacts(
        "audio", duration=3.25
    )
    assert ItemFacts.from_item("text", {"length": 30, "lines": 1}, TEXT_CONTENT) == ItemFacts(
        "text", length=30, text=TEXT_CONTENT
    )
    assert ItemFacts.from_item("text", {}, "abc").length == 3
    assert ItemFacts.from_item("text", {"length": 0}).length == 0
    for modality in ("pointcloud", "multisensor", "pdf"):
        assert ItemFacts.from_item(modality, {"points": 100, "width": 5}) == ItemFacts(modality)


def test_item_facts_ignore_missing_or_malformed_values() -> None:
    assert ItemFacts.from_item("image", {}) == ItemFacts("image")
    assert ItemFacts.from_item("image", {"width": "640", "height": -1}) == ItemFacts("image")
    assert ItemFacts.from_item("audio", {"duration_s": None}) == ItemFacts("audio")


# -- properties ----------------------------------------------------------------------------------

WIDTHS = st.integers(min_value=1, max_value=5000)


@st.composite
def boxes_inside(draw: st.DrawFn) -> tuple[int, int, list[float]]:
    width, height = draw(WIDTHS), draw(WIDTHS)
    x = draw(st.floats(min_value=0, max_value=width, exclude_max=True))
    y = draw(st.floats(min_value=0, max_value=height, exclude_max=True))
    w = draw(st.floats(min_value=0, max_value=width - x, exclude_min=True))
    h = draw(st.floats(min_value=0, max_value=height - y, exclude_min=True))
    assume(w > 0 and h > 0)
    return width, height, [x, y, w, h]


@given(boxes_inside())
def test_property_boxes_inside_the_image_pass_unchanged(case: tuple[int, int, list[float]]) -> None:
    width, height, (x, y, w, h) = case
    for schema in (SCHEMA, CLIP):
        (normal,) = validate_regions(
            [box(x, y, w, h)], schema, ItemFacts("image", width=width, height=height)
        )
        assert normal["geometry"] == {"x": x, "y": y, "width": w, "height": h}


@given(
    boxes_inside(),
    st.floats(min_value=1e-3, max_value=1e4),
    st.sampled_from(["left", "right", "up", "down"]),
)
def test_property_boxes_shifted_beyond_an_edge_are_refused_or_clipped(
    case: tuple[int, int, list[float]], overshoot: float, direction: str
) -> None:
    width, height, (x, y, w, h) = case
    item = ItemFacts("image", width=width, height=height)
    if direction == "left":
        x, field = -overshoot, "geometry.x"
    elif direction == "right":
        x, field = width - w + overshoot, "geometry.width"
    elif direction == "up":
        y, field = -overshoot, "geometry.y"
    else:
        y, field = height - h + overshoot, "geometry.height"

    assert problems([box(x, y, w, h)], item) == [(0, field, "out_of_bounds")]

    try:
        (normal,) = validate_regions([box(x, y, w, h)], CLIP, item)
    except RegionsInvalid as refused:
        # Only a box that has left the image completely has nothing to keep.
        assert [(e["field"], e["code"]) for e in refused.errors] == [("geometry", "out_of_bounds")]
        assert x >= width or y >= height or x + w <= 0 or y + h <= 0
    else:
        g = normal["geometry"]
        assert g["width"] > 0 and g["height"] > 0
        assert g["x"] >= 0 and g["x"] + g["width"] <= width + 1e-9
        assert g["y"] >= 0 and g["y"] + g["height"] <= height + 1e-9


@st.composite
def convex_polygons(draw: st.DrawFn, size: int = 1000) -> list[list[float]]:
    count = draw(st.integers(min_value=3, max_value=24))
    radius = draw(st.floats(min_value=2, max_value=size / 2 - 1))
    cx = draw(st.floats(min_value=radius, max_value=size - radius))
    cy = draw(st.floats(min_value=radius, max_value=size - radius))
    jitter = draw(st.lists(st.floats(min_value=-0.3, max_value=0.3), min_size=count, max_size=count))
    step = 2 * math.pi / count
    return [
        [cx + radius * math.cos((k + jitter[k]) * step), cy + radius * math.sin((k + jitter[k]) * step)]
        for k in range(count)
    ]


@given(convex_polygons())
def test_property_convex_polygons_inside_pass(points: list[list[float]]) -> None:
    (normal,) = validate_regions(
        [region("polygon", "car", {"points": points})], SCHEMA, ItemFacts("image", width=1000, height=1000)
    )
    assert normal["geometry"]["points"] == points


@example(
    points=[[4.0, 2.0], [2.0, 4.0], [0.0, 2.0000000000000004], [1.9999999999999996, 0.0]],
    dx=0.0,
    dy=-1.8394054720285649e-147,
)  # a vertex a rounding error above the image, kept by GEOS
@given(convex_polygons(), st.floats(min_value=-800, max_value=800), st.floats(min_value=-800, max_value=800))
def test_property_shifted_convex_polygons_clip_into_the_image(
    points: list[list[float]], dx: float, dy: float
) -> None:
    shifted = [[x + dx, y + dy] for x, y in points]
    item = ItemFacts("image", width=1000, height=1000)
    frame = Polygon([(0, 0), (1000, 0), (1000, 1000), (0, 1000)])
    expected = Polygon(shifted).intersection(frame)
    try:
        (normal,) = validate_regions([region("polygon", "car", {"points": shifted})], CLIP, item)
    except RegionsInvalid as refused:
        assert [(e["field"], e["code"]) for e in refused.errors] == [("geometry.points", "out_of_bounds")]
        assert expected.area < 1e-6  # a convex shape meets the frame in one piece or not at all
    else:
        clipped = Polygon(normal["geometry"]["points"])
        assert all(0 <= x <= 1000 and 0 <= y <= 1000 for x, y in normal["geometry"]["points"])
        assert abs(clipped.area - expected.area) <= 1e-6 * max(1.0, expected.area)


@given(
    st.integers(min_value=0, max_value=500),
    st.integers(min_value=0, max_value=500),
    st.integers(min_value=1, max_value=500),
    st.integers(min_value=1, max_value=500),
)
def test_property_bow_ties_are_refused(x: int, y: int, width: int, height: int) -> None:
    points = [[x, y], [x + width, y + height], [x + width, y], [x, y + height]]
    assert problems(
        [region("polygon", "car", {"points": points})], ItemFacts("image", width=1000, height=1000)
    ) == [(0, "geometry.points", "invalid_geometry")]


@given(st.text(min_size=1, max_size=40), st.data())
def test_property_spans_inside_the_text_pass_and_beyond_it_fail(text: str, data: st.DataObject) -> None:
    item = ItemFacts.from_item("text", {"length": len(text)}, text)
    start = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    end = data.draw(st.integers(min_value=start + 1, max_value=len(text)))
    (normal,) = validate_regions(
        [region("span", "city", {"start": start, "end": end, "text": text[start:end]})], SCHEMA, item
    )
    assert normal["geometry"] == {"start": start, "end": end, "text": text[start:end]}

    beyond = data.draw(st.integers(min_value=len(text) + 1, max_value=len(text) + 100))
    assert problems([region("span", "city", {"start": start, "end": beyond})], item) == [
        (0, "geometry.end", "out_of_bounds")
    ]


@given(
    st.floats(min_value=0.01, max_value=1e5),
    st.floats(min_value=0, max_value=1, exclude_max=True),
    st.floats(min_value=0, max_value=1, exclude_min=True),
)
def test_property_segments_within_the_duration_pass_and_beyond_it_fail(
    duration: float, start_share: float, length_share: float
) -> None:
    item = ItemFacts("audio", duration=duration)
    start = duration * start_share
    end = start + (duration - start) * length_share
    assume(end > start)
    (normal,) = validate_regions(
        [region("time_segment", "speech", {"start": start, "end": end})], SCHEMA, item
    )
    assert normal["geometry"] == {"start": start, "end": end}
    late = duration * 1.001 + 1e-3
    assert problems([region("time_segment", "speech", {"start": start, "end": late})], item) == [
        (0, "geometry.end", "out_of_bounds")
    ]


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=640), st.floats(min_value=0, max_value=480), st.integers(1, 2)
        ),
        min_size=3,
        max_size=3,
    ),
    st.integers(min_value=0, max_value=2),
)
def test_property_keypoints_inside_pass_and_any_visible_one_outside_fails(
    points: list[tuple[float, float, int]], moved: int
) -> None:
    geometry = {"points": [list(point) for point in points]}
    (normal,) = validate_regions([region("keypoints", "person", geometry)], SCHEMA, IMAGE)
    assert normal["geometry"]["points"] == [[x, y, v] for x, y, v in points]
    geometry["points"][moved][0] = 641.0
    assert problems([region("keypoints", "person", geometry)]) == [
        (0, f"geometry.points[{moved}]", "out_of_bounds")
    ]


@settings(max_examples=60)
@given(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=40),
    st.data(),
)
def test_property_masks_encoded_by_pycocotools_pass_and_other_sizes_fail(
    height: int, width: int, data: st.DataObject
) -> None:
    bits = data.draw(st.lists(st.booleans(), min_size=height * width, max_size=height * width))
    assume(any(bits))
    array = np.array(bits, dtype=np.uint8).reshape(height, width)
    counts = mask_counts(array)
    item = ItemFacts("image", width=width, height=height)
    rle = {"size": [height, width], "counts": counts}

    (normal,) = validate_regions([region("mask", "car", {"rle": rle})], SCHEMA, item)
    assert normal["geometry"]["rle"] == rle
    runs = rle_runs(counts)
    assert runs is not None
    assert (
        sum(runs[1::2])
        == int(coco_mask.area({"size": [height, width], "counts": counts.encode()}))
        == array.sum()
    )

    (from_runs,) = validate_regions(
        [region("mask", "car", {"rle": {"size": [height, width], "counts": runs}})], SCHEMA, item
    )
    assert from_runs["geometry"]["rle"]["counts"] == counts

    larger = ItemFacts("image", width=width + 1, height=height)
    assert problems([region("mask", "car", {"rle": rle})], larger) == [
        (0, "geometry.rle.size", "invalid_geometry")
    ]


@settings(max_examples=200)
@given(st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=111), max_size=12))
def test_property_rle_strings_either_decode_to_non_negative_runs_or_are_refused(counts: str) -> None:
    runs = rle_runs(counts)
    if runs is not None:
        assert all(run >= 0 for run in runs)
        total = sum(runs)
        assume(0 < total <= 10**6 and sum(runs[1::2]) > 0)
        # Where the runs are a mask of one row, pycocotools reads the same area.
        rle = {"size": [1, total], "counts": counts.encode()}
        assert int(coco_mask.area(rle)) == sum(runs[1::2])


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["bbox", "polygon", "car", "person", "r1", "points", "rle", "keyframes"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
GEOMETRY_KEYS = st.sampled_from(
    [
        "x",
        "y",
        "width",
        "height",
        "points",
        "holes",
        "rle",
        "size",
        "counts",
        "start",
        "end",
        "text",
        "from",
        "to",
        "region",
        "keyframes",
        "frame",
        "center",
        "yaw",
        "cx",
        "cy",
        "angle",
    ]
)


@settings(max_examples=300)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "id": st.sampled_from(["r1", "r2"]) | JSON,
                "type": st.sampled_from(
                    [
                        *SCHEMA.classes["car"].tools,
                        "keypoints",
                        "span",
                        "relation",
                        "transcription",
                        "time_segment",
                        "classification",
                    ]
                ),
                "label": st.sampled_from(list(SCHEMA.classes)),
            },
            optional={
                "attributes": JSON,
                "geometry": st.dictionaries(GEOMETRY_KEYS, JSON, max_size=5) | JSON,
                "score": JSON,
            },
        )
        | JSON,
        max_size=4,
    ),
    st.sampled_from([IMAGE, TEXT, AUDIO, VIDEO, CLOUD]),
    st.sampled_from([SCHEMA, CLIP]),
    st.booleans(),
)
def test_property_any_json_is_either_accepted_or_refused_with_errors(
    regions: Any, item: ItemFacts, schema: Schema, prediction: bool
) -> None:
    try:
        normal = validate_regions(regions, schema, item, prediction=prediction)
    except RegionsInvalid as refused:
        assert refused.errors
        assert all(isinstance(error["message"], str) for error in refused.errors)
    else:
        # What is accepted is accepted again, unchanged: normal form is a fixed point.
        assert validate_regions(normal, schema, item, prediction=prediction) == normal


def test_validate_many_judges_each_list_alone_with_one_polygon_pass() -> None:
    schema = parse_schema({"classes": [{"name": "roof", "color": "#112233", "tools": ["polygon", "bbox"]}]})
    image = ItemFacts(modality="image", width=100, height=100)
    square = {
        "id": "a",
        "type": "polygon",
        "label": "roof",
        "geometry": {"points": [[0, 0], [10, 0], [10, 10], [0, 10]]},
    }
    bowtie = {
        "id": "b",
        "type": "polygon",
        "label": "roof",
        "geometry": {"points": [[0, 0], [10, 10], [10, 0], [0, 10]]},
    }
    outside = {
        "id": "c",
        "type": "bbox",
        "label": "roof",
        "geometry": {"x": 95, "y": 0, "width": 10, "height": 5},
    }
    results = validate_many(
        [([square], image), ([square, bowtie], image), ("nope", image), ([outside, square], image)], schema
    )
    assert results[0][0] is not None and results[0][1] == []
    assert results[1][0] is None and [(e["region"], e["code"]) for e in results[1][1]] == [
        (1, "invalid_geometry")
    ]
    assert results[2][0] is None and results[2][1][0]["code"] == "invalid_type"
    assert results[3][0] is None and [(e["region"], e["code"]) for e in results[3][1]] == [
        (0, "out_of_bounds")
    ]
    # The same verdicts one list at a time.
    for (regions, item), (normalized, errors) in zip(
        [([square], image), ([square, bowtie], image)], results[:2], strict=True
    ):
        if errors:
            with pytest.raises(RegionsInvalid):
                validate_regions(regions, schema, item)
        else:
            assert validate_regions(regions, schema, item) == normalized
