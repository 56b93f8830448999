"""Which region of one annotator is which region of another, and how far two annotators of a task
agree.

Two annotators who label the same image rarely draw the same boxes in the same order. To compare
them, regions of the same type are paired by optimal assignment (the pairing with the highest
total similarity, Hungarian method); a pair less similar than the threshold is not a pair, and
what stays unpaired on either side is a region only one of them drew. Relations are paired last,
through their endpoints: two relations are the same when their `from` regions were paired with
each other and so were their `to` regions.

Similarity per type, always in [0, 1]:

- bbox, rotated_bbox, polygon, mask: IoU (`labeling.regions.compare.similarity`);
- span, time_segment: IoU of the intervals (same source);
- transcription: 1 - normalized edit distance of the texts (same source);
- classification: 1 when the labels are equal, else 0 (same source);
- polyline: IoU of the points' bounding boxes (same source: a rough measure, no averaging of
  lines with different vertex counts is attempted);
- keypoints: object keypoint similarity (OKS, the COCO formula), see `oks`;
- cuboid: 3D IoU of yaw-rotated boxes (bird's-eye footprint times vertical overlap);
- video_track: per-frame box IoU summed over the frames where both tracks are present, divided by
  the frames where either is (boxes between keyframes interpolated as the track says).

Label-aware matching gives regions of different labels similarity 0, so a box called "car" by one
annotator and "truck" by another is two disagreements; label-agnostic matching pairs them by
geometry alone and leaves the label to the caller (or to a vote in `consensus.fuse_regions`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Generic, TypeVar

import numpy as np
from scipy.optimize import linear_sum_assignment
from shapely.geometry import Polygon

from labeling.regions.compare import similarity as compare_similarity

Region = Mapping[str, Any]
K = TypeVar("K", bound=Hashable)

MATCH_AT = 0.5  # two regions at least this similar are the same object, drawn twice
KEYPOINT_K = 0.1  # OKS per-keypoint constant when the class gives none (COCO's 2 sigma)
# OKS scales distances by the object's size; the box around a few keypoints can be tiny or flat
# (one labelled point has no area at all), so the area is floored at COCO's "small object"
# limit: at 32x32 px and k = 0.1, two points about 3.8 px apart still score 0.5.
KEYPOINT_MIN_AREA = 32.0 * 32.0
# Similarities are rounded so that a shape compared with another scores exactly what the other
# compared with it scores (GEOS areas can differ in the last bit), which keeps matching symmetric.
_DECIMALS = 9
_SCALE = 10.0**_DECIMALS
# Added to every eligible pair before the assignment: among pairings with the same total
# similarity, the one with more pairs wins (one perfect pair and two half pairs are worth the same
# similarity, but the second pairing leaves fewer regions unexplained).
_PAIR_BONUS = 1e-6
_NO_BOUNDS = (-math.inf, -math.inf, math.inf, math.inf)


@dataclass(frozen=True)
class MatchedPair:
    """A region of the left list (`left` is its index) paired with one of the right list."""

    left: int
    right: int
    similarity: float


@dataclass(frozen=True)
class Matching:
    """The outcome of pairing two annotators' regions: pairs, and indices left alone on each side."""

    pairs: tuple[MatchedPair, ...]
    unmatched_left: tuple[int, ...]
    unmatched_right: tuple[int, ...]

    @property
    def agreement(self) -> float:
        """Summed similarity of the pairs over pairs + regions left unpaired on both sides.

        An F1-like score in [0, 1]: identical results score 1, results with nothing in common 0,
        and two empty results 1 (both annotators agree there is nothing to label).
        """
        total = len(self.pairs) + len(self.unmatched_left) + len(self.unmatched_right)
        if total == 0:
            return 1.0
        return sum(pair.similarity for pair in self.pairs) / total


