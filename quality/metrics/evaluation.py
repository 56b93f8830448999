"""How good a model is on a release's approved labels: plain functions, no Django.

Each example is one item of the release: its frozen regions (the truth) and the model version's
prediction of it (regions with per-region scores, and an overall score). What is measured depends
on the kind of regions the truth holds, one family each:

- **detection** (bbox, rotated_bbox, polygon, mask): COCO mAP@[.5:.95], AP50, AP75, the
  small/medium/large APs and the ARs, per-class AP, computed by pycocotools' `COCOeval` (boxes
  with `iouType="bbox"`; as soon as a shape is not an axis-aligned box, everything is rasterized to
  RLE masks and evaluated with `iouType="segm"`); and precision, recall and F1 at a score
  threshold: predictions scoring at least `threshold` are matched greedily by score, per class, to
  the unmatched truth region of highest IoU at or above `match_at` (IoU from
  `quality.metrics.matching.similarity_matrix`, label-aware). The precision/recall curves per
  class are COCOeval's interpolated precision at 101 recall points.
- **keypoints**: COCO's keypoint AP and AR (OKS 0.50:0.05:0.95, medium and large objects) from
  `COCOeval` with `iouType="keypoints"`, run per class (a class's skeleton sets its length and
  its OKS constants), and precision, recall and F1 at the score threshold, predictions matched
  greedily by score to the unmatched truth skeleton of the same class with the highest OKS
  (`quality.metrics.matching.oks`) at or above `match_at`.
- **classification**: accuracy, macro and micro F1, per-class precision, recall and F1, and the
  confusion matrix (scikit-learn), over items with exactly one class in the truth. The model's
  answer is its highest-scoring class region; an item it gave no class is answered `(none)`.
- **spans**: exact-match (start, end, label) precision, recall and F1, micro, macro and per label,
  of predicted spans scoring at least `threshold`.
- **transcription**: word and character error rates (jiwer) of each item's transcription texts
  joined in order, over the whole set (errors summed over every item, divided by the reference's
  words or characters), with the substitutions, deletions, insertions and hits.

Every number is a float in [0, 1] (WER and CER may exceed 1) or None when it is undefined (a class
with no truth has no recall, and no AP).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Region = Mapping[str, Any]

DETECTION_TYPES = ("bbox", "rotated_bbox", "polygon", "mask")
FAMILY_TYPES: dict[str, tuple[str, ...]] = {
    "detection": DETECTION_TYPES,
    "keypoints": ("keypoints",),
    "classification": ("classification",),
    "spans": ("span",),
    "transcription": ("transcription",),
}
FAMILIES = tuple(FAMILY_TYPES)
NO_ANSWER = "(none)"  # the class of an item the model gave no class
MATCH_AT = 0.5
COCO_STATS = (
    "map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
    "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large",
)  # fmt: skip


@dataclass(frozen=True)
class Example:
    """One item: the truth, the prediction (None: the model has none for it), the item's size."""

    truth: Sequence[Region]
    predicted: Sequence[Region] | None
    score: float | None = None  # the prediction's overall score
    width: float | None = None  # images (pixels); needed to rasterize shapes for COCO's segm
    height: float | None = None
    key: str = ""  # for the caller's error messages


@dataclass
class Outcome:
    task_type: str  # the main family ("" when the truth holds nothing measurable)
    families: list[str]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def families_of(truth_types: Iterable[str], model_outputs: Sequence[str] = ()) -> list[str]:
    """The families to measure: those the truth has regions of and (when the model says what it
    outputs) the model produces, in the order of FAMILIES (the first is the main one)."""
    present, outputs = set(truth_types), set(model_outputs)
    return [
        family
        for family, types in FAMILY_TYPES.items()
        if present & set(types) and (not outputs or outputs & set(types))
    ]


