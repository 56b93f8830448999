"""Label-error detection: out-of-sample probabilities, confident learning (held to cleanlab's
answers), the digits benchmark, detection disagreements and pixel features (pure functions)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cleanlab.filter import find_label_issues as cleanlab_find_label_issues
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from labeling.inference.features import pixel_vector
from quality.metrics.label_errors import (
    classification_label_issues,
    detection_disagreements,
    find_label_issues,
    out_of_sample_probabilities,
)

# cleanlab warns about every class it may not prune for having too few examples; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:May not flag all label issues:UserWarning")


def cleanlab_issues(labels: np.ndarray, probs: np.ndarray, **kwargs: Any) -> np.ndarray:
    # n_jobs=1: the same answer as the default (cleanlab says so), without forking a pool per call.
    return cleanlab_find_label_issues(
        labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1, **kwargs
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def noisy_case(seed: int, *, coarse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Random labels and probabilities that lean towards them; `coarse` probabilities take few
    distinct values, so margins, self-confidences and the joint's counts are full of ties."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(20, 400)), int(rng.integers(2, 8))
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every class present
    if coarse:
        logits = rng.integers(0, 4, size=(n, k)).astype(float)
        logits[np.arange(n), labels] += rng.integers(0, 3)
    else:
        logits = rng.normal(size=(n, k)) * rng.uniform(0.5, 4)
        logits[np.arange(n), labels] += rng.uniform(0, 4)
    return labels, softmax(logits)


def flipped(labels: np.ndarray, share: float, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`labels` with a `share` of them changed to another class, and the positions changed."""
    rng = np.random.default_rng(seed)
    where = rng.choice(len(labels), size=int(len(labels) * share), replace=False)
    out = labels.copy()
    out[where] = (labels[where] + rng.integers(1, k, len(where))) % k
    return out, where


# Confident learning against cleanlab


@pytest.mark.parametrize("seed", range(12))
def test_confident_learning_flags_what_cleanlab_flags_in_the_same_order(seed: int) -> None:
    labels, probs = noisy_case(seed)
    found = find_label_issues(labels, probs)
    assert found.indices.tolist() == cleanlab_issues(labels, probs).tolist()


@pytest.mark.parametrize("seed", range(12))
def test_confident_learning_breaks_ties_as_cleanlab_does(seed: int) -> None:
    labels, probs = noisy_case(100 + seed, coarse=True)
    assert find_label_issues(labels, probs).indices.tolist() == cleanlab_issues(labels, probs).tolist()


@pytest.mark.parametrize("keep", [0, 1, 5, 40])
def test_it_keeps_at_least_n_examples_per_class_as_cleanlab_does(keep: int) -> None:
    for seed in range(4):
        labels, probs = noisy_case(200 + seed)
        mine = find_label_issues(labels, probs, min_examples_per_class=keep).indices
        assert mine.tolist() == cleanlab_issues(labels, probs, min_examples_per_class=keep).tolist()


def test_it_finds_the_flipped_labels_of_well_separated_classes() -> None:
    truth = np.repeat(np.arange(4), 25)
    labels, where = flipped(truth, 0.08, 4, seed=3)
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=0.3, size=(100, 4))
    logits[np.arange(100), truth] += 4.0  # the model knows the truth, not the labels
    probs = softmax(logits)
    found = find_label_issues(labels, probs)
    assert found.indices.tolist() == cleanlab_issues(labels, probs).tolist()
    # Calibration shrinks the joint's counts to what was confidently counted, so confident
    # learning leaves a few errors unflagged rather than flag correct labels.
    assert set(found.indices.tolist()) <= set(where.tolist())
    assert len(found.indices) >= 6
    assert (found.suggested[found.indices] == truth[found.indices]).all()
    assert np.diff(found.quality[found.indices]).min() >= 0  # least self-confident first


