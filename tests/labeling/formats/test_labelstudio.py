"""Label Studio JSON: a documented export imports intact, Loupe exports round-trip, errors point home."""

from __future__ import annotations

import io
import json
import logging
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labeling.formats import get_format, labelstudio
from labeling.formats.base import ExportItem, ItemIndex, ItemInfo, LabelClass

CLASSES = [
    LabelClass("car", tools=("bbox", "rotated_bbox", "polygon", "transcription"),
               attributes=("color", "doors", "plate", "tags", "parked", "speed")),
    LabelClass("sunny", tools=("classification",)),
    LabelClass("caption", tools=("transcription",)),
    LabelClass("nose", tools=("keypoints",), keypoints=("tip",)),
    LabelClass("person", tools=("keypoints",), keypoints=("head", "left_hand", "right_hand"),
               edges=((0, 1), (0, 2))),
    LabelClass("PER", tools=("span",)),
    LabelClass("LOC", tools=("span",)),
    LabelClass("visited", tools=("relation",)),
    LabelClass("speech", tools=("time_segment", "transcription")),
    LabelClass("moving", tools=("time_segment", "video_track")),
    LabelClass("related", tools=("relation",)),
]  # fmt: skip


def run_import(tasks: Any, items: list[ItemInfo]) -> Any:
    data = tasks if isinstance(tasks, bytes) else json.dumps(tasks).encode("utf-8")
    return labelstudio.import_(io.BytesIO(data), CLASSES, ItemIndex(items))


def export_bytes(items: list[ExportItem]) -> bytes:
    out = io.BytesIO()
    labelstudio.export(iter(items), CLASSES, out)
    return out.getvalue()


# --- a Label Studio export, in its documented shape ----------------------------------------------

IMAGE = ItemInfo(1, "images/1.jpg", "image", width=1000, height=500)
TEXT = ItemInfo(2, "texts/obama.txt", "text", length=27, text="Barack Obama visited Paris.")
AUDIO = ItemInfo(3, "audio/call.wav", "audio", duration=10.0)
VIDEO = ItemInfo(4, "videos/clip.mp4", "video", width=640, height=480, frames=1051, duration=42.008633)
ITEMS = [IMAGE, TEXT, AUDIO, VIDEO]


def rect(
    rid: str, x: float, y: float, w: float, h: float, rotation: float, label: str = "car"
) -> dict[str, Any]:
    return {
        "original_width": 1000, "original_height": 500, "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]},
        "id": rid, "from_name": "tag", "to_name": "img", "type": "rectanglelabels", "origin": "manual",
    }  # fmt: skip


