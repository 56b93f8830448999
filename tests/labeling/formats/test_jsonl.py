"""Native JSON Lines: every region type round-trips unchanged; bad lines are reported by line."""

from __future__ import annotations

import io
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from labeling.formats import get_format, jsonl
from labeling.formats.base import ExportItem, ItemIndex, ItemInfo, LabelClass

CLASSES = [
    LabelClass("car", tools=("bbox", "rotated_bbox", "polygon", "polyline", "mask", "video_track", "cuboid"),
               attributes=("occluded", "make", "tags", "doors", "speed", "plate")),
    LabelClass("person", tools=("keypoints", "bbox"), keypoints=("head", "left_hand", "right_hand"),
               edges=((0, 1), (0, 2))),
    LabelClass("entity", tools=("span", "classification", "transcription", "time_segment")),
    LabelClass("drives", tools=("relation",)),
]  # fmt: skip
ITEMS = [
    ItemInfo(1, "img/a.jpg", "image", width=640, height=480),
    ItemInfo(2, "docs/b.txt", "text", length=40),
    ItemInfo(3, "clips/c.mp4", "video", width=320, height=240, duration=10.0, frames=250),
    ItemInfo(4, "clouds/d.pcd", "pointcloud"),
]

# --- strategies: a region of every type ----------------------------------------------------------

coord = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
size = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)
point = st.tuples(coord, coord).map(list)
attribute_values = st.one_of(
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.lists(st.text(max_size=5), max_size=3),
)
attributes = st.dictionaries(st.sampled_from(CLASSES[0].attributes), attribute_values, max_size=3)
keyframe = st.fixed_dictionaries(
    {
        "x": coord,
        "y": coord,
        "width": size,
        "height": size,
        "outside": st.booleans(),
        "interpolate": st.booleans(),
    }
)


@st.composite
def keyframes(draw: st.DrawFn) -> list[dict[str, Any]]:
    frames = sorted(draw(st.sets(st.integers(0, 249), min_size=1, max_size=5)))
    return [{"frame": f, **draw(keyframe)} for f in frames]


@st.composite
def span(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(st.integers(0, 38))
    return {"start": start, "end": draw(st.integers(start + 1, 40))}


GEOMETRY: dict[str, tuple[str, st.SearchStrategy[dict[str, Any]]]] = {
    "classification": ("entity", st.just({})),
    "bbox": ("car", st.fixed_dictionaries({"x": coord, "y": coord, "width": size, "height": size})),
    "rotated_bbox": ("car", st.fixed_dictionaries({
        "cx": coord, "cy": coord, "width": size, "height": size,
        "angle": st.floats(min_value=-179.999, max_value=180)})),
    "polygon": ("car", st.fixed_dictionaries({
        "points": st.lists(point, min_size=3, max_size=8),
        "holes": st.lists(st.lists(point, min_size=3, max_size=4), max_size=2)})),
    "polyline": ("car", st.fixed_dictionaries({"points": st.lists(point, min_size=2, max_size=6)})),
    "keypoints": ("person", st.fixed_dictionaries({"points": st.lists(
        st.tuples(coord, coord, st.sampled_from([0, 1, 2])).map(list), min_size=3, max_size=3)})),
    "mask": ("car", st.fixed_dictionaries({"rle": st.fixed_dictionaries({
        "size": st.tuples(st.integers(1, 4000), st.integers(1, 4000)).map(list),
        "counts": st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=111), min_size=1)})})),
    "span": ("entity", span()),
    "transcription": ("entity", st.fixed_dictionaries(
        {"text": st.text(max_size=30)}, optional={"start": size, "end": size})),
    "time_segment": ("entity", st.fixed_dictionaries(
        {"start": st.just(0.5), "end": size.map(lambda v: v + 1)})),
    "video_track": ("car", st.fixed_dictionaries({"keyframes": keyframes()})),
    "cuboid": ("car", st.fixed_dictionaries({
        "center": st.tuples(coord, coord, coord).map(list),
        "size": st.tuples(size, size, size).map(list),
        "yaw": st.floats(-3.14, 3.14)})),
}  # fmt: skip


@st.composite
def regions(draw: st.DrawFn) -> list[dict[str, Any]]:
    types = draw(st.lists(st.sampled_from(sorted(GEOMETRY)), max_size=8))
    made: list[dict[str, Any]] = []
    for n, rtype in enumerate(types):
        label, geometry = GEOMETRY[rtype]
        region: dict[str, Any] = {
            "id": f"r{n + 1}",
            "type": rtype,
            "label": label,
            "attributes": draw(attributes) if label == "car" else {},
            "geometry": draw(geometry),
        }
        if draw(st.booleans()):
            region["score"] = draw(st.floats(0, 1))
        made.append(region)
    if len(made) >= 2 and draw(st.booleans()):
        made.append({"id": "rel", "type": "relation", "label": "drives", "attributes": {},
                     "geometry": {"from": made[0]["id"], "to": made[1]["id"]}})  # fmt: skip
    return made