def test_a_class_nobody_was_given_and_a_class_of_one_are_handled_as_cleanlab_does() -> None:
    labels, probs = noisy_case(7)
    k = probs.shape[1]
    # A column nobody is labelled with (the model knows a class the labels never use)...
    wider = np.hstack([probs * 0.9, np.full((len(labels), 1), 0.1)])
    assert find_label_issues(labels, wider).indices.tolist() == cleanlab_issues(labels, wider).tolist()
    # ...and a class given to one example only: never flagged, whatever the model says.
    alone = labels.copy()
    alone[0] = k
    found = find_label_issues(alone, wider)
    assert found.indices.tolist() == cleanlab_issues(alone, wider).tolist()
    assert 0 not in found.indices


def test_binary_labels_match_cleanlab() -> None:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 300)
    p1 = np.clip(labels * 0.7 + rng.normal(0.15, 0.2, 300), 0.001, 0.999)
    probs = np.column_stack([1 - p1, p1])
    assert find_label_issues(labels, probs).indices.tolist() == cleanlab_issues(labels, probs).tolist()


def test_it_reports_quality_and_suggestion_for_every_example() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9]])
    found = find_label_issues(labels, probs)
    assert found.quality.tolist() == [0.9, 0.2, 0.7, 0.6, 0.9]
    assert found.suggested.tolist() == [0, 1, 1, 1, 1]
    assert all(found.suggested[i] != labels[i] for i in found.indices)


def test_it_refuses_malformed_input() -> None:
    with pytest.raises(ValueError, match="probability matrix"):
        find_label_issues(np.array([0, 1]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="column indices"):
        find_label_issues(np.array([0, 2]), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        find_label_issues(np.array([0, 1]), np.array([[np.nan, 1.0], [0.5, 0.5]]))
    assert find_label_issues(np.zeros(0, dtype=int), np.zeros((0, 3))).indices.tolist() == []


# Out-of-sample probabilities and the whole chain


def test_digits_with_ten_percent_flipped_labels_are_found() -> None:
    digits = load_digits()  # 1,797 real 8x8 scans, shipped with scikit-learn
    labels, where = flipped(digits.target, 0.10, 10, seed=0)
    features = np.stack([pixel_vector(image) for image in digits.images])  # the 8x8 scans as they are
    issues = classification_label_issues(features, labels.tolist())
    found, flips = {issue.index for issue in issues}, set(where.tolist())
    precision = len(found & flips) / len(found)
    recall = len(found & flips) / len(flips)
    # Measured: precision 0.88, recall 0.87 (179 flips, 177 flagged); over flip seeds 0-4,
    # precision 0.87-0.89 and recall 0.83-0.89.
    assert precision >= 0.8
    assert recall >= 0.8
    assert all(issue.given == labels[issue.index] != issue.suggested for issue in issues)
    right = [issue.suggested == digits.target[issue.index] for issue in issues if issue.index in flips]
    assert sum(right) / len(right) >= 0.9  # and the suggestion is mostly the true digit


def test_out_of_sample_probabilities_do_not_leak_the_rows_own_label() -> None:
    # Pure noise with more features than examples: a model can fit any labels in-sample, so a
    # row's own label leaking into its probabilities would show as accuracy well above chance.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 300))
    labels = rng.integers(0, 2, 200)
    classes, probs = out_of_sample_probabilities(features, labels.tolist())
    assert classes == [0, 1]
    assert abs((probs.argmax(axis=1) == labels).mean() - 0.5) < 0.15
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # For scale: the same kind of model, asked about the rows it was fitted on, is always right.
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000)).fit(features, labels)
    assert (model.predict(features) == labels).mean() > 0.99


def test_the_same_seed_gives_the_same_probabilities() -> None:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(120, 6))
    labels = [("cat", "dog", "bird")[i % 3] for i in range(120)]
    first = out_of_sample_probabilities(features, labels, seed=4)
    again = out_of_sample_probabilities(features, labels, seed=4)
    other = out_of_sample_probabilities(features, labels, seed=5)
    assert first[0] == again[0] == ["bird", "cat", "dog"]  # label_order
    assert np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])  # the folds differ


