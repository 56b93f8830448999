"""Evaluating a model version against a release's approved labels (docs/evaluation.md).

An evaluation is one (model version, release, split). Its job, `quality.evaluation` on the
`quality` queue, walks the release's items of the split in chunks fixed at plan time. For each
chunk it collects the version's predictions of those tasks and runs the model on the items it has
none for, exactly as a pre-label job does (`labeling.prelabel`: the same inputs, label map,
validation and writer, so the predictions are kept, reused next time and shown in lineage; at
most one per task and version, so a chunk redone after a crash duplicates nothing). The model
sees each item as the release froze it (its blob), not as it may have been re-imported since.

The last chunk (the kind is ordered: it runs once every item chunk has committed) reads every
item's frozen regions and the version's prediction and computes the metrics
(`quality.metrics.evaluation`) outside any transaction; the chunk's short transaction stores them.
The plots are drawn from the stored metrics once the job has succeeded (object storage, PNG);
should a worker die in between, the first request for a plot draws and stores it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from labeling.inference.base import REGISTRY, ModelOutput, ModelUnavailable
from labeling.models import (
    LabelSchema,
    ModelKind,
    ModelVersion,
    Prediction,
    Release,
    ReleaseItem,
    ReleaseState,
    Task,
)
from labeling.prelabel import (
    ModelNotRunnable,
    batch_size_of,
    builtin_available,
    map_and_validate,
    model_inputs,
    model_version_get,
    predictions_write,
    predictor_for,
    version_by_id,
)
from labeling.regions import ItemFacts
from labeling.releases.services import release_ready
from labeling.services import parsed_schema
from projects.access import ProjectAccess, ProjectAction, project_access
from projects.audit import audit_record
from projects.exceptions import Conflict, InvalidInput, NotFound
from projects.jobs import ChunkError, ChunkOutcome, JobKind, Plan, job_start, register
from projects.models import Job, JobState, Organization, Project
from quality import charts
from quality.metrics.evaluation import Example, evaluate, summary_of
from quality.models import Evaluation
from storage.models import Blob, Item
from storage.objects import object_store

logger = logging.getLogger(__name__)

EVALUATION_KIND = "quality.evaluation"
CHUNK_ITEMS = 256  # items per chunk; the model is called in batches of its own size inside one
READ_BATCH = 2000  # items whose predictions the metrics chunk reads per query
DEFAULT_THRESHOLD = 0.5


class EvaluationRunning(Conflict):
    code = "evaluation_running"
    default_message = "This evaluation is running; wait for it to finish before running it again."


class EvaluationNotReady(Conflict):
    code = "evaluation_not_ready"
    default_message = "This evaluation has no results yet."


# --- Asking for an evaluation --------------------------------------------------------------------


def _items(release_id: int, split: str) -> QuerySet[ReleaseItem]:
    items = ReleaseItem.objects.filter(release_id=release_id)
    return items.filter(split=split) if split else items


def _check_split(release: Release, split: str) -> None:
    known = sorted((release.counts or {}).get("by_split") or {})
    if split and split not in known:
        raise InvalidInput("The release has no such split.", field="split", split=split, splits=known)


def evaluation_request(
    *,
    actor: User,
    access: ProjectAccess,
    release: Release,
    model_version_id: int,
    split: str | None,
    threshold: float,
    rerun: bool,
) -> tuple[Evaluation, bool]:
    """The evaluation of the version on the release's split (None: every item): the one made
    already unless `rerun` (or it failed), else a new evaluation job. Returns (evaluation, created).

    Everything is checked before anything is written: the caller's right, the version (of the
    project's organization, else 404), the release (ready) and the split (one of the release's).
    """
    access.require(ProjectAction.MODELS_EVALUATE)
    version = model_version_get(access, model_version_id)
    release_ready(release)
    split_name = split or ""
    _check_split(release, split_name)
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInput("The threshold is a score from 0 to 1.", field="threshold")
    if version.kind == ModelKind.BUILTIN and not builtin_available(version.builtin):
        unpredicted = _items(release.pk, split_name).exclude(
            task_id__in=Prediction.objects.filter(source=version).values("task_id")
        )
        if unpredicted.exists():  # the model would have to run here, and cannot
            raise ModelNotRunnable(model=version.builtin, extra=REGISTRY[version.builtin].extra)
    with transaction.atomic():
        return _start(
            actor=actor,
            project=access.project,
            release=release,
            version=version,
            split=split_name,
            threshold=threshold,
            rerun=rerun,
        )


def _start(
    *,
    actor: User | None,
    project: Project,
    release: Release,
    version: ModelVersion,
    split: str,
    threshold: float,
    rerun: bool,
) -> tuple[Evaluation, bool]:
    """Inside the caller's transaction: reuse, reset or create the evaluation and start its job."""
    found = (
        Evaluation.objects.select_for_update(of=("self",))
        .select_related("job")
        .filter(model_version=version, release=release, split=split)
        .first()
    )
    finished_badly = found is not None and (
        found.job is None or found.job.state in (JobState.FAILED, JobState.CANCELLED)
    )
    if found is not None and not rerun and not finished_badly:
        return found, False
    if found is not None and found.job is not None and found.job.state in Job.ACTIVE_STATES:
        raise EvaluationRunning(evaluation=found.pk, job=found.job_id)
    if found is None:
        try:
            with transaction.atomic():
                found = Evaluation.objects.create(
                    project=project,
                    release=release,
                    model_version=version,
                    split=split,
                    threshold=threshold,
                    created_by=actor,
                )
        except IntegrityError:  # asked twice at once: the other request started it
            return Evaluation.objects.select_related("job").get(
                model_version=version, release=release, split=split
            ), False
    else:
        stale = list(found.plots.values())
        if stale:
            transaction.on_commit(lambda: _delete_objects(stale), robust=True)
        found.threshold, found.task_type, found.evaluated_at = threshold, "", None
        found.metrics, found.plots, found.counts = {}, {}, {}
    found.job = job_start(
        kind=EVALUATION_KIND,
        actor=actor,
        organization=Organization(id=project.organization_id),
        project=project,
        params={"evaluation_id": found.pk},
    )
    found.save()
    audit_record(
        actor=actor,
        verb="evaluation.start",
        obj=found,
        organization=Organization(id=project.organization_id),
        project=project,
        changes={
            "model_version": version.pk,
            "release": release.pk,
            "split": split or None,
            "threshold": threshold,
            "rerun": rerun,
        },
    )
    return found, True