LS_EXPORT: list[dict[str, Any]] = [
    {
        "id": 1,
        "data": {"image": "https://example.com/opensource/label-studio/1.jpg"},
        "annotations": [
            {
                "id": 1001,
                "completed_by": 10,
                "result": [
                    rect("Dx_aB91ISN", 10, 20, 30, 10, 0),
                    rect("rot90", 10, 20, 30, 10, 90),
                    rect("rot30", 50, 50, 20, 10, 30),
                    {"id": "Dx_aB91ISN", "from_name": "color", "to_name": "img", "type": "choices",
                     "value": {"choices": ["red"]}, "origin": "manual"},
                    {"id": "Dx_aB91ISN", "from_name": "plate", "to_name": "img", "type": "textarea",
                     "value": {"text": ["B-XY 123"]}, "origin": "manual"},
                    {"id": "Dx_aB91ISN", "from_name": "doors", "to_name": "img", "type": "number",
                     "value": {"number": 4}, "origin": "manual"},
                    {"id": "Dx_aB91ISN", "from_name": "tags", "to_name": "img", "type": "choices",
                     "value": {"choices": ["parked", "old"]}, "origin": "manual"},
                    {"id": "rot90", "from_name": "transcription", "to_name": "img", "type": "textarea",
                     "value": {"text": ["KA 1234", "second line"]}, "origin": "manual"},
                    {"original_width": 1000, "original_height": 500, "image_rotation": 0,
                     "value": {"points": [[10, 10], [20, 10], [20, 30]], "closed": True,
                               "polygonlabels": ["car"]},
                     "id": "poly1", "from_name": "poly", "to_name": "img", "type": "polygonlabels"},
                    {"id": "cls1", "from_name": "weather", "to_name": "img", "type": "choices",
                     "value": {"choices": ["sunny"]}},
                    {"id": "txt1", "from_name": "caption", "to_name": "img", "type": "textarea",
                     "value": {"text": ["a car on a road"]}},
                    {"original_width": 1000, "original_height": 500, "image_rotation": 0,
                     "value": {"x": 50, "y": 50, "width": 0.75, "keypointlabels": ["nose"]},
                     "id": "kp1", "from_name": "kp", "to_name": "img", "type": "keypointlabels"},
                ],
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": "2021-03-09T22:16:08.728353Z",
                "updated_at": "2021-03-09T22:16:08.728378Z",
                "lead_time": 4.288,
                "result_count": 0,
                "task": 1,
            },
            {"id": 1002, "result": [], "was_cancelled": True, "ground_truth": False, "task": 1},
        ],
        "predictions": [
            {"created_ago": "3 hours", "model_version": "model 1", "score": 0.87,
             "result": [rect("t5sp3TyXPo", 13.2, 34.702495201535505, 39.6, 11.612284069097889, 0)]},
            {"created_ago": "4 hours", "model_version": "model 2",
             "result": [{**rect("t5sp3TyXPo", 13.2, 54.7, 39.6, 33.6, 0), "score": 0.42}]},
        ],
        "created_at": "2021-03-09T21:52:49.513742Z",
        "updated_at": "2021-03-09T22:16:08.746926Z",
        "project": 83,
    },
    {
        "id": 2,
        "data": {"text": "Barack Obama visited Paris."},
        "file_upload": "3f2a9c1e-obama.txt",
        "annotations": [
            {
                "id": 2001,
                "result": [
                    {"value": {"start": 0, "end": 12, "text": "Barack Obama", "labels": ["PER"]},
                     "id": "ent1", "from_name": "label", "to_name": "text", "type": "labels",
                     "origin": "manual"},
                    {"value": {"start": 21, "end": 26, "text": "Paris", "labels": ["LOC"]},
                     "id": "ent2", "from_name": "label", "to_name": "text", "type": "labels",
                     "origin": "manual"},
                    {"from_id": "ent1", "to_id": "ent2", "type": "relation", "direction": "right",
                     "labels": ["visited"]},
                ],
                "was_cancelled": False,
                "ground_truth": True,
                "lead_time": 12.5,
            }
        ],
        "predictions": [],
    },
    {
        "id": 3,
        "data": {"audio": "/data/upload/1/5d2b1c0a-call.wav"},
        "annotations": [
            {
                "id": 3001,
                "result": [
                    {"original_length": 10.0,
                     "value": {"start": 1.5, "end": 3.25, "channel": 0, "labels": ["speech"]},
                     "id": "seg1", "from_name": "labels", "to_name": "audio", "type": "labels"},
                    {"original_length": 10.0,
                     "value": {"start": 1.5, "end": 3.25, "channel": 0, "text": ["hello there"]},
                     "id": "seg1", "from_name": "transcription", "to_name": "audio", "type": "textarea"},
                ],
            }
        ],
    },
    {
        "id": 4,
        "data": {"video": "/data/local-files/?d=videos/clip.mp4"},
        "annotations": [
            {
                "id": 4001,
                "result": [
                    {"value": {"framesCount": 1051, "duration": 42.008633, "labels": ["moving"], "sequence": [
                        {"x": 16, "y": 51, "width": 30, "height": 28, "rotation": 0, "enabled": True,
                         "frame": 1, "time": 0.04},
                        {"x": 44.7, "y": 51.5, "width": 30.1, "height": 28.8, "rotation": 0, "enabled": True,
                         "frame": 18, "time": 0.72},
                        {"x": 44.7, "y": 51.5, "width": 30.1, "height": 28.8, "rotation": 0, "enabled": False,
                         "frame": 25, "time": 1},
                    ]},
                     "id": "trk1", "from_name": "box", "to_name": "video", "type": "videorectangle",
                     "origin": "manual"},
                    {"value": {"ranges": [{"start": 3, "end": 5}], "timelinelabels": ["moving"]},
                     "id": "tl1", "from_name": "timelineLabels", "to_name": "video",
                     "type": "timelinelabels"},
                ],
            }
        ],
    },
]  # fmt: skip


def test_registry_and_flags() -> None:
    assert get_format("labelstudio") is labelstudio
    assert (labelstudio.media_type, labelstudio.extension) == ("application/json", ".json")
    assert labelstudio.can_import and labelstudio.can_export


