"""Consensus from several annotations: votes, Dawid-Skene and region fusion (pure functions)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeling.regions import ItemFacts, parse_schema, validate_regions
from quality.metrics.consensus import dawid_skene, fuse_regions, majority_vote


def region(
    rid: str, kind: str, geometry: dict[str, Any], label: str = "car", **attributes: Any
) -> dict[str, Any]:
    return {"id": rid, "type": kind, "label": label, "attributes": attributes, "geometry": geometry}


def box(
    rid: str, x: float, y: float = 0, w: float = 10, h: float = 10, label: str = "car", **attrs: Any
) -> dict[str, Any]:
    return region(rid, "bbox", {"x": x, "y": y, "width": w, "height": h}, label, **attrs)


def test_majority_vote_breaks_ties_by_overall_frequency_then_label_order() -> None:
    votes: dict[str, list[str | None]] = {
        "t1": ["cat", "cat", "dog"],
        "t2": ["dog", "cat"],  # tie: "cat" is the more common label overall
        "t3": ["bird", "dog"],  # tie: "dog" is given 4 times overall, "bird" 3
        "t4": [None, "dog", None],
        "t5": [None, None],
        "t6": ["bird", "cat", "bird", "cat"],  # tie: "cat" 5 times overall
        "t7": ["fox", "emu"],  # tie, and once each overall: "emu" comes first
    }
    assert majority_vote(votes) == {
        "t1": "cat", "t2": "cat", "t3": "dog", "t4": "dog", "t5": None, "t6": "cat", "t7": "emu"
    }  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.integers(0, 20), st.lists(st.sampled_from(["a", "b", "c", None]), max_size=6), max_size=8
    )
)
def test_majority_vote_does_not_depend_on_the_order_of_votes(votes: dict[int, list[str | None]]) -> None:
    shuffled = {
        unit: random.Random(unit).sample(labels, len(labels)) for unit, labels in reversed(votes.items())
    }
    assert majority_vote(shuffled) == majority_vote(votes)


def _crowd(seed: int) -> tuple[dict[int, str], list[tuple[int, str, str]]]:
    """200 units, 4 classes; three annotators right 70% of the time (else a random class), one
    who gives the next class 90% of the time, one who answers at random."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, 200)
    triples = []
    for annotator in ("good1", "good2", "good3", "shifty", "random"):
        for unit, true in enumerate(truth):
            if annotator.startswith("good"):
                answer = true if rng.random() < 0.7 else rng.integers(0, 4)
            elif annotator == "shifty":
                answer = (true + 1) % 4 if rng.random() < 0.9 else rng.integers(0, 4)
            else:
                answer = rng.integers(0, 4)
            triples.append((unit, annotator, f"c{int(answer)}"))
    return {unit: f"c{int(t)}" for unit, t in enumerate(truth)}, triples


def test_dawid_skene_fixes_what_the_majority_gets_wrong() -> None:
    truth, triples = _crowd(seed=0)
    votes: dict[int, list[str | None]] = {}
    for unit, _, label in triples:
        votes.setdefault(unit, []).append(label)
    majority = majority_vote(votes)
    result = dawid_skene(triples)
    estimates = result.estimates()
    majority_accuracy = np.mean([majority[u] == truth[u] for u in truth])
    ds_accuracy = np.mean([estimates[u] == truth[u] for u in truth])
    assert majority_accuracy == pytest.approx(0.73)  # this seed's draw
    assert ds_accuracy >= majority_accuracy + 0.15
    assert ds_accuracy >= 0.9
    # The reliable annotators are estimated near their true 0.7 + 0.3/4 = 0.775, the others low.
    good = [result.accuracy[a] for a in ("good1", "good2", "good3")]
    bad = [result.accuracy[a] for a in ("shifty", "random")]
    assert min(good) > max(bad)
    assert all(0.65 < a < 0.85 for a in good)
    # The shifty annotator's confusion says "c1" when the truth is "c0": read back, not ignored.
    assert result.confusion["shifty"]["c0"]["c1"] > 0.8
    assert result.converged and result.iterations < 100


