"""How much of a prediction an annotator kept: each predicted region kept as is, edited (with how
close the final one is) or deleted, and the regions the annotator added.

Regions are paired by id first (an annotator who starts from a prediction keeps its region ids
while editing), then greedily by similarity among regions of the same type. Similarity is IoU for
shapes, masks, spans and time segments, and 1 - normalized edit distance for text.
"""

from __future__ import annotations

import math
from typing import Any

from shapely.geometry import Polygon, box

from labeling.regions.geometry import rle_runs

MATCH_AT = 0.5  # a predicted and a final region this similar are the same region, edited


def _polygon(region: dict[str, Any]) -> Polygon | None:
    g = region.get("geometry") or {}
    kind = region.get("type")
    if kind == "bbox":
        return box(g["x"], g["y"], g["x"] + g["width"], g["y"] + g["height"])
    if kind == "rotated_bbox":
        angle = math.radians(g["angle"])
        cos, sin = math.cos(angle), math.sin(angle)
        corners = [(-g["width"] / 2, -g["height"] / 2), (g["width"] / 2, -g["height"] / 2),
                   (g["width"] / 2, g["height"] / 2), (-g["width"] / 2, g["height"] / 2)]  # fmt: skip
        return Polygon([(g["cx"] + x * cos - y * sin, g["cy"] + x * sin + y * cos) for x, y in corners])
    if kind == "polygon":
        return Polygon(g["points"], g.get("holes") or [])
    if kind in ("polyline", "keypoints") and len(g.get("points") or []) >= 2:
        xs = [p[0] for p in g["points"]]
        ys = [p[1] for p in g["points"]]
        return box(min(xs), min(ys), max(xs) + 1e-9, max(ys) + 1e-9)
    return None


def _mask_iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    ra, rb = a["geometry"]["rle"], b["geometry"]["rle"]
    if ra["size"] != rb["size"]:
        return 0.0
    runs_a, runs_b = rle_runs(ra["counts"]) or [], rle_runs(rb["counts"]) or []
    ones_a = _ones(runs_a)
    ones_b = _ones(runs_b)
    inter = _overlap(ones_a, ones_b)
    union = sum(e - s for s, e in ones_a) + sum(e - s for s, e in ones_b) - inter
    return inter / union if union else 1.0


def _ones(runs: list[int]) -> list[tuple[int, int]]:
    out, at = [], 0
    for i, run in enumerate(runs):
        if i % 2:
            out.append((at, at + run))
        at += run
    return out


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    total = i = j = 0
    while i < len(a) and j < len(b):
        total += max(0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def text_similarity(a: str, b: str) -> float:
    """1 - edit distance / the longer length (1.0 for two empty strings)."""
    longest = max(len(a), len(b))
    return 1.0 - edit_distance(a, b) / longest if longest else 1.0


def similarity(predicted: dict[str, Any], final: dict[str, Any]) -> float:
    """How alike two regions of the same type are, in [0, 1] (0 for different types)."""
    kind = predicted.get("type")
    if kind != final.get("type"):
        return 0.0
    g, h = predicted.get("geometry") or {}, final.get("geometry") or {}
    if kind in ("span", "time_segment"):
        inter = max(0.0, min(g["end"], h["end"]) - max(g["start"], h["start"]))
        union = max(g["end"], h["end"]) - min(g["start"], h["start"])
        return inter / union if union > 0 else 1.0
    if kind == "transcription":
        return text_similarity(str(g.get("text", "")), str(h.get("text", "")))
    if kind == "classification":
        return 1.0 if predicted.get("label") == final.get("label") else 0.0
    if kind == "mask":
        return _mask_iou(predicted, final)
    a, b = _polygon(predicted), _polygon(final)
    if a is None or b is None:
        return 1.0 if g == h else 0.0
    union = a.union(b).area
    return a.intersection(b).area / union if union > 0 else 0.0


def _same(predicted: dict[str, Any], final: dict[str, Any]) -> bool:
    keys = ("type", "label", "geometry", "attributes")
    return all(predicted.get(k) == final.get(k) for k in keys)


def prediction_outcome(predicted: list[dict[str, Any]], final: list[dict[str, Any]]) -> dict[str, Any]:
    """What became of each predicted region in the final result.

    Returns counts (`kept`, `edited`, `deleted`, `added`, `predicted`), per predicted region its
    fate (`regions`: [{id, outcome, similarity}]), and the mean similarity of the edited ones
    (`mean_similarity_edited`) and of all matched ones (`mean_similarity`).
    """
    finals = {str(r.get("id")): r for r in final}
    unmatched_final = dict(finals)
    fates: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for region in predicted:
        rid = str(region.get("id"))
        if rid in unmatched_final and unmatched_final[rid].get("type") == region.get("type"):
            fates.append(_fate(region, unmatched_final.pop(rid)))
        else:
            pending.append(region)
    for region in pending:
        best_id, best = None, MATCH_AT
        for fid, candidate in unmatched_final.items():
            score = similarity(region, candidate)
            if score >= best:
                best_id, best = fid, score
        if best_id is None:
            fates.append({"id": region.get("id"), "outcome": "deleted", "similarity": 0.0})
        else:
            fates.append(_fate(region, unmatched_final.pop(best_id)))
    counts = {k: sum(f["outcome"] == k for f in fates) for k in ("kept", "edited", "deleted")}
    matched = [f["similarity"] for f in fates if f["outcome"] != "deleted"]
    edited = [f["similarity"] for f in fates if f["outcome"] == "edited"]
    return {
        **counts,
        "added": len(unmatched_final),
        "predicted": len(predicted),
        "mean_similarity": sum(matched) / len(matched) if matched else None,
        "mean_similarity_edited": sum(edited) / len(edited) if edited else None,
        "regions": fates,
    }


def _fate(predicted: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    if _same(predicted, final):
        return {"id": predicted.get("id"), "outcome": "kept", "similarity": 1.0}
    score = similarity(predicted, final)
    if predicted.get("label") != final.get("label"):
        score = min(score, 0.99)  # a relabelled region is an edit however well it fits
    return {"id": predicted.get("id"), "outcome": "edited", "similarity": round(score, 4)}