def test_documented_export_imports_intact() -> None:
    result = run_import(LS_EXPORT, ITEMS)
    assert result.errors == []
    assert [(r.where, r.item.id) for r in result.records] == [
        ("tasks[0].annotations[0]", 1),  # annotations[1] was cancelled: not imported
        ("tasks[0].predictions[0]", 1),
        ("tasks[0].predictions[1]", 1),
        ("tasks[1].annotations[0]", 2),
        ("tasks[2].annotations[0]", 3),
        ("tasks[3].annotations[0]", 4),
    ]
    image, pred1, pred2, text, audio, video = result.records

    regions = {r["id"]: r for r in image.regions}
    assert [r["type"] for r in image.regions] == [
        "bbox", "rotated_bbox", "rotated_bbox", "transcription", "polygon", "classification", "transcription",
        "keypoints",
    ]  # fmt: skip
    assert all("score" not in r for r in image.regions)

    # x = 10 % of 1000 px, y = 20 % of 500 px, …
    box = regions["Dx_aB91ISN"]
    assert box["geometry"] == {"x": 100.0, "y": 100.0, "width": 300.0, "height": 50.0}
    assert box["label"] == "car"
    assert box["attributes"] == {"color": "red", "plate": "B-XY 123", "doors": 4, "tags": ["parked", "old"]}

    # Rotated 90° clockwise around the top-left corner (100, 100): the box hangs down-left of it.
    r90 = regions["rot90"]["geometry"]
    assert r90 == {"cx": 75.0, "cy": 250.0, "width": 300.0, "height": 50.0, "angle": 90.0}
    # Rotated 30°: the centre is the top-left corner plus the rotated half diagonal.
    r30 = regions["rot30"]["geometry"]
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    assert r30["cx"] == pytest.approx(500 + 100 * c - 25 * s) and r30["cx"] == pytest.approx(574.1025404)
    assert r30["cy"] == pytest.approx(250 + 100 * s + 25 * c) and r30["cy"] == pytest.approx(321.6506351)
    assert (r30["width"], r30["height"], r30["angle"]) == (200.0, 50.0, 30.0)
    # …and turning the centre form back gives Label Studio's corner.
    corner = (r30["cx"] - 100 * c + 25 * s, r30["cy"] - 100 * s - 25 * c)
    assert corner == pytest.approx((500.0, 250.0))

    tied = image.regions[3]
    assert tied["geometry"] == {"text": "KA 1234\nsecond line", "region": "rot90"}
    assert tied["label"] == "car" and tied["id"] == "r1"  # an id no Label Studio result uses
    assert regions["poly1"]["geometry"] == {
        "points": [[100.0, 50.0], [200.0, 50.0], [200.0, 150.0]],
        "holes": [],
    }
    assert regions["cls1"]["label"] == "sunny" and regions["cls1"]["geometry"] == {}
    assert regions["txt1"] == {"id": "txt1", "type": "transcription", "label": "caption", "attributes": {},
                               "geometry": {"text": "a car on a road"}}  # fmt: skip
    assert regions["kp1"]["geometry"] == {"points": [[500.0, 250.0, 2]]} and regions["kp1"]["label"] == "nose"
    assert len({r["id"] for r in image.regions}) == len(image.regions)

    # Predictions: separate records, score from the result, else from the prediction.
    assert pred1.regions[0]["score"] == 0.87 and pred2.regions[0]["score"] == 0.42
    assert pred1.regions[0]["geometry"] == pytest.approx(
        {"x": 132.0, "y": 173.51247600767752, "width": 396.0, "height": 58.061420345489445}
    )

    # Text: spans with their text, and the relation between them.
    assert [(r["id"], r["type"], r["label"], r["geometry"]) for r in text.regions] == [
        ("ent1", "span", "PER", {"start": 0, "end": 12, "text": "Barack Obama"}),
        ("ent2", "span", "LOC", {"start": 21, "end": 26, "text": "Paris"}),
        (text.regions[2]["id"], "relation", "visited", {"from": "ent1", "to": "ent2"}),
    ]
    assert text.regions[2]["id"] not in ("ent1", "ent2")

    # Audio: a time segment in seconds with its transcription tied to it.
    assert audio.regions[0] == {"id": "seg1", "type": "time_segment", "label": "speech", "attributes": {},
                                "geometry": {"start": 1.5, "end": 3.25}}  # fmt: skip
    assert audio.regions[1]["type"] == "transcription" and audio.regions[1]["label"] == "speech"
    assert audio.regions[1]["geometry"] == {
        "text": "hello there",
        "region": "seg1",
        "start": 1.5,
        "end": 3.25,
    }

    # Video: keyframes 0-based in pixels; enabled: false ends the track; the timeline range in seconds.
    track, timeline = video.regions
    assert track["type"] == "video_track" and track["label"] == "moving"
    frames = track["geometry"]["keyframes"]
    assert [(k["frame"], k["outside"], k["interpolate"]) for k in frames] == [
        (0, False, True), (17, False, True), (24, True, True)
    ]  # fmt: skip
    assert frames[0] | {"frame": 0} == pytest.approx(
        {
            "frame": 0,
            "x": 102.4,
            "y": 244.8,
            "width": 192.0,
            "height": 134.4,
            "outside": False,
            "interpolate": True,
        }
    )
    fps = 1051 / 42.008633
    assert timeline["type"] == "time_segment"
    assert timeline["geometry"] == pytest.approx({"start": 2 / fps, "end": 5 / fps})


