"""Pre-labeling: the model registry, batch pre-label jobs, interactive predictions, and how much of
each prediction annotators kept.

A model version says how to run it (built-in code, a model server, a Label Studio ML backend) and
what it speaks (its own labels); a pre-label job runs it over a project's tasks in batches on the
`prelabel` queue, maps its labels onto the project's schema classes (labels left out of the map
are dropped and counted), validates every region against the schema and the item, and writes at
most one prediction per (task, model version): a re-run or a worker killed mid-batch never
duplicates. Model calls (network, inference) happen outside any transaction.
"""

from __future__ import annotations

import functools
import gc
import ipaddress
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from labeling import regions as rg
from labeling.exceptions import NoLabelSchema
from labeling.inference.base import REGISTRY, ModelInput, ModelOutput, ModelUnavailable, Predictor
from labeling.models import MLModel, ModelKind, ModelVersion, Prediction, Task
from labeling.services import _record_uncertainty, parsed_schema, schema_by_id, schema_current
from projects.access import ProjectAccess, ProjectAction
from projects.audit import audit_record
from projects.bulk import insert_on_conflict
from projects.exceptions import Conflict, DomainError, InvalidInput, NameTaken, NotFound
from projects.jobs import ChunkError, ChunkOutcome, JobKind, Plan, job_start, register
from projects.models import Job
from storage.fetch import FetchPolicy, endpoint_refusal
from storage.models import Item
from storage.objects import object_store

logger = logging.getLogger(__name__)

PRELABEL_KIND = "labeling.prelabel"


class ModelNotRunnable(Conflict):
    code = "model_unavailable"
    default_message = "This model cannot run on this installation."


class ModelTimeout(DomainError):
    code, status_code = "model_timeout", 504
    default_message = "The model did not answer in time; try again, or run a pre-label job."


def model_policy() -> FetchPolicy:
    """The SSRF guard for model servers: public addresses, plus the networks the operator trusts
    (LOUPE_MODEL_ALLOWED_NETWORKS: model servers usually live inside the cluster)."""
    return FetchPolicy(
        connect_timeout=5.0,
        read_timeout=float(settings.LOUPE_MODEL_TIMEOUT_S),
        total_timeout=float(settings.LOUPE_MODEL_TIMEOUT_S) * 2,
        max_redirects=0,
        max_bytes=64 * 1024 * 1024,
        allowed_networks=tuple(ipaddress.ip_network(n) for n in settings.LOUPE_MODEL_ALLOWED_NETWORKS),
    )


# --- The registry ------------------------------------------------------------------------------


@dataclass
class VersionSpec:
    name: str
    version: str
    kind: str
    builtin: str = ""
    endpoint: str = ""
    task_type: str = ""
    modalities: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    label_map: dict[str, str] = field(default_factory=dict)
    description: str = ""


def builtin_catalog() -> list[dict[str, Any]]:
    """Every built-in model, with whether it can run here (its extra installed)."""
    from labeling.inference import builtin

    catalog = []
    for model in sorted(builtin.load_all().values(), key=lambda m: m.name):
        catalog.append(
            {
                "name": model.name,
                "title": model.title,
                "task_type": model.task_type,
                "modalities": list(model.modalities),
                "outputs": list(model.outputs),
                "labels": list(model.labels),
                "params": model.params,
                "extra": model.extra,
                "available": builtin_available(model.name),
            }
        )
    return catalog


def builtin_available(name: str) -> bool:
    from labeling.inference import builtin

    return builtin.available(name)


