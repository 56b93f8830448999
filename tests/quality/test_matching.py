"""Pairing two annotators' regions and scoring their agreement (pure functions, no database)."""

from __future__ import annotations

import math
from itertools import permutations
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeling.regions.compare import similarity as compare_similarity
from labeling.regions.geometry import rle_string
from quality.metrics.matching import (
    KEYPOINT_MIN_AREA,
    Matching,
    assign,
    keypoint_similarity,
    match_regions,
    oks,
    region_similarity,
    similar_pairs,
    similarity_matrix,
    task_agreement,
)


def box(rid: str, x: float, y: float = 0, w: float = 10, h: float = 10, label: str = "car") -> dict[str, Any]:
    return {"id": rid, "type": "bbox", "label": label, "attributes": {},
            "geometry": {"x": x, "y": y, "width": w, "height": h}}  # fmt: skip


def skeleton(rid: str, points: list[list[float]], label: str = "person") -> dict[str, Any]:
    return {"id": rid, "type": "keypoints", "label": label, "attributes": {}, "geometry": {"points": points}}


def relation(rid: str, start: str, end: str, label: str = "drives") -> dict[str, Any]:
    return {"id": rid, "type": "relation", "label": label, "attributes": {},
            "geometry": {"from": start, "to": end}}  # fmt: skip


def test_pairs_are_the_optimal_assignment_not_the_greedy_one() -> None:
    # Greedy would pair l0 with r0 (IoU 1.0) and leave l1 alone (IoU 0.4 with r1); the optimal
    # pairing is l0-r1 (0.9) and l1-r0 (0.5): two pairs, total 1.4.
    left = [box("l0", 0), box("l1", 0, w=5)]
    right = [box("r0", 0), box("r1", 1, w=9)]
    matching = match_regions(left, right)
    assert [(p.left, p.right) for p in matching.pairs] == [(0, 1), (1, 0)]
    assert [p.similarity for p in matching.pairs] == pytest.approx([0.9, 0.5])
    assert matching.unmatched_left == matching.unmatched_right == ()
    assert matching.agreement == pytest.approx(1.4 / 2)


def test_pairs_below_the_threshold_are_left_unmatched_on_both_sides() -> None:
    left = [box("a", 0), box("b", 100)]
    right = [box("c", 1), box("d", 108), box("e", 300)]  # IoU 9/11 with a, 2/18 with b
    matching = match_regions(left, right)
    assert [(p.left, p.right) for p in matching.pairs] == [(0, 0)]
    assert matching.unmatched_left == (1,)
    assert matching.unmatched_right == (1, 2)
    assert matching.agreement == pytest.approx((9 / 11) / (1 + 1 + 2))
    lenient = match_regions(left, right, threshold=0.1)
    assert len(lenient.pairs) == 2
    assert lenient.agreement == pytest.approx((9 / 11 + 2 / 18) / 3)


def test_two_empty_results_agree_and_an_empty_one_disagrees_with_anything() -> None:
    assert match_regions([], []).agreement == 1.0
    assert match_regions([box("a", 0)], []).agreement == 0.0
    assert match_regions([], [box("a", 0)]) == Matching(pairs=(), unmatched_left=(), unmatched_right=(0,))


def test_different_types_never_pair_and_labels_matter_only_when_asked() -> None:
    span = {"id": "s", "type": "span", "label": "car", "attributes": {}, "geometry": {"start": 0, "end": 10}}
    assert match_regions([box("a", 0)], [span]).pairs == ()
    truck = box("b", 0, label="truck")
    assert match_regions([box("a", 0)], [truck]).pairs[0].similarity == 1.0
    assert match_regions([box("a", 0)], [truck], label_aware=True).pairs == ()