def test_dawid_skene_probabilities_are_proper_and_never_zero() -> None:
    _, triples = _crowd(seed=1)
    result = dawid_skene(triples, max_iterations=5)
    assert result.iterations == 5 and not result.converged
    assert sum(result.priors.values()) == pytest.approx(1.0)
    for rows in result.confusion.values():
        for row in rows.values():
            assert sum(row.values()) == pytest.approx(1.0)
            assert min(row.values()) > 0
    for dist in result.posteriors.values():
        assert sum(dist.values()) == pytest.approx(1.0)


def test_dawid_skene_on_unanimous_answers_and_edge_cases() -> None:
    triples = [(u, a, "yes" if u % 2 else "no") for u in range(6) for a in ("ann", "bob")]
    result = dawid_skene(triples, labels=["no", "yes", "maybe"])
    assert result.labels == ("no", "yes", "maybe")
    assert result.estimates() == {u: "yes" if u % 2 else "no" for u in range(6)}
    assert result.posteriors[1]["yes"] > 0.99
    assert result.priors["maybe"] < 0.01
    with pytest.raises(ValueError, match="not listed"):
        dawid_skene(triples, labels=["no"])
    with pytest.raises(ValueError, match="max_iterations"):
        dawid_skene(triples, max_iterations=0)
    no_answers: list[tuple[int, str, str]] = []
    empty = dawid_skene(no_answers, labels=["a", "b"])
    assert (empty.posteriors, empty.priors) == ({}, {"a": 0.5, "b": 0.5})
    # Missing answers are skipped: unit 0's only answer is None.
    assert 0 not in dawid_skene([(0, "ann", None), (1, "ann", "x")]).posteriors


def test_boxes_fuse_by_weighted_mean_with_a_voted_label_and_attributes() -> None:
    results = {
        "ann": [box("a1", 0, 0, label="car", occluded=True), box("a2", 200, label="car")],
        "bob": [box("b1", 2, 0, label="truck", occluded=False)],
        "cid": [box("c1", 1, 2, label="truck", occluded=False), box("c2", 100, label="car")],
    }
    fusion = fuse_regions(results, {"ann": 1.0, "bob": 1.0, "cid": 2.0})
    # Quorum by default: 2 of 3. The lone boxes of ann (x=200) and cid (x=100) are dropped.
    assert len(fusion.regions) == 1
    fused = fusion.regions[0]
    assert fused == {
        "id": "c1",
        "type": "bbox",
        "label": "truck",  # weight 3 against 1
        "attributes": {"occluded": False},
        "geometry": {"x": (0 + 2 + 2 * 1) / 4, "y": (0 + 0 + 2 * 2) / 4, "width": 10.0, "height": 10.0},
    }
    support = fusion.support["c1"]
    assert support.annotators == ("cid", "ann", "bob")  # heaviest first
    assert set(support.members) == {("ann", "a1"), ("bob", "b1"), ("cid", "c1")}
    assert 0.5 < support.similarity < 1
    assert sorted(m for s in fusion.dropped for m in s.members) == [("ann", "a2"), ("cid", "c2")]
    assert len(fuse_regions(results, quorum=1).regions) == 3


def test_label_aware_fusion_keeps_different_classes_apart() -> None:
    results = {"ann": [box("a", 0, label="car")], "bob": [box("b", 0, label="truck")]}
    assert len(fuse_regions(results, quorum=1).regions) == 1
    assert [r["label"] for r in fuse_regions(results, quorum=1, label_aware=True).regions] == ["car", "truck"]