def model_register(*, actor: User, access: ProjectAccess, spec: VersionSpec) -> ModelVersion:
    """Register a version of a model of the project's organization (the model is created with
    its first version). Versions are immutable: a change is a new version."""
    access.require(ProjectAction.PREDICTIONS_CREATE)
    fields = _version_fields(spec)
    organization = access.project.organization
    with transaction.atomic():
        model, _ = MLModel.objects.get_or_create(
            organization=organization,
            name=spec.name,
            defaults={"description": spec.description, "created_by": actor},
        )
        try:
            with transaction.atomic():
                version = ModelVersion.objects.create(model=model, created_by=actor, **fields)
        except IntegrityError:
            raise NameTaken("This model already has a version with that name.", field="version") from None
        audit_record(
            actor=actor,
            verb="model.register",
            obj=version,
            organization=organization,
            project=access.project,
            changes={"model": spec.name, **fields},
        )
    return version


# A model server client's settings a version's params may set (docs/model-servers.md, "Timeouts,
# retries, concurrency"): name → (integer only, lowest, highest).
_CLIENT_SETTINGS: dict[str, tuple[bool, float, float]] = {
    "timeout": (False, 0.001, 3600),
    "retries": (True, 0, 10),
    "backoff": (False, 0, 3600),
    "max_backoff": (False, 0, 3600),
    "concurrency": (True, 1, 64),
    "batch_size": (True, 1, 256),
    "max_response_bytes": (True, 1, 1024**3),
}


def _version_fields(spec: VersionSpec) -> dict[str, Any]:
    """Validate what a version declares; built-in versions take their facts from the registry."""
    batch = spec.params.get("batch_size", 1)
    if type(batch) is not int or not 1 <= batch <= 256:
        raise InvalidInput("batch_size must be an integer from 1 to 256.", field="params")
    if spec.kind in (ModelKind.HTTP, ModelKind.LABELSTUDIO):
        for name, (integer, low, high) in _CLIENT_SETTINGS.items():
            value = spec.params.get(name, low)
            if type(value) not in ((int,) if integer else (int, float)) or not low <= value <= high:
                what = "an integer" if integer else "a number"
                raise InvalidInput(f"{name} must be {what} from {low:g} to {high:g}.", field="params")
    if spec.kind == ModelKind.BUILTIN:
        from labeling.inference import builtin

        found = builtin.load_all().get(spec.builtin)
        if found is None:
            raise InvalidInput("No built-in model has that name.", field="builtin", known=sorted(REGISTRY))
        unknown = sorted(set(spec.params) - set(found.params) - {"batch_size"})  # batch_size: the job's
        if unknown:
            raise InvalidInput("Unknown parameters for this model.", field="params", unknown=unknown)
        merged = {**found.params, **spec.params}
        if found.check is not None:
            try:
                found.check(merged)
            except ValueError as exc:
                raise InvalidInput(str(exc), field="params") from None
        task_type, modalities = found.task_type, list(found.modalities)
        outputs, endpoint = list(found.outputs), ""
        labels = list(found.labels_of(merged) if found.labels_of is not None else found.labels)
    elif spec.kind in (ModelKind.HTTP, ModelKind.LABELSTUDIO):
        if not spec.endpoint:
            raise InvalidInput("A model server needs its endpoint URL.", field="endpoint")
        refusal = endpoint_refusal(spec.endpoint, policy=model_policy())
        if refusal is not None:
            raise InvalidInput(refusal, field="endpoint")
        if not spec.task_type or not spec.modalities or not spec.outputs:
            raise InvalidInput(
                "Say what the model does: task_type, modalities and outputs.", field="task_type"
            )
        task_type, modalities, outputs = spec.task_type, spec.modalities, spec.outputs
        labels, endpoint = spec.labels, spec.endpoint
    else:
        raise InvalidInput("Models trained in Loupe are registered by their training job.", field="kind")
    bad_types = sorted(set(outputs) - set(rg.TOOLS))
    if bad_types:
        raise InvalidInput("Unknown region types.", field="outputs", unknown=bad_types)
    if labels:
        unmapped = sorted(set(spec.label_map) - set(labels))
        if unmapped:
            raise InvalidInput(
                "The label map names labels the model does not have.", field="label_map", unknown=unmapped
            )
    return {
        "version": spec.version,
        "kind": spec.kind,
        "builtin": spec.builtin if spec.kind == ModelKind.BUILTIN else "",
        "endpoint": endpoint,
        "task_type": task_type,
        "modalities": modalities,
        "outputs": outputs,
        "labels": labels,
        "params": spec.params,
        "label_map": spec.label_map,
    }


