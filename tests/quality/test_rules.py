"""Quality rules: configuration checks and every rule kind over hand-built regions (no database)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeling.regions import ItemFacts, RegionsInvalid, parse_schema, validate_regions
from quality.rules import Finding, Rule, RulesInvalid, blocking, check, parse_rules

SCHEMA = parse_schema(
    {
        "classes": [
            {"name": "car", "color": "#ff0000", "tools": ["bbox", "rotated_bbox", "polygon", "video_track"],
             "attributes": [{"name": "occluded", "type": "bool", "required": True},
                            {"name": "plate", "type": "text"}]},
            {"name": "person", "color": "#00ff00", "tools": ["bbox", "polygon"]},
            {"name": "wheel", "color": "#0000ff", "tools": ["bbox"]},
            {"name": "name", "color": "#00ffff", "tools": ["span"]},
        ]
    }
)  # fmt: skip
IMAGE = ItemFacts("image", width=100, height=80)


def box(
    rid: str, x: float, y: float, w: float, h: float, label: str = "car", **attributes: Any
) -> dict[str, Any]:
    return {"id": rid, "type": "bbox", "label": label, "attributes": attributes,
            "geometry": {"x": x, "y": y, "width": w, "height": h}}  # fmt: skip


def span(rid: str, start: int, end: int, label: str = "name") -> dict[str, Any]:
    return {
        "id": rid,
        "type": "span",
        "label": label,
        "attributes": {},
        "geometry": {"start": start, "end": end},
    }


def track(rid: str, *keyframes: tuple[int, bool]) -> dict[str, Any]:
    frames = [{"frame": f, "x": 1, "y": 1, "width": 5, "height": 5, "outside": out, "interpolate": True}
              for f, out in keyframes]  # fmt: skip
    return {"id": rid, "type": "video_track", "label": "car", "attributes": {"occluded": False},
            "geometry": {"keyframes": frames}}  # fmt: skip


def run(config: list[dict[str, Any]], regions: list[dict[str, Any]], **kwargs: Any) -> list[tuple[Any, ...]]:
    kwargs.setdefault("facts", IMAGE)
    findings = check(parse_rules(config, schema=SCHEMA), regions, schema=SCHEMA, **kwargs)
    return [(f.rule_index, f.severity, f.region_id, f.code) for f in findings]


def errors(config: Any) -> list[tuple[str, str]]:
    with pytest.raises(RulesInvalid) as caught:
        parse_rules(config, schema=SCHEMA)
    return [(e["path"], e["code"]) for e in caught.value.errors]


# Configuration


def test_it_parses_a_configuration_into_rules() -> None:
    rules = parse_rules(
        [
            {"rule": "size", "severity": "warning", "classes": ["car"], "min_area": 4},
            {"rule": "not_empty", "severity": "blocking"},
        ]
    )
    assert rules == [
        Rule("size", "warning", frozenset({"car"}), {"min_area": 4.0}),
        Rule("not_empty", "blocking", None, {}),
    ]


def test_it_lists_every_problem_with_its_path() -> None:
    assert errors(
        [
            {"rule": "size", "severity": "warning", "min_width": 5, "max_width": 3},
            {"rule": "frobnicate", "severity": "blocking"},
            {"rule": "size", "severity": "urgent", "max_area": -1, "colour": "red"},
            "not a rule",
            {"severity": "warning"},
            {"rule": "count", "severity": "warning", "classes": ["car", "truck", "car"]},
        ]
    ) == [
        ("[0].max_width", "invalid_value"),
        ("[1].rule", "unknown_option"),
        ("[2].colour", "unknown_field"),
        ("[2].severity", "unknown_option"),
        ("[2].max_area", "invalid_value"),
        ("[3]", "invalid_type"),
        ("[4].rule", "required"),
        ("[5].classes[1]", "unknown_class"),
        ("[5].classes[2]", "duplicate"),
        ("[5]", "required"),
    ]


def test_it_says_what_a_bad_bound_should_be() -> None:
    with pytest.raises(RulesInvalid) as caught:
        parse_rules([{"rule": "size", "severity": "warning", "max_area": 0}])
    assert caught.value.errors[0]["message"] == "max_area: must be a positive number, got 0."
    assert isinstance(caught.value, ValueError)


def test_it_checks_the_parameters_of_each_kind() -> None:
    assert errors(
        [
            {"rule": "near_duplicates", "severity": "warning"},
            {"rule": "near_duplicates", "severity": "warning", "iou": 1.5},
            {
                "rule": "co_occurrence",
                "severity": "warning",
                "classes": ["car"],
                "forbidden": [["car", "car"], ["car"]],
                "required": {"wheel": ["wheel"], "bus": ["car"]},
            },
            {"rule": "track_gaps", "severity": "warning", "max_gap_frames": -1},
            {
                "rule": "required_attributes",
                "severity": "warning",
                "classes": ["person"],
                "attributes": ["occluded"],
            },
            {"rule": "count", "severity": "warning", "min": 3, "max": 2, "per_class": "yes"},
            {"rule": "inside_item", "severity": "warning", "tolerance": -2},
            {"rule": "track_gaps", "severity": "warning"},
        ]
    ) == [
        ("[0].iou", "required"),
        ("[1].iou", "invalid_value"),
        ("[2].classes", "unknown_field"),
        ("[2].forbidden[0]", "invalid_value"),
        ("[2].forbidden[1]", "invalid_type"),
        ("[2].required.wheel", "invalid_value"),
        ("[2].required.bus", "unknown_class"),
        ("[3].max_gap_frames", "invalid_value"),
        ("[4].attributes[0]", "unknown_attribute"),
        ("[5].max", "invalid_value"),
        ("[5].per_class", "invalid_type"),
        ("[6].tolerance", "invalid_value"),
        ("[7].max_gap_frames", "required"),
    ]


def test_it_refuses_a_configuration_that_is_not_a_list() -> None:
    assert errors({"rule": "not_empty"}) == [("", "invalid_type")]


# Rule kinds


def test_required_attributes_follow_the_schema_or_an_explicit_list() -> None:
    regions = [box("a", 0, 0, 5, 5, occluded=None), box("b", 0, 0, 5, 5, occluded=True, plate=""),
               box("c", 0, 0, 5, 5, label="person")]  # fmt: skip
    assert run([{"rule": "required_attributes", "severity": "blocking"}], regions) == [
        (0, "blocking", "a", "attribute_missing")
    ]
    assert run(
        [{"rule": "required_attributes", "severity": "warning", "attributes": ["plate"]}], regions
    ) == [(0, "warning", "a", "attribute_missing"), (0, "warning", "b", "attribute_missing")]


def test_size_bounds_boxes_rotated_boxes_and_polygons() -> None:
    rotated = {"id": "r", "type": "rotated_bbox", "label": "car", "attributes": {},
               "geometry": {"cx": 50, "cy": 40, "width": 30, "height": 2, "angle": 45}}  # fmt: skip
    # An L-shaped polygon: bounding box 10 x 10, area 100 - 25 = 75.
    polygon = {"id": "p", "type": "polygon", "label": "car", "attributes": {},
               "geometry": {"points": [[0, 0], [10, 0], [10, 5], [5, 5], [5, 10], [0, 10]]}}  # fmt: skip
    config = [{"rule": "size", "severity": "warning", "min_width": 4, "max_area": 80, "max_aspect": 3}]
    regions = [box("small", 0, 0, 2, 8), box("fine", 0, 0, 8, 8), rotated, polygon, span("s", 0, 1)]
    assert run(config, regions) == [
        (0, "warning", "small", "width_below_min"),
        (0, "warning", "r", "aspect_above_max"),
    ]
    config = [{"rule": "size", "severity": "warning", "min_area": 76, "min_height": 9, "min_aspect": 1.5}]
    assert run(config, [polygon]) == [
        (0, "warning", "p", "area_below_min"),
        (0, "warning", "p", "aspect_below_min"),
    ]
    findings = check(parse_rules(config), [box("x", 0, 0, 20, 3)], schema=SCHEMA, facts=IMAGE)
    assert [f.message for f in findings] == [
        "The region's height is 3 px; it must be at least 9 px.",
        "The region's area is 60 px²; it must be at least 76 px².",
    ]


def test_size_is_limited_to_the_rules_classes() -> None:
    config = [{"rule": "size", "severity": "warning", "classes": ["person"], "min_width": 4}]
    assert run(config, [box("a", 0, 0, 2, 2), box("b", 0, 0, 2, 2, label="person")]) == [
        (0, "warning", "b", "width_below_min")
    ]


def test_inside_item_flags_shapes_past_the_edge_within_tolerance() -> None:
    keypoints = {"id": "k", "type": "keypoints", "label": "person", "attributes": {},
                 "geometry": {"points": [[5, 5, 2], [500, 500, 0]]}}  # fmt: skip
    regions = [box("in", 0, 0, 100, 80), box("edge", 95, 0, 7, 10), box("out", 95, 0, 20, 10), keypoints]
    assert run([{"rule": "inside_item", "severity": "warning", "tolerance": 3}], regions) == [
        (0, "warning", "out", "outside_item")
    ]
    assert run([{"rule": "inside_item", "severity": "warning"}], regions) == [
        (0, "warning", "edge", "outside_item"),
        (0, "warning", "out", "outside_item"),
    ]
    assert run([{"rule": "inside_item", "severity": "warning"}], regions, facts=ItemFacts("image")) == []


def test_inside_item_holds_video_keyframes_unless_outside() -> None:
    video = ItemFacts("video", width=20, height=20, frames=100)
    moved = track("t", (0, False), (5, True))
    moved["geometry"]["keyframes"][1]["x"] = 50  # off the frame while marked outside: fine
    assert run([{"rule": "inside_item", "severity": "warning"}], [moved], facts=video) == []
    moved["geometry"]["keyframes"][1]["outside"] = False
    assert run([{"rule": "inside_item", "severity": "warning"}], [moved], facts=video) == [
        (0, "warning", "t", "outside_item")
    ]


def test_near_duplicates_are_same_class_same_type_and_above_the_threshold() -> None:
    regions = [
        box("a", 0, 0, 10, 10),
        box("b", 0, 0, 10, 9),  # IoU 0.9 with a
        box("c", 0, 0, 10, 9, label="person"),  # same place, other class
        box("d", 50, 50, 10, 10),
        box("e", 0, 0, 10, 10),  # identical to a, 0.9 with b
        span("s1", 0, 4),
        span("s2", 0, 5),  # IoU 0.8
    ]
    assert run([{"rule": "near_duplicates", "severity": "warning", "iou": 0.9}], regions) == [
        (0, "warning", "b", "near_duplicate"),
        (0, "warning", "e", "near_duplicate"),
        (0, "warning", "e", "near_duplicate"),
    ]
    assert run([{"rule": "near_duplicates", "severity": "warning", "iou": 0.95}], regions) == [
        (0, "warning", "e", "near_duplicate")
    ]
    assert run([{"rule": "near_duplicates", "severity": "warning", "iou": 0.8}], regions)[-1] == (
        0, "warning", "s2", "near_duplicate",
    )  # fmt: skip


def test_count_limits_overall_and_per_class() -> None:
    regions = [box("a", 0, 0, 5, 5), box("b", 0, 0, 5, 5), box("c", 0, 0, 5, 5, label="person")]
    assert run([{"rule": "count", "severity": "blocking", "max": 2}], regions) == [
        (0, "blocking", None, "too_many")
    ]
    assert (
        run([{"rule": "count", "severity": "blocking", "classes": ["car", "person"], "max": 3}], regions)
        == []
    )
    per_class = [{"rule": "count", "severity": "warning", "classes": ["car", "person", "wheel"],
                  "per_class": True, "min": 1, "max": 1}]  # fmt: skip
    assert run(per_class, regions) == [(0, "warning", None, "too_many"), (0, "warning", None, "too_few")]
    findings = check(parse_rules(per_class), regions, schema=SCHEMA, facts=IMAGE)
    assert findings[1].message == "The annotation has 0 wheel regions; at least 1 are needed."


def test_co_occurrence_forbids_pairs_and_requires_companions() -> None:
    config = [{"rule": "co_occurrence", "severity": "blocking", "forbidden": [["car", "person"]],
               "required": {"car": ["wheel"], "wheel": ["car"]}}]  # fmt: skip
    assert run(config, [box("a", 0, 0, 5, 5), box("b", 0, 0, 5, 5, label="person")]) == [
        (0, "blocking", "b", "forbidden_together"),
        (0, "blocking", "a", "companion_missing"),
    ]
    assert run(config, [box("a", 0, 0, 5, 5), box("w", 0, 0, 5, 5, label="wheel")]) == []
    assert run(config, []) == []


def test_not_empty_needs_a_region_of_the_scope() -> None:
    assert run([{"rule": "not_empty", "severity": "blocking"}], []) == [(0, "blocking", None, "empty")]
    assert run([{"rule": "not_empty", "severity": "blocking"}], [box("a", 0, 0, 5, 5)]) == []
    scoped = [{"rule": "not_empty", "severity": "warning", "classes": ["person"]}]
    assert run(scoped, [box("a", 0, 0, 5, 5)]) == [(0, "warning", None, "empty")]


def test_token_edges_hold_spans_to_word_boundaries() -> None:
    text = "Ada Lovelace, 1815."
    regions = [
        span("ok", 0, 3),
        span("mid", 1, 3),
        span("tail", 4, 9),
        span("punct", 12, 18),
        span("blank", 13, 18),
        span("all", 0, 19),
    ]
    assert run([{"rule": "token_edges", "severity": "warning"}], regions, text=text) == [
        (0, "warning", "mid", "start_inside_token"),
        (0, "warning", "tail", "end_inside_token"),
        (0, "warning", "blank", "start_inside_token"),  # between ',' and ' '
    ]
    facts = ItemFacts("text", length=len(text), text=text)
    findings = check(parse_rules([{"rule": "token_edges", "severity": "warning"}]), [span("t", 4, 9)],
                     schema=SCHEMA, facts=facts)  # fmt: skip
    assert findings[0].message == (
        "The span's end (9) cuts 'Lovelace'; "
        "spans begin and end where a word meets a space, punctuation or the text's edge."
    )


def test_token_edges_without_text_is_the_callers_mistake() -> None:
    rules = parse_rules([{"rule": "token_edges", "severity": "warning"}])
    assert check(rules, [box("a", 0, 0, 5, 5)], schema=SCHEMA, facts=IMAGE) == []
    with pytest.raises(ValueError, match="needs the item's text"):
        check(rules, [span("s", 0, 1)], schema=SCHEMA, facts=ItemFacts("text", length=5))


def test_track_gaps_longer_than_the_limit_are_found() -> None:
    config = [{"rule": "track_gaps", "severity": "warning", "max_gap_frames": 5}]
    short = track("short", (0, False), (10, True), (15, False))  # gone for frames 10-14
    long = track("long", (0, True), (2, False), (10, True), (12, True), (30, False), (40, True))
    assert run(config, [short, long, box("b", 0, 0, 5, 5)]) == [(0, "warning", "long", "track_gap")]
    findings = check(parse_rules(config), [long], schema=SCHEMA, facts=IMAGE)
    assert (
        findings[0].message == "The track is missing from frame 10 to 29 (20 frames); at most 5 are allowed."
    )


def test_findings_come_rule_by_rule_and_blocking_picks_the_refusals() -> None:
    config = [
        {"rule": "size", "severity": "warning", "min_width": 4},
        {"rule": "required_attributes", "severity": "blocking"},
    ]
    findings = check(
        parse_rules(config), [box("a", 0, 0, 2, 2), box("b", 0, 0, 2, 2)], schema=SCHEMA, facts=IMAGE
    )
    assert [(f.rule_index, f.region_id) for f in findings] == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    assert blocking(findings) == findings[2:]
    assert blocking(findings)[0] == Finding(
        1, "required_attributes", "blocking", "a", "attribute_missing", "The car has no value for 'occluded'."
    )
    assert findings[0].as_dict()["code"] == "width_below_min"


# Property: check never raises on regions validation accepts

EVERY_KIND = parse_rules(
    [
        {"rule": "required_attributes", "severity": "blocking"},
        {"rule": "size", "severity": "warning", "min_width": 3, "max_area": 2000, "min_aspect": 0.2},
        {"rule": "inside_item", "severity": "warning", "tolerance": 1},
        {"rule": "near_duplicates", "severity": "warning", "iou": 0.5},
        {"rule": "count", "severity": "warning", "per_class": True, "max": 2},
        {
            "rule": "co_occurrence",
            "severity": "blocking",
            "forbidden": [["car", "person"]],
            "required": {"name": ["car"]},
        },
        {"rule": "not_empty", "severity": "blocking"},
        {"rule": "token_edges", "severity": "warning"},
        {"rule": "track_gaps", "severity": "warning", "max_gap_frames": 0},
    ],
    schema=SCHEMA,
)
TEXT = "The quick brown fox, 42 jumps."


def _car_attributes(label: str, occluded: bool) -> dict[str, Any]:
    return {"occluded": occluded} if label == "car" else {}


boxes = st.builds(
    lambda x, y, w, h, label, occluded: box("", x, y, w, h, label, **_car_attributes(label, occluded)),
    st.integers(0, 90), st.integers(0, 70), st.integers(1, 30), st.integers(1, 30),
    st.sampled_from(["car", "person", "wheel"]), st.booleans(),
)  # fmt: skip
spans = st.tuples(st.integers(0, len(TEXT) - 1), st.integers(1, 10)).map(
    lambda t: span("", t[0], min(len(TEXT), t[0] + t[1]))
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(boxes, spans), max_size=6), st.booleans())
def test_check_never_raises_on_regions_validation_accepts(
    regions: list[dict[str, Any]], as_text: bool
) -> None:
    for number, region in enumerate(regions):
        region["id"] = f"r{number}"
    kind = "span" if as_text else "bbox"
    regions = [region for region in regions if region["type"] == kind]
    facts = ItemFacts("text", length=len(TEXT), text=TEXT) if as_text else IMAGE
    try:
        accepted = validate_regions(regions, SCHEMA, facts)
    except RegionsInvalid:
        return
    findings = check(EVERY_KIND, accepted, schema=SCHEMA, facts=facts)
    ids = {region["id"] for region in accepted}
    assert all(f.region_id is None or f.region_id in ids for f in findings)
    assert findings == check(EVERY_KIND, accepted, schema=SCHEMA, facts=facts)