export_items = st.lists(
    st.builds(ExportItem, item=st.sampled_from(ITEMS), regions=regions(),
              annotation_id=st.one_of(st.none(), st.integers(1, 10**6))),
    max_size=5,
)  # fmt: skip


def export_bytes(items: list[ExportItem]) -> bytes:
    out = io.BytesIO()
    jsonl.export(iter(items), CLASSES, out)
    return out.getvalue()


def run_import(data: bytes, items: list[ItemInfo] = ITEMS) -> Any:
    return jsonl.import_(io.BytesIO(data), CLASSES, ItemIndex(items))


@settings(max_examples=150, deadline=None)
@given(export_items)
def test_round_trip_every_region_type(items: list[ExportItem]) -> None:
    first = export_bytes(items)
    imported = run_import(first)
    assert imported.errors == []
    assert [r.item for r in imported.records] == [e.item for e in items]
    assert [r.regions for r in imported.records] == [e.regions for e in items]
    again = [
        ExportItem(r.item, r.regions, e.annotation_id) for r, e in zip(imported.records, items, strict=True)
    ]
    assert export_bytes(again) == first


def test_registry_and_flags() -> None:
    assert get_format("jsonl") is jsonl
    assert (jsonl.name, jsonl.extension, jsonl.can_import, jsonl.can_export) == (
        "jsonl",
        ".jsonl",
        True,
        True,
    )


def test_export_streams_one_line_per_item_to_a_write_only_stream() -> None:
    class WriteOnly:
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        def write(self, data: bytes) -> int:
            self.chunks.append(data)
            return len(data)

    def items() -> Any:
        yield ExportItem(ITEMS[0], [], annotation_id=5)
        yield ExportItem(ITEMS[1], [{"id": "r1", "type": "span", "label": "entity", "attributes": {},
                                     "geometry": {"start": 0, "end": 3, "text": "naïve"}}])  # fmt: skip

    out = WriteOnly()
    jsonl.export(items(), CLASSES, out)  # type: ignore[arg-type]
    lines = b"".join(out.chunks).decode("utf-8").splitlines()
    assert len(out.chunks) == 2
    assert json.loads(lines[0]) == {
        "item": "img/a.jpg", "item_id": 1, "modality": "image", "annotation_id": 5, "regions": []
    }  # fmt: skip
    assert "naïve" in lines[1]  # UTF-8, not \u escapes


def test_bad_lines_are_reported_and_good_ones_kept() -> None:
    box = {"id": "x", "type": "bbox", "label": "car", "attributes": {},
           "geometry": {"x": 1, "y": 2, "width": 3, "height": 4}}  # fmt: skip
    good = {"item": "img/a.jpg", "regions": [box]}
    lines = [
        "\ufeff" + json.dumps(good),  # 1: BOM, fine
        "{not json",  # 2
        "[1, 2]",  # 3
        json.dumps({"item": "img/a.jpg", "regions": {"id": "r1"}}),  # 4
        json.dumps({"item": "nowhere.jpg", "regions": []}),  # 5
        "",  # 6: blank, skipped
        json.dumps({"item": "b.txt", "regions": [  # 7: base name matches docs/b.txt
            {"type": "span", "label": "entity", "geometry": {"start": 0, "end": 1}},
            {"id": "r9", "type": "span", "label": "nope", "geometry": {"start": 0, "end": 1}},
            "a string",
            {"id": "r9", "type": "span", "label": "entity", "geometry": {"start": 1, "end": 2}},
            {"id": "r9", "type": "span", "label": "entity", "geometry": {"start": 2, "end": 3}},
        ]}),
        json.dumps({"item_id": 3, "regions": []}),  # 8: by id
        json.dumps({"item_id": 99, "regions": []}),  # 9
        json.dumps({"item": 12, "regions": []}),  # 10
    ]  # fmt: skip
    data = ("\n".join(lines) + "\n").encode("utf-8") + b"\xff\xfe broken\n"  # 11: not UTF-8
    result = run_import(data)

    assert [(e.where, e.code) for e in result.errors] == [
        ("line 2", "malformed"),
        ("line 3", "malformed"),
        ("line 4", "malformed"),
        ("line 5", "unmatched_item"),
        ("line 7 regions[1]", "unknown_class"),
        ("line 7 regions[2]", "malformed"),
        ("line 9", "unmatched_item"),
        ("line 10", "malformed"),
        ("line 11", "malformed"),
    ]
    assert [(r.where, r.item.id) for r in result.records] == [("line 1", 1), ("line 7", 2), ("line 8", 3)]
    assert result.records[0].regions == good["regions"]
    # A region without an id, or repeating one, gets a fresh id that no other region of the line uses.
    assert [r["id"] for r in result.records[1].regions] == ["r1", "r9", "r2"]
    assert [r["geometry"]["start"] for r in result.records[1].regions] == [0, 1, 2]
