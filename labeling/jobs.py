"""Long labeling work as jobs: schema migrations, annotation imports and exports.

- ``labeling.schema_migrate`` applies a schema version's operations to every annotation and
  prediction made under an earlier version, in chunks of id ranges; each changed annotation gets
  a revision, nothing is ever dropped (deleted classes are archived on the row).
- ``labeling.annotation_import`` parses a file of any supported format, matches records to the
  project's items and validates every region before anything is written; without ``partial`` a
  single refused record means nothing is imported. Valid records are written in chunks.
- ``labeling.annotation_export`` streams the chosen format to a temporary file (memory does not
  grow with the project) and stores it in the object store for download.
"""

from __future__ import annotations

import json
import math
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from labeling import regions as rg
from labeling.formats import get_format
from labeling.formats.base import ExportItem, ItemIndex, ItemInfo, LabelClass
from labeling.models import (
    Annotation,
    AnnotationRevision,
    AnnotationState,
    LabelSchema,
    Prediction,
    RevisionAction,
    Task,
)
from labeling.services import _require_schema, parsed_schema, region_changes, tasks_ensure
from projects.access import ProjectAccess, ProjectAction
from projects.bulk import copy_insert, copy_update
from projects.exceptions import Conflict, InvalidInput, NotFound
from projects.jobs import ChunkError, ChunkOutcome, JobKind, Plan, job_start, register
from projects.models import Job, JobError, JobState
from storage.models import Item
from storage.objects import object_store

MIGRATE_CHUNK_IDS = 2000
REVISION_COLUMNS = [
    "annotation_id",
    "version",
    "action",
    "author_id",
    "state",
    "schema_version",
    "result",
    "changes",
    "job_id",
    "created_at",
]
IMPORT_CHUNK = 500