def test_documented_export_survives_a_loupe_round_trip() -> None:
    """What came from Label Studio exports back to Label Studio and imports the same again."""
    first = run_import(LS_EXPORT, ITEMS)
    exported = export_bytes([ExportItem(r.item, r.regions) for r in first.records])
    second = run_import(exported, ITEMS)
    assert second.errors == []
    assert [r.item.id for r in second.records] == [r.item.id for r in first.records]
    for a, b in zip(first.records, second.records, strict=True):
        assert [(r["type"], r["label"], r["attributes"]) for r in a.regions] == [
            (r["type"], r["label"], r["attributes"]) for r in b.regions
        ]
        for ra, rb in zip(a.regions, b.regions, strict=True):
            assert close(ra["geometry"], rb["geometry"], 1e-6)
            if ra["type"] not in ("relation", "transcription"):
                assert ra["id"] == rb["id"]


def test_export_shape_for_label_studio() -> None:
    regions = [
        {"id": "b1", "type": "bbox", "label": "car",
         "attributes": {"color": "red", "parked": True, "doors": 3},
         "geometry": {"x": 100, "y": 50, "width": 300, "height": 100}},
        {"id": "b2", "type": "rotated_bbox", "label": "car", "attributes": {},
         "geometry": {"cx": 75, "cy": 250, "width": 300, "height": 50, "angle": -90}},
        {"id": "c1", "type": "classification", "label": "sunny", "attributes": {}, "geometry": {}},
        {"id": "t1", "type": "transcription", "label": "car", "attributes": {},
         "geometry": {"text": "KA 1", "region": "b1"}},
        {"id": "rel", "type": "relation", "label": "related", "attributes": {},
         "geometry": {"from": "b1", "to": "b2"}},
    ]  # fmt: skip
    [task] = json.loads(export_bytes([ExportItem(IMAGE, regions, annotation_id=77)]))
    assert task["id"] == 1 and task["data"] == {"image": "images/1.jpg", "loupe_item": "images/1.jpg"}
    assert task["predictions"] == [] and task["annotations"][0]["id"] == 77
    result = task["annotations"][0]["result"]
    assert result[0] == {
        "id": "b1", "type": "rectanglelabels", "from_name": "bbox", "to_name": "image",
        "original_width": 1000, "original_height": 500, "image_rotation": 0,
        "value": {"x": 10.0, "y": 10.0, "width": 30.0, "height": 20.0, "rotation": 0,
                  "rectanglelabels": ["car"]},
    }  # fmt: skip
    assert [(r["from_name"], r["type"], r["value"]) for r in result[1:4]] == [
        ("color", "choices", {"choices": ["red"]}),
        ("parked", "choices", {"choices": ["true"]}),
        ("doors", "number", {"number": 3}),
    ]
    # -90° is 270° clockwise around the top-left corner: centre (75, 250) - (-25, 150) = (50, 400).
    assert result[4]["value"] == {"x": 5.0, "y": 80.0, "width": 30.0, "height": 10.0, "rotation": 270.0,
                                  "rectanglelabels": ["car"]}  # fmt: skip
    assert result[5]["type"] == "choices" and result[5]["value"] == {"choices": ["sunny"]}
    assert result[6] == {"id": "b1", "type": "textarea", "from_name": "car", "to_name": "image",
                         "value": {"text": ["KA 1"]}}  # fmt: skip
    assert result[7] == {"from_id": "b1", "to_id": "b2", "type": "relation", "direction": "right",
                         "labels": ["related"]}  # fmt: skip


def test_export_with_scores_is_a_prediction_and_unexportable_regions_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    regions: list[dict[str, Any]] = [
        {"id": "b1", "type": "bbox", "label": "car", "attributes": {}, "score": 0.5,
         "geometry": {"x": 1, "y": 1, "width": 2, "height": 2}},
        {"id": "m1", "type": "mask", "label": "car", "attributes": {}, "geometry": {"rle": {}}},
        {"id": "p1", "type": "polygon", "label": "car", "attributes": {},
         "geometry": {"points": [[0, 0], [9, 0], [0, 9]], "holes": [[[1, 1], [2, 1], [1, 2]]]}},
    ]  # fmt: skip
    unsized = ItemInfo(9, "x.png", "image")
    box = {"id": "b", "type": "bbox", "label": "car", "attributes": {},
           "geometry": {"x": 1, "y": 1, "width": 2, "height": 2}}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="labeling.formats.labelstudio"):
        task, other = json.loads(export_bytes([ExportItem(IMAGE, regions), ExportItem(unsized, [box])]))
    assert other["annotations"][0]["result"] == []
    assert task["annotations"] == [] and task["predictions"][0]["result"][0]["score"] == 0.5
    assert len(task["predictions"][0]["result"]) == 1
    message = caplog.records[-1].getMessage()
    assert "1 mask regions" in message and "1 polygon with holes" in message
    assert "1 image regions of an item without a known size" in message
    [record] = run_import(json.dumps([task]).encode(), [IMAGE]).records
    assert record.where == "tasks[0].predictions[0]" and record.regions[0]["score"] == 0.5