def _delete_objects(keys: list[str]) -> None:
    store = object_store()
    for key in keys:
        store.delete(key)


def evaluation_after_training(
    version: ModelVersion, release: Release, split: str, actor_id: int | None
) -> None:
    """labeling.hooks.model_trained: evaluate a version trained in Loupe on its release's
    held-out split. Runs inside the transaction that registers the version, so the evaluation
    commits with it; a split with no items is nothing to evaluate."""
    if release.state != ReleaseState.READY or not _items(release.pk, split).exists():
        logger.info("model version %s: release %s has no %r items to evaluate", version.pk, release.pk, split)
        return
    actor = User.objects.filter(id=actor_id).first() if actor_id is not None else None
    project = Project.objects.get(id=release.project_id)
    _start(
        actor=actor,
        project=project,
        release=release,
        version=version,
        split=split,
        threshold=DEFAULT_THRESHOLD,
        rerun=False,
    )


# --- Reading -------------------------------------------------------------------------------------


def evaluations_of(release: Release, *, split: str | None = None) -> QuerySet[Evaluation]:
    """A release's evaluations (the caller may see the release: labeling.releases.services.release_get)."""
    found = Evaluation.objects.filter(release=release).select_related(
        "job", "model_version__model", "release"
    )
    return found.filter(split=split) if split is not None else found


