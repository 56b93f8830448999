"""The job that trains a model on a release (`labeling.training`, queue `training`).

Chunks, one runner, phase by phase:
- `0 … n-1` **features**: a batch of the release's items of the training splits (by item id):
  their content read from object storage and turned into features (or, for spaCy, into documents
  with their spans), written to `…/work/` in the store with a summary of what was used and skipped;
- `n` **fit**: every batch's features, fitted by the recipe (labeling.training.recipes); the
  model's files are written to the store with their metrics;
- `n + 1` **artifacts**: the model card is written next to the files, and the model version is
  registered in the chunk's transaction, with its release and card, once per training (the
  training's one-to-one link to its version); then `labeling.hooks.model_trained` asks for an
  evaluation on the held-out split.

Each phase's slow part runs outside any transaction and leaves files whose presence says it was
done, and a later phase first makes sure the earlier ones' files exist (computing what is
missing). The job engine hands out a chunk whose runner died only after the chunks nobody started,
so a worker killed in the middle of a batch can find the fit's chunk leased before that batch's:
the fit then computes the missing batch itself, and the batch's own chunk later only counts it.
Nothing is fitted or registered twice: files are rewritten identically at worst, and a version
is created only in the last chunk's transaction, which commits once.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from labeling import hooks
from labeling.inference.features import FEATURE_KINDS, image_vector, text_features
from labeling.inference.trained import file_entry
from labeling.models import MLModel, ModelKind, ModelVersion, Release, ReleaseItem, Training
from labeling.training.recipes import RECIPES, Fitted, SpanDoc, TrainingFailed, fit_linear, fit_spacy
from projects.audit import audit_record
from projects.exceptions import DomainError
from projects.jobs import ChunkError, ChunkOutcome, JobKind, Plan, register
from projects.models import Job
from storage.media.base import ProbeError
from storage.objects import ObjectStore, object_store

logger = logging.getLogger(__name__)

TRAINING_KIND = "labeling.training"
# Items per features chunk: a few seconds of MiniLM on a CPU, a progress step users can see.
FEATURE_CHUNK_ITEMS = 256
_READERS = 8  # items read from the store at once
CARD_FORMAT = 1


def artifacts_prefix(training: Training) -> str:
    return (
        f"models/org-{training.project.organization_id}/project-{training.project_id}/training-{training.pk}/"
    )


def _training(job: Job) -> Training:
    return Training.objects.select_related("project", "release").get(id=job.params["training_id"])


def _text(data: bytes, meta: dict[str, Any]) -> str:
    """A text item's content as region offsets count it (ModelInput.text(): no byte order mark)."""
    text = data.decode(meta.get("encoding") or "utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False).encode()


@register
class TrainingJob(JobKind):
    name = TRAINING_KIND
    queue = "training"

    def plan(self, job: Job) -> Plan:
        training = _training(job)
        ids = list(
            ReleaseItem.objects.filter(
                release_id=training.release_id, split__in=training.params["train_splits"]
            )
            .order_by("item_id")
            .values_list("item_id", flat=True)
        )
        bounds = [ids[i] for i in range(0, len(ids), FEATURE_CHUNK_ITEMS)]
        job.params = {
            **job.params,
            "bounds": bounds,
            "last": ids[-1] if ids else 0,
            "feature_chunks": len(bounds),
            "prefix": artifacts_prefix(training),
        }
        Job.objects.filter(id=job.pk).update(params=job.params)
        # Each item's features, then the fit and the registration count one step each.
        return Plan(total=len(ids) + 2, chunks=len(bounds) + 2)

    # --- the slow parts, outside any transaction ---

    def prepare_chunk(self, job: Job, index: int) -> dict[str, Any]:
        features = job.params["feature_chunks"]
        if index < features:
            return {"phase": "features", **_features(job, index)}
        if index == features:
            return {"phase": "fit", **_fit(job)}
        return {"phase": "artifacts", **_artifacts(job)}

    def apply_chunk(self, job: Job, index: int, prepared: dict[str, Any]) -> ChunkOutcome:
        if prepared["phase"] == "features":
            return ChunkOutcome(
                items=prepared["items"],
                errors=[
                    ChunkError(item=e["item"], code=e["code"], message=e["message"])
                    for e in prepared["errors"]
                ],
                result={
                    "items_used": prepared["used"],
                    "items_skipped": prepared["skipped"],
                    "seconds_features": prepared["seconds"],
                },
            )
        if prepared["phase"] == "fit":
            # The headline numbers; the card has them all.
            headline = {
                phase: {k: v for k, v in figures.items() if isinstance(v, int | float)}
                for phase, figures in prepared["metrics"].items()
                if isinstance(figures, dict) and phase in ("training", "validation")
            }
            return ChunkOutcome(items=1, result={"metrics": headline, "seconds_fit": prepared["seconds"]})
        version, evaluation = _register(job, prepared["card"], prepared["artifacts"], prepared["labels"])
        return ChunkOutcome(items=1, result={"model_version": version.pk, "evaluation": evaluation})

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        merged = {**result, **delta}
        for key in ("items_used", "seconds_features"):
            if key in delta:
                merged[key] = round(result.get(key, 0) + delta[key], 3)
        if "items_skipped" in delta:
            merged["items_skipped"] = dict(
                Counter(result.get("items_skipped", {})) + Counter(delta["items_skipped"])
            )
        return merged

    def after_finish(self, job: Job) -> None:
        store = object_store()
        for info in list(store.iter_objects(job.params["prefix"] + "work/")):
            store.delete(info.key)


# --- features ------------------------------------------------------------------------------------


def _work_key(job: Job, name: str) -> str:
    return f"{job.params['prefix']}work/{name}"


def _features(job: Job, index: int) -> dict[str, Any]:
    """A batch's features, computed once: a summary in the store says it was done."""
    store = object_store()
    summary_key = _work_key(job, f"chunk-{index:05d}.json")
    if store.exists(summary_key):
        with store.open(summary_key) as handle:
            return dict(json.loads(handle.read()))
    started = time.perf_counter()
    training = _training(job)
    recipe = RECIPES[training.recipe]
    bounds = job.params["bounds"]
    low = bounds[index]
    high = bounds[index + 1] if index + 1 < len(bounds) else job.params["last"] + 1
    rows = list(
        ReleaseItem.objects.filter(
            release_id=training.release_id,
            split__in=training.params["train_splits"],
            item_id__gte=low,
            item_id__lt=high,
        )
        .order_by("item_id")
        .values_list("item_id", "name", "modality", "meta", "blob_key", "regions")
    )
    skipped: Counter[str] = Counter()
    errors: list[dict[str, str]] = []
    wanted: list[tuple[int, str, dict[str, Any], str, Any]] = []  # item, name, meta, key, target
    for item_id, name, modality, meta, key, regions in rows:
        if modality != recipe.modality:
            skipped[f"not_{recipe.modality}"] += 1
            continue
        if recipe.region_type == "classification":
            classes = {r.get("label") for r in regions if r.get("type") == "classification"}
            if len(classes) != 1:
                skipped["no_class" if not classes else "several_classes"] += 1
                continue
            wanted.append((item_id, name, meta, key, str(classes.pop())))
        else:
            spans = [
                (int(g["start"]), int(g["end"]), str(r.get("label")))
                for r in regions
                if r.get("type") == "span" and isinstance(g := r.get("geometry") or {}, dict)
                and isinstance(g.get("start"), int) and isinstance(g.get("end"), int)
            ]  # fmt: skip
            wanted.append((item_id, name, meta, key, spans))
    contents = _read_all(store, [key for _, _, _, key, _ in wanted])
    kept: list[tuple[int, str, dict[str, Any], Any, bytes]] = []  # item, name, meta, target, content
    for (item_id, name, meta, _, target), content in zip(wanted, contents, strict=True):
        if isinstance(content, Exception):
            errors.append(
                {"item": name, "code": "unreadable", "message": f"The item cannot be read: {content}"}
            )
            continue
        kept.append((item_id, name, meta, target, content))
    if recipe.name == "spacy-ner":
        docs = [{"item": i, "text": _text(c, meta), "spans": spans} for i, _, meta, spans, c in kept]
        store.put_bytes(
            _work_key(job, f"docs-{index:05d}.json"), _json(docs), content_type="application/json"
        )
        used = len(docs)
    else:
        kind = training.params["features"]
        vectors, labels, items = [], [], []
        if FEATURE_KINDS[kind] == "text":
            texts = [_text(c, meta) for _, _, meta, _, c in kept]
            vectors = list(text_features(texts)) if texts else []
            labels = [label for _, _, _, label, _ in kept]
            items = [i for i, *_ in kept]
        else:
            for item_id, name, _, label, content in kept:
                try:
                    vectors.append(image_vector(content, kind))
                except ProbeError as exc:  # not an image, or a decompression bomb
                    errors.append({"item": name, "code": exc.code, "message": exc.message})
                    continue
                labels.append(label)
                items.append(item_id)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            items=np.asarray(items, dtype=np.int64),
            labels=np.asarray(labels, dtype=np.str_),
            features=np.asarray(vectors, dtype=np.float32).reshape(len(items), -1),
        )
        store.put_bytes(
            _work_key(job, f"features-{index:05d}.npz"),
            buffer.getvalue(),
            content_type="application/octet-stream",
        )
        used = len(items)
    summary = {
        "items": len(rows),
        "used": used,
        "skipped": dict(skipped),
        "errors": errors,
        "seconds": round(time.perf_counter() - started, 3),
    }
    # Written last: its presence means the batch's features are in the store.
    store.put_bytes(summary_key, _json(summary), content_type="application/json")
    return summary