def test_export_writes_to_a_write_only_stream_as_the_items_come() -> None:
    class WriteOnly:
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        def write(self, data: bytes) -> int:
            self.chunks.append(data)
            return len(data)

    pulled: list[int] = []

    def items() -> Any:
        for n in range(3):
            pulled.append(n)
            assert len(out.chunks) == n + 1  # "[" plus one chunk per task already written
            yield ExportItem(ItemInfo(n + 1, f"t{n}.txt", "text", text="hi"), [])

    out = WriteOnly()
    labelstudio.export(items(), CLASSES, out)  # type: ignore[arg-type]
    assert pulled == [0, 1, 2]
    tasks = json.loads(b"".join(out.chunks))
    assert [t["data"] for t in tasks] == [{"text": "hi", "loupe_item": f"t{n}.txt"} for n in range(3)]
    assert json.loads(export_bytes([])) == []


# --- bad input ---------------------------------------------------------------------------------


def test_bad_results_are_reported_with_their_place_and_good_ones_kept() -> None:
    tasks: list[Any] = [
        {
            "id": 1,
            "data": {"image": "s3://bucket/images/1.jpg?X-Amz-Signature=abc"},
            "annotations": [{"result": [
                rect("ok", 10, 10, 10, 10, 0),
                rect("bus", 10, 10, 10, 10, 0, label="bus"),  # 1: not a class
                rect("flat", 10, 10, 0, 10, 0),  # 2: width 0
                {"id": "br", "type": "brushlabels", "from_name": "brush", "to_name": "img",  # 3
                 "value": {"format": "rle", "rle": [1, 2, 3], "brushlabels": ["car"]}},
                "not a result",  # 4
                {"id": "kp", "type": "keypointlabels", "from_name": "kp", "to_name": "img",  # 5: 3 keypoints
                 "value": {"x": 1, "y": 1, "width": 1, "keypointlabels": ["person"]}},
                {"from_id": "ok", "to_id": "ghost", "type": "relation", "direction": "right",  # 6
                 "labels": ["related"]},
                {**rect("turned", 10, 10, 10, 10, 0), "image_rotation": 90},  # 7
                {"id": "ok", "from_name": "unknown_thing", "to_name": "img", "type": "rating",  # 8
                 "value": {"rating": 4}},
                {"id": "br", "from_name": "color", "to_name": "img", "type": "choices",  # 9: region failed
                 "value": {"choices": ["red"]}},
                {"id": "w", "from_name": "weather", "to_name": "img", "type": "choices",  # 10
                 "value": {"choices": ["rainy"]}},
                {"from_id": "ok", "to_id": "ok2", "type": "relation"},  # 11: no label: "related"
                rect("ok2", 50, 50, 10, 10, 0),
                {"id": "pg", "type": "polygonlabels", "from_name": "p", "to_name": "img",  # 13
                 "value": {"points": [[1, 1], [2, "x"], [3, 3]], "polygonlabels": ["car"]}},
                {"id": "e", "type": "ellipselabels", "from_name": "e", "to_name": "img",  # 14
                 "value": {"x": 1, "y": 1, "radiusX": 1, "radiusY": 1, "ellipselabels": ["car"]}},
            ]}],
        },
        {"id": 2, "data": {"image": "https://example.com/nowhere.jpg"}, "annotations": [{"result": []}]},
        "not a task",
        {"id": 4, "data": {"text": "Barack Obama visited Paris.", "loupe_item": "texts/obama.txt"},
         "annotations": [{"result": [
             {"id": "h", "type": "labels", "from_name": "l", "to_name": "t",
              "value": {"start": "/p[1]/text()[1]", "end": "/p[1]/text()[1]", "startOffset": 0,
                        "endOffset": 6, "labels": ["PER"]}},
             {"id": "s", "type": "labels", "from_name": "l", "to_name": "t",
              "value": {"start": 7, "end": 12, "labels": ["PER"]}},
         ]}, "not an annotation"], "predictions": {"result": []}},
        {"id": 5, "data": "x"},
    ]  # fmt: skip
    result = run_import(tasks, ITEMS)
    head = "tasks[0].annotations[0].result"
    assert [(e.where, e.code) for e in result.errors] == [
        (f"{head}[1]", "unknown_class"),
        (f"{head}[2]", "invalid_geometry"),
        (f"{head}[3]", "unsupported"),
        (f"{head}[4]", "malformed"),
        (f"{head}[5]", "unsupported"),
        (f"{head}[7]", "unsupported"),
        (f"{head}[13]", "malformed"),
        (f"{head}[14]", "unsupported"),
        (f"{head}[8]", "unsupported"),
        (f"{head}[10]", "unknown_class"),
        (f"{head}[6]", "invalid_geometry"),
        ("tasks[1]", "unmatched_item"),
        ("tasks[2]", "malformed"),
        ("tasks[3].annotations[0].result[0]", "unsupported"),
        ("tasks[3].annotations[1]", "malformed"),
        ("tasks[3].predictions", "malformed"),
        ("tasks[4].data", "malformed"),
    ]
    first, text = result.records
    assert first.where == "tasks[0].annotations[0]" and first.item.id == 1
    assert [(r["id"], r["type"]) for r in first.regions] == [
        ("ok", "bbox"), (first.regions[1]["id"], "relation"), ("ok2", "bbox")
    ]  # fmt: skip
    assert first.regions[1]["label"] == "related"  # no label: "related"
    assert text.where == "tasks[3].annotations[0]" and [r["id"] for r in text.regions] == ["s"]