def model_version_get(access: ProjectAccess, version_id: int) -> ModelVersion:
    """A version of a model of the project's organization; NotFound otherwise."""
    found = (
        ModelVersion.objects.select_related("model")
        .filter(id=version_id, model__organization_id=access.project.organization_id)
        .first()
    )
    if found is None:
        raise NotFound("Model version not found.", model_version=version_id)
    return found


@functools.lru_cache(maxsize=256)
def version_by_id(version_id: int) -> ModelVersion:
    """A model version with its model, kept for the life of the process: versions never change."""
    return ModelVersion.objects.select_related("model").get(id=version_id)


def batch_size_of(version: ModelVersion) -> int:
    """Items per model call and per job chunk: the version's `batch_size`, else its built-in
    model's default (cheap text models take large batches), else LOUPE_PRELABEL_BATCH."""
    size = version.params.get("batch_size")
    if size is None and version.kind == ModelKind.BUILTIN:
        from labeling.inference import builtin

        model = builtin.load_all().get(version.builtin)
        size = model.params.get("batch_size") if model is not None else None
    return max(1, min(int(size or settings.LOUPE_PRELABEL_BATCH), 256))


def version_label(version: ModelVersion) -> str:
    """The name predictions carry in `model_version` (exports, filters): model:version."""
    return f"{version.model.name}:{version.version}"


# --- Running a model -----------------------------------------------------------------------------