def _read_all(store: ObjectStore, keys: list[str]) -> list[bytes | Exception]:
    def read(key: str) -> bytes | Exception:
        try:
            with store.open(key) as handle:
                return bytes(handle.read())
        except Exception as exc:  # one unreadable item is that item's error, the batch goes on
            return exc

    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        return list(pool.map(read, keys))


# --- fit -----------------------------------------------------------------------------------------


def _fit(job: Job) -> dict[str, Any]:
    """The recipe fitted on every batch's features (once: the fit's summary says it was done)."""
    store = object_store()
    fit_key = _work_key(job, "fit.json")
    if store.exists(fit_key):
        with store.open(fit_key) as handle:
            return dict(json.loads(handle.read()))
    summaries = [_features(job, index) for index in range(job.params["feature_chunks"])]
    training = _training(job)
    recipe = RECIPES[training.recipe]
    params = {k: v for k, v in training.params.items() if k in recipe.defaults}  # the recipe's own
    fitted: Fitted
    if recipe.name == "spacy-ner":
        docs: list[SpanDoc] = []
        for index in range(job.params["feature_chunks"]):
            with store.open(_work_key(job, f"docs-{index:05d}.json")) as handle:
                docs.extend(
                    SpanDoc(d["item"], d["text"], [(s[0], s[1], s[2]) for s in d["spans"]])
                    for d in json.loads(handle.read())
                )
        if not docs:
            raise TrainingFailed("No item of the training splits could be used (see the job's result).")
        # The fit runs inside one Celery task: stop adding epochs well before its time limit.
        budget = settings.CELERY_TASK_SOFT_TIME_LIMIT - settings.LOUPE_JOB_SLICE_SECONDS - 60
        fitted = fit_spacy(docs, params, recipe=recipe.name, max_seconds=max(budget, 10))
    else:
        features: list[np.ndarray] = []
        labels: list[str] = []
        for index in range(job.params["feature_chunks"]):
            with (
                store.open(_work_key(job, f"features-{index:05d}.npz")) as handle,
                np.load(io.BytesIO(handle.read()), allow_pickle=False) as part,
            ):
                features.append(part["features"])
                labels.extend(str(label) for label in part["labels"])
        if not labels:
            raise TrainingFailed("No item of the training splits could be used (see the job's result).")
        fitted = fit_linear(
            np.concatenate(features),
            labels,
            params,
            recipe=recipe.name,
            feature_kind=training.params["features"],
        )
    artifacts = {}
    for name, data in sorted(fitted.files.items()):
        key = job.params["prefix"] + name
        store.put_bytes(key, data, content_type=_content_type(name))
        artifacts[name] = file_entry(key, data)
    skipped: Counter[str] = Counter()
    for summary in summaries:
        skipped.update(summary["skipped"])
    fit = {
        "artifacts": artifacts,
        "labels": fitted.labels,
        "metrics": fitted.metrics,
        "seconds": round(fitted.seconds, 3),
        "seconds_features": round(sum(s["seconds"] for s in summaries), 3),
        "items": {
            "looked_at": sum(s["items"] for s in summaries),
            "used": sum(s["used"] for s in summaries),
            "skipped": dict(skipped),
            "unreadable": sum(len(s["errors"]) for s in summaries),
        },
    }
    store.put_bytes(fit_key, _json(fit), content_type="application/json")
    return fit


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".tar.gz"):
        return "application/gzip"
    return "application/octet-stream"