def test_region_similarity_is_compare_similarity_for_the_types_it_knows() -> None:
    mask_a = {"id": "m", "type": "mask", "label": "car", "attributes": {},
              "geometry": {"rle": {"size": [4, 4], "counts": rle_string([0, 8, 8], 4, 4)}}}  # fmt: skip
    mask_b = {**mask_a, "geometry": {"rle": {"size": [4, 4], "counts": rle_string([4, 8, 4], 4, 4)}}}
    polygon_a = {"id": "p", "type": "polygon", "label": "car", "attributes": {},
                 "geometry": {"points": [[0, 0], [10, 0], [10, 10], [0, 10]]}}  # fmt: skip
    polygon_b = {**polygon_a, "geometry": {"points": [[5, 0], [15, 0], [15, 10], [5, 10]]}}
    text_a = {
        "id": "t",
        "type": "transcription",
        "label": "line",
        "attributes": {},
        "geometry": {"text": "kitten"},
    }
    text_b = {**text_a, "geometry": {"text": "sitting"}}
    segment_a = {"id": "g", "type": "time_segment", "label": "speech", "attributes": {},
                 "geometry": {"start": 0.0, "end": 2.0}}  # fmt: skip
    segment_b = {**segment_a, "geometry": {"start": 1.0, "end": 4.0}}
    choice_a = {"id": "c", "type": "classification", "label": "cat", "attributes": {}, "geometry": {}}
    for a, b, expected in [
        (mask_a, mask_b, 4 / 12),
        (polygon_a, polygon_b, 50 / 150),
        (text_a, text_b, 1 - 3 / 7),
        (segment_a, segment_b, 1 / 4),
        (choice_a, {**choice_a, "label": "dog"}, 0.0),
        (choice_a, dict(choice_a), 1.0),
        (box("a", 0), box("b", 5), 50 / 150),
    ]:
        assert region_similarity(a, b) == pytest.approx(expected)
        assert region_similarity(a, b) == pytest.approx(compare_similarity(a, b))


def test_oks_follows_the_coco_formula_with_the_reference_area() -> None:
    reference = skeleton("r", [[0, 0, 2], [30, 40, 2], [0, 40, 1]])  # labelled box 30 x 40 = 1200
    candidate = skeleton("c", [[3, 4, 2], [30, 40, 2], [0, 0, 0]])  # third keypoint not labelled
    # Mean over the two keypoints labelled in both: exp(-25 / (2 * 1200 * 0.1²)) and exp(0).
    assert oks(reference, candidate) == pytest.approx((math.exp(-25 / 24) + 1) / 2)
    # The candidate's labelled box is 27 x 36 = 972, floored to 32² = 1024; the symmetric form
    # uses the mean of the two areas.
    mean_area = (1200 + KEYPOINT_MIN_AREA) / 2
    expected = (math.exp(-25 / (2 * mean_area * 0.01)) + 1) / 2
    assert keypoint_similarity(reference, candidate) == pytest.approx(expected)
    assert keypoint_similarity(candidate, reference) == pytest.approx(expected)
    # Per-keypoint constants: a looser first keypoint forgives more.
    loose = oks(reference, candidate, k=[0.2, 0.1, 0.1])
    assert loose == pytest.approx((math.exp(-25 / (2 * 1200 * 0.04)) + 1) / 2)


def test_oks_floors_the_area_of_a_single_point_and_refuses_nonsense() -> None:
    one = skeleton("a", [[100, 100, 2], [0, 0, 0]])
    near = skeleton("b", [[103, 104, 2], [0, 0, 0]])
    assert oks(one, near) == pytest.approx(math.exp(-25 / (2 * 1024 * 0.01)))
    assert oks(one, skeleton("c", [[0, 0, 0], [5, 5, 2]])) == 0.0  # nothing labelled in both
    assert oks(one, skeleton("d", [[100, 100, 2]])) == 0.0  # another skeleton
    with pytest.raises(ValueError, match="constants"):
        oks(one, near, k=[0.1])
    with pytest.raises(ValueError, match="floor"):
        oks(one, near, min_area=0)


def test_keypoint_constants_are_given_per_class() -> None:
    a = skeleton("a", [[100, 100, 2], [0, 0, 0]])
    b = skeleton("b", [[103, 104, 2], [0, 0, 0]])
    tight = region_similarity(a, b, keypoint_k={"person": [0.05, 0.05]})
    assert tight == pytest.approx(math.exp(-25 / (2 * 1024 * 0.0025)), abs=1e-9)
    assert region_similarity(a, b, keypoint_k={"dog": [0.05, 0.05]}) == pytest.approx(
        math.exp(-25 / (2 * 1024 * 0.01)), abs=1e-9
    )


def test_relations_pair_through_their_endpoints() -> None:
    left = [box("car", 0), box("man", 50), relation("rel", "man", "car")]
    right = [box("x1", 51), box("x2", 1), relation("r1", "x1", "x2"), relation("r2", "x2", "x1")]
    matching = match_regions(left, right)
    assert {(p.left, p.right) for p in matching.pairs} == {(0, 1), (1, 0), (2, 2)}
    assert matching.unmatched_right == (3,)  # the relation the other way round
    owns = [*left[:2], relation("rel", "man", "car", label="owns")]
    assert len(match_regions(owns, right, label_aware=True).pairs) == 2