def evaluate(
    examples: Sequence[Example],
    *,
    threshold: float = 0.5,
    model_outputs: Sequence[str] = (),
    skeletons: Mapping[str, Sequence[str]] | None = None,
) -> Outcome:
    """Every family that applies, measured over the examples that have a prediction.
    `skeletons` names each keypoint class's keypoints, in order (from the schema)."""
    predicted = [e for e in examples if e.predicted is not None]
    types = {str(r.get("type")) for e in examples for r in e.truth}
    families = families_of(types, model_outputs)
    metrics: dict[str, dict[str, Any]] = {}
    for family in families:
        if family == "detection":
            metrics[family] = detection_metrics(predicted, threshold=threshold)
        elif family == "keypoints":
            metrics[family] = keypoint_metrics(predicted, threshold=threshold, skeletons=skeletons)
        elif family == "classification":
            metrics[family] = classification_metrics(predicted)
        elif family == "spans":
            metrics[family] = span_metrics(predicted, threshold=threshold)
        else:
            metrics[family] = transcription_metrics(predicted)
    return Outcome(task_type=families[0] if families else "", families=families, metrics=metrics)


def summary_of(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The headline numbers of each family, for lists that compare models at a glance."""
    heads = {
        "detection": ("map", "ap50", "ap75", "precision", "recall", "f1"),
        "keypoints": ("map", "ap50", "ap75", "precision", "recall", "f1"),
        "classification": ("accuracy", "macro_f1", "micro_f1"),
        "spans": ("precision", "recall", "f1"),
        "transcription": ("wer", "cer"),
    }
    out: dict[str, dict[str, Any]] = {}
    for family, values in metrics.items():
        source = {**values.get("coco", {}), **values} if family in ("detection", "keypoints") else values
        out[family] = {name: source.get(name) for name in heads.get(family, ())}
    return out


def _clean(value: float) -> float | None:
    """COCOeval's -1 (undefined) and NaN become None: JSON has no NaN."""
    value = float(value)
    return None if value < 0 or math.isnan(value) else value


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _score(region: Region, overall: float | None) -> float:
    """A predicted region's confidence: its own score, else the prediction's, else 1."""
    value = region.get("score")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float(overall) if overall is not None else 1.0


def _of(regions: Sequence[Region] | None, types: Sequence[str]) -> list[Region]:
    return [r for r in regions or () if r.get("type") in types]


# --- Detection -----------------------------------------------------------------------------------


def _geometry(region: Region) -> dict[str, Any]:
    geometry = region.get("geometry")
    return geometry if isinstance(geometry, dict) else {}


def _box(region: Region) -> list[float]:
    g = _geometry(region)
    return [float(g["x"]), float(g["y"]), float(g["width"]), float(g["height"])]


def _rle(region: Region, height: int, width: int) -> dict[str, Any]:
    """A shape as a COCO compressed RLE of the item's size (str counts, JSON-safe)."""
    from pycocotools import mask as masks

    g = _geometry(region)
    kind = region.get("type")
    if kind == "mask":
        rle = dict(g["rle"])
    elif kind == "bbox":
        rle = masks.frPyObjects(np.array([_box(region)], dtype=float), height, width)[0]
    else:
        if kind == "rotated_bbox":
            angle = math.radians(g["angle"])
            cos, sin = math.cos(angle), math.sin(angle)
            half_w, half_h = g["width"] / 2, g["height"] / 2
            corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
            rings = [[(g["cx"] + x * cos - y * sin, g["cy"] + x * sin + y * cos) for x, y in corners]]
            holes: list[Any] = []
        else:
            rings, holes = [g["points"]], list(g.get("holes") or [])
        flat = [[float(v) for point in ring for v in point[:2]] for ring in rings]
        rle = masks.merge(masks.frPyObjects(flat, height, width))
        if holes:
            # COCO polygons have no holes: cut them out of the rasterized outline.
            outline = masks.decode(rle)
            cut = masks.decode(
                masks.merge(
                    masks.frPyObjects(
                        [[float(v) for point in hole for v in point[:2]] for hole in holes], height, width
                    )
                )
            )
            rle = masks.encode(np.asfortranarray((outline & (1 - cut)).astype(np.uint8)))
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode() if isinstance(counts, bytes) else counts}


