"""Which labels a model disagrees with: likely label errors, found by training on the labels
themselves (classification) or by comparing them with a detector's output (regions).

Classification (one label per image or text) follows confident learning (Northcutt, Jiang &
Chuang 2021), in two steps:

1. `out_of_sample_probabilities`: a plain model (standardized features, multinomial logistic
   regression) is fitted by stratified k-fold cross-validation, so the probabilities of each row
   come from a model that never saw it. In-sample probabilities would just repeat the labels back,
   wrong ones included. The model is strongly regularized (C = 0.1) for the same reason: one
   flexible enough to fit every label learns the errors too (on scikit-learn's digits with 10 %
   of labels flipped, C = 1 flags them with a precision of 0.78, C = 0.1 of 0.88, at the same
   recall, 0.87).
   Classes smaller than `folds` lower the number of folds to the smallest class (at least 2). A
   class with a single example cannot be cross-validated (no fold could both train on it and
   test it): such rows are left out of every fold and predicted by a model fitted on all the
   other rows. That model has never seen their class, so their own class gets probability 0,
   but confident learning never flags the only example of a class (see step 2): they are not
   reported. Whether a class of one is a typo is a question for a person, not for a model.
2. `find_label_issues`: cleanlab's default `filter.find_label_issues` (filter_by =
   "prune_by_noise_rate"), written out here because cleanlab is AGPL-3.0 and Loupe is Apache-2.0
   (the tests hold the two to the same answers). The threshold of a class is the mean probability
   the model gives to that class over the examples labelled with it; an example counts as
   confidently of class j when its probability of j reaches j's threshold (the likeliest such
   class when several do). These counts, given label by true label, form the confident joint,
   calibrated so that each row sums to the number of examples given that label and the whole to
   n. For each given label i and true label j ≠ i, the joint's count of examples is flagged among
   those labelled i: the ones with the largest margin p(j) - p(i). Flagged examples whose given
   label is still the model's first choice (within 1e-6) are dropped, and the rest are ranked by
   self-confidence, p(given label): lower is more likely wrong.

   Ties (equal margins, equal self-confidence, equal fractions when the joint is rounded to
   counts, which is common: two equal counts in a row) are broken by numpy's default sort, as
   cleanlab breaks them, so both flag the same examples in the same order. That sort is not
   stable and numpy picks a vectorized one per CPU: among exact ties, the answer is the same
   from run to run on one machine, not necessarily across machines (cleanlab's neither).

Detection (`detection_disagreements`) compares one annotation's regions with a model's
predictions for the same item. Predictions scoring below `min_score` (a prediction without a
score counts as 1) are not trusted as objects; the rest are paired with the annotated regions by
geometry alone (`matching.similarity_matrix`, label-agnostic, optimal assignment at `match_at`).
A region pairs only with a prediction of its own type; regions that are not located objects
(classification, relation, transcription) are skipped. The disagreements, each with a score in
[0, 1] where higher means more likely an error:

- `missing`: a trusted prediction no annotated region matches, an object the annotator may have
  missed. Score: the prediction's score.
- `extra`: an annotated region no trusted prediction matches, maybe drawn where there is nothing.
  Score: 1 - the score of the best untrusted prediction covering it (similarity ≥ `match_at`),
  1 when the model saw nothing there at all. A region the model half-saw is less suspect than
  one it did not see. An item where the model found nothing makes every region `extra` at 1: a
  model that is blind on a whole item is not detected here, so look at such items as a whole.
- `wrong_class`: a pair whose labels differ, however well drawn. Score: the prediction's score.
- `poor_box`: a pair with the same label but a similarity below `good_at` (IoU for boxes,
  polygons and masks, OKS for keypoints...). Score: (good_at - similarity) / (good_at -
  match_at), 1 at the pairing threshold, falling to 0 at `good_at`.

The features come from labeling.inference.features (the ones models trained in Loupe read):
MiniLM embeddings for texts, standardized pixels and HOG for images, good enough for small,
centred, uniform images (digits, icons, crops), not for photographs.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from quality.metrics.consensus import label_order
from quality.metrics.matching import MATCH_AT, Region, assign, similarity_matrix

IssueKind = Literal["missing", "extra", "wrong_class", "poor_box"]

GOOD_AT = 0.75  # a paired region at least this similar to the prediction is drawn well enough
MIN_SCORE = 0.5  # predictions scoring below this are not trusted as objects
# cleanlab's constants (cleanlab/internal/constants.py), kept so both give the same answers.
_FUZZ = 1e-6  # "within floating point" when comparing probabilities
_MIN_THRESHOLD = 2 * _FUZZ  # a class threshold is never below this
_ABSENT_THRESHOLD = 2.0  # threshold of a class nobody was given: no probability reaches it
_TINY = 1e-100  # guards divisions by a zero count
_UNLOCATED = frozenset({"classification", "relation", "transcription"})


@dataclass(frozen=True)
class LabelIssues:
    """What confident learning found, by position in the input.

    - `indices`: the examples whose label is likely wrong, most likely first (lowest
      self-confidence);
    - `quality`: per example, the probability of its given label (self-confidence, in [0, 1]):
      lower is more likely wrong;
    - `suggested`: per example, the class index the model prefers (argmax; ties to the lower).
      For the flagged examples it always differs from the given label.
    """

    indices: np.ndarray
    quality: np.ndarray
    suggested: np.ndarray


@dataclass(frozen=True)
class LabelIssue:
    """One likely mislabeled example: its position, its label, the model's choice and how likely
    the label is wrong, in [0, 1] (1 - the probability of the given label)."""

    index: int
    given: Hashable
    suggested: Hashable
    score: float


@dataclass(frozen=True)
class RegionIssue:
    """One disagreement between an annotation and a model's predictions (see the module docstring).

    `region_id` is the annotated region's id, or the prediction's for `missing`; `prediction_id`
    the prediction involved (None for `extra`). `label` is the annotated region's label (None for
    `missing`), `predicted_label` the prediction's (None for `extra`). `similarity` is the pair's
    similarity for `wrong_class` and `poor_box`, else None.
    """

    kind: IssueKind
    region_id: str
    score: float
    label: Hashable | None
    predicted_label: Hashable | None
    prediction_id: str | None = None
    similarity: float | None = None

    @property
    def message(self) -> str:
        """One sentence for a reviewer."""
        if self.kind == "missing":
            return (
                f"The model found a {self.predicted_label!r} (score {self.score:.2f}) "
                "that the annotation does not have."
            )
        if self.kind == "extra":
            return f"The model finds no {self.label!r} where the annotation has one (score {self.score:.2f})."
        if self.kind == "wrong_class":
            return f"The model calls this {self.label!r} a {self.predicted_label!r} (score {self.score:.2f})."
        return (
            f"The model draws this {self.label!r} differently (similarity {self.similarity or 0.0:.2f}, "
            f"score {self.score:.2f})."
        )

    @property
    def details(self) -> dict[str, Any]:
        """The issue's facts as JSON-ready values (labels as given, which may be any hashable)."""
        return {
            "kind": self.kind,
            "region_id": self.region_id,
            "prediction_id": self.prediction_id,
            "label": self.label,
            "predicted_label": self.predicted_label,
            "similarity": self.similarity,
        }