# --- artifacts and registration ------------------------------------------------------------------


def version_name(training: Training) -> str:
    """A trained version's name: the release it learned from and the training that made it."""
    return f"r{training.release.version}-t{training.pk}"


def _artifacts(job: Job) -> dict[str, Any]:
    fit = _fit(job)
    training = _training(job)
    release = training.release
    recipe = RECIPES[training.recipe]
    counts = release.counts or {}
    started = job.started_at or job.created_at
    card = {
        "format": CARD_FORMAT,
        "model": {"name": training.model_name, "version": version_name(training)},
        "training": training.pk,
        "recipe": {"name": recipe.name, "title": recipe.title, "task_type": recipe.task_type},
        "params": training.params,
        "data": {
            "project": training.project_id,
            "release": {
                "id": release.pk,
                "version": release.version,
                "name": release.name,
                "manifest_sha256": release.manifest_sha256,
                "schema_version": release.schema_version,
            },
            "train_splits": training.params["train_splits"],
            "eval_split": training.params["eval_split"],
            "split_sizes": dict(counts.get("by_split", {})),
            "items": fit["items"],
        },
        "features": _features_card(training),
        "labels": fit["labels"],
        "label_map": {str(i): label for i, label in enumerate(fit["labels"])},
        "metrics": fit["metrics"],
        "seconds": {
            "features": fit["seconds_features"],
            "fit": fit["seconds"],
            "total": round((timezone.now() - started).total_seconds(), 3),
        },
        "artifacts": fit["artifacts"],
        "libraries": _libraries(recipe.name),
        "created_at": timezone.now().isoformat(),
    }
    store = object_store()
    store.put_bytes(job.params["prefix"] + "card.json", _json(card), content_type="application/json")
    return {"card": card, "artifacts": fit["artifacts"], "labels": fit["labels"]}