@dataclass(frozen=True)
class TaskAgreement(Generic[K]):
    """How far the annotators of one task agree.

    `score` is the mean of `Matching.agreement` over every pair of annotators (None with fewer
    than two annotators: there is nobody to agree with). `matrix[i][j]` is the agreement of
    `annotators[i]` with `annotators[j]`, symmetric, 1.0 on the diagonal.
    """

    score: float | None
    annotators: tuple[K, ...]
    matrix: tuple[tuple[float, ...], ...]


def oks(
    reference: Region,
    candidate: Region,
    *,
    k: Sequence[float] | None = None,
    min_area: float = KEYPOINT_MIN_AREA,
) -> float:
    """Object keypoint similarity of a candidate skeleton to a reference one (COCO).

    OKS = mean over keypoints labelled in both (v > 0) of exp(-d² / (2 s² k²)), where d is the
    distance between the two points, s² the reference's area (the bounding box of its labelled
    points, floored at `min_area`) and k the keypoint's constant (`k[i]`, default `KEYPOINT_K` for
    every keypoint; COCO's 2 sigma). Skeletons of different lengths, or with no keypoint labelled in
    both, score 0.

    Asymmetric on purpose, as in COCO: use it against a gold answer. Between two annotators, where
    neither is the reference, `keypoint_similarity` is the symmetric form.
    """
    return _oks(reference, candidate, k, min_area, symmetric=False)


def keypoint_similarity(
    a: Region, b: Region, *, k: Sequence[float] | None = None, min_area: float = KEYPOINT_MIN_AREA
) -> float:
    """OKS between two annotators' skeletons, with s² the mean of their two areas (see `oks`)."""
    return _oks(a, b, k, min_area, symmetric=True)


def region_similarity(
    a: Region,
    b: Region,
    *,
    label_aware: bool = False,
    keypoint_k: Mapping[str, Sequence[float]] | None = None,
) -> float:
    """How alike two regions are, in [0, 1]: 0 for different types (and, label-aware, labels).

    `keypoint_k` gives the OKS constants per keypoint class (by class name; the uniform default
    otherwise). Relations are not comparable on their own (their endpoints are ids local to each
    annotation): `match_regions` pairs them through their endpoints.
    """
    kind = a.get("type")
    if kind != b.get("type"):
        return 0.0
    if label_aware and a.get("label") != b.get("label"):
        return 0.0
    g, h = a.get("geometry") or {}, b.get("geometry") or {}
    if kind == "bbox":
        return _box_similarity(_bounds(a), _bounds(b))
    if kind == "keypoints":
        value = keypoint_similarity(a, b, k=_keypoint_k(a, b, keypoint_k))
    elif kind == "cuboid":
        value = _cuboid_iou(g, h)
    elif kind == "video_track":
        value = _track_iou(g, h)
    else:
        value = compare_similarity(dict(a), dict(b))
    return round(min(max(float(value), 0.0), 1.0), _DECIMALS)