def out_of_sample_probabilities(
    features: np.ndarray, labels: Sequence[Hashable], *, folds: int = 5, seed: int = 0
) -> tuple[list[Hashable], np.ndarray]:
    """The classes (in `label_order`) and an (n, k) matrix of probabilities, column c for
    `classes[c]`, each row predicted by a model that never saw that row (see the module docstring).

    `features` is one row per example (an embedding, standardized pixels...). The same features,
    labels and seed always give the same probabilities. Raises ValueError with fewer than two
    classes of two examples or more, or with malformed input.
    """
    x = np.asarray(features, dtype=float)
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise ValueError(f"Features must be one row per label: got shape {x.shape} for {len(labels)} labels.")
    if not np.isfinite(x).all():
        raise ValueError("Features contain NaN or infinite values.")
    if folds < 2:
        raise ValueError(f"Cross-validation needs at least 2 folds, got {folds}.")
    classes = sorted(set(labels), key=label_order)
    index = {label: i for i, label in enumerate(classes)}
    y = np.array([index[label] for label in labels], dtype=int)
    counts = np.bincount(y, minlength=len(classes))
    if int((counts >= 2).sum()) < 2:
        raise ValueError(
            "Label errors are found by learning to tell classes apart: at least two classes need "
            f"two examples or more (got {dict(zip(classes, counts.tolist(), strict=True))!r})."
        )
    probs = np.zeros((len(y), len(classes)))
    rows = np.flatnonzero(counts[y] >= 2)
    splits = min(folds, int(counts[counts >= 2].min()))
    splitter = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    # One BLAS thread: the matrices are small, and threads that wait for each other (and for
    # the other workers on the machine) made the digits test 7 s instead of 0.3 s on a busy 2-core machine.
    with threadpool_limits(limits=1):
        for train, test in splitter.split(x[rows], y[rows]):
            model = _classifier(seed).fit(x[rows[train]], y[rows[train]])
            probs[np.ix_(rows[test], model.classes_)] = model.predict_proba(x[rows[test]])
        alone = np.flatnonzero(counts[y] < 2)
        if len(alone):
            model = _classifier(seed).fit(x[rows], y[rows])
            probs[np.ix_(alone, model.classes_)] = model.predict_proba(x[alone])
    return classes, probs


