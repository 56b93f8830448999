"""Quality jobs, on the `quality` queue: re-running the rules over a project, assessing agreement
and consensus, and hunting label errors with a model.

All three walk the project in chunks fixed at plan time (id ranges), do their reading and
computing in `prepare_chunk` (outside any transaction) and write findings and verdicts in
`apply_chunk`, the transaction that records the chunk: a worker killed mid-way leaves either a
whole chunk or nothing, and findings are keyed (see quality.models.Finding), so even a chunk
computed twice records each finding once.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Max, Min

from labeling import verdicts
from labeling.jobs import sum_counts
from labeling.models import Annotation, AnnotationState, Prediction, Task, TaskState
from labeling.regions import ItemFacts
from labeling.services import parsed_schema, schema_current
from labeling.workflow import QC_FLAGGED
from projects.access import ProjectAccess, ProjectAction
from projects.exceptions import InvalidInput
from projects.jobs import ChunkOutcome, JobKind, Plan, job_start, register
from projects.models import Job
from quality import rules as qr
from quality.config import QualitySettings, rules_of, settings_of
from quality.metrics.agreement import alpha_from_coincidences, coincidence_matrix, fleiss_kappa
from quality.metrics.consensus import dawid_skene, majority_vote
from quality.models import FindingSource
from quality.services import (
    NOTHING,
    Assessment,
    NewFinding,
    agreement_finding,
    assess,
    assessments_record,
    findings_record,
    findings_resolve_stale,
    region_labels,
    rule_findings,
    single_class,
    submitted_results,
)

RULES_KIND = "quality.rules_check"
AGREEMENT_KIND = "quality.agreement"
LABEL_ERRORS_KIND = "quality.label_errors"
RULES_CHUNK_IDS = 5000
AGREEMENT_CHUNK_IDS = 2000


def _project_id(job: Job) -> int:
    if job.project_id is None:
        raise ValueError(f"job {job.pk}: quality jobs belong to a project")
    return job.project_id


def _id_chunks(job: Job, queryset: Any, size: int) -> Plan:
    """Plan chunks over an id range fixed now: rows added later belong to the next run."""
    bounds = queryset.aggregate(low=Min("id"), high=Max("id"), n=Count("id"))
    low, high = bounds["low"] or 0, bounds["high"] if bounds["n"] else -1
    job.params = {**job.params, "low": low, "high": high, "size": size}
    Job.objects.filter(id=job.pk).update(params=job.params)
    return Plan(total=bounds["n"], chunks=math.ceil((high - low + 1) / size) if bounds["n"] else 0)


def _id_range(job: Job, index: int) -> tuple[int, int]:
    low = job.params["low"] + index * job.params["size"]
    return low, min(low + job.params["size"], job.params["high"] + 1)


def quality_job_start(*, actor: User, access: ProjectAccess, kind: str, params: dict[str, Any]) -> Job:
    access.require(ProjectAction.QUALITY_MANAGE)
    if kind == LABEL_ERRORS_KIND and isinstance(params.get("model_version"), int):
        from labeling.prelabel import model_version_get

        model_version_get(access, params["model_version"])  # a model of another organization: 404
    with transaction.atomic():
        return job_start(
            kind=kind,
            actor=actor,
            organization=access.project.organization,
            project=access.project,
            params=params,
        )


# --- Rules over the whole project -----------------------------------------------------------------


def _submitted(project_id: int) -> Any:
    return Annotation.objects.filter(
        task__project_id=project_id,
        state=AnnotationState.SUBMITTED,
        deleted_at__isnull=True,
        ground_truth=False,
    )


@register
class RulesCheck(JobKind):
    """Every submitted annotation of the project through the project's current rules (after the
    rules changed, say). Findings no longer found are resolved; tasks with a blocking finding are
    flagged and go to review."""

    name = RULES_KIND
    queue = "quality"
    exclusive_per_project = True

    def runners(self, job: Job) -> int:
        # Chunks are independent id ranges: up to four worker processes check them side by side.
        return 4

    def plan(self, job: Job) -> Plan:
        project_id = _project_id(job)
        schema = schema_current(project_id)
        job.params = {**job.params, "schema_id": schema.pk if schema is not None else None}
        return _id_chunks(job, _submitted(project_id), RULES_CHUNK_IDS)

    def prepare_chunk(self, job: Job, index: int) -> dict[str, Any]:
        from labeling.jobs import read_text
        from labeling.services import schema_by_id
        from projects.models import Project
        from storage.objects import object_store

        project_id = _project_id(job)
        rules = rules_of(settings_of(Project.objects.get(id=project_id).settings))
        low, high = _id_range(job, index)
        # Plain rows, not model instances: building 5,000 annotations with their items cost more
        # than checking them.
        rows = list(
            _submitted(project_id)
            .filter(id__gte=low, id__lt=high)
            .order_by("id")
            .values_list(
                "id", "task_id", "author_id", "result", "task__item__modality", "task__item__meta",
                "task__item__primary__key",
            )
        )  # fmt: skip
        ids = [row[0] for row in rows]
        if not rules or job.params["schema_id"] is None:
            return {"ids": ids, "found": [], "blocked": []}
        schema = parsed_schema(schema_by_id(job.params["schema_id"]))
        wants_text = any(rule.kind == "token_edges" for rule in rules)
        store = object_store() if wants_text else None
        found: list[NewFinding] = []
        blocked: set[int] = set()
        for annotation_id, task_id, author_id, regions, modality, meta, key in rows:
            text = read_text(store, key, meta) if store is not None and modality == "text" else None
            result = qr.check(
                rules, regions, schema=schema, facts=ItemFacts.from_item(modality, meta), text=text
            )
            if result:
                found.extend(
                    rule_findings(
                        result,
                        task_id=task_id,
                        annotation_id=annotation_id,
                        annotator_id=author_id,
                        labels=region_labels(regions),
                    )
                )
                if qr.blocking(result):
                    blocked.add(task_id)
        return {"ids": ids, "found": found, "blocked": sorted(blocked)}

    def apply_chunk(self, job: Job, index: int, prepared: dict[str, Any]) -> ChunkOutcome:
        project_id = _project_id(job)
        found: list[NewFinding] = prepared["found"]
        findings_record(project_id, found, job=job)
        resolved = findings_resolve_stale(
            project_id=project_id,
            source=FindingSource.RULE,
            annotations=range(*_id_range(job, index)),
            keep=job,
        )
        flagged = verdicts.tasks_qc_set(
            project_id=project_id,
            statuses=dict.fromkeys(prepared["blocked"], QC_FLAGGED),
            reason="a blocking rule fails",
        )
        with_findings = {f.annotation_id for f in found}
        return ChunkOutcome(
            items=len(prepared["ids"]),
            result={
                "annotations": len(prepared["ids"]),
                "passed": len(prepared["ids"]) - len(with_findings),
                "findings": len(found),
                "resolved": resolved,
                "tasks_to_review": flagged["to_review"],
                **{f"rule.{k}": v for k, v in Counter(f.kind for f in found).items()},
            },
        )

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        return sum_counts(result, delta)


# --- Agreement and consensus -----------------------------------------------------------------------


def _multi_annotated(project_id: int) -> Any:
    return Task.objects.filter(project_id=project_id, is_gold=False, submitted__gte=2)


@register
class AgreementAssess(JobKind):
    """Agreement, consensus and low-agreement routing for every task with two or more annotators.

    Plan: Dawid-Skene is fitted once over the project's single-label classifications (annotator
    reliability needs every task), along with the project's chance-corrected agreement
    (Krippendorff's alpha, Fleiss' kappa, alpha per class). Chunks: each task's agreement and
    consensus (labels from Dawid-Skene or the vote, geometry fused with the annotators' estimated
    reliability as weights), recorded; tasks below the threshold are flagged and go to review.
    """

    name = AGREEMENT_KIND
    queue = "quality"
    exclusive_per_project = True

    def plan(self, job: Job) -> Plan:
        from projects.models import Project

        project_id = _project_id(job)
        settings = settings_of(Project.objects.get(id=project_id).settings)
        ids = list(_multi_annotated(project_id).order_by("id").values_list("id", flat=True))
        triples: list[tuple[int, int, str]] = []
        for start in range(0, len(ids), 5000):
            for task_id, by in submitted_results(ids[start : start + 5000]).items():
                for annotator, (_, regions) in by.items():
                    label = single_class(regions)
                    if label is not None:
                        triples.append((task_id, annotator, label))
        summary = {"fleiss_kappa": classification_kappa(triples)}
        model: dict[str, Any] = {}
        if triples and settings.agreement.consensus == "dawid_skene":
            fitted = dawid_skene(triples, shrinkage=settings.agreement.shrinkage)
            model = {
                "labels": list(fitted.labels),
                "estimates": {str(u): lb for u, lb in fitted.estimates().items()},
                "accuracy": {str(a): v for a, v in fitted.accuracy.items()},
            }
        elif triples:
            by_unit: dict[int, list[str]] = {}
            for unit, _, label in triples:
                by_unit.setdefault(unit, []).append(label)
            model = {"estimates": {str(u): lb for u, lb in majority_vote(by_unit).items()}, "accuracy": {}}
        job.params = {**job.params, "summary": summary, "model": model}
        return _id_chunks(job, _multi_annotated(project_id), AGREEMENT_CHUNK_IDS)

    def prepare_chunk(self, job: Job, index: int) -> dict[str, Any]:
        from projects.models import Project

        project_id = _project_id(job)
        settings = settings_of(Project.objects.get(id=project_id).settings)
        low, high = _id_range(job, index)
        ids = list(_multi_annotated(project_id).filter(id__gte=low, id__lt=high).values_list("id", flat=True))
        model = job.params["model"]
        weights = {int(a): float(v) for a, v in model.get("accuracy", {}).items()}
        estimates = model.get("estimates", {})
        found: list[Assessment] = []
        for task_id, by in submitted_results(ids).items():
            if len(by) < 2:
                continue
            assessed = assess(task_id, by, settings, weights)
            label = estimates.get(str(task_id))
            if label is not None and all(single_class(r) is not None for _, r in by.values()):
                assessed = _with_label(assessed, label)
            found.append(assessed)
        return {"found": found, "settings": settings, "items": len(ids)}

    def apply_chunk(self, job: Job, index: int, prepared: dict[str, Any]) -> ChunkOutcome:
        project_id = _project_id(job)
        found: list[Assessment] = prepared["found"]
        settings: QualitySettings = prepared["settings"]
        method = settings.agreement.consensus if job.params["model"] else "fused"
        assessments_record(project_id, found, method)
        low = [a for a in found if a.flagged]
        findings_record(project_id, [agreement_finding(a, settings) for a in low], job=job)
        routed = verdicts.tasks_qc_set(
            project_id=project_id,
            statuses={a.task_id: QC_FLAGGED for a in low},
            reason="annotators disagree",
        )
        scores = [a.agreement for a in found if a.agreement is not None]
        units = [unit for a in found for unit in a.units]
        values, matrix = coincidence_matrix(units)
        return ChunkOutcome(
            items=prepared["items"],
            result={
                "tasks": len(found),
                "low_agreement": len(low),
                "tasks_to_review": routed["to_review"],
                "agreement_sum": sum(scores),
                "agreement_n": len(scores),
                "units": len(units),
                COINCIDENCES: {
                    f"{c}{_SEP}{k}": float(matrix[i, j])
                    for i, c in enumerate(values)
                    for j, k in enumerate(values)
                    if matrix[i, j]
                },
            },
        )

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        merged = sum_counts(
            {k: v for k, v in result.items() if k != COINCIDENCES},
            {k: v for k, v in delta.items() if k != COINCIDENCES},
        )
        merged[COINCIDENCES] = sum_counts(result.get(COINCIDENCES, {}), delta.get(COINCIDENCES, {}))
        return merged

    def finish(self, job: Job) -> dict[str, Any]:
        result = dict(job.result)
        n = result.pop("agreement_n", 0)
        total = result.pop("agreement_sum", 0.0)
        coincidences = result.pop(COINCIDENCES, {})
        return {
            **result,
            "mean_task_agreement": total / n if n else None,
            **alphas(coincidences),
            **job.params.get("summary", {}),
        }


COINCIDENCES = "coincidences"
_SEP = "\x1f"  # between the two values of a coincidence key (a unit separator no label holds)


def alphas(coincidences: dict[str, float]) -> dict[str, Any]:
    """Krippendorff's alpha (nominal) from summed coincidences, over every class, and per class
    (that class against everything else, the absence of an object included)."""
    pairs = {tuple(key.split(_SEP, 1)): v for key, v in coincidences.items()}
    values = sorted({c for c, _ in pairs})
    matrix = (
        np.array([[pairs.get((c, k), 0.0) for k in values] for c in values]) if values else np.zeros((0, 0))
    )
    by_class: dict[str, float | None] = {}
    for index, name in enumerate(values):
        if name == NOTHING:
            continue
        inside = matrix[index, index]
        across = matrix[index].sum() - inside
        rest = matrix.sum() - inside - 2 * across
        by_class[name] = alpha_from_coincidences([True, False], np.array([[inside, across], [across, rest]]))
    return {"alpha": alpha_from_coincidences(values, matrix) if values else None, "alpha_by_class": by_class}


def _with_label(assessed: Assessment, label: str) -> Assessment:
    return replace(
        assessed, consensus=[{"id": "c1", "type": "classification", "label": label, "attributes": {}}]
    )


def classification_kappa(triples: Sequence[tuple[int, int, str]]) -> float | None:
    """Fleiss' kappa over the single-label classifications of the tasks with the most common
    number of annotators (Fleiss needs the same number of ratings per task)."""
    per_unit: dict[int, Counter[str]] = {}
    for unit, _, label in triples:
        per_unit.setdefault(unit, Counter())[label] += 1
    if not per_unit:
        return None
    classes = sorted({lb for _, _, lb in triples})
    raters = Counter(sum(c.values()) for c in per_unit.values()).most_common(1)[0][0]
    table = [[c[k] for k in classes] for c in per_unit.values() if sum(c.values()) == raters]
    return fleiss_kappa(np.array(table)) if len(table) > 1 and raters > 1 else None


# --- Label errors ----------------------------------------------------------------------------------

LABEL_ERROR_FEATURE_CHUNK = 256
FINDING_THRESHOLD = 0.5  # a label-error score at least this is a finding and sends the task to review


def _approved(project_id: int) -> Any:
    """Tasks whose labels are settled: accepted, or done without review."""
    return Task.objects.filter(
        project_id=project_id, is_gold=False, state__in=(TaskState.ACCEPTED, TaskState.DONE)
    )


def approved_labels(task_ids: Sequence[int]) -> dict[int, tuple[int | None, str]]:
    """{task: (annotation id or None for a consensus, class)} for tasks with one settled class:
    the consensus when annotators were several, else the single annotation's class."""
    from quality.models import TaskQuality

    out: dict[int, tuple[int | None, str]] = {}
    consensus = dict(
        TaskQuality.objects.filter(task_id__in=list(task_ids)).values_list("task_id", "consensus")
    )
    for task_id, by in submitted_results(task_ids).items():
        if len(by) == 1:
            annotation_id, regions = next(iter(by.values()))
            label = single_class(regions)
            if label is not None:
                out[task_id] = (annotation_id, label)
        elif task_id in consensus:
            label = single_class(consensus[task_id])
            if label is not None:
                out[task_id] = (None, label)
    return out