def _features_card(training: Training) -> dict[str, Any]:
    from labeling.inference.features import dimensions

    kind = training.params.get("features")
    if kind is None:
        return {"kind": "spacy", "base": training.params.get("base")}
    return {"kind": kind, "dimensions": dimensions(kind), "modality": FEATURE_KINDS[kind]}


def _libraries(recipe: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    own = {"text-logreg": ["sentence-transformers", "torch"], "spacy-ner": ["spacy"]}
    names = ["numpy", "scikit-learn", *own.get(recipe, [])]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _register(
    job: Job, card: dict[str, Any], artifacts: dict[str, Any], labels: list[str]
) -> tuple[ModelVersion, str]:
    """Create the trained version, inside the last chunk's transaction; at most once per training."""
    training = (
        Training.objects.select_for_update()
        .select_related("project", "release")
        .get(id=job.params["training_id"])
    )
    if training.model_version_id is not None:
        return ModelVersion.objects.get(id=training.model_version_id), "registered before"
    recipe = RECIPES[training.recipe]
    release: Release = training.release
    model, _ = MLModel.objects.get_or_create(
        organization_id=training.project.organization_id,
        name=training.model_name,
        defaults={
            "description": f"Trained in Loupe with {recipe.name}.",
            "created_by_id": training.created_by_id,
        },
    )
    version = ModelVersion.objects.create(
        model=model,
        version=version_name(training),
        kind=ModelKind.TRAINED,
        task_type=recipe.task_type,
        modalities=[recipe.modality],
        outputs=[recipe.region_type],
        labels=labels,
        params={},
        label_map={},
        release=release,
        card=card,
        artifacts=artifacts,
        created_by_id=training.created_by_id,
    )
    training.model_version = version
    training.save(update_fields=["model_version"])
    audit_record(
        actor=training.created_by,
        verb="model.train",
        obj=version,
        project=training.project,
        changes={
            "model": model.name,
            "version": version.version,
            "release": release.pk,
            "recipe": recipe.name,
            "training": training.pk,
        },
    )
    split = training.params.get("eval_split")
    evaluation = "no held-out split"
    if split and (release.counts or {}).get("by_split", {}).get(split):
        try:
            with transaction.atomic():  # a refusal is undone alone; the version stays registered
                hooks.model_trained(version, release, split, training.created_by_id)
            evaluation = f"asked on {split}"
        except DomainError as exc:
            logger.warning("training %s: no evaluation of version %s: %s", training.pk, version.pk, exc)
            evaluation = f"refused: {exc.message}"
    return version, evaluation