def find_label_issues(
    labels_idx: np.ndarray, probs: np.ndarray, *, min_examples_per_class: int = 1
) -> LabelIssues:
    """Confident learning over out-of-sample probabilities (cleanlab's default; module docstring).

    `labels_idx[i]` is the column of `probs` holding example i's given label; `probs` has a column
    per class, including classes nobody was given. At least `min_examples_per_class` examples of
    each class are kept unflagged, and a class given to that many examples or fewer (at least one)
    is never pruned.
    """
    y = np.asarray(labels_idx)
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[1] < 2 or y.shape != (p.shape[0],):
        raise ValueError(
            f"Expected n labels and an (n, k >= 2) probability matrix, got {y.shape} and {p.shape}."
        )
    if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"Labels must be column indices in [0, {p.shape[1]}).")
    if not np.isfinite(p).all():
        raise ValueError("Probabilities contain NaN or infinite values.")
    n, k = p.shape
    quality = p[np.arange(n), y] if n else np.zeros(0)
    suggested = p.argmax(axis=1)
    if n == 0:
        return LabelIssues(np.zeros(0, dtype=int), quality, suggested)
    counts = np.bincount(y, minlength=k)
    prune = _keep_at_least(_confident_joint(y, p, counts).T, min_examples_per_class)
    flagged = np.zeros(n, dtype=bool)
    for given in range(k):
        members = np.flatnonzero(y == given)
        if len(members) <= max(min_examples_per_class, 1):
            continue  # cleanlab leaves a class this small alone
        for true in range(k):
            number = int(prune[true, given])
            if true != given and number > 0:
                margin = p[members, true] - p[members, given]
                flagged[members[np.argsort(-margin)[:number]]] = True
    # An example whose given label is still the model's first choice is not an issue.
    fuzzy = p.copy()
    fuzzy[np.arange(n), y] += _FUZZ
    flagged &= fuzzy.argmax(axis=1) != y
    issues = np.flatnonzero(flagged)
    return LabelIssues(issues[np.argsort(quality[issues])], quality, suggested)


def classification_label_issues(
    features: np.ndarray, labels: Sequence[Hashable], *, folds: int = 5, seed: int = 0
) -> list[LabelIssue]:
    """The likely mislabeled examples, most likely first: `out_of_sample_probabilities` then
    `find_label_issues`, with labels and suggestions as given (not as indices)."""
    classes, probs = out_of_sample_probabilities(features, labels, folds=folds, seed=seed)
    index = {label: i for i, label in enumerate(classes)}
    found = find_label_issues(np.array([index[label] for label in labels], dtype=int), probs)
    return [
        LabelIssue(
            index=int(i),
            given=labels[i],
            suggested=classes[int(found.suggested[i])],
            score=float(1.0 - found.quality[i]),
        )
        for i in found.indices
    ]


def detection_disagreements(
    annotated: Sequence[Region],
    predicted: Sequence[Region],
    *,
    match_at: float = MATCH_AT,
    good_at: float = GOOD_AT,
    min_score: float = MIN_SCORE,
) -> list[RegionIssue]:
    """Where one annotation of an item and a model's predictions for it disagree (module docstring).

    Issues come most likely first (highest score); ties in annotation order, then `missing` ones
    in prediction order.
    """
    if not 0.0 < match_at <= good_at <= 1.0:
        raise ValueError(f"Expected 0 < match_at <= good_at <= 1, got {match_at} and {good_at}.")
    if not 0.0 <= min_score <= 1.0:
        raise ValueError(f"The minimum prediction score is in [0, 1], got {min_score}.")
    ours = [i for i, r in enumerate(annotated) if r.get("type") not in _UNLOCATED]
    theirs = [j for j, r in enumerate(predicted) if r.get("type") not in _UNLOCATED]
    score = {j: _score(predicted[j]) for j in theirs}
    trusted = [j for j in theirs if score[j] >= min_score]
    doubted = [j for j in theirs if score[j] < min_score]
    sim = similarity_matrix([annotated[i] for i in ours], [predicted[j] for j in trusted])
    pairs = assign(sim, match_at)
    paired_ours = {a for a, _, _ in pairs}
    paired_theirs = {b for _, b, _ in pairs}

    found: list[tuple[tuple[int, int], RegionIssue]] = []
    for a, b, similarity in pairs:
        region, prediction = annotated[ours[a]], predicted[trusted[b]]
        label, predicted_label = region.get("label"), prediction.get("label")
        if label != predicted_label:
            kind: IssueKind = "wrong_class"
            value = score[trusted[b]]
        elif similarity < good_at:
            kind, value = "poor_box", (good_at - similarity) / (good_at - match_at)
        else:
            continue
        issue = RegionIssue(
            kind, _id(region), value, label, predicted_label, _id(prediction), similarity=similarity
        )
        found.append(((0, ours[a]), issue))
    seen = similarity_matrix([annotated[i] for i in ours], [predicted[j] for j in doubted])
    for a, i in enumerate(ours):
        if a in paired_ours:
            continue
        near = [score[j] for c, j in enumerate(doubted) if seen[a, c] >= match_at]
        issue = RegionIssue(
            "extra", _id(annotated[i]), 1.0 - max(near, default=0.0), annotated[i].get("label"), None
        )
        found.append(((0, i), issue))
    for b, j in enumerate(trusted):
        if b not in paired_theirs:
            prediction = predicted[j]
            issue = RegionIssue(
                "missing", _id(prediction), score[j], None, prediction.get("label"), _id(prediction)
            )
            found.append(((1, j), issue))
    found.sort(key=lambda item: (-item[1].score, item[0]))
    return [issue for _, issue in found]