_PREDICTORS: dict[tuple[int, str], Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def predictor_for(version: ModelVersion) -> Predictor:
    """A ready predictor for the version, loaded once per worker process (weights stay loaded)."""
    key = (version.pk, json.dumps(version.params, sort_keys=True))
    with _PREDICTORS_LOCK:
        found = _PREDICTORS.get(key)
        if found is None:
            found = _load(version)
            _PREDICTORS[key] = found
            # A model's objects (spaCy's vocabulary, tokenizers…) live as long as the worker, and
            # every full collection would walk them all again: ~150 ms each with spaCy loaded, 7 %
            # of an NER job. Collect what is garbage now and keep the rest out of later passes.
            gc.collect()
            gc.freeze()
    return found


def _load(version: ModelVersion) -> Predictor:
    if version.kind == ModelKind.BUILTIN:
        from labeling.inference import builtin

        model = builtin.load_all().get(version.builtin)
        if model is None:
            raise ModelUnavailable(f"the built-in model {version.builtin!r} is not part of this installation")
        own = {k: v for k, v in version.params.items() if k in model.params}
        return model.load({**model.params, **own})
    if version.kind == ModelKind.TRAINED:
        from labeling.inference import trained

        store = object_store()

        def read(key: str) -> bytes:
            with store.open(key) as handle:
                return bytes(handle.read())

        # The files are checked against the SHA-256 the training recorded before anything is read.
        return trained.load(version.artifacts, read, batch_size=batch_size_of(version))
    from labeling.inference import remote

    # The client's own settings are taken out of the params; the rest are the model's, sent with
    # each request (batch_size is both: the job's batches and the client's requests).
    client = {k: v for k, v in version.params.items() if k in _CLIENT_SETTINGS}
    params = {k: v for k, v in version.params.items() if k not in _CLIENT_SETTINGS or k == "batch_size"}
    if version.kind == ModelKind.HTTP:
        return remote.NativeServer(
            version.endpoint,
            model_version=version_label(version),
            params=params,
            policy=model_policy(),
            **client,
        )
    if version.kind == ModelKind.LABELSTUDIO:
        return remote.LabelStudioBackend(
            version.endpoint,
            model_version=version_label(version),
            labels=list(version.labels),
            outputs=list(version.outputs),
            # Backends keep a model per Label Studio project; a version's config never changes,
            # so the version is the "project" (one model state per version, shared by projects).
            project=remote.project_uid(version.pk, version.created_at),
            params=params,
            policy=model_policy(),
            **client,
        )
    raise ModelUnavailable(f"models of kind {version.kind!r} cannot run yet")


def model_inputs(tasks: Sequence[tuple[int, Item]], *, urls: bool = True) -> list[ModelInput]:
    """What a model sees of each task's item. `urls`: signed media links, which only model
    servers use (built-in models read the bytes)."""
    store = object_store()
    base = settings.LOUPE_PUBLIC_URL.rstrip("/")
    out = []
    for task_id, item in tasks:
        key = item.primary.key

        def read(key: str = key) -> bytes:
            with store.open(key) as handle:
                return handle.read()

        url = store.url(key, expires_s=settings.LOUPE_URL_EXPIRES_S) if urls else None
        out.append(
            ModelInput(
                key=str(task_id),
                modality=item.modality,
                media_type=item.media_type,
                meta=item.meta or {},
                read=read,
                url=base + url if url is not None and url.startswith("/") else url,
                name=item.name,
            )
        )
    return out


@dataclass
class Mapped:
    """A model's output for one task after label mapping and validation."""

    task_id: int
    regions: list[dict[str, Any]] | None  # None: nothing to write (error)
    score: float | None
    unmapped: int = 0
    invalid: int = 0
    error: str | None = None


def map_and_validate(
    outputs: Sequence[tuple[int, ModelOutput, rg.ItemFacts]],
    label_map: dict[str, str],
    schema: rg.Schema,
) -> list[Mapped]:
    """Rename the model's labels to schema classes, drop what the map leaves out (with no map,
    labels that are not class names), then validate: the whole batch in one call (one shapely
    pass), and only a prediction that fails region by region, so one bad region costs that
    region, not the prediction."""
    staged: list[tuple[int, ModelOutput, rg.ItemFacts, list[dict[str, Any]], int]] = []
    for task_id, output, facts in outputs:
        kept, unmapped = [], 0
        for region in output.regions if output.error is None else []:
            if not isinstance(region, dict):
                continue
            label = str(region.get("label"))
            # No map: the model's labels are the schema's class names (those it lacks are dropped).
            target = label_map.get(label) if label_map else (label if label in schema.classes else None)
            if target is None:
                unmapped += 1
                continue
            kept.append({**region, "label": target})
        # Relations and tied transcriptions whose other end was dropped go too.
        present = {r.get("id") for r in kept}
        staged.append((task_id, output, facts, [r for r in kept if _ends_present(r, present)], unmapped))
    checked = rg.validate_many([(kept, facts) for _, _, facts, kept, _ in staged], schema, prediction=True)
    mapped: list[Mapped] = []
    for (task_id, output, facts, kept, unmapped), (whole, _) in zip(staged, checked, strict=True):
        if output.error is not None:
            mapped.append(Mapped(task_id, None, None, error=output.error))
            continue
        valid, invalid = whole, 0
        if valid is None:  # rare: find the bad regions one by one and keep the rest
            valid, invalid = _valid_regions(kept, facts, schema)
        mapped.append(Mapped(task_id, valid, output.score, unmapped=unmapped, invalid=invalid))
    return mapped


def _valid_regions(
    kept: list[dict[str, Any]], facts: rg.ItemFacts, schema: rg.Schema
) -> tuple[list[dict[str, Any]], int]:
    valid, invalid = [], 0
    by_id = {r.get("id"): r for r in kept}
    for region in kept:
        # With the regions it refers to (a relation's ends, a transcription's region).
        geometry = region.get("geometry") or {}
        ends = [by_id[i] for i in (geometry.get("from"), geometry.get("to"), geometry.get("region"))
                if i in by_id and i != region.get("id")]  # fmt: skip
        alone, _ = rg.validate_many([([*ends, region], facts)], schema, prediction=True)[0]
        if alone is None:
            invalid += 1
        else:
            valid.append(alone[-1])
    kept_ids = {r.get("id") for r in valid}
    return [r for r in valid if _ends_present(r, kept_ids)], invalid


def _ends_present(region: dict[str, Any], present: set[Any]) -> bool:
    geometry = region.get("geometry") or {}
    if region.get("type") == "relation":
        return geometry.get("from") in present and geometry.get("to") in present
    if region.get("type") == "transcription" and geometry.get("region") is not None:
        return geometry.get("region") in present
    return True


# --- Pre-label jobs ------------------------------------------------------------------------------


def prelabel_start(
    *,
    actor: User,
    access: ProjectAccess,
    model_version_id: int,
    task_filter: dict[str, Any],
    overwrite: bool,
    label_map: dict[str, str] | None,
) -> Job:
    """Start a pre-label job over the project's tasks matching the filter."""
    access.require(ProjectAction.PREDICTIONS_CREATE)
    version = model_version_get(access, model_version_id)
    schema = schema_current(access.project.pk)
    if schema is None:
        raise NoLabelSchema(project_id=access.project.pk)
    mapping = dict(version.label_map if label_map is None else label_map)
    classes = set(parsed_schema(schema).classes) if mapping else set()
    unknown = sorted(set(mapping.values()) - classes)
    if unknown:
        raise InvalidInput(
            "The label map names classes the schema does not have.", field="label_map", unknown=unknown
        )
    if version.kind == ModelKind.BUILTIN and not builtin_available(version.builtin):
        raise ModelNotRunnable(model=version.builtin, extra=REGISTRY[version.builtin].extra)
    _require_trained_runnable(version)
    with transaction.atomic():
        return job_start(
            kind=PRELABEL_KIND,
            actor=actor,
            organization=access.project.organization,
            project=access.project,
            params={
                "model_version": version.pk,
                "filter": task_filter,
                "overwrite": overwrite,
                "label_map": mapping,
                "schema_id": schema.pk,
            },
        )


def _require_trained_runnable(version: ModelVersion) -> None:
    """A trained version whose recipe needs an extra this installation lacks cannot run here."""
    if version.kind != ModelKind.TRAINED:
        return
    from labeling.inference.trained import missing_extra

    recipe = str((version.card.get("recipe") or {}).get("name", ""))
    extra = missing_extra(recipe)
    if extra is not None:
        raise ModelNotRunnable(
            f"This model was trained with {recipe} and needs the {extra!r} extra: install 'loupe[{extra}]'.",
            model=version_label(version),
            extra=extra,
        )


def _matching_tasks(project_id: int, task_filter: dict[str, Any], version_id: int, overwrite: bool) -> Any:
    from labeling.workflow import tasks_filtered

    tasks = tasks_filtered(Task.objects.filter(project_id=project_id), task_filter)
    if not overwrite:
        tasks = tasks.exclude(predictions__source_id=version_id)
    return tasks


_ITEM_FIELDS = ("id", "item__modality", "item__media_type", "item__meta", "item__name", "item__primary__key")


@register
class Prelabel(JobKind):
    """Batches of tasks through a model. Chunk boundaries (first task id of each batch) are
    fixed at plan time, so a worker taking over runs exactly the batches not yet recorded."""

    name = PRELABEL_KIND
    queue = "prelabel"

    def plan(self, job: Job) -> Plan:
        assert job.project_id is not None
        version = version_by_id(job.params["model_version"])
        batch = batch_size_of(version)
        ids = list(
            _matching_tasks(job.project_id, job.params["filter"], version.pk, job.params["overwrite"])
            .order_by("id")
            .values_list("id", flat=True)
        )
        bounds = [ids[i] for i in range(0, len(ids), batch)]
        job.params.update({"bounds": bounds, "batch": batch, "last": ids[-1] if ids else 0})
        Job.objects.filter(id=job.pk).update(params=job.params)
        return Plan(total=len(ids), chunks=len(bounds))

    def prepare_chunk(self, job: Job, index: int) -> dict[str, Any]:
        assert job.project_id is not None
        params = job.params
        bounds = params["bounds"]
        low = bounds[index]
        high = bounds[index + 1] if index + 1 < len(bounds) else params["last"] + 1
        version = version_by_id(params["model_version"])
        # The batch's ids first, through the primary key alone: joined with the filter's tables
        # at once, a plan made on stale statistics (right after a big import) scans every item.
        batch_ids = list(
            Task.objects.filter(project_id=job.project_id, id__gte=low, id__lt=high).values_list(
                "id", flat=True
            )
        )
        tasks = list(
            _matching_tasks(job.project_id, params["filter"], version.pk, params["overwrite"])
            .filter(id__in=batch_ids)
            .select_related("item__primary")
            .only(*_ITEM_FIELDS)  # what a model sees of an item: a third of the time of whole rows
            .order_by("id")
        )
        schema = parsed_schema(schema_by_id(params["schema_id"]))
        if not tasks:
            return {"rows": [], "errors": [], "unmapped": 0, "invalid": 0}
        batch = [(t.pk, t.item) for t in tasks]
        facts = {t.pk: rg.ItemFacts.from_item(t.item.modality, t.item.meta) for t in tasks}
        wrong = [t for t in tasks if version.modalities and t.item.modality not in version.modalities]
        runnable = [(task_id, item) for task_id, item in batch if item.modality in version.modalities]
        reads = ", ".join(version.modalities)
        outputs: list[tuple[int, ModelOutput, rg.ItemFacts]] = [
            (t.pk, ModelOutput(error=f"The model reads {reads}, not {t.item.modality}."), facts[t.pk])
            for t in wrong
        ]
        if runnable:
            predictor = predictor_for(version)
            try:
                results = predictor.predict(model_inputs(runnable, urls=version.kind != ModelKind.BUILTIN))
            except ModelUnavailable:
                raise  # the job fails, saying what to install
            except Exception as exc:  # the batch's items get the error; a re-run tries them again
                logger.exception("pre-label job %s: batch %s failed", job.pk, index)
                message = f"The model failed on this batch: {type(exc).__name__}: {exc}"[:500]
                results = [ModelOutput(error=message) for _ in runnable]
            outputs.extend(
                (task_id, output, facts[task_id])
                for (task_id, _), output in zip(runnable, results, strict=True)
            )
        mapped = map_and_validate(outputs, params["label_map"], schema)
        return {
            "rows": [(m.task_id, m.regions, m.score) for m in mapped if m.regions is not None],
            "errors": [(m.task_id, m.error) for m in mapped if m.error is not None],
            "unmapped": sum(m.unmapped for m in mapped),
            "invalid": sum(m.invalid for m in mapped),
        }

    def apply_chunk(self, job: Job, index: int, prepared: dict[str, Any]) -> ChunkOutcome:
        rows = [(task_id, regions, score) for task_id, regions, score in prepared["rows"]]
        written = predictions_write(
            version=version_by_id(job.params["model_version"]),
            schema_version=schema_by_id(job.params["schema_id"]).version,
            rows=rows,
            job=job,
            overwrite=job.params["overwrite"],
        )
        return ChunkOutcome(
            items=len(rows) + len(prepared["errors"]),
            errors=[
                ChunkError(item=f"task {t}", code="prediction_failed", message=m)
                for t, m in prepared["errors"]
            ],
            result={
                "predicted": written,
                "regions": sum(len(r) for _, r, _ in rows),
                "dropped_unmapped": prepared["unmapped"],
                "dropped_invalid": prepared["invalid"],
                "failed": len(prepared["errors"]),
            },
        )

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        return {k: result.get(k, 0) + delta.get(k, 0) for k in {*result, *delta}}


PREDICTION_COLUMNS = [
    "task_id", "source_id", "model_version", "schema_version", "result", "archived", "score", "job_id",
    "created_by_id", "created_at",
]  # fmt: skip


def predictions_write(
    *,
    version: ModelVersion,
    schema_version: int,
    rows: Sequence[tuple[int, list[dict[str, Any]], float | None]],
    job: Job | None,
    overwrite: bool,
) -> int:
    """At most one prediction per (task, version): new ones are inserted, existing ones kept
    (or replaced with `overwrite`). Inside the caller's transaction. Returns how many were written."""
    if not rows:
        return 0
    now = timezone.now()
    created_by = job.created_by_id if job is not None else None
    job_id = job.pk if job is not None else None
    label = version_label(version)
    written = insert_on_conflict(
        Prediction,
        PREDICTION_COLUMNS,
        [
            (task_id, version.pk, label, schema_version, regions, [], score, job_id, created_by, now)
            for task_id, regions, score in rows
        ],
        conflict=["task_id", "source_id"],
        update=["result", "score", "schema_version", "job_id"] if overwrite else [],
    )
    _record_uncertainty(list(rows))
    return written


# --- Interactive prediction ----------------------------------------------------------------------


def task_predict(*, actor: User, access: ProjectAccess, task_id: int, model_version_id: int) -> Prediction:
    """Run one task through a model now, for an annotator asking for suggestions: the work runs on
    a `prelabel` worker (the web process never loads models) and this waits for its answer up to
    LOUPE_PREDICT_TIMEOUT_S. The prediction is kept like a pre-label job's."""
    from labeling.tasks import predict_one

    access.require(ProjectAction.ANNOTATE)
    version = model_version_get(access, model_version_id)
    task = Task.objects.filter(id=task_id, project_id=access.project.pk).first()
    if task is None:
        raise NotFound("Task not found.", task_id=task_id)
    if version.kind == ModelKind.BUILTIN and not builtin_available(version.builtin):
        raise ModelNotRunnable(model=version.builtin, extra=REGISTRY[version.builtin].extra)
    _require_trained_runnable(version)
    reply = f"loupe:predict:{uuid.uuid4().hex}"
    predict_one.apply_async(
        kwargs={"task_id": task.pk, "model_version_id": version.pk, "reply": reply}, queue="prelabel"
    )
    from config.throttling import redis_client

    answer = redis_client().blpop([reply], timeout=settings.LOUPE_PREDICT_TIMEOUT_S)
    if answer is None:
        raise ModelTimeout(timeout_s=settings.LOUPE_PREDICT_TIMEOUT_S)
    outcome = json.loads(answer[1])
    if outcome.get("error"):
        raise ModelNotRunnable(outcome["error"], code="prediction_failed")
    return Prediction.objects.get(id=outcome["prediction"])


def predict_one_run(*, task_id: int, model_version_id: int) -> dict[str, Any]:
    """The worker's side of task_predict: predict, map, validate, keep (replacing this version's
    earlier prediction of the task). Returns {"prediction": id} or {"error": message}."""
    version = ModelVersion.objects.select_related("model").get(id=model_version_id)
    task = Task.objects.select_related("item__primary").get(id=task_id)
    schema = schema_current(task.project_id)
    if schema is None:
        return {"error": "The project has no label schema."}
    facts = rg.ItemFacts.from_item(task.item.modality, task.item.meta)
    try:
        output = predictor_for(version).predict(model_inputs([(task.pk, task.item)]))[0]
    except ModelUnavailable as exc:
        return {"error": str(exc)}
    (mapped,) = map_and_validate([(task.pk, output, facts)], dict(version.label_map), parsed_schema(schema))
    if mapped.regions is None:
        return {"error": mapped.error or "The model failed on this item."}
    with transaction.atomic():
        predictions_write(
            version=version, schema_version=schema.version, rows=[(task.pk, mapped.regions, mapped.score)],
            job=None, overwrite=True,
        )  # fmt: skip
    found = Prediction.objects.get(task_id=task.pk, source=version)
    return {"prediction": found.pk, "at": timezone.now().isoformat()}
