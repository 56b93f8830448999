"""Writes of the labeling app: label schemas, tasks, annotations with revisions, predictions.

Validation (pure, in labeling.regions) happens before any transaction opens; each service then
writes in one short transaction, locking what it changes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from labeling import regions as rg
from labeling.exceptions import (
    NoLabelSchema,
    OperationsRefused,
    RegionsRefused,
    SpecRefused,
    StaleVersion,
    VersionRequired,
)
from labeling.models import (
    Annotation,
    AnnotationRevision,
    AnnotationState,
    LabelSchema,
    Prediction,
    RevisionAction,
    Task,
)
from labeling.regions.compare import prediction_outcome
from projects.access import ProjectAccess, ProjectAction
from projects.audit import audit_record
from projects.bulk import copy_insert, copy_update
from projects.exceptions import InvalidInput, NotFound, PermissionDenied, TooLarge
from projects.jobs import job_start
from projects.models import Project
from storage.models import Item

MAX_PREDICTIONS_PER_CALL = 10_000


# --- Label schemas -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _parsed(schema_id: int) -> rg.Schema:
    # Versions are immutable, so a parsed version can be kept for the life of the process.
    spec = LabelSchema.objects.values_list("spec", flat=True).get(id=schema_id)
    return rg.parse_schema(spec)


def parsed_schema(schema: LabelSchema) -> rg.Schema:
    return _parsed(schema.pk)


def schema_current(project_id: int) -> LabelSchema | None:
    return LabelSchema.objects.filter(project_id=project_id).order_by("-version").first()


# The current version's id, as a subquery for hand-written statements on hot paths (project `p`).
CURRENT_SCHEMA_SQL = (
    "(SELECT s.id FROM labeling_labelschema s WHERE s.project_id = {project} ORDER BY s.version DESC LIMIT 1)"
)


@functools.lru_cache(maxsize=256)
def schema_by_id(schema_id: int) -> LabelSchema:
    """A schema version by id, kept for the life of the process: versions never change."""
    return LabelSchema.objects.get(id=schema_id)


def require_schema_id(project_id: int, schema_id: int | None) -> LabelSchema:
    """The current schema from its id (read with CURRENT_SCHEMA_SQL); NoLabelSchema when none."""
    if schema_id is None:
        raise NoLabelSchema(project_id=project_id)
    return schema_by_id(schema_id)


def _require_schema(project_id: int) -> LabelSchema:
    schema = schema_current(project_id)
    if schema is None:
        raise NoLabelSchema(project_id=project_id)
    return schema


def spec_parse(spec: Any) -> rg.Schema:
    try:
        return rg.parse_schema(spec)
    except rg.SpecInvalid as exc:
        raise SpecRefused(errors=exc.errors) from None


def schema_publish(
    *, actor: User, access: ProjectAccess, spec: Any, operations: Any = None, notes: str = ""
) -> LabelSchema:
    """Publish the next version of a project's schema; its migration (if any) runs as a job.

    The first version takes no operations. Later versions must account for every class in use:
    a class that disappears from the spec needs a rename, merge, split or delete operation, so a
    schema change never orphans a label silently.
    """
    access.require(ProjectAction.SCHEMA_PUBLISH)
    new = spec_parse(spec)
    with transaction.atomic():
        Project.objects.select_for_update().filter(id=access.project.pk).first()  # one publish at a time
        current = schema_current(access.project.pk)
        ops: list[dict[str, Any]] = []
        if current is None:
            if operations:
                raise OperationsRefused(
                    errors=[
                        {
                            "path": "operations",
                            "code": "no_previous_version",
                            "message": "The first version of a schema has nothing to migrate.",
                        }
                    ]
                )
        else:
            try:
                ops = rg.check_operations(operations or [], parsed_schema(current), new)
            except rg.OperationsInvalid as exc:
                raise OperationsRefused(errors=exc.errors) from None
        schema = LabelSchema.objects.create(
            project=access.project,
            version=(current.version + 1) if current else 1,
            spec=new.spec,
            operations=ops,
            notes=notes,
            created_by=actor,
        )
        if ops:
            schema.migration_job = job_start(
                kind="labeling.schema_migrate",
                actor=actor,
                organization=access.project.organization,
                project=access.project,
                params={"schema_id": schema.pk},
            )
            schema.save(update_fields=["migration_job"])
        audit_record(
            actor=actor,
            verb="label_schema.publish",
            obj=schema,
            organization=access.project.organization,
            project=access.project,
            changes={"version": schema.version, "operations": ops},
        )
    return schema


# --- Tasks -------------------------------------------------------------------------------------


def tasks_create(*, actor: User, access: ProjectAccess, item_ids: list[int] | None = None) -> int:
    """Tasks for the items of the project's linked datasets (all, or the given ones) that have none.

    One INSERT … SELECT: fast at any size, and safe against a concurrent call (ON CONFLICT).
    Returns how many tasks were created.
    """
    access.require(ProjectAction.TASKS_CREATE)
    with transaction.atomic():
        created = tasks_ensure(access.project.pk, item_ids)
        audit_record(
            actor=actor,
            verb="tasks.create",
            obj=access.project,
            organization=access.project.organization,
            project=access.project,
            changes={"created": created, "items": len(item_ids) if item_ids is not None else "all"},
        )
    return created


def tasks_ensure(
    project_id: int, item_ids: Iterable[int] | None = None, *, dataset_id: int | None = None
) -> int:
    """Create the missing tasks of the project's items (no authorization: callers have done it)."""
    sql = """
        INSERT INTO labeling_task (project_id, item_id, state, priority, overlap, is_gold, qc_status,
                                   active, submitted, open_slots, random_key, created_at, updated_at)
        SELECT %(project)s, i.id, 'open', 0, %(overlap)s, false, '', 0, 0, %(overlap)s,
               hashtext(%(seed)s || ':' || i.id::text), now(), now()
        FROM storage_item i
        JOIN storage_dataset_projects dp ON dp.dataset_id = i.dataset_id AND dp.project_id = %(project)s
        {where}
        ON CONFLICT (project_id, item_id) DO NOTHING
    """
    from labeling.workflow import workflow_for

    workflow = workflow_for(project_id)
    params: dict[str, Any] = {"project": project_id, "overlap": workflow.overlap, "seed": str(workflow.seed)}
    conditions = []
    if item_ids is not None:
        conditions.append("i.id = ANY(%(items)s)")
        params["items"] = list(item_ids)
    if dataset_id is not None:
        conditions.append("i.dataset_id = %(dataset)s")
        params["dataset"] = dataset_id
    where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
    with connection.cursor() as cursor:
        cursor.execute(sql.format(where=where), params)
        return int(cursor.rowcount)