def test_unknown_relation_label_and_missing_default_class() -> None:
    classes = [c for c in CLASSES if c.name != "related"]
    task = {"data": {"image": "1.jpg"}, "annotations": [{"result": [
        rect("a", 1, 1, 1, 1, 0), rect("b", 2, 2, 1, 1, 0),
        {"from_id": "a", "to_id": "b", "type": "relation"},
        {"from_id": "a", "to_id": "b", "type": "relation", "labels": ["owns"]},
    ]}]}  # fmt: skip
    result = labelstudio.import_(io.BytesIO(json.dumps([task]).encode()), classes, ItemIndex(ITEMS))
    assert [(e.where, e.code) for e in result.errors] == [
        ("tasks[0].annotations[0].result[2]", "unknown_class"),
        ("tasks[0].annotations[0].result[3]", "unknown_class"),
    ]
    assert [r["id"] for r in result.records[0].regions] == ["a", "b"]


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"", "tasks"),
        (b"  \n", "tasks"),
        (b'{"a": 1', "tasks"),
        (b"42", "tasks"),
        (b'[{"data": {"image": "1.jpg"}, "annotations": []}, {"data": ', "tasks[1]"),
        (b'[{"data": {"image": "1.jpg"}, "annotations": []} {"data": {}}]', "tasks[1]"),
        (b'[{"data": {"image": "1.jpg"}, "annotations": []}] trailing', "tasks[1]"),
        (b'[{"data": {"image": "1.jpg"}, "annotations": [{"result": []}]}, \xff]', "tasks[1]"),
    ],
)
def test_broken_json_is_malformed_at_the_task_it_breaks(data: bytes, where: str) -> None:
    result = run_import(data, ITEMS)
    assert [(e.where, e.code) for e in result.errors][-1:] == [(where, "malformed")]


def test_single_task_object_bom_and_large_tasks_across_read_chunks() -> None:
    one = {"data": {"image": "1.jpg"}, "annotations": [{"result": [rect("a", 1, 1, 1, 1, 0)]}]}
    result = run_import(b"\xef\xbb\xbf" + json.dumps(one).encode(), ITEMS)
    assert [r.where for r in result.records] == ["tasks[0].annotations[0]"] and result.errors == []

    big_text = "é" * 150_000  # two-byte characters, split across read chunks
    tasks = [
        {"data": {"text": big_text, "loupe_item": "texts/obama.txt"}, "annotations": [{"result": [
            {"id": f"s{n}", "type": "labels", "from_name": "l", "to_name": "t",
             "value": {"start": 0, "end": 6, "labels": ["PER"]}}]}]}
        for n in range(4)
    ] + [1.5e300]  # fmt: skip
    result = run_import(json.dumps(tasks).encode("utf-8"), ITEMS)
    assert [r.regions[0]["id"] for r in result.records] == ["s0", "s1", "s2", "s3"]
    assert [(e.where, e.code) for e in result.errors] == [("tasks[4]", "malformed")]


def test_items_are_matched_by_upload_names_and_local_file_urls() -> None:
    items = [ItemInfo(1, "data/my pic.jpeg", "image", width=10, height=10), ItemInfo(2, "b/c.png", "image")]
    tasks = [
        {"data": {"image": "/data/upload/3/42d46c4c-my%20pic.jpeg"}, "annotations": [{"result": []}]},
        {"data": {"image": "/data/local-files/?d=b/c.png"}, "annotations": [{"result": []}]},
        {"data": {"image": "gs://bucket/b/c.png"}, "annotations": [{"result": []}]},
        {
            "data": {"image": "https://x/y.png", "loupe_item": "data/my pic.jpeg"},
            "annotations": [{"result": []}],
        },
    ]
    result = run_import(tasks, items)
    assert result.errors == [] and [r.item.id for r in result.records] == [1, 2, 2, 1]