def test_cuboids_compare_by_3d_iou() -> None:
    def cuboid(x: float, yaw: float = 0.0, size: tuple[float, float, float] = (1, 1, 1)) -> dict[str, Any]:
        return {"id": "q", "type": "cuboid", "label": "car", "attributes": {},
                "geometry": {"center": [x, 0, 0], "size": list(size), "yaw": yaw}}  # fmt: skip

    assert region_similarity(cuboid(0), cuboid(0.5)) == pytest.approx(0.5 / 1.5)
    # A 2 x 1 x 1 box turned a quarter turn over itself: the footprints share a 1 x 1 square.
    assert region_similarity(cuboid(0, size=(2, 1, 1)), cuboid(0, math.pi / 2, (2, 1, 1))) == pytest.approx(
        1 / 3
    )
    lifted = cuboid(0)
    lifted["geometry"]["center"] = [0, 0, 0.5]
    assert region_similarity(cuboid(0), lifted) == pytest.approx(0.5 / 1.5)


def test_tracks_compare_frame_by_frame_over_the_frames_either_is_present() -> None:
    def track(*keyframes: dict[str, Any]) -> dict[str, Any]:
        return {"id": "t", "type": "video_track", "label": "car", "attributes": {},
                "geometry": {"keyframes": list(keyframes)}}  # fmt: skip

    def kf(frame: int, x: float = 0, **flags: bool) -> dict[str, Any]:
        return {"frame": frame, "x": x, "y": 0, "width": 10, "height": 10, **flags}

    # Same box, frames 0-9 against frames 5-14: 5 shared frames out of 15.
    assert region_similarity(track(kf(0), kf(9)), track(kf(5), kf(14))) == pytest.approx(5 / 15)
    # Interpolated (x = 10 at frame 1) against held (x = 0): IoU 1, 0, 1.
    moving = track(kf(0), kf(2, x=20))
    held = track(kf(0, interpolate=False), kf(2, x=20))
    assert region_similarity(moving, held) == pytest.approx(2 / 3)
    # Outside from frame 5 to 7: present on 0-4 and 8 for both.
    gone = track(kf(0), kf(5, outside=True), kf(8))
    assert region_similarity(gone, gone) == 1.0
    assert region_similarity(gone, track(kf(0), kf(8))) == pytest.approx(6 / 9)


def test_assign_ties_go_to_more_pairs_and_the_threshold_is_checked() -> None:
    # One perfect pair or two half pairs: the same total, and the second explains more regions.
    pairs = assign(np.array([[1.0, 0.5], [0.5, 0.0]]), 0.5)
    assert sorted((r, c) for r, c, _ in pairs) == [(0, 1), (1, 0)]
    assert assign(np.zeros((0, 3)), 0.5) == []
    with pytest.raises(ValueError, match="threshold"):
        assign(np.ones((1, 1)), 0.0)