def _box_similarities(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Box IoUs rounded like every similarity (numpy rounds x to n decimals as rint(x * 10**n) /
    10**n, which `_box_similarity` repeats for one pair: a pair scores the same either way)."""
    return np.round(np.clip(_box_iou(left, right), 0.0, 1.0), _DECIMALS)


def _box_similarity(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """`_box_similarities` of one pair in plain floats: for the few boxes of most annotations,
    numpy's per-call cost is most of the work. The same operations in the same order."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    value = inter / union if union > 0 else 0.0
    return round(min(max(value, 0.0), 1.0) * _SCALE) / _SCALE


def _box_iou(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """IoU of every left box with every right box, (x0, y0, x1, y1) rows: arithmetic, the same as
    the polygons' IoU for axis-aligned boxes, and what keeps dense images fast (boxes are most
    regions; building two shapely polygons per pair cost ~0.3 ms)."""
    width = np.minimum(left[:, None, 2], right[None, :, 2]) - np.maximum(left[:, None, 0], right[None, :, 0])
    height = np.minimum(left[:, None, 3], right[None, :, 3]) - np.maximum(left[:, None, 1], right[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_l = (left[:, 2] - left[:, 0]) * (left[:, 3] - left[:, 1])
    area_r = (right[:, 2] - right[:, 0]) * (right[:, 3] - right[:, 1])
    union = area_l[:, None] + area_r[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def similarity_matrix(
    left: Sequence[Region],
    right: Sequence[Region],
    *,
    label_aware: bool = False,
    keypoint_k: Mapping[str, Sequence[float]] | None = None,
) -> np.ndarray:
    """`region_similarity` of every left region (rows) with every right region (columns).

    Pairs whose extents do not meet (boxes, polygons, spans, segments, tracks in time) are 0
    without being computed: a dense image with hundreds of boxes per annotator stays fast.
    """
    out = np.zeros((len(left), len(right)))
    if not left or not right:
        return out
    if len(left) * len(right) <= _SMALL:
        return _small_similarity_matrix(out, left, right, label_aware, keypoint_k)
    lb = np.array([_bounds(r) for r in left])
    rb = np.array([_bounds(r) for r in right])
    meet = (
        (lb[:, None, 0] <= rb[None, :, 2])
        & (rb[None, :, 0] <= lb[:, None, 2])
        & (lb[:, None, 1] <= rb[None, :, 3])
        & (rb[None, :, 1] <= lb[:, None, 3])
    )
    boxes_l = np.array([r.get("type") == "bbox" for r in left])
    boxes_r = np.array([r.get("type") == "bbox" for r in right])
    both = meet & boxes_l[:, None] & boxes_r[None, :]
    if label_aware:
        both &= np.array([[a.get("label") == b.get("label") for b in right] for a in left])
    if both.any():
        out[both] = _box_similarities(lb, rb)[both]
    rest = meet & ~(boxes_l[:, None] & boxes_r[None, :])
    for i, j in zip(*np.nonzero(rest), strict=True):
        out[i, j] = region_similarity(left[i], right[j], label_aware=label_aware, keypoint_k=keypoint_k)
    return out


_SMALL = 64  # pairs up to which plain Python beats numpy's per-call cost


def similar_pairs(
    regions: Sequence[Region], threshold: float, *, keypoint_k: Mapping[str, Sequence[float]] | None = None
) -> list[tuple[int, int, float]]:
    """The pairs (i, j, similarity), i < j, of one list of regions at least `threshold` alike:
    each pair computed once (a similarity matrix of the list with itself computes it twice, and
    the diagonal)."""
    if len(regions) * len(regions) > 2 * _SMALL:
        matrix = similarity_matrix(regions, regions, keypoint_k=keypoint_k).tolist()
        return [
            (i, j, row[j])
            for i, row in enumerate(matrix)
            for j in range(i + 1, len(row))
            if row[j] >= threshold
        ]
    bounds = [_bounds(r) for r in regions]
    found = []
    for i, a in enumerate(regions):
        x0, y0, x1, y1 = bounds[i]
        for j in range(i + 1, len(regions)):
            u0, v0, u1, v1 = bounds[j]
            if x0 > u1 or u0 > x1 or y0 > v1 or v0 > y1:
                continue
            b = regions[j]
            if a.get("type") == "bbox" == b.get("type"):
                score = _box_similarity(bounds[i], bounds[j])
            else:
                score = region_similarity(a, b, keypoint_k=keypoint_k)
            if score >= threshold:
                found.append((i, j, score))
    return found


def _small_similarity_matrix(
    out: np.ndarray,
    left: Sequence[Region],
    right: Sequence[Region],
    label_aware: bool,
    keypoint_k: Mapping[str, Sequence[float]] | None,
) -> np.ndarray:
    lb, rb = [_bounds(r) for r in left], [_bounds(r) for r in right]
    for i, a in enumerate(left):
        x0, y0, x1, y1 = lb[i]
        for j, b in enumerate(right):
            u0, v0, u1, v1 = rb[j]
            if x0 > u1 or u0 > x1 or y0 > v1 or v0 > y1:
                continue  # extents that do not meet: 0, as in the vectorized path
            if a.get("type") == "bbox" == b.get("type") and (
                not label_aware or a.get("label") == b.get("label")
            ):
                out[i, j] = _box_similarity(lb[i], rb[j])
            else:
                out[i, j] = region_similarity(a, b, label_aware=label_aware, keypoint_k=keypoint_k)
    return out


def assign(similarity: np.ndarray, threshold: float = MATCH_AT) -> list[tuple[int, int, float]]:
    """The optimal one-to-one pairing of rows with columns: (row, column, similarity) triples.

    Maximizes the total similarity of pairs at or above `threshold` (pairs below it are not
    pairs, so the assignment never gives up a good pair for a poor one); ties go to more pairs.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"The matching threshold is in (0, 1], got {threshold}.")
    if similarity.size == 0:
        return []
    eligible = similarity >= threshold
    if not eligible.any():
        return []
    weights = np.where(eligible, similarity + _PAIR_BONUS, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return [
        (int(r), int(c), float(similarity[r, c])) for r, c in zip(rows, cols, strict=True) if eligible[r, c]
    ]


def match_regions(
    left: Sequence[Region],
    right: Sequence[Region],
    *,
    threshold: float = MATCH_AT,
    label_aware: bool = False,
    keypoint_k: Mapping[str, Sequence[float]] | None = None,
) -> Matching:
    """Pair the regions of two annotators of one task, type by type (see the module docstring).

    Indices in the result refer to positions in `left` and `right`. Different types never pair.
    """
    pairs: list[MatchedPair] = []
    left_by_type, right_by_type = _by_type(left), _by_type(right)
    for kind, li in left_by_type.items():
        ri = right_by_type.get(kind)
        if kind == "relation" or not ri:
            continue
        sim = similarity_matrix(
            [left[i] for i in li], [right[j] for j in ri], label_aware=label_aware, keypoint_k=keypoint_k
        )
        pairs.extend(MatchedPair(li[a], ri[b], s) for a, b, s in assign(sim, threshold))
    li, ri = left_by_type.get("relation", []), right_by_type.get("relation", [])
    if li and ri:
        counterpart = {str(left[p.left].get("id")): str(right[p.right].get("id")) for p in pairs}
        sim = np.array(
            [[_relation_similarity(left[i], right[j], counterpart, label_aware) for j in ri] for i in li]
        )
        pairs.extend(MatchedPair(li[a], ri[b], s) for a, b, s in assign(sim, threshold))
    pairs.sort(key=lambda p: p.left)
    paired_left = {p.left for p in pairs}
    paired_right = {p.right for p in pairs}
    return Matching(
        pairs=tuple(pairs),
        unmatched_left=tuple(i for i in range(len(left)) if i not in paired_left),
        unmatched_right=tuple(j for j in range(len(right)) if j not in paired_right),
    )


def task_agreement(
    results_by_annotator: Mapping[K, Sequence[Region]],
    *,
    threshold: float = MATCH_AT,
    label_aware: bool = True,
    keypoint_k: Mapping[str, Sequence[float]] | None = None,
) -> TaskAgreement[K]:
    """The agreement of every pair of annotators of one task and its mean (see `TaskAgreement`).

    Label-aware by default: for a task's agreement score, a right box with the wrong class is a
    disagreement.
    """
    annotators = tuple(results_by_annotator)
    size = len(annotators)
    matrix = np.eye(size)
    for i, j in combinations(range(size), 2):
        matching = match_regions(
            results_by_annotator[annotators[i]],
            results_by_annotator[annotators[j]],
            threshold=threshold,
            label_aware=label_aware,
            keypoint_k=keypoint_k,
        )
        matrix[i, j] = matrix[j, i] = matching.agreement
    pairwise = [float(matrix[i, j]) for i, j in combinations(range(size), 2)]
    return TaskAgreement(
        score=sum(pairwise) / len(pairwise) if pairwise else None,
        annotators=annotators,
        matrix=tuple(tuple(float(v) for v in row) for row in matrix),
    )


def _by_type(regions: Sequence[Region]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for index, region in enumerate(regions):
        out.setdefault(str(region.get("type")), []).append(index)
    return out


def _relation_similarity(a: Region, b: Region, counterpart: Mapping[str, str], label_aware: bool) -> float:
    if label_aware and a.get("label") != b.get("label"):
        return 0.0
    g, h = a.get("geometry") or {}, b.get("geometry") or {}
    ends = [(counterpart.get(str(g.get(end))), str(h.get(end))) for end in ("from", "to")]
    return 1.0 if all(mapped is not None and mapped == other for mapped, other in ends) else 0.0


def _keypoint_k(
    a: Region, b: Region, keypoint_k: Mapping[str, Sequence[float]] | None
) -> Sequence[float] | None:
    if not keypoint_k:
        return None
    labels = [label for label in (a.get("label"), b.get("label")) if isinstance(label, str)]
    known = [keypoint_k[label] for label in labels if label in keypoint_k]
    if len(known) == 2 and len(known[0]) == len(known[1]):
        return [(x + y) / 2 for x, y in zip(known[0], known[1], strict=True)]
    return known[0] if known else None


def _keypoints(region: Region) -> np.ndarray:
    points = (region.get("geometry") or {}).get("points") or []
    return np.asarray(points, dtype=float).reshape(-1, 3)


def keypoint_area(points: np.ndarray, min_area: float = KEYPOINT_MIN_AREA) -> float:
    """A skeleton's object area for OKS: the box of its labelled points (rows x, y, v), floored."""
    labelled = points[points[:, 2] > 0, :2]
    if len(labelled) == 0:
        return min_area
    extent = labelled.max(axis=0) - labelled.min(axis=0)
    return max(float(extent[0] * extent[1]), min_area)


def _oks(a: Region, b: Region, k: Sequence[float] | None, min_area: float, *, symmetric: bool) -> float:
    if min_area <= 0:
        raise ValueError(f"The keypoint area floor must be positive, got {min_area}.")
    p, q = _keypoints(a), _keypoints(b)
    if len(p) == 0 or p.shape != q.shape:
        return 0.0
    constants = np.full(len(p), KEYPOINT_K) if k is None else np.asarray(k, dtype=float)
    if constants.shape != (len(p),):
        raise ValueError(f"{len(constants)} keypoint constants for a skeleton of {len(p)} keypoints.")
    both = (p[:, 2] > 0) & (q[:, 2] > 0)
    if not both.any():
        return 0.0
    area = keypoint_area(p, min_area)
    if symmetric:
        area = (area + keypoint_area(q, min_area)) / 2
    d2 = ((p[both, :2] - q[both, :2]) ** 2).sum(axis=1)
    return float(np.exp(-d2 / (2 * area * constants[both] ** 2)).mean())


def _footprint(g: Mapping[str, Any]) -> Polygon:
    cx, cy = float(g["center"][0]), float(g["center"][1])
    length, width = float(g["size"][0]), float(g["size"][1])
    cos, sin = math.cos(float(g["yaw"])), math.sin(float(g["yaw"]))
    corners = [
        (length / 2, width / 2),
        (-length / 2, width / 2),
        (-length / 2, -width / 2),
        (length / 2, -width / 2),
    ]
    return Polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners])


def _cuboid_iou(g: Mapping[str, Any], h: Mapping[str, Any]) -> float:
    (_, _, za), (_, _, zb) = g["center"], h["center"]
    ha, hb = float(g["size"][2]), float(h["size"][2])
    overlap_z = max(0.0, min(za + ha / 2, zb + hb / 2) - max(za - ha / 2, zb - hb / 2))
    inter = _footprint(g).intersection(_footprint(h)).area * overlap_z
    volume_a = float(np.prod(np.asarray(g["size"], dtype=float)))
    volume_b = float(np.prod(np.asarray(h["size"], dtype=float)))
    union = volume_a + volume_b - inter
    return inter / union if union > 0 else 0.0


def _track_boxes(g: Mapping[str, Any]) -> tuple[int, np.ndarray]:
    """The track's first frame and one [x, y, width, height] row per frame up to its last
    keyframe, NaN where the object is outside. Without the video's frame count a track is taken
    to end at its last keyframe."""
    keyframes = sorted(g.get("keyframes") or [], key=lambda kf: kf["frame"])
    if not keyframes:
        return 0, np.empty((0, 4))
    first = int(keyframes[0]["frame"])
    boxes = np.full((int(keyframes[-1]["frame"]) - first + 1, 4), np.nan)
    for current, following in zip(keyframes, [*keyframes[1:], None], strict=True):
        if current.get("outside"):
            continue
        start = int(current["frame"]) - first
        box = np.array([current[key] for key in ("x", "y", "width", "height")], dtype=float)
        if following is None:
            boxes[start] = box
            continue
        end = int(following["frame"]) - first
        if current.get("interpolate", True) and not following.get("outside"):
            target = np.array([following[key] for key in ("x", "y", "width", "height")], dtype=float)
            steps = np.arange(end - start)[:, None] / (end - start)
            boxes[start:end] = box + steps * (target - box)
        else:
            boxes[start:end] = box
    return first, boxes


def _track_iou(g: Mapping[str, Any], h: Mapping[str, Any]) -> float:
    first_a, a = _track_boxes(g)
    first_b, b = _track_boxes(h)
    present = int((~np.isnan(a[:, 0])).sum() + (~np.isnan(b[:, 0])).sum())
    start, stop = max(first_a, first_b), min(first_a + len(a), first_b + len(b))
    if stop <= start:
        return 0.0
    a, b = a[start - first_a : stop - first_a], b[start - first_b : stop - first_b]
    both = ~np.isnan(a[:, 0]) & ~np.isnan(b[:, 0])
    a, b = a[both], b[both]
    ix = np.clip(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    ious = inter / (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter)
    union_frames = present - int(both.sum())
    return float(ious.sum() / union_frames) if union_frames else 0.0


def _bounds(region: Region) -> tuple[float, float, float, float]:
    """An axis-aligned box (x0, y0, x1, y1) that holds the region, for skipping pairs that cannot
    overlap; unbounded for types whose similarity is not an overlap."""
    g = region.get("geometry") or {}
    kind = region.get("type")
    try:
        if kind == "bbox":
            return (g["x"], g["y"], g["x"] + g["width"], g["y"] + g["height"])
        if kind == "rotated_bbox":
            angle = math.radians(g["angle"])
            cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
            dx = g["width"] / 2 * cos + g["height"] / 2 * sin
            dy = g["width"] / 2 * sin + g["height"] / 2 * cos
            return (g["cx"] - dx, g["cy"] - dy, g["cx"] + dx, g["cy"] + dy)
        if kind in ("polygon", "polyline"):
            xs = [p[0] for p in g["points"]]
            ys = [p[1] for p in g["points"]]
            return (min(xs), min(ys), max(xs), max(ys))
        if kind in ("span", "time_segment"):
            return (g["start"], 0.0, g["end"], 0.0)
        if kind == "video_track":
            frames = [kf["frame"] for kf in g["keyframes"]]
            return (min(frames), 0.0, max(frames), 0.0)
        if kind == "cuboid":
            reach = math.hypot(g["size"][0], g["size"][1]) / 2
            return (
                g["center"][0] - reach,
                g["center"][1] - reach,
                g["center"][0] + reach,
                g["center"][1] + reach,
            )
    except (KeyError, TypeError, ValueError):
        pass  # malformed geometry: let the similarity itself decide (or fail loudly)
    return _NO_BOUNDS
