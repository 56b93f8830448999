"""One answer from several: k annotations of a task become one consensus result.

Classes (a label per unit, units being tasks or matched regions):

- `majority_vote`: the most frequent label; ties go to the label more frequent over all units,
  then to the first in a fixed order of labels (`label_order`), so the same votes always give the
  same answer whatever order they arrive in.
- `dawid_skene`: expectation-maximization over (unit, annotator, label) triples that learns each
  annotator's confusion matrix along with the labels (Dawid & Skene 1979). An annotator who is
  often wrong counts for less; one who is consistently wrong in the same way (always says "cat"
  for dogs) is even read back correctly.

Geometry: `fuse_regions` groups the regions that several annotators drew for the same object
and replaces each group supported by enough annotators with one region.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from quality.metrics.agreement import is_missing
from quality.metrics.matching import MATCH_AT, Region, assign, similarity_matrix

U = TypeVar("U", bound=Hashable)  # a unit: a task, an item, a matched region
A = TypeVar("A", bound=Hashable)  # an annotator
L = TypeVar("L", bound=Hashable)  # a label


def label_order(label: Hashable) -> tuple[str, Any]:
    """A sort key that orders any labels: by type name, then by value (repr for other types)."""
    return (type(label).__name__, label if isinstance(label, str | int | float) else repr(label))


def majority_vote(labels_by_unit: Mapping[U, Sequence[L | None]]) -> dict[U, L | None]:
    """The most frequent label of each unit (None/NaN votes ignored; None when nobody voted).

    Ties go to the tied label given most often over all units (the likelier class a priori),
    then to the first by `label_order`.
    """
    overall: Counter[L] = Counter(
        label
        for labels in labels_by_unit.values()
        for label in labels
        if label is not None and not is_missing(label)
    )
    out: dict[U, L | None] = {}
    for unit, labels in labels_by_unit.items():
        votes: Counter[L] = Counter(label for label in labels if label is not None and not is_missing(label))
        out[unit] = min(votes, key=lambda lb: (-votes[lb], -overall[lb], label_order(lb))) if votes else None
    return out


@dataclass(frozen=True)
class DawidSkene(Generic[U, A, L]):
    """What Dawid-Skene learned.

    - `posteriors[unit][label]`: the probability that the unit's true label is `label`;
    - `confusion[annotator][true][given]`: the probability that the annotator answers `given`
      when the truth is `true` (rows sum to 1);
    - `priors[label]`: how common each true label is;
    - `accuracy[annotator]`: Σ_c priors[c] · confusion[annotator][c][c], the share of units the
      annotator is estimated to get right;
    - `iterations`, `converged`: whether the posteriors settled within the tolerance.
    """

    labels: tuple[L, ...]
    posteriors: dict[U, dict[L, float]]
    confusion: dict[A, dict[L, dict[L, float]]]
    priors: dict[L, float]
    accuracy: dict[A, float]
    iterations: int
    converged: bool

    def estimates(self) -> dict[U, L]:
        """The most probable label of each unit; ties go to the likelier label a priori."""
        rank = {label: (-self.priors[label], label_order(label)) for label in self.labels}
        return {
            unit: min(dist, key=lambda lb: (-dist[lb], rank[lb])) for unit, dist in self.posteriors.items()
        }


def dawid_skene(
    triples: Iterable[tuple[U, A, L | None]],
    *,
    labels: Sequence[L] | None = None,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    smoothing: float = 0.01,
    shrinkage: float = 0.0,
) -> DawidSkene[U, A, L]:
    """Estimate true labels and annotator confusion matrices from (unit, annotator, label) triples.

    Starts from the vote shares of each unit (a soft majority vote), then alternates: confusion
    matrices and class priors from the current posteriors (M step), posteriors from those (E
    step), until no posterior moves by `tolerance` or after `max_iterations` rounds. `smoothing`
    is a pseudo-count added to every confusion cell and prior, so no probability is ever 0 (a
    single surprising answer cannot veto a label) and an annotator never seen on a class gets a
    uniform row. `labels` lists the possible labels when some may never have been given;
    by default the labels seen, in `label_order`. An annotator may label a unit more than once:
    each answer counts. None/NaN labels are skipped.

    `shrinkage` (0: the classic model, as crowd-kit fits it) adds that many pseudo-answers to
    each row of an annotator's confusion matrix, spread as their one-coin matrix (right with
    their overall accuracy, wrong evenly otherwise). A full K x K matrix per annotator has many
    cells that few answers ever reach; one stray answer in an empty cell outweighs the smoothing
    there, so two unreliable annotators can overrule a reliable one. Shrinkage lets a row speak
    for itself only once it holds enough answers, while a consistent confusion (an annotator who
    always says "cat" for "lynx") still shows through.
    """
    if max_iterations < 1 or tolerance <= 0 or smoothing <= 0 or shrinkage < 0:
        raise ValueError(
            "Dawid-Skene needs max_iterations >= 1, tolerance > 0, smoothing > 0 and shrinkage >= 0."
        )
    given = [(u, a, lb) for u, a, lb in triples if lb is not None and not is_missing(lb)]
    seen = {lb for _, _, lb in given}
    if labels is None:
        classes = sorted(seen, key=label_order)
    else:
        classes = list(dict.fromkeys(labels))
        if unknown := seen - set(classes):
            raise ValueError(f"Labels given but not listed: {sorted(unknown, key=label_order)!r}.")
    units = list(dict.fromkeys(u for u, _, _ in given))
    annotators = list(dict.fromkeys(a for _, a, _ in given))
    if not given:
        return DawidSkene(
            tuple(classes), {}, {}, {c: 1 / len(classes) for c in classes} if classes else {}, {}, 0, True
        )

    unit_at = {u: i for i, u in enumerate(units)}
    annotator_at = {a: i for i, a in enumerate(annotators)}
    class_at = {c: i for i, c in enumerate(classes)}
    u_idx = np.array([unit_at[u] for u, _, _ in given])
    a_idx = np.array([annotator_at[a] for _, a, _ in given])
    l_idx = np.array([class_at[lb] for _, _, lb in given])
    n_units, n_annotators, n_classes = len(units), len(annotators), len(classes)

    posterior = np.zeros((n_units, n_classes))
    np.add.at(posterior, (u_idx, l_idx), 1.0)
    posterior /= posterior.sum(axis=1, keepdims=True)

    converged = False
    iterations = 0
    priors = np.full(n_classes, 1 / n_classes)
    confusion = np.full((n_annotators, n_classes, n_classes), 1 / n_classes)
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (read after the loop)
        # M step: confusion[a, true, given] and priors from the current posteriors.
        priors = (posterior.sum(axis=0) + smoothing) / (n_units + n_classes * smoothing)
        counts = np.zeros((n_annotators, n_classes, n_classes))  # [annotator, given, true]
        np.add.at(counts, (a_idx, l_idx), posterior[u_idx])
        counts = counts.transpose(0, 2, 1)
        if shrinkage > 0:
            counts = counts + shrinkage * _one_coin(counts)
        counts = counts + smoothing
        confusion = counts / counts.sum(axis=2, keepdims=True)
        # E step: log P(true = c | answers) ∝ log prior_c + Σ over answers of log confusion.
        log_post = np.tile(np.log(priors), (n_units, 1))
        np.add.at(log_post, u_idx, np.log(confusion[a_idx, :, l_idx]))
        log_post -= log_post.max(axis=1, keepdims=True)
        updated = np.exp(log_post)
        updated /= updated.sum(axis=1, keepdims=True)
        change = float(np.abs(updated - posterior).max())
        posterior = updated
        if change < tolerance:
            converged = True
            break

    accuracy = (priors[None, :] * np.diagonal(confusion, axis1=1, axis2=2)).sum(axis=1)
    return DawidSkene(
        labels=tuple(classes),
        posteriors={
            u: dict(zip(classes, map(float, posterior[i]), strict=True)) for i, u in enumerate(units)
        },
        confusion={
            a: {
                c: dict(zip(classes, map(float, confusion[i, t]), strict=True)) for t, c in enumerate(classes)
            }
            for i, a in enumerate(annotators)
        },
        priors=dict(zip(classes, map(float, priors), strict=True)),
        accuracy={a: float(accuracy[i]) for i, a in enumerate(annotators)},
        iterations=iterations,
        converged=converged,
    )


def _one_coin(counts: np.ndarray) -> np.ndarray:
    """Each annotator's confusion as one number: right with their overall share p of answers that
    match the current truth, wrong evenly otherwise (counts: [annotator, true, given])."""
    n_classes = counts.shape[1]
    if n_classes == 1:
        return np.ones_like(counts)
    right = np.trace(counts, axis1=1, axis2=2)
    total = counts.sum(axis=(1, 2))
    p = np.divide(right, total, out=np.full_like(right, 1.0 / n_classes), where=total > 0)
    eye = np.eye(n_classes)
    return p[:, None, None] * eye + ((1 - p) / (n_classes - 1))[:, None, None] * (1 - eye)


@dataclass(frozen=True)
class Support(Generic[A]):
    """Who stands behind a consensus region: the annotators and the (annotator, region id) of
    each region fused into it, with their mean pairwise similarity (1.0 for a single region)."""

    annotators: tuple[A, ...]
    members: tuple[tuple[A, str], ...]
    similarity: float


@dataclass(frozen=True)
class Fusion(Generic[A]):
    """The consensus regions (Loupe's region format, ids `c1`, `c2`, …), the support of each by
    id, and the groups left out (too few annotators, or a losing single-choice classification),
    which are worth a reviewer's look."""

    regions: list[dict[str, Any]]
    support: dict[str, Support[A]]
    dropped: tuple[Support[A], ...]


def fuse_regions(
    results_by_annotator: Mapping[A, Sequence[Region]],
    weights: Mapping[A, float] | None = None,
    *,
    quorum: int | None = None,
    threshold: float = MATCH_AT,
    label_aware: bool = False,
    keypoint_k: Mapping[str, Sequence[float]] | None = None,
    single_classification: bool = False,
) -> Fusion[A]:
    """Fuse the regions several annotators drew for one task into one consensus result.

    Grouping is greedy and incremental, type by type: annotators are taken by decreasing weight
    (ties in the mapping's order); the first one's regions open groups, and each next
    annotator's regions join the existing groups by optimal assignment on their mean similarity
    to the group's members (at least `threshold`), opening new groups where none fits. A group
    holds at most one region per annotator. Order only matters in near-ties, and it is fixed.

    A group drawn by at least `quorum` annotators (default: more than half of them) becomes one
    region: the label by weighted vote (ties to the most central member's label), the
    attributes by weighted vote per attribute among the members with that label; boxes, rotated
    boxes (angles averaged on the circle, after turning each box to its equivalent orientation
    nearest the group's medoid), time segments and spans (offsets rounded to whole characters)
    take the weighted mean of their coordinates; keypoints the weighted mean of each point over
    the members that labelled it (the point is labelled when members with at least half the
    weight did); everything else (polygons, masks, polylines, cuboids, tracks, transcriptions)
    the geometry of the medoid, the member most similar on average to the others.

    Relations are fused after the regions they join: relations of the same two consensus
    regions form a group. A transcription's `region` link is carried over when the region it
    names was kept. Classifications group by label, so with `single_classification` only the
    best supported one is kept (the schema's `single` setting). Weights must be positive and
    cover every annotator; `score` is not carried over.
    """
    annotators = list(results_by_annotator)
    weight = _weights(annotators, weights)
    if quorum is None:
        quorum = len(annotators) // 2 + 1
    if quorum < 1:
        raise ValueError(f"A quorum is at least one annotator, got {quorum}.")
    order = sorted(range(len(annotators)), key=lambda p: -weight[p])
    results = [list(results_by_annotator[a]) for a in annotators]

    groups: list[_Group] = []
    kinds = dict.fromkeys(str(r.get("type")) for p in order for r in results[p])
    for kind in kinds:
        if kind != "relation":
            groups.extend(_group(kind, results, order, threshold, label_aware, keypoint_k))

    kept: list[_Fused] = []
    dropped: list[_Group] = []
    for group in groups:
        if len(group.members) < quorum:
            dropped.append(group)
        else:
            kept.append(_fuse(group, results, weight))
    if single_classification:
        kept, dropped = _single_classification(kept, dropped, weight)

    new_id: dict[tuple[int, str], str] = {}
    regions: list[dict[str, Any]] = []
    support: dict[str, Support[A]] = {}
    for number, fused in enumerate(kept, 1):
        fused.region["id"] = f"c{number}"
        for p, i in fused.group.members:
            new_id[(p, str(results[p][i].get("id")))] = fused.region["id"]
        regions.append(fused.region)
        support[fused.region["id"]] = _support(fused.group, results, annotators)
    for fused in kept:
        _relink(fused.region, fused.source, new_id)

    for group, region in _fuse_relations(results, order, weight, new_id, label_aware):
        if region is None or len(group.members) < quorum:
            dropped.append(group)
            continue
        region["id"] = f"c{len(regions) + 1}"
        regions.append(region)
        support[region["id"]] = _support(group, results, annotators)
    return Fusion(
        regions=regions,
        support=support,
        dropped=tuple(_support(g, results, annotators) for g in dropped),
    )


@dataclass
class _Group:
    """Members as (annotator position, index in that annotator's result), with the pairwise
    similarities of the members (symmetric, 1.0 on the diagonal)."""

    members: list[tuple[int, int]]
    similarity: np.ndarray


@dataclass
class _Fused:
    """A kept group, its consensus region, and the annotator position whose geometry (and links)
    the region carries when it is a medoid's."""

    group: _Group
    region: dict[str, Any]
    source: int


def _weights(annotators: list[Any], weights: Mapping[Any, float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(annotators)
    missing = [a for a in annotators if a not in weights]
    if missing:
        raise ValueError(f"No weight for annotator(s) {missing!r}.")
    out = [float(weights[a]) for a in annotators]
    if any(not math.isfinite(w) or w <= 0 for w in out):
        raise ValueError(f"Annotator weights must be positive numbers, got {out!r}.")
    return out


def _group(
    kind: str,
    results: list[list[Region]],
    order: list[int],
    threshold: float,
    label_aware: bool,
    keypoint_k: Mapping[str, Sequence[float]] | None,
) -> list[_Group]:
    indices = {p: [i for i, r in enumerate(results[p]) if r.get("type") == kind] for p in order}
    matrices: dict[tuple[int, int], np.ndarray] = {}
    for x, p in enumerate(order):
        for q in order[x + 1 :]:
            matrices[(p, q)] = similarity_matrix(
                [results[p][i] for i in indices[p]],
                [results[q][j] for j in indices[q]],
                label_aware=label_aware,
                keypoint_k=keypoint_k,
            )
    local = {p: {i: k for k, i in enumerate(indices[p])} for p in order}

    def sim(a: tuple[int, int], b: tuple[int, int]) -> float:
        if a == b:
            return 1.0
        (p, i), (q, j) = a, b
        if (p, q) in matrices:
            return float(matrices[(p, q)][local[p][i], local[q][j]])
        return float(matrices[(q, p)][local[q][j], local[p][i]])

    clusters: list[list[tuple[int, int]]] = []
    for x, p in enumerate(order):
        candidates = [(p, i) for i in indices[p]]
        if clusters and candidates:
            # Mean similarity of each candidate to each group's members, one block per earlier
            # annotator (whose matrix with p has p's regions as columns).
            fit = np.zeros((len(clusters), len(candidates)))
            for q in order[:x]:
                rows = [(c, local[q][i]) for c, cluster in enumerate(clusters) for r, i in cluster if r == q]
                if rows:
                    at, locals_ = zip(*rows, strict=True)
                    fit[list(at)] += matrices[(q, p)][list(locals_)]
            fit /= np.array([len(cluster) for cluster in clusters], dtype=float)[:, None]
            taken = set()
            for row, col, _ in assign(fit, threshold):
                clusters[row].append(candidates[col])
                taken.add(col)
            candidates = [c for col, c in enumerate(candidates) if col not in taken]
        clusters.extend([c] for c in candidates)
    return [
        _Group(cluster, np.array([[sim(a, b) for b in cluster] for a in cluster])) for cluster in clusters
    ]


def _ranking(group: _Group, weight: list[float]) -> list[int]:
    """Member positions, most central first (mean similarity to the others), then heavier, then
    earlier."""
    size = len(group.members)
    centrality = (group.similarity.sum(axis=1) - 1.0) / (size - 1) if size > 1 else np.ones(1)
    return sorted(range(size), key=lambda m: (-centrality[m], -weight[group.members[m][0]], m))


def _vote(values: list[tuple[Any, float]], ranked_values: list[Any]) -> Any:
    """The value with the most weight; ties to the one that comes first in `ranked_values`."""
    totals: dict[str, float] = {}
    for value, w in values:
        key = _key(value)
        totals[key] = totals.get(key, 0.0) + w
    best = max(totals.values())
    return next(value for value in ranked_values if totals.get(_key(value), 0.0) == best)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


_UNSET = object()


def _fuse(group: _Group, results: list[list[Region]], weight: list[float]) -> _Fused:
    regions = [results[p][i] for p, i in group.members]
    ws = [weight[p] for p, _ in group.members]
    ranking = _ranking(group, weight)
    ranked = [regions[m] for m in ranking]
    label = _vote(
        [(r.get("label"), w) for r, w in zip(regions, ws, strict=True)], [r.get("label") for r in ranked]
    )
    agreeing = [(r, w) for r, w in zip(regions, ws, strict=True) if r.get("label") == label]
    chosen = next(m for m in ranking if regions[m].get("label") == label)
    representative = regions[chosen]
    ranked_agreeing = [r for r in ranked if r.get("label") == label]

    attributes: dict[str, Any] = {}
    names = dict.fromkeys(name for r, _ in agreeing for name in (r.get("attributes") or {}))
    for name in names:
        votes = [((r.get("attributes") or {}).get(name, _UNSET), w) for r, w in agreeing]
        value = _vote(votes, [(r.get("attributes") or {}).get(name, _UNSET) for r in ranked_agreeing])
        if value is not _UNSET:
            attributes[name] = value

    kind = str(representative.get("type"))
    geometries = [dict(r.get("geometry") or {}) for r in regions]
    if kind == "bbox":
        geometry = _mean(geometries, ws, ("x", "y", "width", "height"))
    elif kind == "rotated_bbox":
        geometry = _fuse_rotated(geometries, ws, dict(representative["geometry"]))
    elif kind == "time_segment":
        geometry = _mean(geometries, ws, ("start", "end"))
    elif kind == "span":
        geometry = _fuse_span(geometries, ws)
    elif kind == "keypoints":
        geometry = _fuse_keypoints([dict(r["geometry"]) for r, _ in agreeing], [w for _, w in agreeing])
    else:
        # No meaningful average of two polygons with different vertex counts, of two masks or of
        # two texts: the medoid's geometry, copied so the consensus shares nothing with its input.
        geometry = json.loads(json.dumps(representative.get("geometry") or {}))
    region = {"id": "", "type": kind, "label": label, "attributes": attributes, "geometry": geometry}
    return _Fused(group, region, group.members[chosen][0])


def _mean(geometries: list[dict[str, Any]], ws: list[float], keys: tuple[str, ...]) -> dict[str, Any]:
    total = sum(ws)
    return {key: sum(float(g[key]) * w for g, w in zip(geometries, ws, strict=True)) / total for key in keys}


def _wrap(degrees: float) -> float:
    """The angle in [-180, 180)."""
    return (degrees + 180.0) % 360.0 - 180.0


def _fuse_rotated(
    geometries: list[dict[str, Any]], ws: list[float], reference: dict[str, Any]
) -> dict[str, Any]:
    # A w x h box at angle a is the same box as h x w at a + 90 and as w x h at a + 180: turn
    # each member to the equivalent form nearest the reference's angle before averaging, or a
    # box at 179° and one at -179° (or at 0° and 90°, sides swapped) would average to nonsense.
    aligned = []
    for g in geometries:
        width, height, angle = float(g["width"]), float(g["height"]), float(g["angle"])
        forms = [
            (angle + turn, height, width) if turn % 180 else (angle + turn, width, height)
            for turn in (0, 90, 180, 270)
        ]
        turned = min(forms, key=lambda form: abs(_wrap(form[0] - float(reference["angle"]))))
        aligned.append({**g, "angle": turned[0], "width": turned[1], "height": turned[2]})
    out = _mean(aligned, ws, ("cx", "cy", "width", "height"))
    sin = sum(math.sin(math.radians(g["angle"])) * w for g, w in zip(aligned, ws, strict=True))
    cos = sum(math.cos(math.radians(g["angle"])) * w for g, w in zip(aligned, ws, strict=True))
    angle = _wrap(math.degrees(math.atan2(sin, cos)))
    out["angle"] = 180.0 if angle == -180.0 else angle  # Loupe's range is (-180, 180]
    return out


def _fuse_span(geometries: list[dict[str, Any]], ws: list[float]) -> dict[str, Any]:
    mean = _mean(geometries, ws, ("start", "end"))
    start = math.floor(mean["start"] + 0.5)
    end = max(math.floor(mean["end"] + 0.5), start + 1)
    out: dict[str, Any] = {"start": start, "end": end}
    # The covered text is only known for offsets a member used; otherwise it is left out.
    text = next(
        (g["text"] for g in geometries if g.get("start") == start and g.get("end") == end and "text" in g),
        None,
    )
    if text is not None:
        out["text"] = text
    return out


def _fuse_keypoints(geometries: list[dict[str, Any]], ws: list[float]) -> dict[str, Any]:
    skeletons = [np.asarray(g.get("points") or [], dtype=float).reshape(-1, 3) for g in geometries]
    size = len(skeletons[0])  # members with the winning label share its class's skeleton
    pairs = [(s, w) for s, w in zip(skeletons, ws, strict=True) if len(s) == size]
    total = sum(w for _, w in pairs)
    points: list[list[float]] = []
    for k in range(size):
        labelled = [(s[k], w) for s, w in pairs if s[k, 2] > 0]
        weight = sum(w for _, w in labelled)
        if not labelled or weight < total / 2:
            points.append([0.0, 0.0, 0])
            continue
        x = float(sum(p[0] * w for p, w in labelled)) / weight
        y = float(sum(p[1] * w for p, w in labelled)) / weight
        visible = sum(w for p, w in labelled if p[2] == 2)
        points.append([x, y, 2 if visible >= weight - visible else 1])
    return {"points": points}


def _single_classification(
    kept: list[_Fused], dropped: list[_Group], weight: list[float]
) -> tuple[list[_Fused], list[_Group]]:
    choices = [f for f in kept if f.region["type"] == "classification"]
    if len(choices) < 2:
        return kept, dropped
    best = min(
        choices,
        key=lambda f: (
            -len(f.group.members),
            -sum(weight[p] for p, _ in f.group.members),
            label_order(f.region["label"]),
        ),
    )
    losers = [f.group for f in choices if f is not best]
    return [f for f in kept if f.region["type"] != "classification" or f is best], dropped + losers


def _relink(region: dict[str, Any], source: int, new_id: Mapping[tuple[int, str], str]) -> None:
    """Point a transcription's `region` (an id in the result of annotator `source`, whose
    geometry it carries) at the consensus region; drop the link when that region was not kept."""
    geometry = region["geometry"]
    if region["type"] != "transcription" or "region" not in geometry:
        return
    linked = new_id.get((source, str(geometry["region"])))
    if linked is None:
        del geometry["region"]
    else:
        geometry["region"] = linked


def _fuse_relations(
    results: list[list[Region]],
    order: list[int],
    weight: list[float],
    new_id: Mapping[tuple[int, str], str],
    label_aware: bool,
) -> list[tuple[_Group, dict[str, Any] | None]]:
    """Relations grouped by the consensus regions they join, each with its fused region; a
    relation whose endpoints were not both kept comes alone, with no region."""
    out: list[tuple[_Group, dict[str, Any] | None]] = []
    buckets: dict[tuple[str, str, Any], list[tuple[int, int]]] = {}
    for p in order:
        for i, region in enumerate(results[p]):
            if region.get("type") != "relation":
                continue
            g = region.get("geometry") or {}
            ends = new_id.get((p, str(g.get("from")))), new_id.get((p, str(g.get("to"))))
            if ends[0] is None or ends[1] is None:
                out.append((_Group([(p, i)], np.ones((1, 1))), None))
                continue
            key = (ends[0], ends[1], _key(region.get("label")) if label_aware else None)
            members = buckets.setdefault(key, [])
            if all(q != p for q, _ in members):  # one relation per annotator and pair of regions
                members.append((p, i))
    for (start, end, _), members in buckets.items():
        group = _Group(members, np.ones((len(members), len(members))))
        region = _fuse(group, results, weight).region
        region["geometry"] = {"from": start, "to": end}
        out.append((group, region))
    return out


def _support(group: _Group, results: list[list[Region]], annotators: list[Any]) -> Support[Any]:
    size = len(group.members)
    mean = float((group.similarity.sum() - size) / (size * (size - 1))) if size > 1 else 1.0
    return Support(
        annotators=tuple(annotators[p] for p, _ in group.members),
        members=tuple((annotators[p], str(results[p][i].get("id"))) for p, i in group.members),
        similarity=round(mean, 9),
    )