def test_rotated_boxes_average_their_angles_on_the_circle() -> None:
    def rotated(rid: str, width: float, height: float, angle: float) -> dict[str, Any]:
        return region(
            rid, "rotated_bbox", {"cx": 50, "cy": 50, "width": width, "height": height, "angle": angle}
        )

    # Across the ±180° seam: 178° and -178° average to 180°, not 0°.
    seam = fuse_regions({"a": [rotated("a", 20, 10, 178)], "b": [rotated("b", 20, 10, -178)]})
    assert seam.regions[0]["geometry"]["angle"] == pytest.approx(180.0)
    # The same box written two ways (20 x 10 at 10°, 10 x 20 at 100°) fuses to itself, and a box
    # turned half a turn (190°, i.e. -170°) is the same box again.
    same = fuse_regions(
        {
            "a": [rotated("a", 20, 10, 10)],
            "b": [rotated("b", 10, 20, 100)],
            "c": [rotated("c", 20, 10, -170)],
        },
        quorum=3,
    )
    geometry = same.regions[0]["geometry"]
    assert (geometry["width"], geometry["height"]) == pytest.approx((20, 10))
    assert geometry["angle"] == pytest.approx(10.0)
    assert same.support["c1"].similarity == pytest.approx(1.0)


def test_spans_round_to_whole_characters_and_segments_average() -> None:
    spans = {
        "a": [region("a", "span", {"start": 0, "end": 10}, "org")],
        "b": [region("b", "span", {"start": 1, "end": 11, "text": "Acme Corp."}, "org")],
        "c": [region("c", "span", {"start": 1, "end": 11, "text": "Acme Corp."}, "org")],
    }
    assert fuse_regions(spans).regions[0]["geometry"] == {"start": 1, "end": 11, "text": "Acme Corp."}
    spans["b"][0]["geometry"] = {"start": 0, "end": 11}
    # Mean start 1/3 → 0, mean end 32/3 → 11: no member drew 0-11 with its text, so no text.
    assert fuse_regions(spans).regions[0]["geometry"] == {"start": 0, "end": 11}
    segments = {
        "a": [region("a", "time_segment", {"start": 1.0, "end": 3.0}, "speech")],
        "b": [region("b", "time_segment", {"start": 1.5, "end": 3.5}, "speech")],
    }
    assert fuse_regions(segments).regions[0]["geometry"] == {"start": 1.25, "end": 3.25}


def test_keypoints_average_each_point_over_those_who_labelled_it() -> None:
    def person(rid: str, points: list[list[float]]) -> dict[str, Any]:
        return region(rid, "keypoints", {"points": points}, "person")

    fused = fuse_regions(
        {
            "a": [person("a", [[10, 10, 2], [40, 40, 2], [70, 10, 0]])],
            "b": [person("b", [[12, 10, 2], [42, 40, 1], [0, 0, 0]])],
            "c": [person("c", [[11, 13, 2], [0, 0, 0], [72, 12, 2]])],
        }
    ).regions[0]
    assert fused["geometry"]["points"] == [
        pytest.approx([11, 11, 2]),
        pytest.approx([41, 40, 2]),  # labelled by two of three; visible for one, hidden for the other
        [0.0, 0.0, 0],  # labelled by one of three: less than half the weight
    ]


def test_polygons_and_masks_take_the_medoid() -> None:
    def square(rid: str, x: float) -> dict[str, Any]:
        return region(rid, "polygon", {"points": [[x, 0], [x + 10, 0], [x + 10, 10], [x, 10]]})

    fusion = fuse_regions({"a": [square("a", 0)], "b": [square("b", 2)], "c": [square("c", 4)]})
    assert fusion.regions[0]["geometry"] == square("b", 2)["geometry"]  # the middle one
    assert fusion.support["c1"].members[0] == ("a", "a")