def evaluation_get(*, user: User, evaluation_id: int) -> Evaluation:
    """An evaluation of a release the caller may read (404 when its project is invisible)."""
    project_id = Evaluation.objects.filter(id=evaluation_id).values_list("project_id", flat=True).first()
    if project_id is None:
        raise NotFound("Evaluation not found.", evaluation_id=evaluation_id)
    project_access(user=user, project_id=project_id).require(ProjectAction.RELEASES_VIEW)
    return Evaluation.objects.select_related("job", "model_version__model", "release").get(id=evaluation_id)


def evaluation_state(evaluation: Evaluation) -> str:
    return evaluation.job.state if evaluation.job is not None else JobState.QUEUED


def plot_png(evaluation: Evaluation, name: str) -> bytes:
    """A plot of a finished evaluation: the stored PNG, drawn and stored now if it is missing
    (a worker that died between the job's commit and drawing it)."""
    if evaluation.evaluated_at is None:
        raise EvaluationNotReady(state=evaluation_state(evaluation))
    if name not in charts.evaluation_plot_names(evaluation.metrics):
        raise NotFound("This evaluation has no such plot.", plot=name)
    store = object_store()
    key = evaluation.plots.get(name)
    if key and store.exists(key):
        with store.open(key) as handle:
            return handle.read()
    drawn = _store_plots(evaluation, names=[name])
    return drawn[name]


def _store_plots(evaluation: Evaluation, *, names: list[str] | None = None) -> dict[str, bytes]:
    """Draw the evaluation's plots, put them in the object store, then record their keys (only
    while the evaluation still holds these results: a rerun started meanwhile wins)."""
    drawn = charts.evaluation_plots(evaluation.metrics, names=names)
    if evaluation.job_id is None:
        return drawn  # its job was deleted: nothing to tell these results from a rerun's, keep none
    store = object_store()
    keys = {}
    for name, png in drawn.items():
        keys[name] = f"evaluations/{evaluation.pk}/{evaluation.job_id}-{name}.png"
        store.put_bytes(keys[name], png, content_type="image/png")
    with transaction.atomic():
        current = (
            Evaluation.objects.select_for_update()
            .filter(id=evaluation.pk, job_id=evaluation.job_id, evaluated_at__isnull=False)
            .first()
        )
        if current is not None:
            current.plots = {**current.plots, **keys}
            current.save(update_fields=["plots"])
            evaluation.plots = current.plots
    return drawn


# --- The job -------------------------------------------------------------------------------------


def _evaluation(job: Job) -> Evaluation:
    return Evaluation.objects.select_related("release").get(id=job.params["evaluation_id"])


def _release_schema(release: Release) -> LabelSchema:
    """The schema version the release's labels were frozen under: predictions are validated and
    labelled against it, so they compare with the truth."""
    return LabelSchema.objects.get(project_id=release.project_id, version=release.schema_version)


_ROW = ("id", "task_id", "name", "modality", "media_type", "meta", "blob_key")


def _frozen_item(name: str, modality: str, media_type: str, meta: dict[str, Any], blob_key: str) -> Item:
    """The item as the release froze it, shaped like the rows pre-labeling reads (never saved)."""
    return Item(name=name, modality=modality, media_type=media_type, meta=meta, primary=Blob(key=blob_key))