# --- round trip --------------------------------------------------------------------------------

CAR_ATTRIBUTES = st.fixed_dictionaries(
    {},
    optional={
        "color": st.text(max_size=8),
        "doors": st.integers(-5, 10),
        "speed": st.floats(allow_nan=False, allow_infinity=False, width=64),
        "parked": st.booleans(),
        "tags": st.lists(st.text(max_size=4), max_size=3),
    },
)


def unit(draw: st.DrawFn, upper: float) -> float:
    return draw(st.floats(min_value=0, max_value=upper, allow_nan=False))


@st.composite
def image_regions(draw: st.DrawFn, item: ItemInfo) -> list[dict[str, Any]]:
    w, h = float(item.width or 1), float(item.height or 1)
    made: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 7))):
        kind = draw(
            st.sampled_from(["bbox", "rotated_bbox", "polygon", "keypoints", "classification", "caption"])
        )
        rid = f"i{n}"
        attributes: dict[str, Any] = {}
        if kind == "bbox":
            geometry: dict[str, Any] = {"x": unit(draw, w), "y": unit(draw, h), "width": unit(draw, w) + 0.5,
                                        "height": unit(draw, h) + 0.5}  # fmt: skip
            label, attributes = "car", draw(CAR_ATTRIBUTES)
        elif kind == "rotated_bbox":
            angle = draw(st.floats(min_value=-179.999, max_value=180).filter(lambda a: abs(a) > 1e-6))
            geometry = {"cx": unit(draw, w), "cy": unit(draw, h), "width": unit(draw, w) + 0.5,
                        "height": unit(draw, h) + 0.5, "angle": angle}  # fmt: skip
            label, attributes = "car", draw(CAR_ATTRIBUTES)
        elif kind == "polygon":
            points = [[unit(draw, w), unit(draw, h)] for _ in range(draw(st.integers(3, 6)))]
            geometry, label = {"points": points, "holes": []}, "car"
        elif kind == "keypoints":
            geometry, label = (
                {"points": [[unit(draw, w), unit(draw, h), draw(st.sampled_from([1, 2]))]]},
                "nose",
            )
        elif kind == "classification":
            geometry, label = {}, "sunny"
        else:
            boxes = [r["id"] for r in made if r["type"] in ("bbox", "rotated_bbox")]
            geometry, label = {"text": draw(st.text(max_size=10))}, "caption"
            if draw(st.booleans()) and boxes:
                geometry["region"] = draw(st.sampled_from(boxes))
            kind = "transcription"
        made.append({"id": rid, "type": kind, "label": label, "attributes": attributes, "geometry": geometry})
    return made


@st.composite
def text_regions(draw: st.DrawFn, item: ItemInfo) -> list[dict[str, Any]]:
    length = len(item.text or "")
    made: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 4)) if length else 0):
        start = draw(st.integers(0, length - 1))
        end = draw(st.integers(start + 1, length))
        made.append({"id": f"s{n}", "type": "span", "label": draw(st.sampled_from(["PER", "LOC"])),
                     "attributes": {}, "geometry": {"start": start, "end": end}})  # fmt: skip
    if draw(st.booleans()):
        made.append({"id": "c", "type": "classification", "label": "sunny", "attributes": {}, "geometry": {}})
    return made


@st.composite
def audio_regions(draw: st.DrawFn, item: ItemInfo) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 3))):
        start = draw(st.floats(0, 5))
        made.append({"id": f"a{n}", "type": "time_segment", "label": "speech", "attributes": {},
                     "geometry": {"start": start, "end": start + draw(st.floats(0.01, 5))}})  # fmt: skip
        if draw(st.booleans()):
            geometry: dict[str, Any] = {"text": draw(st.text(max_size=10))}
            if draw(st.booleans()):
                geometry["region"] = f"a{n}"
            if draw(st.booleans()):
                geometry |= {"start": start, "end": start + 1}
            made.append({"id": f"t{n}", "type": "transcription", "label": "speech", "attributes": {},
                         "geometry": geometry})  # fmt: skip
    return made