def _classifier(seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000, random_state=seed))


def _confident_thresholds(y: np.ndarray, p: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The mean self-confidence of each class (cleanlab's `count.get_confident_thresholds`)."""
    thresholds = [p[y == c, c].mean() if counts[c] else _ABSENT_THRESHOLD for c in range(p.shape[1])]
    return np.clip(thresholds, _MIN_THRESHOLD, None)


def _confident_joint(y: np.ndarray, p: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Counts of examples by (given label, confidently true label), calibrated to the given
    labels' counts (cleanlab's `count.compute_confident_joint`, calibrate=True)."""
    k = p.shape[1]
    confident = p >= _confident_thresholds(y, p, counts) - _FUZZ
    several = confident.sum(axis=1)
    guess = np.where(several > 1, p.argmax(axis=1), confident.argmax(axis=1))
    by_true = np.zeros((k, k), dtype=np.int64)
    np.add.at(by_true, (guess[several > 0], y[several > 0]), 1)
    # Built transposed, as cleanlab does (a confusion matrix, then .T): numpy sums a transposed
    # array in another order, and the last bit of the sums decides ties when rounding to counts.
    joint = by_true.T
    # Every class is taken to have at least one correctly labelled example.
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))
    calibrated = (joint.T / np.clip(joint.sum(axis=1), _TINY, None) * counts).T
    calibrated = calibrated / np.clip(np.sum(calibrated), _TINY, None) * counts.sum()
    return _round_rows(calibrated)


def _keep_at_least(prune: np.ndarray, n: int) -> np.ndarray:
    """Raise the diagonal of the (true label, given label) counts to at least n, taking the
    difference evenly from the column's non-zero off-diagonal counts (cleanlab's
    `filter._keep_at_least_n_per_class`, frac_noise=1)."""
    diagonal = np.diagonal(prune)
    raised = np.maximum(diagonal, n)
    nonzero_off = np.maximum(np.count_nonzero(prune, axis=0) - 1.0, 1.0)
    adjusted = prune - (raised - diagonal) / nonzero_off
    adjusted[adjusted < 0] = 0
    np.fill_diagonal(adjusted, raised)
    # cleanlab truncates here (astype(int)) before rounding rows; so does this, to agree.
    return _round_rows(adjusted.astype(int))


def _round_rows(matrix: np.ndarray) -> np.ndarray:
    """Round each row to integers keeping its (rounded) total (cleanlab's
    `round_preserving_row_totals`, ties broken the same way)."""
    return np.array([_round_keeping_sum(row) for row in np.asarray(matrix, dtype=float)], dtype=int)


def _round_keeping_sum(values: np.ndarray) -> np.ndarray:
    ints = values.round()
    target = np.sum(values).round()
    total = np.sum(ints).round()
    while abs(total - target) > _FUZZ:
        step = 1 if target > total else -1
        changes = min(int(abs(np.round(target - total))), len(values))
        # The entries rounded furthest the other way change first (cleanlab's order).
        for i in np.argsort(values - ints)[::-step][:changes]:
            ints[i] += step
        total = np.sum(ints).round()
    return ints


def _score(prediction: Region) -> float:
    value = prediction.get("score")
    return 1.0 if value is None else float(value)


def _id(region: Region) -> str:
    return str(region.get("id"))