@register
class EvaluationRun(JobKind):
    """Chunks of the release's items: collect the version's predictions, run it where it has
    none and keep what it says; the last chunk computes the metrics over every item."""

    name = EVALUATION_KIND
    queue = "quality"
    ordered = True  # the last chunk measures what the others collected

    def plan(self, job: Job) -> Plan:
        evaluation = _evaluation(job)
        ids = list(
            _items(evaluation.release_id, evaluation.split).order_by("id").values_list("id", flat=True)
        )
        bounds = ids[::CHUNK_ITEMS]
        job.params = {**job.params, "bounds": bounds, "last": ids[-1] if ids else 0}
        Job.objects.filter(id=job.pk).update(params=job.params)
        # One chunk per CHUNK_ITEMS items, then one that computes the metrics.
        return Plan(total=len(ids), chunks=len(bounds) + 1)

    def prepare_chunk(self, job: Job, index: int) -> dict[str, Any]:
        evaluation = _evaluation(job)
        if index == len(job.params["bounds"]):
            # The metrics, outside any transaction; the kind is ordered, so every item chunk has
            # committed by now (a dead runner's chunk is redone first, never overtaken).
            return {"metrics": _measure(evaluation)}
        bounds = job.params["bounds"]
        low = bounds[index]
        high = bounds[index + 1] if index + 1 < len(bounds) else job.params["last"] + 1
        rows = list(
            _items(evaluation.release_id, evaluation.split)
            .filter(id__gte=low, id__lt=high)
            .order_by("id")
            .values_list(*_ROW)
        )
        task_ids = [row[1] for row in rows]
        have = set(
            Prediction.objects.filter(
                source_id=evaluation.model_version_id, task_id__in=task_ids
            ).values_list("task_id", flat=True)
        )
        alive = set(Task.objects.filter(id__in=task_ids).values_list("id", flat=True))
        todo = [row for row in rows if row[1] not in have]
        errors = [
            (row[1], row[2], "The item's task was deleted: its prediction cannot be kept.")
            for row in todo
            if row[1] not in alive
        ]
        todo = [row for row in todo if row[1] in alive]
        prepared: dict[str, Any] = {"items": len(rows), "reused": len(have), "rows": [], "errors": errors,
                                    "ran": 0}  # fmt: skip
        if not todo:
            return prepared
        version = version_by_id(evaluation.model_version_id)
        schema = parsed_schema(_release_schema(evaluation.release))
        names = {row[1]: row[2] for row in todo}
        facts = {row[1]: ItemFacts.from_item(row[3], row[5]) for row in todo}
        outputs: list[tuple[int, ModelOutput, ItemFacts]] = []
        runnable = []
        for _, task_id, name, modality, media_type, meta, blob_key in todo:
            if version.modalities and modality not in version.modalities:
                reads = ", ".join(version.modalities)
                outputs.append(
                    (task_id, ModelOutput(error=f"The model reads {reads}, not {modality}."), facts[task_id])
                )
            else:
                runnable.append((task_id, _frozen_item(name, modality, media_type, meta or {}, blob_key)))
        batch = batch_size_of(version)
        for start in range(0, len(runnable), batch):
            if Job.objects.filter(id=job.pk, cancel_requested=True).exists():
                return {**prepared, "rows": [], "errors": []}  # the runner finishes it as cancelled
            part = runnable[start : start + batch]
            try:
                results = predictor_for(version).predict(
                    model_inputs(part, urls=version.kind != ModelKind.BUILTIN)
                )
            except ModelUnavailable:
                raise  # the job fails, saying what to install
            except Exception as exc:  # the batch's items get the error; a rerun tries them again
                logger.exception("evaluation job %s: batch at %s failed", job.pk, start)
                message = f"The model failed on this batch: {type(exc).__name__}: {exc}"[:500]
                results = [ModelOutput(error=message) for _ in part]
            outputs.extend(
                (task_id, output, facts[task_id]) for (task_id, _), output in zip(part, results, strict=True)
            )
            prepared["ran"] += len(part)
        mapped = map_and_validate(outputs, dict(version.label_map), schema)
        prepared["rows"] = [(m.task_id, m.regions, m.score) for m in mapped if m.regions is not None]
        prepared["errors"] += [(m.task_id, names[m.task_id], m.error) for m in mapped if m.error is not None]
        return prepared

    def apply_chunk(self, job: Job, index: int, prepared: dict[str, Any]) -> ChunkOutcome:
        if "metrics" in prepared:
            evaluation = Evaluation.objects.select_for_update().get(id=job.params["evaluation_id"])
            if evaluation.job_id == job.pk:  # else superseded by a rerun, whose job records its own
                _record(evaluation, prepared["metrics"], job.result)
            return ChunkOutcome(items=0)
        evaluation = _evaluation(job)
        written = predictions_write(
            version=version_by_id(evaluation.model_version_id),
            schema_version=evaluation.release.schema_version,
            rows=[(task_id, regions, score) for task_id, regions, score in prepared["rows"]],
            job=job,
            overwrite=False,
        )
        return ChunkOutcome(
            items=prepared["items"],
            errors=[
                ChunkError(item=f"task {task_id} ({name})", code="prediction_failed", message=message)
                for task_id, name, message in prepared["errors"]
            ],
            result={
                "items": prepared["items"],
                "reused": prepared["reused"],
                "ran": prepared["ran"],
                "predicted": written,
                "failed": len(prepared["errors"]),
            },
        )

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        return {k: result.get(k, 0) + delta.get(k, 0) for k in {*result, *delta}}

    def finish(self, job: Job) -> dict[str, Any]:
        evaluation = Evaluation.objects.get(id=job.params["evaluation_id"])
        return {**job.result, "task_type": evaluation.task_type, "summary": summary_of(evaluation.metrics)}

    def after_finish(self, job: Job) -> None:
        evaluation = Evaluation.objects.filter(
            id=job.params["evaluation_id"], job_id=job.pk, evaluated_at__isnull=False
        ).first()
        if evaluation is not None:
            _store_plots(evaluation)