def sum_counts(result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """A job result made of counters: each chunk's counts added to the total."""
    merged = dict(result)
    for key, value in delta.items():
        merged[key] = merged.get(key, 0) + value
    return merged


def label_classes(schema: rg.Schema) -> list[LabelClass]:
    return [
        LabelClass(
            name=c.name,
            tools=tuple(sorted(c.tools)),
            keypoints=c.keypoints,
            edges=c.edges,
            attributes=tuple(c.attributes),
        )
        for c in schema.classes.values()
    ]


# --- Schema migration --------------------------------------------------------------------------


@register
class SchemaMigrate(JobKind):
    name = "labeling.schema_migrate"
    queue = "default"

    def _bounds(self, model: Any, project_id: int) -> tuple[int, int]:
        from django.db.models import Max, Min

        found = model.objects.filter(task__project_id=project_id).aggregate(low=Min("id"), high=Max("id"))
        return (found["low"] or 0), (found["high"] or -1)

    def plan(self, job: Job) -> Plan:
        project_id = job.project_id
        assert project_id is not None
        low_a, high_a = self._bounds(Annotation, project_id)
        low_p, high_p = self._bounds(Prediction, project_id)
        chunks_a = math.ceil((high_a - low_a + 1) / MIGRATE_CHUNK_IDS) if high_a >= low_a else 0
        chunks_p = math.ceil((high_p - low_p + 1) / MIGRATE_CHUNK_IDS) if high_p >= low_p else 0
        job.params.update({"annotations": [low_a, chunks_a], "predictions": [low_p, chunks_p]})
        Job.objects.filter(id=job.pk).update(params=job.params)
        total = Annotation.objects.filter(task__project_id=project_id).count()
        total += Prediction.objects.filter(task__project_id=project_id).count()
        return Plan(total=total, chunks=chunks_a + chunks_p)

    def apply_chunk(self, job: Job, index: int, prepared: Any) -> ChunkOutcome:
        target = LabelSchema.objects.get(id=job.params["schema_id"])
        low_a, chunks_a = job.params["annotations"]
        low_p, _ = job.params["predictions"]
        model: Any = Annotation if index < chunks_a else Prediction
        low = (
            (low_a + index * MIGRATE_CHUNK_IDS)
            if index < chunks_a
            else (low_p + (index - chunks_a) * MIGRATE_CHUNK_IDS)
        )
        project_id = job.project_id or 0
        rows = list(
            model.objects.select_for_update(of=("self",))
            .filter(task__project_id=project_id, id__gte=low, id__lt=low + MIGRATE_CHUNK_IDS)
            .select_related("task__item")
            .order_by("id")
        )
        new_schema = parsed_schema(target)
        errors: list[ChunkError] = []
        steps = {
            s.version: s.operations
            for s in LabelSchema.objects.filter(project_id=project_id, version__lte=target.version)
        }
        counts = {
            "changed": 0,
            "regions_before": 0,
            "regions_after": 0,
            "archived_before": 0,
            "archived_after": 0,
        }
        revisions: list[tuple[Any, ...]] = []
        changed_rows = []
        now = timezone.now()
        for row in rows:
            if row.schema_version >= target.version:
                continue
            operations = [
                op for v in range(row.schema_version + 1, target.version + 1) for op in steps.get(v, [])
            ]
            before = row.result
            counts["regions_before"] += len(row.result)
            counts["archived_before"] += len(row.archived)
            row.result, row.archived, changed = rg.apply_operations(row.result, row.archived, operations)
            counts["regions_after"] += len(row.result)
            counts["archived_after"] += len(row.archived)
            row.schema_version = target.version
            if changed and model is Annotation:
                row.version += 1
                revisions.append(
                    (
                        row.pk,
                        row.version,
                        RevisionAction.MIGRATE.value,
                        job.created_by_id,
                        row.state,
                        row.schema_version,
                        row.result,
                        region_changes(before, row.result),
                        job.pk,
                        now,
                    )
                )
            counts["changed"] += int(changed)
            changed_rows.append(row)
            if changed:
                # Operations rename and move labels; a tool or an attribute type the new version
                # changed can still leave a region it refuses. Kept as it is (nothing is dropped)
                # and reported, so a manager can fix it.
                facts = rg.ItemFacts.from_item(row.task.item.modality, row.task.item.meta)
                try:
                    rg.validate_regions(row.result, new_schema, facts, prediction=model is Prediction)
                except rg.RegionsInvalid as exc:
                    first = exc.errors[0]
                    errors.append(
                        ChunkError(
                            item=f"{model.__name__.lower()} {row.pk}",
                            code="invalid_after_migration",
                            message=f"region {first.get('region')} {first.get('field')}: "
                            f"{first.get('message')}",
                        )
                    )
        if model is Annotation:
            copy_update(
                Annotation,
                ["result", "archived", "schema_version", "version", "updated_at"],
                [(r.pk, r.result, r.archived, r.schema_version, r.version, now) for r in changed_rows],
            )
        else:
            copy_update(
                Prediction,
                ["result", "archived", "schema_version"],
                [(r.pk, r.result, r.archived, r.schema_version) for r in changed_rows],
            )
        copy_insert(AnnotationRevision, REVISION_COLUMNS, revisions)
        prefix = "annotations" if model is Annotation else "predictions"
        return ChunkOutcome(
            items=len(rows), errors=errors, result={f"{prefix}_{k}": v for k, v in counts.items()}
        )

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        return sum_counts(result, delta)


# --- Import ------------------------------------------------------------------------------------


class ImportRefused(RuntimeError):
    """Some records were refused and the caller did not ask for a partial import."""


def import_start(
    *,
    actor: User,
    access: ProjectAccess,
    path: Path,
    format: str,
    target: str,
    model_version: str,
    partial: bool,
) -> Job:
    access.require(
        ProjectAction.ANNOTATIONS_IMPORT if target == "ground_truth" else ProjectAction.PREDICTIONS_CREATE
    )
    module = get_format(format)
    if not module.can_import:
        raise InvalidInput(f"The {format} format can be exported, not imported.", field="format")
    schema = _require_schema(access.project.pk)
    key = f"staging/imports/{uuid.uuid4().hex}"
    object_store().put_file(key, path, content_type="application/octet-stream")  # object first, then the row
    return job_start(
        kind="labeling.annotation_import",
        actor=actor,
        organization=access.project.organization,
        project=access.project,
        params={
            "key": key,
            "format": format,
            "target": target,
            "model_version": model_version,
            "partial": partial,
            "schema_id": schema.pk,
        },
    )


def read_text(store: Any, key: str, meta: dict[str, Any], *, limit: int | None = None) -> str:
    """A text item's content (the first `limit` characters), in the encoding probing found."""
    with store.open(key) as handle:
        text: str = handle.read().decode(meta.get("encoding") or "utf-8", errors="replace")
    return text if limit is None else text[:limit]


def item_info(item_id: int, name: str, modality: str, meta: dict[str, Any], key: str, store: Any) -> ItemInfo:
    """An item as converters see it; with a store, text items carry their content (CoNLL, spans)."""
    facts = rg.ItemFacts.from_item(modality, meta)
    text = read_text(store, key, meta) if store is not None and modality == "text" else None
    return ItemInfo(
        id=item_id,
        name=name,
        modality=modality,
        width=facts.width,
        height=facts.height,
        length=facts.length,
        duration=facts.duration,
        frames=facts.frames,
        text=text,
    )


def project_items(project_id: int, *, with_text: bool = False) -> Iterator[ItemInfo]:
    """Every item of the project's linked datasets, as converters see them."""
    rows = Item.objects.filter(dataset__projects=project_id).values_list(
        "id", "name", "modality", "meta", "primary__key"
    )
    store = object_store() if with_text else None
    for item_id, name, modality, meta, key in rows.iterator(chunk_size=5000):
        yield item_info(item_id, name, modality, meta, key, store)


def parse_and_validate(
    format: str, path: Path, schema: rg.Schema, index: ItemIndex, *, prediction: bool
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Read a file of the format and validate every record against the schema and its item.

    Returns the valid records ({item id, regions, where}) and one error per refused record or
    region (where, code, message). Scores are kept for predictions and dropped for ground truth.
    """
    module = get_format(format)
    with path.open("rb") as data:
        parsed_file = module.import_(data, label_classes(schema), index)
    errors = [{"item": e.where, "code": e.code, "message": e.message} for e in parsed_file.errors]
    records: list[dict[str, Any]] = []
    batch = []
    for record in parsed_file.records:
        item = record.item
        facts = rg.ItemFacts(
            modality=item.modality,
            width=item.width,
            height=item.height,
            length=item.length,
            duration=item.duration,
            frames=item.frames,
            text=item.text,
        )
        regions = (
            record.regions
            if prediction
            else [{k: v for k, v in r.items() if k != "score"} for r in record.regions]
        )
        batch.append((regions, facts))
    for record, (clean, problems) in zip(
        parsed_file.records, rg.validate_many(batch, schema, prediction=prediction), strict=True
    ):
        if clean is None:
            for e in problems[:20]:
                place = (
                    f"region {e['region']} {e['field']}".strip()
                    if e.get("region") is not None
                    else e["field"]
                )
                errors.append(
                    {"item": f"{record.where}: {place}", "code": e["code"], "message": e["message"]}
                )
            continue
        records.append({"item": record.item.id, "regions": clean, "where": record.where})
    return records, errors


def _chunk_key(job: Job, index: int) -> str:
    return f"staging/imports/job-{job.pk}/chunk-{index}.json"


@register
class AnnotationImport(JobKind):
    name = "labeling.annotation_import"
    queue = "default"

    def plan(self, job: Job) -> Plan:
        schema = LabelSchema.objects.get(id=job.params["schema_id"])
        assert job.project_id is not None
        index = ItemIndex(project_items(job.project_id, with_text=job.params["format"] == "conll"))
        store = object_store()
        with tempfile.TemporaryDirectory(prefix="loupe-import-") as folder:
            local = Path(folder) / "upload"
            store.download_to(job.params["key"], local)
            records, errors = parse_and_validate(
                job.params["format"],
                local,
                parsed_schema(schema),
                index,
                prediction=job.params["target"] == "predictions",
            )
        if errors and not job.params["partial"]:
            JobError.objects.bulk_create(
                JobError(job=job, item=e["item"][:500], code=e["code"], message=e["message"])
                for e in errors[:1000]
            )
            Job.objects.filter(id=job.pk).update(error_count=len(errors))
            raise ImportRefused(
                f"{len(errors)} record(s) refused, nothing imported: fix them, or import with partial=true "
                "to bring in the valid records."
            )
        chunks = max(math.ceil(len(records) / IMPORT_CHUNK), 1 if errors else 0)
        for i in range(chunks):
            body = {
                "records": records[i * IMPORT_CHUNK : (i + 1) * IMPORT_CHUNK],
                "errors": errors if i == 0 else [],
            }
            store.put_bytes(_chunk_key(job, i), json.dumps(body).encode(), content_type="application/json")
        return Plan(total=len(records), chunks=chunks)

    def prepare_chunk(self, job: Job, index: int) -> dict[str, Any]:
        with object_store().open(_chunk_key(job, index)) as handle:
            return json.loads(handle.read())  # type: ignore[no-any-return]

    def apply_chunk(self, job: Job, index: int, prepared: dict[str, Any]) -> ChunkOutcome:
        assert job.project_id is not None
        records = prepared["records"]
        schema = LabelSchema.objects.get(id=job.params["schema_id"])
        item_ids = {r["item"] for r in records}
        tasks_ensure(job.project_id, item_ids)
        tasks = dict(
            Task.objects.filter(project_id=job.project_id, item_id__in=item_ids).values_list("item_id", "id")
        )
        errors = [
            ChunkError(item=e["item"], code=e["code"], message=e["message"]) for e in prepared["errors"]
        ]
        if job.params["target"] == "predictions":
            Prediction.objects.bulk_create(
                (
                    Prediction(
                        task_id=tasks[r["item"]],
                        model_version=job.params["model_version"],
                        schema_version=schema.version,
                        result=r["regions"],
                        score=_overall_score(r["regions"]),
                        job=job,
                        created_by=job.created_by,
                    )
                    for r in records
                ),
                batch_size=500,
            )
            return ChunkOutcome(items=len(records), errors=errors, result={"predictions": len(records)})
        created, updated = _import_annotations(job, schema, records, tasks)
        return ChunkOutcome(
            items=len(records), errors=errors, result={"created": created, "updated": updated}
        )

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        return sum_counts(result, delta)

    def finish(self, job: Job) -> dict[str, Any]:
        return {"created": 0, "updated": 0, "predictions": 0, **job.result, "refused": job.error_count}

    def after_finish(self, job: Job) -> None:
        store = object_store()
        store.delete(job.params["key"])
        for i in range(job.chunks_total or 0):
            store.delete(_chunk_key(job, i))


def _overall_score(regions: list[dict[str, Any]]) -> float | None:
    scores = [r["score"] for r in regions if isinstance(r.get("score"), int | float)]
    return sum(scores) / len(scores) if scores else None


def _import_annotations(
    job: Job, schema: LabelSchema, records: list[dict[str, Any]], tasks: dict[int, int]
) -> tuple[int, int]:
    """Ground truth from a file: one imported annotation per task and importer, replaced on re-import.

    Two records for one item in the same file (a Label Studio task with two annotations) end as
    one annotation holding the later record's regions.
    """
    now = timezone.now()
    existing = {
        a.task_id: a
        for a in Annotation.objects.select_for_update().filter(
            task_id__in=tasks.values(),
            author=job.created_by,
            import_job__isnull=False,
            deleted_at__isnull=True,
        )
    }
    new: dict[int, list[dict[str, Any]]] = {}  # task → regions, for tasks with no imported annotation yet
    changed: dict[int, tuple[Annotation, list[dict[str, Any]]]] = {}  # task → (annotation, regions before)
    for record in records:
        task_id = tasks[record["item"]]
        annotation = existing.get(task_id)
        if annotation is None:
            new[task_id] = record["regions"]
            continue
        before = changed[task_id][1] if task_id in changed else annotation.result
        annotation.result = record["regions"]
        changed[task_id] = (annotation, before)
    created_ids = copy_insert(
        Annotation,
        [
            "task_id",
            "author_id",
            "schema_version",
            "state",
            "result",
            "archived",
            "version",
            "lead_time_ms",
            "ground_truth",
            "import_job_id",
            "created_at",
            "updated_at",
            "submitted_at",
            "review_status",
        ],
        [
            (
                task_id,
                job.created_by_id,
                schema.version,
                AnnotationState.SUBMITTED.value,
                regions,
                [],
                1,
                0,
                True,
                job.pk,
                now,
                now,
                now,
                "",
            )
            for task_id, regions in new.items()
        ],
    )
    updated = [(a, before) for a, before in changed.values()]
    for annotation, _ in updated:
        annotation.version += 1
    copy_update(
        Annotation,
        ["result", "schema_version", "import_job_id", "version", "updated_at"],
        [(a.pk, a.result, schema.version, job.pk, a.version, now) for a, _ in updated],
    )
    revision = (
        RevisionAction.IMPORT.value,
        job.created_by_id,
        AnnotationState.SUBMITTED.value,
        schema.version,
    )
    copy_insert(
        AnnotationRevision,
        REVISION_COLUMNS,
        [
            (annotation_id, 1, *revision, regions, region_changes([], regions), job.pk, now)
            for annotation_id, regions in zip(created_ids, new.values(), strict=True)
        ]
        + [
            (a.pk, a.version, *revision, a.result, region_changes(before, a.result), job.pk, now)
            for a, before in updated
        ],
    )
    return len(created_ids), len(updated)


# --- Export ------------------------------------------------------------------------------------


def export_start(*, actor: User, access: ProjectAccess, format: str, source: str, model_version: str) -> Job:
    access.require(ProjectAction.ANNOTATIONS_EXPORT)
    module = get_format(format)
    if not module.can_export:
        raise InvalidInput(f"The {format} format can be imported, not exported.", field="format")
    if source == "predictions" and not model_version:
        raise InvalidInput("Name the model_version whose predictions to export.", field="model_version")
    schema = _require_schema(access.project.pk)
    return job_start(
        kind="labeling.annotation_export",
        actor=actor,
        organization=access.project.organization,
        project=access.project,
        params={"format": format, "source": source, "model_version": model_version, "schema_id": schema.pk},
    )


def export_rows(project_id: int, source: str, model_version: str = "") -> Any:
    """Per task, what an export writes: ground truth if any, else the latest submitted annotation
    (``annotations``); only ground truth (``ground_truth``); or one model version's latest
    prediction (``predictions``). One row per task, in task order, read with a server-side cursor."""
    rows: Any
    if source == "predictions":
        rows = Prediction.objects.filter(task__project_id=project_id, model_version=model_version).order_by(
            "task_id", "-id"
        )
    else:
        rows = Annotation.objects.filter(
            task__project_id=project_id, deleted_at__isnull=True, state=AnnotationState.SUBMITTED
        ).order_by("task_id", "-ground_truth", "-submitted_at", "-id")
        if source == "ground_truth":
            rows = rows.filter(ground_truth=True)
    return rows.distinct("task_id").values_list(
        "id",
        "result",
        "task__item_id",
        "task__item__name",
        "task__item__modality",
        "task__item__meta",
        "task__item__primary__key",
    )


def export_items(
    project_id: int, source: str, model_version: str, *, with_text: bool
) -> Iterator[ExportItem]:
    store = object_store() if with_text else None
    for row_id, result, item_id, name, modality, meta, key in export_rows(
        project_id, source, model_version
    ).iterator(chunk_size=1000):
        item = item_info(item_id, name, modality, meta, key, store)
        yield ExportItem(item=item, regions=result, annotation_id=row_id if source != "predictions" else None)


@register
class AnnotationExport(JobKind):
    name = "labeling.annotation_export"
    queue = "export"

    def plan(self, job: Job) -> Plan:
        assert job.project_id is not None
        total = export_rows(job.project_id, job.params["source"], job.params["model_version"]).count()
        return Plan(total=total, chunks=1)

    def prepare_chunk(self, job: Job, index: int) -> dict[str, Any]:
        assert job.project_id is not None
        module = get_format(job.params["format"])
        schema = LabelSchema.objects.get(id=job.params["schema_id"])
        classes = label_classes(parsed_schema(schema))
        filename = f"project-{job.project_id}-{job.params['source']}-{job.pk}{module.extension}"
        key = f"exports/project-{job.project_id}/{job.pk}/{filename}"
        count = 0
        regions = 0

        def counted() -> Iterator[ExportItem]:
            nonlocal count, regions
            for export_item in export_items(
                job.project_id or 0,
                job.params["source"],
                job.params["model_version"],
                with_text=job.params["format"] in ("conll", "labelstudio"),
            ):
                count += 1
                regions += len(export_item.regions)
                yield export_item

        # Streamed into the store as it is written (a multipart upload on S3).
        with object_store().writer(key, content_type=module.media_type) as out:
            module.export(counted(), classes, out)
        size = out.size
        return {
            "key": key,
            "filename": filename,
            "size": size,
            "items": count,
            "regions": regions,
            "format": job.params["format"],
        }

    def apply_chunk(self, job: Job, index: int, prepared: dict[str, Any]) -> ChunkOutcome:
        return ChunkOutcome(items=prepared["items"], result=prepared)


def export_url(*, user: User, access: ProjectAccess, job_id: int) -> tuple[str, str]:
    """A short-lived link to a finished export of the project the caller may see."""
    job = Job.objects.filter(id=job_id, project_id=access.project.pk, kind=AnnotationExport.name).first()
    if job is None or (job.created_by_id != user.pk and not access.can(ProjectAction.JOBS_VIEW_ALL)):
        raise NotFound("Export not found.", job_id=job_id)
    if job.state != JobState.SUCCEEDED:
        raise Conflict("The export has not finished.", code="export_not_ready", state=job.state)
    url = object_store().url(
        job.result["key"], expires_s=settings.LOUPE_URL_EXPIRES_S, filename=job.result["filename"]
    )
    return url, job.result["filename"]