def test_small_classes_lower_the_number_of_folds() -> None:
    rng = np.random.default_rng(1)
    labels = ["a"] * 30 + ["b"] * 30 + ["c"] * 2
    features = rng.normal(size=(62, 4)) + np.repeat([[0.0], [3.0], [6.0]], [30, 30, 2], axis=0)
    classes, probs = out_of_sample_probabilities(features, labels, folds=5)
    assert classes == ["a", "b", "c"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # Two folds: each "c" was predicted by a model that trained on the other one only.
    assert (probs[60:, 2] > 0).all()


def test_the_only_example_of_a_class_gets_no_probability_for_it_and_is_not_flagged() -> None:
    rng = np.random.default_rng(2)
    labels = ["a"] * 20 + ["b"] * 20 + ["typo"]
    features = np.vstack([rng.normal(0, 1, (20, 3)), rng.normal(5, 1, (20, 3)), [[0.0, 0.0, 0.0]]])
    classes, probs = out_of_sample_probabilities(features, labels)
    assert classes == ["a", "b", "typo"]
    assert (probs[:, 2] == 0).all()  # no model ever saw "typo"
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs[40].argmax() == 0
    assert 40 not in {issue.index for issue in classification_label_issues(features, labels)}


def test_it_refuses_what_cannot_be_cross_validated() -> None:
    features = np.zeros((4, 2))
    with pytest.raises(ValueError, match="at least two classes"):
        out_of_sample_probabilities(features, ["a"] * 4)
    with pytest.raises(ValueError, match="at least two classes"):
        out_of_sample_probabilities(features, ["a", "a", "a", "b"])
    with pytest.raises(ValueError, match="folds"):
        out_of_sample_probabilities(features, ["a", "a", "b", "b"], folds=1)
    with pytest.raises(ValueError, match="one row per label"):
        out_of_sample_probabilities(features, ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        out_of_sample_probabilities(np.full((4, 2), np.nan), ["a", "a", "b", "b"])


def test_classification_issues_name_labels_and_rank_by_score() -> None:
    rng = np.random.default_rng(4)
    truth = np.repeat([0, 1, 2], 40)
    features = rng.normal(size=(120, 2)) + np.array([[0, 0], [8, 0], [0, 8]])[truth]
    names = np.array(["cat", "dog", "fox"])
    labels, where = flipped(truth, 0.05, 3, seed=4)
    issues = classification_label_issues(features, names[labels].tolist())
    assert {issue.index for issue in issues} <= set(where.tolist())
    assert len(issues) >= len(where) - 1
    assert all(issue.suggested == names[truth[issue.index]] for issue in issues)
    scores = [issue.score for issue in issues]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


# Detection disagreements


def box(
    rid: str, x: float, y: float = 0, w: float = 10, h: float = 10, label: str = "car", **extra: Any
) -> dict[str, Any]:
    geometry = {"x": x, "y": y, "width": w, "height": h}
    return {"id": rid, "type": "bbox", "label": label, "attributes": {}, "geometry": geometry, **extra}


def kinds(issues: list[Any]) -> list[tuple[str, str, float]]:
    return [(issue.kind, issue.region_id, round(issue.score, 6)) for issue in issues]


def test_agreeing_annotation_and_predictions_have_no_issues() -> None:
    annotated = [box("a1", 0), box("a2", 50, label="person")]
    predicted = [box("p1", 0.5, score=0.9), box("p2", 50, label="person", score=0.8)]
    assert detection_disagreements(annotated, predicted) == []


def test_a_confident_prediction_nobody_drew_is_missing() -> None:
    issues = detection_disagreements([box("a1", 0)], [box("p1", 0, score=0.9), box("p2", 100, score=0.85)])
    assert kinds(issues) == [("missing", "p2", 0.85)]
    assert issues[0].predicted_label == "car" and issues[0].label is None
    assert issues[0].prediction_id == "p2"
    # A doubtful prediction is not an object; a prediction without a score is a sure one.
    assert detection_disagreements([], [box("p3", 100, score=0.3)]) == []
    assert kinds(detection_disagreements([], [box("p4", 100)])) == [("missing", "p4", 1.0)]


def test_a_region_the_model_does_not_see_is_extra() -> None:
    issues = detection_disagreements([box("a1", 0), box("a2", 100)], [box("p1", 0, score=0.9)])
    assert kinds(issues) == [("extra", "a2", 1.0)]
    assert issues[0].label == "car" and issues[0].predicted_label is None
    # The model half-saw it: less suspect.
    doubtful = detection_disagreements([box("a2", 100)], [box("p2", 100, score=0.3)])
    assert kinds(doubtful) == [("extra", "a2", 0.7)]


def test_the_same_object_drawn_twice_leaves_one_copy_extra() -> None:
    issues = detection_disagreements([box("a1", 0), box("a2", 1)], [box("p1", 0, score=0.9)])
    assert kinds(issues) == [("extra", "a2", 1.0)]


def test_a_well_placed_region_with_another_class_is_a_wrong_class() -> None:
    issues = detection_disagreements([box("a1", 0, label="car")], [box("p1", 0, label="truck", score=0.8)])
    assert kinds(issues) == [("wrong_class", "a1", 0.8)]
    issue = issues[0]
    assert (issue.label, issue.predicted_label, issue.prediction_id, issue.similarity) == (
        "car",
        "truck",
        "p1",
        1.0,
    )
    assert "truck" in issue.message
    assert issue.details["predicted_label"] == "truck"


def test_a_loose_box_of_the_right_class_is_a_poor_box() -> None:
    # Shifted by 2.5 of 10: IoU 75 / 125 = 0.6, 60 % of the way from good (0.75) to unpaired (0.5).
    issues = detection_disagreements([box("a1", 0)], [box("p1", 2.5, score=0.9)])
    assert kinds(issues) == [("poor_box", "a1", 0.6)]
    assert issues[0].similarity == pytest.approx(0.6)
    # Below match_at the two are not the same object at all.
    assert {i.kind for i in detection_disagreements([box("a1", 0)], [box("p1", 5, score=0.9)])} == {
        "extra",
        "missing",
    }
    # A stricter idea of "good" flags what the default lets pass.
    assert detection_disagreements([box("a1", 0)], [box("p1", 1, score=0.9)]) == []
    assert (
        kinds(detection_disagreements([box("a1", 0)], [box("p1", 1, score=0.9)], good_at=0.9))[0][0]
        == "poor_box"
    )


def test_issues_come_most_likely_first() -> None:
    annotated = [box("a1", 0), box("a2", 50, label="car"), box("a3", 100)]
    predicted = [box("p1", 2.5, score=0.9), box("p2", 50, label="bus", score=0.7), box("p4", 200, score=0.95)]
    assert kinds(detection_disagreements(annotated, predicted)) == [
        ("extra", "a3", 1.0),
        ("missing", "p4", 0.95),
        ("wrong_class", "a2", 0.7),
        ("poor_box", "a1", 0.6),
    ]


def test_no_predictions_or_no_annotations() -> None:
    annotated = [box("a1", 0), box("a2", 50)]
    assert kinds(detection_disagreements(annotated, [])) == [("extra", "a1", 1.0), ("extra", "a2", 1.0)]
    predicted = [box("p1", 0, score=0.6), box("p2", 50, score=0.9)]
    assert kinds(detection_disagreements([], predicted)) == [("missing", "p2", 0.9), ("missing", "p1", 0.6)]
    assert detection_disagreements([], []) == []


def test_regions_that_are_not_objects_are_skipped() -> None:
    tag = {"id": "t1", "type": "classification", "label": "night", "attributes": {}, "geometry": {}}
    other = {
        "id": "t2",
        "type": "classification",
        "label": "day",
        "attributes": {},
        "geometry": {},
        "score": 0.9,
    }
    assert detection_disagreements([tag, box("a1", 0)], [other, box("p1", 0, score=0.9)]) == []


def test_it_refuses_thresholds_out_of_order() -> None:
    with pytest.raises(ValueError, match="match_at"):
        detection_disagreements([], [], match_at=0.8, good_at=0.6)
    with pytest.raises(ValueError, match="minimum prediction score"):
        detection_disagreements([], [], min_score=1.5)