def _measure(evaluation: Evaluation) -> dict[str, Any]:
    """Every item's truth against the version's prediction: the metrics and what they cover."""
    version = version_by_id(evaluation.model_version_id)
    examples = list(_examples(evaluation))
    schema = parsed_schema(_release_schema(evaluation.release))
    outcome = evaluate(
        examples,
        threshold=evaluation.threshold,
        model_outputs=list(version.outputs),
        skeletons={c.name: c.keypoints for c in schema.classes.values() if c.keypoints},
    )
    predicted = sum(e.predicted is not None for e in examples)
    return {
        "task_type": outcome.task_type,
        "metrics": outcome.metrics,
        "counts": {
            "items": len(examples),
            "predicted": predicted,
            "missing": len(examples) - predicted,
            "families": outcome.families,
        },
    }


def _record(evaluation: Evaluation, measured: dict[str, Any], job_result: dict[str, Any]) -> None:
    """Keep the measure, inside the transaction that records the metrics chunk."""
    evaluation.task_type = measured["task_type"]
    evaluation.metrics = measured["metrics"]
    evaluation.counts = {
        **measured["counts"],
        "reused": job_result.get("reused", 0),
        "ran": job_result.get("ran", 0),
        "failed": job_result.get("failed", 0),
    }
    evaluation.plots = {}
    evaluation.evaluated_at = timezone.now()
    evaluation.save(update_fields=["task_type", "metrics", "counts", "plots", "evaluated_at"])


def _examples(evaluation: Evaluation) -> Iterator[Example]:
    """Every item of the evaluation's split with the version's prediction (None where it has none)."""
    rows = (
        _items(evaluation.release_id, evaluation.split)
        .order_by("id")
        .values_list("task_id", "name", "modality", "meta", "regions")
        .iterator(chunk_size=READ_BATCH)
    )
    batch: list[tuple[int, str, str, dict[str, Any], list[dict[str, Any]]]] = []

    def flush() -> Iterator[Example]:
        predictions = {
            task_id: (result, score)
            for task_id, result, score in Prediction.objects.filter(
                source_id=evaluation.model_version_id, task_id__in=[row[0] for row in batch]
            ).values_list("task_id", "result", "score")
        }
        for task_id, name, modality, meta, regions in batch:
            facts = ItemFacts.from_item(modality, meta or {})
            result, score = predictions.get(task_id, (None, None))
            yield Example(
                truth=regions, predicted=result, score=score, width=facts.width, height=facts.height, key=name
            )

    for row in rows:
        batch.append(row)
        if len(batch) >= READ_BATCH:
            yield from flush()
            batch = []
    if batch:
        yield from flush()
