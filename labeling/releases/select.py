"""Which tasks a release takes, and which labels it freezes for each.

The filter (normalized by `filter_normalize`, stored on the release):
- `states`: task states taken (default accepted and done: work that passed review or needed none);
- `qc_status`: the quality statuses taken ("" is a task no check has flagged), default any;
- `datasets`: only items of these datasets; `metadata`: only items whose importer-supplied
  metadata (item `meta.user`) contains these keys and values;
- `classes`: keep only regions of these classes; `only_with_classes`: and drop items left with
  none of them.

The labels of a task, first that applies (`source`):
1. `ground_truth` — the annotation a manager or reviewer marked as ground truth;
2. `accepted` — the annotation a reviewer fixed (their correction is the answer);
3. `consensus` — with two or more annotations that passed (accepted, or unreviewed in a project
   without review), the consensus quality fused from exactly those annotations;
4. `accepted` — the latest accepted annotation;
5. `submitted` — the latest submitted annotation that was not rejected.
A task with none of these is left out and counted (`no_labels`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from labeling import hooks
from labeling.models import Annotation, AnnotationState, Review, Task, TaskState, Verdict

DEFAULT_STATES = [TaskState.ACCEPTED.value, TaskState.DONE.value]


def filter_normalize(raw: dict[str, Any]) -> dict[str, Any]:
    """The filter with defaults filled in and lists sorted, as stored and shown."""
    return {
        "states": sorted(set(raw.get("states") or DEFAULT_STATES)),
        "qc_status": sorted(set(raw["qc_status"])) if raw.get("qc_status") is not None else None,
        "datasets": sorted(set(raw.get("datasets") or [])),
        "metadata": dict(raw.get("metadata") or {}),
        "classes": sorted(set(raw.get("classes") or [])),
        "only_with_classes": bool(raw.get("only_with_classes", False)),
    }


def tasks_selected(project_id: int, selection: dict[str, Any]) -> QuerySet[Task]:
    tasks = Task.objects.filter(project_id=project_id, is_gold=False, state__in=selection["states"])
    if selection["qc_status"] is not None:
        tasks = tasks.filter(qc_status__in=selection["qc_status"])
    if selection["datasets"]:
        tasks = tasks.filter(item__dataset_id__in=selection["datasets"])
    if selection["metadata"]:
        tasks = tasks.filter(item__meta__contains={"user": selection["metadata"]})
    return tasks


def regions_sha256(regions: list[dict[str, Any]]) -> str:
    text = json.dumps(regions, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Chosen:
    source: str
    regions: list[dict[str, Any]]
    annotation_id: int | None
    annotation_version: int | None
    annotation_ids: list[int]
    schema_version: int


def _latest(annotations: list[Annotation]) -> Annotation:
    return max(annotations, key=lambda a: (a.submitted_at is not None, a.submitted_at, a.pk))


def _one(source: str, annotation: Annotation) -> Chosen:
    return Chosen(
        source=source,
        regions=list(annotation.result),
        annotation_id=annotation.pk,
        annotation_version=annotation.version,
        annotation_ids=[annotation.pk],
        schema_version=annotation.schema_version,
    )


def labels_chosen(task_ids: list[int]) -> dict[int, Chosen]:
    """The labels a release freezes for each task that has some (see the module's rules)."""
    annotations: dict[int, list[Annotation]] = {}
    rows = Annotation.objects.filter(
        task_id__in=task_ids, state=AnnotationState.SUBMITTED, deleted_at__isnull=True
    ).only(
        "id",
        "task_id",
        "result",
        "version",
        "ground_truth",
        "review_status",
        "submitted_at",
        "schema_version",
    )
    for annotation in rows:
        annotations.setdefault(annotation.task_id, []).append(annotation)
    all_ids = [a.pk for found in annotations.values() for a in found]
    fixed = set(
        Review.objects.filter(annotation_id__in=all_ids, verdict=Verdict.FIX).values_list(
            "annotation_id", flat=True
        )
    )
    several = [
        t for t, found in annotations.items() if sum(a.review_status != "rejected" for a in found) >= 2
    ]
    consensus = hooks.consensus_of(several) if several else {}
    chosen: dict[int, Chosen] = {}
    for task_id, found in annotations.items():
        truth = [a for a in found if a.ground_truth]
        accepted = [a for a in found if a.review_status == "accepted"]
        corrected = [a for a in accepted if a.pk in fixed]
        passed = accepted or [a for a in found if a.review_status != "rejected"]
        agreed = consensus.get(task_id)
        if truth:
            chosen[task_id] = _one("ground_truth", _latest(truth))
        elif corrected:
            chosen[task_id] = _one("accepted", _latest(corrected))
        elif len(passed) >= 2 and agreed is not None and set(agreed.annotation_ids) == {a.pk for a in passed}:
            chosen[task_id] = Chosen(
                source="consensus",
                regions=list(agreed.regions),
                annotation_id=None,
                annotation_version=None,
                annotation_ids=sorted(agreed.annotation_ids),
                schema_version=max(a.schema_version for a in passed),
            )
        elif accepted:
            chosen[task_id] = _one("accepted", _latest(accepted))
        elif passed:
            chosen[task_id] = _one("submitted", _latest(passed))
    return chosen


def keep_classes(regions: list[dict[str, Any]], classes: list[str]) -> list[dict[str, Any]]:
    """Only the regions of these classes; a region that points at others (a relation) stays only
    when every region it points at stays."""
    if not classes:
        return regions
    wanted = set(classes)
    kept = [r for r in regions if not r.get("label") or r["label"] in wanted]
    ids = {r.get("id") for r in kept}
    return [r for r in kept if _refers_to(r) <= ids]


def _refers_to(region: dict[str, Any]) -> set[Any]:
    geometry = region.get("geometry") or {}
    if not isinstance(geometry, dict):
        return set()
    return {geometry[k] for k in ("from", "to", "region") if isinstance(geometry.get(k), str)}
