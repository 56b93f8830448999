"""Where an item of a release came from, and who and what shaped its labels.

- `item`: its dataset, its blob, and how it entered Loupe (the ingest job, and the entry's source:
  an upload, a URL without its credentials, a bucket key, an archive member);
- `labels`: what the release froze (source, annotation and its version, split);
- `annotations`: every annotation the labels rest on — its author, the revisions up to the one
  frozen, the reviews it got, and the model version whose prediction it started from with how much
  of that prediction was kept (and, for a model trained in Loupe, the release it learned from);
- `quality`: what the quality checks found (labeling.hooks.quality_facts).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.contrib.auth import get_user_model

from labeling import hooks
from labeling.models import Annotation, AnnotationRevision, Prediction, Release, ReleaseItem, Review
from projects.exceptions import NotFound
from projects.models import Job
from storage.models import Dataset, IngestEntry, Item


def _people(ids: set[int | None]) -> dict[int, dict[str, Any]]:
    users = get_user_model().objects.filter(id__in={i for i in ids if i is not None})
    return {u.pk: {"id": u.pk, "username": u.get_username()} for u in users}


def _public_source(source: dict[str, Any]) -> dict[str, Any]:
    """An ingest entry's source without credentials a URL may carry."""
    shown = {k: v for k, v in source.items() if k in ("kind", "key", "member", "source", "url")}
    if isinstance(shown.get("url"), str):
        parts = urlsplit(shown["url"])
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        shown["url"] = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return shown


def _ingest(item_id: int) -> dict[str, Any] | None:
    entry = IngestEntry.objects.filter(item_id=item_id).order_by("id").select_related("job").first()
    job = entry.job if entry is not None else Job.objects.filter(id=_ingest_job_id(item_id) or 0).first()
    if job is None:
        return None
    found: dict[str, Any] = {
        "job": job.pk,
        "kind": job.kind,
        "at": job.created_at.isoformat(),
        "by": job.created_by_id,
    }
    if entry is not None:
        found.update(name=entry.name, source=_public_source(entry.source))
    return found


def _ingest_job_id(item_id: int) -> int | None:
    return Item.objects.filter(id=item_id).values_list("ingest_job_id", flat=True).first()


def _release_brief(release: Release | None) -> dict[str, Any] | None:
    if release is None:
        return None
    return {"id": release.pk, "version": release.version, "project": release.project_id}


def item_lineage(release: Release, item_id: int) -> dict[str, Any]:
    entry = ReleaseItem.objects.filter(release=release, item_id=item_id).first()
    if entry is None:
        raise NotFound("This item is not in the release.", item_id=item_id)
    dataset = Dataset.objects.filter(id=entry.dataset_id).values("id", "name").first()
    annotations = list(Annotation.objects.filter(id__in=entry.annotations).order_by("id"))
    revisions = AnnotationRevision.objects.filter(annotation_id__in=entry.annotations).order_by(
        "annotation_id", "version"
    )
    reviews = Review.objects.filter(annotation_id__in=entry.annotations).order_by("id")
    predictions = {
        p.pk: p
        for p in Prediction.objects.filter(
            id__in=[a.from_prediction_id for a in annotations if a.from_prediction_id]
        ).select_related("source__model", "source__release")
    }
    people = _people(
        {a.author_id for a in annotations}
        | {r.author_id for r in revisions}
        | {r.reviewer_id for r in reviews}
    )
    by_annotation: dict[int, dict[str, Any]] = {}
    for annotation in annotations:
        prediction = predictions.get(annotation.from_prediction_id or 0)
        by_annotation[annotation.pk] = {
            "id": annotation.pk,
            "author": people.get(annotation.author_id),
            # The revision the release froze (a consensus rests on the annotations as they were
            # assessed, so none is singled out).
            "frozen_version": entry.annotation_version if annotation.pk == entry.annotation_id else None,
            "submitted_at": annotation.submitted_at.isoformat() if annotation.submitted_at else None,
            "lead_time_ms": annotation.lead_time_ms,
            "review_status": annotation.review_status,
            "ground_truth": annotation.ground_truth,
            "prelabel": None
            if prediction is None
            else {
                "prediction": prediction.pk,
                "model_version": prediction.model_version,
                "registered_version": prediction.source_id,
                "model": prediction.source.model.name if prediction.source else None,
                # A model trained in Loupe: the release it learned from.
                "training_release": _release_brief(prediction.source.release if prediction.source else None),
                # kept / edited / deleted predicted regions, regions added, mean similarity
                "outcome": {k: v for k, v in (annotation.prediction_outcome or {}).items() if k != "regions"},
            },
            "revisions": [],
            "reviews": [],
        }
    for revision in revisions:
        by_annotation[revision.annotation_id]["revisions"].append(
            {"version": revision.version, "action": revision.action, "state": revision.state,
             "by": people.get(revision.author_id or 0), "at": revision.created_at.isoformat()}
        )  # fmt: skip
    for review in reviews:
        by_annotation[review.annotation_id]["reviews"].append(
            {"verdict": review.verdict, "by": people.get(review.reviewer_id), "comment": review.comment,
             "annotation_version": review.annotation_version, "at": review.created_at.isoformat()}
        )  # fmt: skip
    return {
        "release": {"id": release.pk, "version": release.version},
        "item": {
            "id": entry.item_id,
            "name": entry.name,
            "dataset": dataset,
            "modality": entry.modality,
            "sha256": entry.sha256,
            "key": entry.blob_key,
            "ingest": _ingest(entry.item_id),
        },
        "labels": {
            "task": entry.task_id,
            "source": entry.source,
            "annotation": entry.annotation_id,
            "annotation_version": entry.annotation_version,
            "annotations": entry.annotations,
            "schema_version": entry.schema_version,
            "split": entry.split,
            "regions": len(entry.regions),
            "regions_sha256": entry.regions_sha256,
        },
        "annotations": list(by_annotation.values()),
        "quality": hooks.quality_facts([entry.task_id]).get(entry.task_id, {}),
    }