def test_task_agreement_averages_every_pair_of_annotators() -> None:
    results = {
        "ann": [box("a", 0), box("b", 100)],
        "bob": [box("a", 0), box("b", 100)],
        "cid": [box("a", 5)],  # IoU 1/3 with "a": below the threshold
    }
    agreement = task_agreement(results)
    assert agreement.annotators == ("ann", "bob", "cid")
    assert agreement.matrix == ((1.0, 1.0, 0.0), (1.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    assert agreement.score == pytest.approx(1 / 3)
    assert task_agreement({"ann": [box("a", 0)]}).score is None
    assert task_agreement({}).score is None
    relabelled = {"ann": [box("a", 0)], "bob": [box("a", 0, label="truck")]}
    assert task_agreement(relabelled).score == 0.0  # label-aware by default
    assert task_agreement(relabelled, label_aware=False).score == 1.0


boxes = st.lists(
    st.builds(
        box,
        st.just("r"),
        st.integers(0, 40),
        st.integers(0, 40),
        st.integers(1, 20),
        st.integers(1, 20),
        st.sampled_from(["car", "truck"]),
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(boxes, boxes, st.booleans())
def test_matching_is_symmetric_one_to_one_and_above_the_threshold(
    left: list[dict[str, Any]], right: list[dict[str, Any]], label_aware: bool
) -> None:
    there = match_regions(left, right, label_aware=label_aware)
    back = match_regions(right, left, label_aware=label_aware)
    assert there.agreement == pytest.approx(back.agreement)
    assert sorted(p.similarity for p in there.pairs) == pytest.approx(
        sorted(p.similarity for p in back.pairs)
    )
    assert len({p.left for p in there.pairs}) == len({p.right for p in there.pairs}) == len(there.pairs)
    assert all(p.similarity >= 0.5 for p in there.pairs)
    assert 0.0 <= there.agreement <= 1.0
    assert len(there.pairs) + len(there.unmatched_left) == len(left)
    assert match_regions(left, left).agreement == 1.0


rotated = st.builds(
    lambda cx, cy, w, h, angle: {"id": "q", "type": "rotated_bbox", "label": "car", "attributes": {},
                                 "geometry": {"cx": cx, "cy": cy, "width": w, "height": h, "angle": angle}},
    st.integers(0, 60), st.integers(0, 60), st.integers(1, 30), st.integers(1, 30), st.integers(-179, 180),
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(st.lists(rotated, max_size=5), st.lists(rotated, max_size=5))
def test_skipping_far_apart_pairs_changes_no_similarity(
    left: list[dict[str, Any]], right: list[dict[str, Any]]
) -> None:
    full = np.array([[region_similarity(a, b) for b in right] for a in left]).reshape(len(left), len(right))
    assert np.array_equal(similarity_matrix(left, right), full)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda n: st.lists(st.lists(st.floats(0, 1), min_size=n, max_size=n), min_size=n, max_size=n)
    )
)
def test_assign_finds_the_best_total_of_all_pairings(rows: list[list[float]]) -> None:
    matrix = np.array(rows)
    total = sum(s for _, _, s in assign(matrix, 0.5))
    best = max(
        sum(matrix[i, j] for i, j in enumerate(perm) if matrix[i, j] >= 0.5)
        for perm in permutations(range(len(rows)))
    )
    assert total == pytest.approx(best, abs=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 200), st.integers(1, 120), st.integers(1, 120)),
        min_size=1,
        max_size=6,
    ),
    st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 200), st.integers(1, 120), st.integers(1, 120)),
        min_size=1,
        max_size=6,
    ),
)
def test_box_similarities_equal_pycocotools_iou(
    left: list[tuple[int, int, int, int]], right: list[tuple[int, int, int, int]]
) -> None:
    """pycocotools (the COCO evaluation's own IoU) as the reference for boxes."""
    from pycocotools import mask as coco_mask

    reference = coco_mask.iou(
        [list(map(float, b)) for b in left], [list(map(float, b)) for b in right], [0] * len(right)
    )
    ours = similarity_matrix(
        [box(str(i), *b) for i, b in enumerate(left)], [box(str(i), *b) for i, b in enumerate(right)]
    )
    assert np.allclose(ours, reference, atol=1e-9)


boxes = st.builds(
    lambda i, x, y, w, h, label: box(str(i), x, y, w, h, label),
    st.integers(0, 99),
    st.floats(0, 100),
    st.floats(0, 100),
    st.floats(0.5, 60),
    st.floats(0.5, 60),
    st.sampled_from(["car", "truck"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(boxes, max_size=6), st.lists(boxes, max_size=6), st.booleans())
def test_the_box_fast_path_gives_each_pair_what_region_similarity_and_shapely_give(
    left: list[dict[str, Any]], right: list[dict[str, Any]], label_aware: bool
) -> None:
    matrix = similarity_matrix(left, right, label_aware=label_aware)
    for i, a in enumerate(left):
        for j, b in enumerate(right):
            assert matrix[i, j] == region_similarity(a, b, label_aware=label_aware)
            if not label_aware or a["label"] == b["label"]:
                assert matrix[i, j] == pytest.approx(compare_similarity(a, b), abs=1e-8)


@settings(max_examples=60, deadline=None)
@given(st.lists(boxes, max_size=14), st.floats(0.05, 1.0))
def test_similar_pairs_are_the_upper_triangle_of_the_matrix_at_the_threshold(
    regions: list[dict[str, Any]], threshold: float
) -> None:
    matrix = similarity_matrix(regions, regions)
    expected = [
        (i, j, matrix[i, j])
        for i in range(len(regions))
        for j in range(i + 1, len(regions))
        if matrix[i, j] >= threshold
    ]
    assert similar_pairs(regions, threshold) == expected