def test_relations_and_transcription_links_follow_the_consensus_regions() -> None:
    def rel(rid: str, start: str, end: str) -> dict[str, Any]:
        return region(rid, "relation", {"from": start, "to": end}, "drives")

    def text(rid: str, linked: str, words: str) -> dict[str, Any]:
        return region(rid, "transcription", {"text": words, "region": linked}, "plate")

    results = {
        "a": [
            box("car", 0),
            box("man", 50, label="person"),
            rel("r", "man", "car"),
            text("t", "car", "AB 123"),
        ],
        "b": [box("x", 1), box("y", 51, label="person"), rel("s", "y", "x"), text("u", "x", "AB 128")],
        "c": [box("z", 300), rel("q", "z", "z"), text("v", "z", "AB 123")],
    }
    fusion = fuse_regions(results)
    by_type = {r["type"]: r for r in fusion.regions}
    car, man = (next(r["id"] for r in fusion.regions if r["label"] == lb) for lb in ("car", "person"))
    assert by_type["relation"]["geometry"] == {"from": man, "to": car}
    assert set(fusion.support[by_type["relation"]["id"]].members) == {("a", "r"), ("b", "s")}
    assert by_type["transcription"]["geometry"]["region"] == car  # c's "z" was not kept: only a and b
    # The texts of a and c are equal: one of theirs is the medoid, a's (the first) on the tie.
    assert by_type["transcription"]["geometry"]["text"] == "AB 123"
    # c's box and its relation to itself had no support.
    assert {m for s in fusion.dropped for m in s.members} == {("c", "z"), ("c", "q")}


def test_single_choice_classification_keeps_only_the_best_supported_label() -> None:
    def choice(label: str) -> dict[str, Any]:
        return region("k", "classification", {}, label)

    results = {"a": [choice("cat")], "b": [choice("cat")], "c": [choice("dog")], "d": [choice("dog")]}
    multi = fuse_regions(results, quorum=2)
    assert sorted(r["label"] for r in multi.regions) == ["cat", "dog"]
    single = fuse_regions(results, {"a": 1, "b": 1, "c": 1, "d": 1.5}, quorum=2, single_classification=True)
    assert [r["label"] for r in single.regions] == ["dog"]  # same support, more weight
    assert [s.annotators for s in single.dropped] == [("a", "b")]


def test_fusion_refuses_bad_weights_and_quorums() -> None:
    with pytest.raises(ValueError, match="No weight"):
        fuse_regions({"a": [], "b": []}, {"a": 1.0})
    with pytest.raises(ValueError, match="positive"):
        fuse_regions({"a": []}, {"a": 0.0})
    with pytest.raises(ValueError, match="quorum"):
        fuse_regions({"a": []}, quorum=0)
    assert fuse_regions({}).regions == []


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.builds(
            box, st.just("r"), st.integers(0, 90), st.integers(0, 90), st.integers(1, 10), st.integers(1, 10)
        ),
        max_size=6,
    ),
    st.integers(2, 4),
)
def test_annotators_who_all_drew_the_same_fuse_to_that_drawing(
    drawn: list[dict[str, Any]], copies: int
) -> None:
    drawn = [{**r, "id": f"r{n}"} for n, r in enumerate(drawn)]
    fusion = fuse_regions({f"a{k}": drawn for k in range(copies)}, quorum=copies)

    def corners(regions: list[dict[str, Any]]) -> list[tuple[float, ...]]:
        return sorted(tuple(r["geometry"][k] for k in ("x", "y", "width", "height")) for r in regions)

    assert corners(fusion.regions) == pytest.approx(corners(drawn))
    assert all(len(s.annotators) == copies for s in fusion.support.values())


