"""What became of predicted regions: pairing, similarity per type, and the counts (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from labeling.regions.compare import edit_distance, prediction_outcome, similarity, text_similarity
from labeling.regions.geometry import rle_string


def box(rid: str, x: float, y: float = 0, w: float = 10, h: float = 10, label: str = "car") -> dict[str, Any]:
    return {"id": rid, "type": "bbox", "label": label, "geometry": {"x": x, "y": y, "width": w, "height": h}}


def test_edit_distance_and_text_similarity_match_hand_counts() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert text_similarity("flaw", "lawn") == pytest.approx(0.5)
    assert text_similarity("", "") == 1.0


def test_similarity_is_iou_for_shapes_spans_and_segments() -> None:
    assert similarity(box("a", 0), box("b", 5)) == pytest.approx(50 / 150)
    assert similarity(box("a", 0), box("b", 20)) == 0
    span = {"id": "s", "type": "span", "label": "org", "geometry": {"start": 0, "end": 10}}
    other = {**span, "geometry": {"start": 5, "end": 15}}
    assert similarity(span, other) == pytest.approx(5 / 15)
    rotated = {"id": "r", "type": "rotated_bbox", "label": "car",
               "geometry": {"cx": 5, "cy": 5, "width": 10, "height": 10, "angle": 90}}  # fmt: skip
    upright = {**rotated, "geometry": {**rotated["geometry"], "angle": 0}}
    assert similarity(rotated, upright) == pytest.approx(1.0)  # a square turned a quarter
    assert similarity(box("a", 0), span) == 0  # different types never pair


def test_mask_similarity_is_pixel_iou() -> None:
    # 4x4 masks in column-major runs: the first has pixels 0-7, the second pixels 4-11.
    first = {"id": "m", "type": "mask", "label": "car", "geometry": {"rle": {"size": [4, 4],
             "counts": rle_string([0, 8, 8], 4, 4)}}}  # fmt: skip
    second = {**first, "geometry": {"rle": {"size": [4, 4], "counts": rle_string([4, 8, 4], 4, 4)}}}
    assert similarity(first, second) == pytest.approx(4 / 12)


def test_outcomes_pair_by_id_then_by_similarity() -> None:
    predicted = [box("p1", 0), box("p2", 30), box("p3", 60), box("p4", 90, label="truck")]
    final = [
        box("p1", 0),  # kept as is
        box("x9", 31),  # p2 moved a little, under a new id: edited
        box("p4", 90, label="car"),  # relabelled: edited however well it fits
        box("n1", 200),  # drawn by the annotator: added
    ]  # p3 deleted
    outcome = prediction_outcome(predicted, final)
    assert (outcome["kept"], outcome["edited"], outcome["deleted"], outcome["added"]) == (1, 2, 1, 1)
    fates = {f["id"]: (f["outcome"], f["similarity"]) for f in outcome["regions"]}
    assert fates["p1"] == ("kept", 1.0)
    assert fates["p2"][0] == "edited" and fates["p2"][1] == pytest.approx(90 / 110, abs=1e-4)
    assert fates["p3"] == ("deleted", 0.0)
    assert fates["p4"] == ("edited", 0.99)
    assert outcome["predicted"] == 4


def test_a_region_too_far_from_any_prediction_is_added_not_edited() -> None:
    outcome = prediction_outcome([box("p1", 0)], [box("n1", 8)])  # IoU 2/18 < 0.5
    assert (outcome["edited"], outcome["deleted"], outcome["added"]) == (0, 1, 1)
    assert outcome["mean_similarity"] is None