@st.composite
def video_regions(draw: st.DrawFn, item: ItemInfo) -> list[dict[str, Any]]:
    w, h, frames, duration = (
        float(item.width or 1),
        float(item.height or 1),
        item.frames or 1,
        item.duration or 1,
    )
    made: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 3))):
        keyframes = [
            {"frame": f, "x": unit(draw, w), "y": unit(draw, h), "width": unit(draw, w) + 1,
             "height": unit(draw, h) + 1, "outside": draw(st.booleans()), "interpolate": draw(st.booleans())}
            for f in sorted(draw(st.sets(st.integers(0, frames - 1), min_size=1, max_size=4)))
        ]  # fmt: skip
        made.append({"id": f"v{n}", "type": "video_track", "label": "moving", "attributes": {},
                     "geometry": {"keyframes": keyframes}})  # fmt: skip
    if draw(st.booleans()):
        start = draw(st.floats(0, duration / 2))
        made.append({"id": "seg", "type": "time_segment", "label": "moving", "attributes": {},
                     "geometry": {"start": start, "end": start + duration / 4}})  # fmt: skip
    return made


@st.composite
def export_items(draw: st.DrawFn) -> list[ExportItem]:
    made = []
    for n in range(draw(st.integers(0, 4))):
        modality = draw(st.sampled_from(["image", "text", "audio", "video"]))
        if modality == "image":
            item = ItemInfo(n + 1, f"img/{n}.jpg", "image", width=draw(st.integers(1, 5000)),
                            height=draw(st.integers(1, 5000)))  # fmt: skip
            regions = draw(image_regions(item))
        elif modality == "text":
            text = draw(st.text(max_size=40))
            item = ItemInfo(n + 1, f"doc/{n}.txt", "text", length=len(text), text=text)
            regions = draw(text_regions(item))
        elif modality == "audio":
            item = ItemInfo(n + 1, f"snd/{n}.wav", "audio", duration=10.0)
            regions = draw(audio_regions(item))
        else:
            item = ItemInfo(n + 1, f"vid/{n}.mp4", "video", width=draw(st.integers(16, 4000)),
                            height=draw(st.integers(16, 4000)), frames=draw(st.integers(1, 10_000)),
                            duration=draw(st.floats(0.5, 3600)))  # fmt: skip
            regions = draw(video_regions(item))
        endpoints = [r["id"] for r in regions if r["type"] not in ("transcription", "relation")]
        if len(endpoints) >= 2 and draw(st.booleans()):
            a, b = draw(st.permutations(endpoints))[:2]
            label = draw(st.sampled_from(["related", "visited"]))
            regions.append({"id": "rel", "type": "relation", "label": label, "attributes": {},
                            "geometry": {"from": a, "to": b}})  # fmt: skip
        if regions and draw(st.integers(0, 3)) == 0:  # a prediction: scores on (some) regions
            for region in regions:
                if draw(st.booleans()):
                    region["score"] = draw(st.floats(0, 1))
            regions[0]["score"] = draw(st.floats(0, 1))
        made.append(
            ExportItem(item, regions, annotation_id=draw(st.one_of(st.none(), st.integers(1, 10**6))))
        )
    return made


def close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(close(x, y, tol) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=tol)
    return bool(a == b)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(export_items())
def test_round_trip(items: list[ExportItem]) -> None:
    first = export_bytes(items)
    result = run_import(first, [e.item for e in items])
    assert result.errors == []
    assert [r.item for r in result.records] == [e.item for e in items]
    again = [
        ExportItem(r.item, r.regions, e.annotation_id) for r, e in zip(result.records, items, strict=True)
    ]
    assert export_bytes(again) == first

    # And what came back is what went out, up to the rounding of percentages.
    for record, e in zip(result.records, items, strict=True):
        assert record.where.endswith(
            "predictions[0]" if any("score" in r for r in e.regions) else "annotations[0]"
        )
        assert len(record.regions) == len(e.regions)
        for got, want in zip(record.regions, e.regions, strict=True):
            assert (got["type"], got["attributes"]) == (want["type"], _ls_attributes(want["attributes"]))
            assert got.get("score") == want.get("score")
            assert got["label"] == want["label"]
            if want["type"] not in ("relation", "transcription"):
                assert got["id"] == want["id"]
            geometry = dict(want["geometry"])
            if want["type"] == "keypoints":
                geometry["points"] = [[*geometry["points"][0][:2], 2]]
            if want["type"] == "span":
                geometry["text"] = e.item.text[geometry["start"] : geometry["end"]]  # type: ignore[index]
            if want["type"] == "time_segment" and e.item.modality == "video":
                fps = (e.item.frames or 1) / (e.item.duration or 1)
                assert close(got["geometry"], geometry, 1 / fps + 1e-9)
            else:
                assert close(got["geometry"], geometry, 1e-6), (got, want)


def _ls_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes as Label Studio brings them back: one-choice lists and "true"/"false" collapse."""
    out = {}
    for key, value in attributes.items():
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if value in ("true", "false") and isinstance(value, str):
            value = value == "true"
        out[key] = value
    return out