@register
class LabelErrors(JobKind):
    """Likely label errors found by a model.

    `mode: classification`: features for every settled single-label task (MiniLM sentence
    embeddings for text, pixel features for images), one chunk per batch of tasks, kept in object
    storage; then a last chunk fits cross-validated classifiers on them, ranks the likely
    mislabeled tasks by confident learning and records them as findings.
    `mode: detection`: each chunk compares the settled annotations with a model version's
    predictions of the same items and records missing, extra, wrong-class and poorly drawn
    regions as findings.
    Findings at or above `threshold` send their task to review.
    """

    name = LABEL_ERRORS_KIND
    queue = "quality"
    ordered = True  # the fitting chunk reads the features every earlier chunk stored
    exclusive_per_project = True

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = params.get("mode", "classification")
        if mode not in ("classification", "detection"):
            raise InvalidInput("mode is classification or detection.", field="mode")
        threshold = params.get("threshold", FINDING_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise InvalidInput("threshold is a number from 0 to 1.", field="threshold")
        folds = params.get("folds", 5)
        if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= 20:
            raise InvalidInput("folds is a whole number from 2 to 20.", field="folds")
        if mode == "detection" and not isinstance(params.get("model_version"), int):
            raise InvalidInput(
                "Detection needs the model_version whose predictions to compare.", field="model_version"
            )
        return {**params, "mode": mode, "threshold": float(threshold), "folds": folds}

    def plan(self, job: Job) -> Plan:
        project_id = _project_id(job)
        ids = list(_approved(project_id).order_by("id").values_list("id", flat=True))
        if job.params["mode"] == "detection":
            ids = list(
                Prediction.objects.filter(task_id__in=ids, source_id=job.params["model_version"])
                .order_by("task_id")
                .values_list("task_id", flat=True)
                .distinct()
            )
        size = LABEL_ERROR_FEATURE_CHUNK
        bounds = [ids[i] for i in range(0, len(ids), size)]
        job.params = {**job.params, "bounds": bounds, "last": ids[-1] if ids else 0}
        Job.objects.filter(id=job.pk).update(params=job.params)
        fit = 1 if job.params["mode"] == "classification" and ids else 0
        return Plan(total=len(ids), chunks=len(bounds) + fit)

    def _task_ids(self, job: Job, index: int) -> list[int]:
        bounds = job.params["bounds"]
        low = bounds[index]
        high = bounds[index + 1] if index + 1 < len(bounds) else job.params["last"] + 1
        return list(
            _approved(_project_id(job))
            .filter(id__gte=low, id__lt=high)
            .order_by("id")
            .values_list("id", flat=True)
        )

    def prepare_chunk(self, job: Job, index: int) -> dict[str, Any]:
        if job.params["mode"] == "detection":
            return self._detect(job, index)
        if index < len(job.params["bounds"]):
            return self._features(job, index)
        return self._fit(job)

    def _features(self, job: Job, index: int) -> dict[str, Any]:
        from quality.features import task_features
        from storage.objects import object_store

        looked_at = self._task_ids(job, index)
        labels = approved_labels(looked_at)
        task_ids = sorted(labels)
        vectors = task_features(task_ids) if task_ids else np.zeros((0, 0), dtype=np.float32)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            task_ids=np.array(task_ids, dtype=np.int64),
            annotations=np.array([labels[t][0] or 0 for t in task_ids], dtype=np.int64),
            labels=np.array([labels[t][1] for t in task_ids], dtype=object),
            features=vectors,
        )
        object_store().put_bytes(
            _features_key(job, index), buffer.getvalue(), content_type="application/octet-stream"
        )
        return {"items": len(looked_at)}

    def _fit(self, job: Job) -> dict[str, Any]:
        from quality.metrics.label_errors import classification_label_issues
        from storage.objects import object_store

        store = object_store()
        parts = []
        for index in range(len(job.params["bounds"])):
            with store.open(_features_key(job, index)) as handle:
                loaded = np.load(io.BytesIO(handle.read()), allow_pickle=True)
                parts.append({k: loaded[k] for k in ("task_ids", "annotations", "labels", "features")})
        parts = [p for p in parts if len(p["task_ids"])]
        if not parts:
            return {"found": [], "fitted": 0}
        task_ids = np.concatenate([p["task_ids"] for p in parts])
        annotations = np.concatenate([p["annotations"] for p in parts])
        labels = list(np.concatenate([p["labels"] for p in parts]))
        features = np.concatenate([p["features"] for p in parts])
        sizes = Counter(labels)
        if sum(1 for n in sizes.values() if n >= 2) < 2:
            # Cross-validation needs two classes with two examples each; nothing to learn from yet.
            return {"found": [], "fitted": len(labels)}
        issues = classification_label_issues(features, labels, folds=job.params["folds"], seed=0)
        found = [
            NewFinding(
                task_id=int(task_ids[issue.index]),
                annotation_id=int(annotations[issue.index]) or None,
                annotator_id=None,
                source=FindingSource.LABEL_ERROR,
                kind="confident_learning",
                code="likely_mislabeled",
                severity="warning",
                score=float(issue.score),
                label=str(issue.given),
                message=(
                    f"A model trained on the project's other labels says {issue.suggested!r}, "
                    f"not {issue.given!r} (score {issue.score:.2f})."
                ),
                details={"given": issue.given, "suggested": issue.suggested},
            )
            for issue in issues
        ]
        return {"found": found, "fitted": len(labels)}

    def _detect(self, job: Job, index: int) -> dict[str, Any]:
        from quality.metrics.label_errors import detection_disagreements

        task_ids = self._task_ids(job, index)
        predicted = dict(
            Prediction.objects.filter(task_id__in=task_ids, source_id=job.params["model_version"])
            .order_by("task_id", "id")
            .values_list("task_id", "result")
        )
        found: list[NewFinding] = []
        for task_id, by in submitted_results(task_ids).items():
            if task_id not in predicted:
                continue
            for annotator, (annotation_id, regions) in by.items():
                for issue in detection_disagreements(regions, predicted[task_id]):
                    found.append(
                        NewFinding(
                            task_id=task_id,
                            annotation_id=annotation_id,
                            annotator_id=annotator,
                            source=FindingSource.DETECTION,
                            kind=issue.kind,
                            code=issue.kind,
                            severity="warning",
                            score=float(issue.score),
                            region_id=str(issue.region_id or ""),
                            label=str(issue.label or ""),
                            message=issue.message,
                            details={
                                "predicted_label": issue.predicted_label,
                                "prediction_region": issue.prediction_id,
                                "similarity": issue.similarity,
                            },
                        )
                    )
        return {"found": found, "items": len(predicted)}  # the plan counted tasks with predictions

    def apply_chunk(self, job: Job, index: int, prepared: dict[str, Any]) -> ChunkOutcome:
        project_id = _project_id(job)
        found: list[NewFinding] = prepared.get("found", [])
        findings_record(project_id, found, job=job)
        serious = sorted({f.task_id for f in found if (f.score or 0) >= job.params["threshold"]})
        routed = verdicts.tasks_qc_set(
            project_id=project_id,
            statuses=dict.fromkeys(serious, QC_FLAGGED),
            reason="a model doubts the label",
        )
        fit_chunk = job.params["mode"] == "classification" and index == len(job.params["bounds"])
        return ChunkOutcome(
            items=0 if fit_chunk else prepared.get("items", 0),
            result={
                "findings": len(found),
                "tasks_to_review": routed["to_review"],
                **({"fitted": prepared.get("fitted", 0)} if fit_chunk else {}),
            },
        )

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        return sum_counts(result, delta)

    def after_finish(self, job: Job) -> None:
        from storage.objects import object_store

        store = object_store()
        for index in range(len(job.params.get("bounds", []))):
            store.delete(_features_key(job, index))


def _features_key(job: Job, index: int) -> str:
    return f"quality/jobs/{job.pk}/features-{index:05d}.npz"


__all__ = [
    "AGREEMENT_KIND",
    "LABEL_ERRORS_KIND",
    "RULES_KIND",
    "quality_job_start",
]