def _task_for(access: ProjectAccess, task_id: int) -> Task:
    task = Task.objects.select_related("item").filter(id=task_id, project_id=access.project.pk).first()
    if task is None:
        raise NotFound("Task not found.", task_id=task_id)
    return task


def item_facts(item: Item) -> rg.ItemFacts:
    return rg.ItemFacts.from_item(item.modality, item.meta)


# --- Annotations -------------------------------------------------------------------------------


def _validate(
    result: Any, schema: LabelSchema, facts: rg.ItemFacts, *, prediction: bool = False
) -> list[Any]:
    try:
        return rg.validate_regions(result, parsed_schema(schema), facts, prediction=prediction)
    except rg.RegionsInvalid as exc:
        raise RegionsRefused(errors=exc.errors) from None


def region_changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Region ids added, removed and changed between two results (what a revision records)."""
    old = {str(r.get("id")): r for r in before}
    new = {str(r.get("id")): r for r in after}
    return {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": sorted(k for k in new.keys() & old.keys() if new[k] != old[k]),
    }


def revision_for(
    annotation: Annotation, action: str, actor: User | None, before: list[dict[str, Any]], job: Any = None
) -> AnnotationRevision:
    return AnnotationRevision(
        annotation=annotation,
        version=annotation.version,
        action=action,
        author=actor,
        state=annotation.state,
        schema_version=annotation.schema_version,
        result=annotation.result,
        changes=region_changes(before, annotation.result),
        job=job,
    )


def annotation_create(
    *,
    actor: User,
    access: ProjectAccess,
    task_id: int,
    result: Any,
    state: str = AnnotationState.DRAFT,
    lead_time_ms: int = 0,
    ground_truth: bool = False,
    from_prediction_id: int | None = None,
) -> Annotation:
    access.require(ProjectAction.ANNOTATE)
    if ground_truth:
        access.require(ProjectAction.GROUND_TRUTH_SET)
    task = _task_for(access, task_id)
    schema = _require_schema(access.project.pk)
    regions = _validate(result, schema, item_facts(task.item))
    if (
        from_prediction_id is not None
        and not Prediction.objects.filter(id=from_prediction_id, task=task).exists()
    ):
        raise InvalidInput("from_prediction is not a prediction of this task.", field="from_prediction")
    now = timezone.now()
    with transaction.atomic():
        annotation = Annotation.objects.create(
            task=task,
            author=actor,
            schema_version=schema.version,
            state=state,
            result=regions,
            lead_time_ms=lead_time_ms,
            ground_truth=ground_truth,
            from_prediction_id=from_prediction_id,
            submitted_at=now if state == AnnotationState.SUBMITTED else None,
        )
        if state == AnnotationState.SUBMITTED:
            record_prediction_outcome(annotation)
        action = RevisionAction.SUBMIT if state == AnnotationState.SUBMITTED else RevisionAction.CREATE
        revision_for(annotation, action, actor, []).save()
    return annotation


def record_prediction_outcome(annotation: Annotation, *, save: bool = True) -> None:
    """At submit: compare the annotation with the prediction it started from, if any."""
    if annotation.from_prediction_id is None:
        return
    predicted = (
        Prediction.objects.filter(id=annotation.from_prediction_id).values_list("result", flat=True).first()
    )
    if predicted is None:
        return
    annotation.prediction_outcome = prediction_outcome(predicted, annotation.result)
    if save:
        Annotation.objects.filter(id=annotation.pk).update(prediction_outcome=annotation.prediction_outcome)


def annotation_visible(*, user: User, access: ProjectAccess, annotation_id: int) -> Annotation:
    """An annotation the caller may see (selectors.visible_annotations), else NotFound."""
    from labeling.selectors import visible_annotations

    found = Annotation.objects.filter(
        id=annotation_id, task__project_id=access.project.pk, deleted_at__isnull=True
    ).select_related("task__item")
    annotation = visible_annotations(found, user=user, access=access).first()
    if annotation is None:
        raise NotFound("Annotation not found.", annotation_id=annotation_id)
    return annotation


def _require_edit(user: User, access: ProjectAccess, annotation: Annotation) -> None:
    if annotation.author_id != user.pk and not access.can(ProjectAction.ANNOTATIONS_EDIT_ANY):
        raise PermissionDenied("Only the author, a reviewer or a manager changes this annotation.")


def _locked_at_version(annotation_id: int, if_match: int | None) -> Annotation:
    if if_match is None:
        raise VersionRequired()
    locked = Annotation.objects.select_for_update().get(id=annotation_id)
    if locked.deleted_at is not None:
        raise NotFound("Annotation not found.", annotation_id=annotation_id)
    if locked.version != if_match:
        raise StaleVersion(current_version=locked.version, your_version=if_match)
    return locked


@dataclass(frozen=True)
class AnnotationChange:
    result: Any = None
    state: str | None = None
    lead_time_ms: int | None = None  # time spent since the last save; added to the total
    ground_truth: bool | None = None


def annotation_update(
    *, actor: User, access: ProjectAccess, annotation_id: int, if_match: int | None, change: AnnotationChange
) -> Annotation:
    """Change an annotation at the version the caller read (If-Match); 412 if it moved on."""
    annotation = annotation_visible(user=actor, access=access, annotation_id=annotation_id)
    _require_edit(actor, access, annotation)
    if change.ground_truth is not None and change.ground_truth != annotation.ground_truth:
        access.require(ProjectAction.GROUND_TRUTH_SET)
    if change.state == AnnotationState.DRAFT and annotation.state == AnnotationState.SUBMITTED:
        raise InvalidInput("A submitted annotation cannot go back to draft.", field="state")
    schema = _require_schema(access.project.pk)
    regions = (
        _validate(change.result, schema, item_facts(annotation.task.item))
        if change.result is not None
        else None
    )
    with transaction.atomic():
        locked = _locked_at_version(annotation.pk, if_match)
        before = locked.result
        action = RevisionAction.UPDATE
        if regions is not None:
            locked.result, locked.schema_version = regions, schema.version
        if change.state == AnnotationState.SUBMITTED and locked.state != AnnotationState.SUBMITTED:
            locked.state, locked.submitted_at, action = (
                AnnotationState.SUBMITTED,
                timezone.now(),
                RevisionAction.SUBMIT,
            )
            record_prediction_outcome(locked, save=False)
        if change.lead_time_ms:
            locked.lead_time_ms += change.lead_time_ms
        if change.ground_truth is not None:
            locked.ground_truth = change.ground_truth
        locked.version += 1
        locked.save()
        revision_for(locked, action, actor, before).save()
    return locked


def annotation_delete(
    *, actor: User, access: ProjectAccess, annotation_id: int, if_match: int | None
) -> None:
    """Soft delete: the annotation leaves every list; its revisions stay, a last one records who."""
    annotation = annotation_visible(user=actor, access=access, annotation_id=annotation_id)
    _require_edit(actor, access, annotation)
    with transaction.atomic():
        locked = _locked_at_version(annotation.pk, if_match)
        locked.deleted_at = timezone.now()
        locked.version += 1
        locked.save(update_fields=["deleted_at", "version", "updated_at"])
        revision_for(locked, RevisionAction.DELETE, actor, locked.result).save()
        audit_record(
            actor=actor,
            verb="annotation.delete",
            obj=locked,
            organization=access.project.organization,
            project=access.project,
            changes={"task": locked.task_id, "author": locked.author_id, "version": locked.version},
        )


# --- Predictions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionInput:
    result: Any
    task_id: int | None = None
    item_id: int | None = None
    score: float | None = None


def predictions_create(
    *, actor: User, access: ProjectAccess, model_version: str, predictions: list[PredictionInput]
) -> list[int]:
    """Validate every prediction, then write them all in one transaction (or none: 422 lists why).
    Returns the new predictions' ids, in the order given.

    A prediction names its task, or an item of a linked dataset (its task is created if missing).
    """
    access.require(ProjectAction.PREDICTIONS_CREATE)
    if len(predictions) > MAX_PREDICTIONS_PER_CALL:
        raise TooLarge(f"At most {MAX_PREDICTIONS_PER_CALL} predictions per call.", count=len(predictions))
    schema = _require_schema(access.project.pk)
    project_id = access.project.pk
    wanted_items = {p.item_id for p in predictions if p.item_id is not None}
    if wanted_items:
        tasks_ensure(project_id, wanted_items)
    tasks = Task.objects.filter(project_id=project_id).select_related(None)
    by_id = {
        t.pk: t
        for t in tasks.filter(id__in={p.task_id for p in predictions if p.task_id is not None}).only(
            "id", "item_id"
        )
    }
    by_item = {t.item_id: t for t in tasks.filter(item_id__in=wanted_items).only("id", "item_id")}
    items = {
        row["id"]: row
        for row in Item.objects.filter(
            id__in={t.item_id for t in [*by_id.values(), *by_item.values()]}
        ).values("id", "modality", "meta")
    }
    facts: dict[int, rg.ItemFacts] = {}
    parsed = parsed_schema(schema)
    errors: list[dict[str, Any]] = []
    rows: list[tuple[int, list[dict[str, Any]], float | None]] = []
    found: list[tuple[int, Task, PredictionInput]] = []
    for index, p in enumerate(predictions):
        task = by_id.get(p.task_id) if p.task_id is not None else by_item.get(p.item_id or -1)
        if task is None:
            errors.append(
                {
                    "record": index,
                    "region": None,
                    "field": "task" if p.task_id else "item",
                    "code": "not_found",
                    "message": "No such task or item in this project.",
                }
            )
            continue
        if task.item_id not in facts:
            item = items[task.item_id]
            facts[task.item_id] = rg.ItemFacts.from_item(item["modality"], item["meta"])
        found.append((index, task, p))
    checked = rg.validate_many(
        [(p.result, facts[task.item_id]) for _, task, p in found], parsed, prediction=True
    )
    for (index, task, p), (regions, problems) in zip(found, checked, strict=True):
        if regions is None:
            errors.extend({"record": index, **e} for e in problems[:20])
            continue
        rows.append((task.pk, regions, p.score))
    errors.sort(key=lambda e: e["record"])
    if errors:
        raise RegionsRefused(errors=errors[:1000], error_count=len(errors))
    now = timezone.now()
    with transaction.atomic():
        _record_uncertainty(rows)
        return copy_insert(
            Prediction,
            [
                "task_id",
                "model_version",
                "schema_version",
                "result",
                "archived",
                "score",
                "created_by_id",
                "created_at",
            ],
            [
                (task_id, model_version, schema.version, regions, [], score, actor.pk, now)
                for task_id, regions, score in rows
            ],
        )


def _record_uncertainty(rows: list[tuple[int, list[dict[str, Any]], float | None]]) -> None:
    """A task's uncertainty is the lowest confidence of its newest predictions: the queue's
    `uncertainty` ordering hands out the tasks models are least sure about first."""
    lowest: dict[int, float] = {}
    for task_id, regions, score in rows:
        scores = [r["score"] for r in regions if isinstance(r.get("score"), int | float)]
        if score is not None:
            scores.append(score)
        if scores:
            lowest[task_id] = min(min(scores), lowest.get(task_id, 1.0))
    copy_update(Task, ["uncertainty"], sorted(lowest.items()))


def tasks_for_new_items(dataset_id: int, item_ids: list[int] | None) -> None:
    """Every project linked to the dataset gets tasks for its new items (storage calls this)."""
    from storage.models import Dataset

    for project_id in Dataset.projects.through.objects.filter(dataset_id=dataset_id).values_list(
        "project_id", flat=True
    ):
        tasks_ensure(project_id, item_ids, dataset_id=dataset_id)