def test_fused_regions_are_valid_loupe_regions() -> None:
    schema = parse_schema({"classes": [
        {"name": "car", "color": "#ff0000", "tools": ["bbox", "rotated_bbox", "polygon"],
         "attributes": [{"name": "occluded", "type": "bool", "required": True}]},
        {"name": "person", "color": "#00ff00", "tools": ["keypoints"],
         "skeleton": {"keypoints": ["head", "hand"], "edges": [[0, 1]]}},
    ]})  # fmt: skip
    rng = random.Random(7)
    results = {}
    for annotator in ("a", "b", "c"):
        dx = rng.uniform(-2, 2)
        results[annotator] = [
            box(f"{annotator}1", 10 + dx, 10, label="car", occluded=rng.random() < 0.5),
            region(f"{annotator}2", "rotated_bbox", {"cx": 60 + dx, "cy": 60, "width": 20, "height": 10,
                                                      "angle": 179 + 2 * dx}, occluded=False),
            region(f"{annotator}3", "polygon", {"points": [[0, 80], [20 + dx, 80], [10, 95]]}, occluded=True),
            region(f"{annotator}4", "keypoints", {"points": [[30 + dx, 30, 2], [35, 40, 1]]}, "person"),
        ]  # fmt: skip
    fusion = fuse_regions(results)
    assert len(fusion.regions) == 4
    validated = validate_regions(fusion.regions, schema, ItemFacts("image", width=100, height=100))
    assert [r["id"] for r in validated] == ["c1", "c2", "c3", "c4"]


@pytest.mark.filterwarnings("ignore")  # crowd-kit's own use of pandas, deprecated in pandas 3.1
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dawid_skene_agrees_with_crowd_kit(seed: int) -> None:
    """crowd-kit (Apache-2.0, a test-only dependency) as the reference: the same labels on the
    simulated crowd, and annotator error read the same way."""
    import pandas as pd
    from crowdkit.aggregation import DawidSkene as CrowdKitDawidSkene

    truth, triples = _crowd(seed=seed)
    frame = pd.DataFrame(triples, columns=["task", "worker", "label"])
    reference = CrowdKitDawidSkene(n_iter=100, tol=1e-6).fit(frame)
    theirs = reference.labels_.to_dict()
    ours = dawid_skene(triples).estimates()
    same = np.mean([ours[u] == theirs[u] for u in truth])
    assert same >= 0.98, same
    ours_accuracy = np.mean([ours[u] == truth[u] for u in truth])
    theirs_accuracy = np.mean([theirs[u] == truth[u] for u in truth])
    assert abs(ours_accuracy - theirs_accuracy) <= 0.01


def _sparse_crowd(seed: int, units: int = 600) -> tuple[list[int], list[tuple[int, int, int]]]:
    """10 classes, five annotators right 95/95/90/75/70 % of the time (else a uniformly random
    other class), three of them per unit in turn: most confusion cells see no answer."""
    rng = np.random.default_rng(seed)
    accuracy = (0.95, 0.95, 0.90, 0.75, 0.70)
    truth = rng.integers(0, 10, units).tolist()
    triples = []
    for unit, true in enumerate(truth):
        for k in range(3):
            annotator = (unit + k) % 5
            right = rng.random() < accuracy[annotator]
            triples.append((unit, annotator, true if right else (true + int(rng.integers(1, 10))) % 10))
    return truth, triples


def test_shrinkage_toward_one_accuracy_per_annotator_helps_where_confusion_cells_are_sparse() -> None:
    gains = []
    for seed in range(6):
        truth, triples = _sparse_crowd(seed)
        classic = dawid_skene(triples).estimates()
        shrunk = dawid_skene(triples, shrinkage=20).estimates()
        accuracy = [np.mean([e[u] == t for u, t in enumerate(truth)]) for e in (classic, shrunk)]
        gains.append(accuracy[1] - accuracy[0])
    assert np.mean(gains) > 0 and min(gains) >= -0.005, gains


def test_shrinkage_still_reads_a_consistent_confusion_back() -> None:
    _, triples = _crowd(seed=0)
    result = dawid_skene(triples, shrinkage=20)
    row = result.confusion["shifty"]["c0"]
    assert max(row, key=lambda k: row[k]) == "c1" and row["c1"] > 0.6
    with pytest.raises(ValueError, match="shrinkage"):
        dawid_skene(triples, shrinkage=-1)