def coco_inputs(
    examples: Sequence[Example], *, iou_type: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """The truth as a COCO ground-truth dataset and the predictions as COCO results (what
    `COCO.loadRes` takes), with the class names in category-id order (ids from 1).

    Image ids are the examples' positions + 1; truth areas are the box's or the mask's area.
    """
    from pycocotools import mask as masks

    labels = sorted(
        {str(r.get("label")) for e in examples for r in _of(e.truth, DETECTION_TYPES)}
        | {str(r.get("label")) for e in examples for r in _of(e.predicted, DETECTION_TYPES)}
    )
    category = {label: i + 1 for i, label in enumerate(labels)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for index, example in enumerate(examples):
        image_id = index + 1
        width, height = int(example.width or 0), int(example.height or 0)
        if iou_type == "segm" and (width <= 0 or height <= 0):
            raise ValueError(f"{example.key or image_id}: shapes need the image's width and height")
        images.append({"id": image_id, "width": width, "height": height})
        for region in _of(example.truth, DETECTION_TYPES):
            annotation: dict[str, Any] = {
                "id": len(annotations) + 1,  # COCOeval takes id 0 for "unmatched"
                "image_id": image_id,
                "category_id": category[str(region.get("label"))],
                "iscrowd": 0,
            }
            if iou_type == "bbox":
                box = _box(region)
                annotation.update(bbox=box, area=box[2] * box[3])
            else:
                rle = _rle(region, height, width)
                annotation.update(
                    segmentation=rle, area=float(masks.area(rle)), bbox=[float(v) for v in masks.toBbox(rle)]
                )
            annotations.append(annotation)
        for region in _of(example.predicted, DETECTION_TYPES):
            result: dict[str, Any] = {
                "image_id": image_id,
                "category_id": category[str(region.get("label"))],
                "score": _score(region, example.score),
            }
            if iou_type == "bbox":
                result["bbox"] = _box(region)
            else:
                result["segmentation"] = _rle(region, height, width)
            results.append(result)
    truth = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": category[label], "name": label} for label in labels],
    }
    return truth, results, labels


def run_cocoeval(
    truth: dict[str, Any], results: list[dict[str, Any]], iou_type: str, *, sigmas: Sequence[float] = ()
) -> Any:
    """COCOeval evaluated, accumulated and summarized (its printing swallowed); `sigmas` are the
    keypoints' OKS sigmas for `iouType="keypoints"` (COCO's person sigmas otherwise)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes refuses an empty list: a model that found nothing scores 0
            dt = COCO()
            dt.dataset = {"images": truth["images"], "categories": truth["categories"], "annotations": []}
            dt.createIndex()
        evaluation = COCOeval(gt, dt, iouType=iou_type)
        if len(sigmas):
            evaluation.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=float)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _greedy_counts(
    images: Iterable[tuple[Sequence[Region], Sequence[Region], float | None]],
    threshold: float,
    match_at: float,
    similarity: Any,
) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """True positives, false positives and misses per class at the score threshold. Per image
    (predicted regions, truth regions, the prediction's overall score), predictions at or above
    the threshold, highest score first, each take the unmatched truth region most similar to it
    (`similarity(said, truth)`: a matrix, rows the predictions), if at least `match_at`."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for predicted, truth, score in images:
        said = [r for r in predicted if _score(r, score) >= threshold]
        similar = similarity(said, truth)
        taken: set[int] = set()
        for i in sorted(range(len(said)), key=lambda i: -_score(said[i], score)):
            label = str(said[i].get("label"))
            best, best_value = -1, -1.0  # the unmatched truth region most like it (first on ties)
            for j in range(len(truth)):
                value = float(similar[i][j])
                if j not in taken and value >= match_at and value > best_value:
                    best, best_value = j, value
            if best >= 0:
                taken.add(best)
                tp[label] += 1
            else:
                fp[label] += 1
        for j, region in enumerate(truth):
            if j not in taken:
                fn[str(region.get("label"))] += 1
    return tp, fp, fn


def detection_metrics(
    examples: Sequence[Example], *, threshold: float = 0.5, match_at: float = MATCH_AT
) -> dict[str, Any]:
    kinds = {
        r.get("type")
        for e in examples
        for r in [*_of(e.truth, DETECTION_TYPES), *_of(e.predicted, DETECTION_TYPES)]
    }
    iou_type = "bbox" if kinds <= {"bbox"} else "segm"
    truth, results, labels = coco_inputs(examples, iou_type=iou_type)
    coco: dict[str, float | None] = dict.fromkeys(COCO_STATS)
    per_class: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[float | None]] = {}
    recall_points: list[float] = []
    if labels and examples:
        evaluation = run_cocoeval(truth, results, iou_type)
        coco = {name: _clean(value) for name, value in zip(COCO_STATS, evaluation.stats, strict=True)}
        precision = evaluation.eval["precision"]  # [iou, recall, class, area, max detections]
        recall_points = [float(r) for r in evaluation.params.recThrs]
        area_all, most = 0, len(evaluation.params.maxDets) - 1
        for k, cat_id in enumerate(evaluation.params.catIds):
            label = labels[cat_id - 1]
            cut = precision[:, :, k, area_all, most]
            valid = cut[cut > -1]
            curve = precision[0, :, k, area_all, most]
            per_class[label] = {
                "ap": float(valid.mean()) if valid.size else None,
                "ap50": _mean_valid(precision[0, :, k, area_all, most]),
                "ap75": _mean_valid(precision[5, :, k, area_all, most]),
            }
            curves[label] = [_clean(v) for v in curve]
    from quality.metrics.matching import similarity_matrix

    tp, fp, fn = _greedy_counts(
        ((_of(e.predicted, DETECTION_TYPES), _of(e.truth, DETECTION_TYPES), e.score) for e in examples),
        threshold,
        match_at,
        lambda said, truth: similarity_matrix(said, truth, label_aware=True),
    )
    truth_counts = Counter(str(r.get("label")) for e in examples for r in _of(e.truth, DETECTION_TYPES))
    for label in labels:
        p = _ratio(tp[label], tp[label] + fp[label])
        r = _ratio(tp[label], tp[label] + fn[label])
        per_class.setdefault(label, {"ap": None, "ap50": None, "ap75": None}).update(
            truth=truth_counts[label],
            tp=tp[label],
            fp=fp[label],
            fn=fn[label],
            precision=p,
            recall=r,
            f1=_f1(p, r),
        )
    return {
        "iou_type": iou_type,
        "images": len(examples),
        "truth": sum(truth_counts.values()),
        "predicted": len(results),
        "coco": coco,
        "threshold": threshold,
        "match_at": match_at,
        **_at_threshold(tp, fp, fn),
        "per_class": per_class,
        # COCOeval's interpolated precision at IoU 0.5, area all, 100 detections per image.
        "pr_curves": {"recall": recall_points, "precision": curves},
    }


def _at_threshold(tp: Counter[str], fp: Counter[str], fn: Counter[str]) -> dict[str, Any]:
    """Matches, false alarms and misses over every class, with the precision, recall and F1."""
    all_tp, all_fp, all_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    precision, recall = _ratio(all_tp, all_tp + all_fp), _ratio(all_tp, all_tp + all_fn)
    return {
        "tp": all_tp,
        "fp": all_fp,
        "fn": all_fn,
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
    }


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


# --- Keypoints -----------------------------------------------------------------------------------

# COCO's person skeleton and its per-keypoint OKS sigmas (how far annotators of the COCO dataset
# disagreed on each point, relative to the person's size): a schema class with exactly these
# keypoints is measured as COCO measures people; any other skeleton takes the uniform constant
# quality's agreement uses (`matching.KEYPOINT_K`, COCO's 2 sigma, so sigma 0.05).
COCO_PERSON_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_PERSON_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
KEYPOINT_STATS = (
    "map",
    "ap50",
    "ap75",
    "ap_medium",
    "ap_large",
    "ar",
    "ar50",
    "ar75",
    "ar_medium",
    "ar_large",
)


def keypoint_sigmas(names: Sequence[str] | None, count: int) -> tuple[str, list[float]]:
    """("coco_person" | "uniform", the OKS sigma of each of a skeleton's `count` keypoints)."""
    from quality.metrics.matching import KEYPOINT_K

    normal = tuple(str(n).strip().lower().replace(" ", "_").replace("-", "_") for n in names or ())
    if normal == COCO_PERSON_KEYPOINTS and count == len(COCO_PERSON_SIGMAS):
        return "coco_person", list(COCO_PERSON_SIGMAS)
    return "uniform", [KEYPOINT_K / 2] * count


def _points(region: Region) -> list[list[float]]:
    return [[float(v) for v in point[:3]] for point in _geometry(region).get("points") or []]


def _skeleton_lengths(examples: Sequence[Example], skeletons: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each keypoint class's number of keypoints: its skeleton's, else the most common length
    among its truth skeletons (its predictions' when the truth has none)."""
    truth: dict[str, Counter[int]] = {}
    said: dict[str, Counter[int]] = {}
    for e in examples:
        for seen, regions in ((truth, e.truth), (said, e.predicted)):
            for region in _of(regions, ("keypoints",)):
                seen.setdefault(str(region.get("label")), Counter())[len(_points(region))] += 1
    return {
        label: len(skeletons[label])
        if skeletons.get(label)
        else (truth.get(label) or counts).most_common(1)[0][0]
        for label, counts in {**said, **truth}.items()
    }


def keypoint_metrics(
    examples: Sequence[Example],
    *,
    threshold: float = 0.5,
    match_at: float = MATCH_AT,
    skeletons: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """COCO keypoint AP/AR per class and over the classes, and P/R/F1 at the threshold.

    A predicted skeleton whose length is not its class's is left out (`skipped_predictions`): it
    cannot be compared point by point.
    """
    from quality.metrics.matching import keypoint_area, oks

    skeletons = skeletons or {}
    lengths = _skeleton_lengths(examples, skeletons)
    per_class: dict[str, dict[str, Any]] = {}
    stats_by_class: dict[str, list[float | None]] = {}
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    skipped = 0
    for label, length in sorted(lengths.items()):
        kind, sigmas = keypoint_sigmas(skeletons.get(label), length)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        pairs: list[tuple[list[Region], list[Region], float | None]] = []
        for index, example in enumerate(examples):
            images.append(
                {"id": index + 1, "width": int(example.width or 0), "height": int(example.height or 0)}
            )
            truth = [r for r in _of(example.truth, ("keypoints",)) if r.get("label") == label]
            truth = [r for r in truth if len(_points(r)) == length and any(p[2] > 0 for p in _points(r))]
            said = [r for r in _of(example.predicted, ("keypoints",)) if r.get("label") == label]
            fitting = [r for r in said if len(_points(r)) == length]
            skipped += len(said) - len(fitting)
            for region in truth:
                points = _points(region)
                # The object's area as quality's OKS takes it (the labelled points' box, floored:
                # keypoint regions carry no outline); COCOeval reads the box only for a skeleton
                # with no point labelled, which is left out above.
                annotations.append({
                    "id": len(annotations) + 1, "image_id": index + 1, "category_id": 1, "iscrowd": 0,
                    "keypoints": [v for p in points for v in p], "bbox": [0.0, 0.0, 0.0, 0.0],
                    "area": keypoint_area(np.asarray(points)), "num_keypoints": sum(p[2] > 0 for p in points),
                })  # fmt: skip
            for region in fitting:
                results.append({
                    "image_id": index + 1, "category_id": 1, "score": _score(region, example.score),
                    "keypoints": [v for p in _points(region) for v in p],
                })  # fmt: skip
            pairs.append((fitting, truth, example.score))
        k = [2 * s for s in sigmas]  # quality's OKS constants are COCO's 2 sigma
        found = _greedy_counts(
            pairs,
            threshold,
            match_at,
            lambda said, truth, k=k: [[oks(t, r, k=k) for t in truth] for r in said],
        )
        for total, counts in zip((tp, fp, fn), found, strict=True):
            total.update(counts)
        stats: list[float | None] = [None] * len(KEYPOINT_STATS)
        if annotations:
            truth_set = {"images": images, "annotations": annotations, "categories": [
                {"id": 1, "name": label, "keypoints": list(skeletons.get(label) or range(length))}
            ]}  # fmt: skip
            evaluation = run_cocoeval(truth_set, results, "keypoints", sigmas=sigmas)
            stats = [_clean(value) for value in evaluation.stats]
        stats_by_class[label] = stats
        p = _ratio(tp[label], tp[label] + fp[label])
        r = _ratio(tp[label], tp[label] + fn[label])
        per_class[label] = {
            **dict(zip(("ap", "ap50", "ap75"), stats[:3], strict=True)),
            "ar": stats[5],
            "keypoints": length,
            "sigmas": kind,
            "truth": len(annotations),
            "predicted": len(results),
            "tp": tp[label],
            "fp": fp[label],
            "fn": fn[label],
            "precision": p,
            "recall": r,
            "f1": _f1(p, r),
        }
    # Over the classes, as COCO averages its AP over categories.
    coco = {
        name: _mean_valid(np.array([-1.0 if s[n] is None else s[n] for s in stats_by_class.values()]))
        if stats_by_class
        else None
        for n, name in enumerate(KEYPOINT_STATS)
    }
    return {
        "images": len(examples),
        "truth": sum(c["truth"] for c in per_class.values()),
        "predicted": sum(c["predicted"] for c in per_class.values()),
        "skipped_predictions": skipped,
        "coco": coco,
        "threshold": threshold,
        "match_at": match_at,
        **_at_threshold(tp, fp, fn),
        "per_class": per_class,
    }


# --- Classification ------------------------------------------------------------------------------


def class_pairs(examples: Sequence[Example]) -> tuple[list[str], list[str], int]:
    """(truth, answer) class names of the items with exactly one class in the truth, and how many
    items were left out (several classes, which single-label metrics cannot score)."""
    truth, answers, skipped = [], [], 0
    for example in examples:
        said = _of(example.truth, ("classification",))
        if len(said) != 1:
            skipped += len(said) > 1
            continue
        guesses = _of(example.predicted, ("classification",))
        best = max(guesses, key=lambda r: _score(r, example.score), default=None)
        truth.append(str(said[0].get("label")))
        answers.append(str(best.get("label")) if best is not None else NO_ANSWER)
    return truth, answers, skipped


def classification_metrics(examples: Sequence[Example]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    truth, answers, skipped = class_pairs(examples)
    labels = sorted(set(truth) | set(answers))
    if not truth:
        return {"items": 0, "skipped_multi_label": skipped, "accuracy": None, "macro_f1": None,
                "micro_f1": None, "per_class": {}, "confusion": {"labels": [], "matrix": []}}  # fmt: skip
    with warnings.catch_warnings():
        # Every item of one class, answered right: the labels are passed, the warning is moot.
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        precision, recall, f1, support = precision_recall_fscore_support(
            truth, answers, labels=labels, zero_division=0
        )
        matrix = confusion_matrix(truth, answers, labels=labels)
        averages = {
            f"{average}_f1": float(f1_score(truth, answers, labels=labels, average=average, zero_division=0))
            for average in ("macro", "micro", "weighted")
        }
    return {
        "items": len(truth),
        "skipped_multi_label": skipped,
        "accuracy": float(accuracy_score(truth, answers)),
        **averages,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]) if support[i] else None,
                "f1": float(f1[i]),
                "support": int(support[i]),
                "predicted": int(matrix[:, i].sum()),
            }
            for i, label in enumerate(labels)
        },
        # rows: the true class, columns: the model's answer, both in `labels` order
        "confusion": {"labels": labels, "matrix": matrix.astype(int).tolist()},
    }


# --- Spans ---------------------------------------------------------------------------------------


def _span_keys(regions: Sequence[Region], overall: float | None, threshold: float | None) -> Counter[Any]:
    keys: Counter[Any] = Counter()
    for region in _of(regions, ("span",)):
        if threshold is not None and _score(region, overall) < threshold:
            continue
        g = _geometry(region)
        keys[(int(g["start"]), int(g["end"]), str(region.get("label")))] += 1
    return keys


def span_metrics(examples: Sequence[Example], *, threshold: float = 0.5) -> dict[str, Any]:
    """Exact-match spans: a predicted span counts only with the truth's start, end and label."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for example in examples:
        truth = _span_keys(example.truth, None, None)
        said = _span_keys(example.predicted or (), example.score, threshold)
        for key in truth | said:
            hit = min(truth[key], said[key])
            tp[key[2]] += hit
            fp[key[2]] += said[key] - hit
            fn[key[2]] += truth[key] - hit
    labels = sorted(set(tp) | set(fp) | set(fn))
    per_label = {}
    for label in labels:
        p = _ratio(tp[label], tp[label] + fp[label])
        r = _ratio(tp[label], tp[label] + fn[label])
        per_label[label] = {"tp": tp[label], "fp": fp[label], "fn": fn[label], "precision": p, "recall": r,
                            "f1": _f1(p, r)}  # fmt: skip
    f1s = [v["f1"] for v in per_label.values() if v["f1"] is not None]
    return {
        "items": len(examples),
        "threshold": threshold,
        **_at_threshold(tp, fp, fn),
        "macro_f1": sum(f1s) / len(f1s) if f1s else None,
        "per_label": per_label,
    }


# --- Transcriptions ------------------------------------------------------------------------------


def transcript(regions: Sequence[Region] | None) -> str:
    """An item's transcription texts in time order (those with `start`), else as listed, joined."""
    said = _of(regions, ("transcription",))
    ordered = sorted(
        enumerate(said),
        key=lambda p: (_geometry(p[1]).get("start") is None, _geometry(p[1]).get("start") or 0, p[0]),
    )
    return " ".join(str(_geometry(r).get("text") or "").strip() for _, r in ordered).strip()


def transcription_metrics(examples: Sequence[Example]) -> dict[str, Any]:
    import jiwer

    references = [transcript(e.truth) for e in examples]
    hypotheses = [transcript(e.predicted) for e in examples]
    kept = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r]
    out: dict[str, Any] = {"items": len(kept), "skipped_empty_reference": len(references) - len(kept)}
    if not kept:
        return {**out, "wer": None, "cer": None}
    refs, hyps = [r for r, _ in kept], [h for _, h in kept]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return {
        **out,
        "wer": float(words.wer),
        "cer": float(chars.cer),
        "words": {
            "substitutions": words.substitutions,
            "deletions": words.deletions,
            "insertions": words.insertions,
            "hits": words.hits,
        },
        "characters": {
            "substitutions": chars.substitutions,
            "deletions": chars.deletions,
            "insertions": chars.insertions,
            "hits": chars.hits,
        },
    }
