"""Quality's reads: findings, and the QC report of a project or of one annotator.

Every count is an aggregate the database computes over indexed columns (findings by project and
status, gold answers by project and annotator, task quality by project); pairwise agreement is
unnested from the per-task pairs in SQL. Nothing here loads a project's rows into Python.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Avg, Count, Q, QuerySet
from django.utils import timezone

from labeling.models import Annotation, AnnotationState, Task
from projects.access import ProjectAccess, ProjectAction
from projects.exceptions import NotFound
from projects.models import Job, JobState, ProjectMember
from quality.config import settings_of
from quality.models import Finding, FindingStatus, GoldAnswer, TaskQuality

SERIES_POINTS = 200  # gold answers per annotator in the report's time series (the newest)


def finding_list(*, access: ProjectAccess) -> QuerySet[Finding]:
    access.require(ProjectAction.QUALITY_VIEW)
    return Finding.objects.filter(project_id=access.project.pk).select_related("annotator").order_by("-id")


def finding_get(*, access: ProjectAccess, finding_id: int) -> Finding:
    found = finding_list(access=access).filter(id=finding_id).first()
    if found is None:
        raise NotFound("Finding not found.", finding_id=finding_id)
    return found


def _counts(queryset: QuerySet[Any], field: str) -> dict[str, int]:
    return {
        str(k): n for k, n in queryset.values_list(field).annotate(n=Count("id")).order_by() if k is not None
    }


def _latest_agreement(project_id: int) -> dict[str, Any]:
    from quality.jobs import AGREEMENT_KIND

    job = (
        Job.objects.filter(project_id=project_id, kind=AGREEMENT_KIND, state=JobState.SUCCEEDED)
        .order_by("-finished_at", "-id")
        .first()
    )
    if job is None:
        return {"job": None}
    keys = ("alpha", "fleiss_kappa", "alpha_by_class", "units", "mean_task_agreement", "low_agreement")
    return {"job": job.pk, "finished_at": job.finished_at, **{k: job.result.get(k) for k in keys}}


_PAIRWISE_SQL = """
    SELECT (p->>'a')::bigint AS a, (p->>'b')::bigint AS b, avg((p->>'agreement')::float), count(*)
    FROM quality_taskquality q, jsonb_array_elements(q.pairs) p
    WHERE q.project_id = %s
    GROUP BY 1, 2 ORDER BY 1, 2
"""


def _pairwise(project_id: int) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(_PAIRWISE_SQL, [project_id])
        return [{"a": a, "b": b, "agreement": mean, "tasks": n} for a, b, mean, n in cursor.fetchall()]


def quality_report(*, access: ProjectAccess, annotator_id: int | None = None) -> dict[str, Any]:
    """The project's QC report (or one annotator's): pass rates, agreement, gold accuracy and
    findings by source, rule, class and status."""
    access.require(ProjectAction.QUALITY_VIEW)
    project_id = access.project.pk
    settings = settings_of(access.project.settings)
    findings = Finding.objects.filter(project_id=project_id)
    submitted = Annotation.objects.filter(
        task__project_id=project_id,
        state=AnnotationState.SUBMITTED,
        deleted_at__isnull=True,
        ground_truth=False,
    )
    if annotator_id is not None:
        if not ProjectMember.objects.filter(project_id=project_id, user_id=annotator_id).exists():
            raise NotFound("The user is not a member of this project.", user_id=annotator_id)
        findings = findings.filter(annotator_id=annotator_id)
        submitted = submitted.filter(author_id=annotator_id)
    open_findings = findings.filter(status=FindingStatus.OPEN)
    with_open_rule = (
        open_findings.filter(source="rule", annotation__isnull=False)
        .values("annotation_id")
        .distinct()
        .count()
    )
    n_submitted = submitted.count()
    tasks = Task.objects.filter(project_id=project_id)
    quality_rows = TaskQuality.objects.filter(project_id=project_id)
    task_quality = quality_rows.aggregate(
        mean=Avg("agreement"),
        n=Count("task_id"),
        low=Count("task_id", filter=Q(agreement__lt=settings.agreement.min_agreement)),
    )
    pairwise = _pairwise(project_id)
    report: dict[str, Any] = {
        "project": project_id,
        "annotator": annotator_id,
        "generated_at": timezone.now(),
        "annotations": n_submitted,
        "pass_rate": (n_submitted - with_open_rule) / n_submitted if n_submitted else None,
        "tasks": {
            "total": tasks.count(),
            "by_state": _counts(tasks, "state"),
            "by_qc_status": _counts(tasks.exclude(qc_status=""), "qc_status"),
            "gold": tasks.filter(is_gold=True).count(),
        },
        "agreement": {
            "tasks_assessed": task_quality["n"],
            "mean_task_agreement": task_quality["mean"],
            "tasks_below_threshold": task_quality["low"],
            "min_agreement": settings.agreement.min_agreement,
            "project": _latest_agreement(project_id),
            "pairwise": pairwise,
        },
        "gold": _gold(project_id, annotator_id, settings.gold.min_accuracy),
        "findings": {
            "open": open_findings.count(),
            "by_status": _counts(findings, "status"),
            "by_source": _counts(open_findings, "source"),
            "by_rule": _counts(open_findings.filter(source="rule"), "kind"),
            "by_kind": _counts(open_findings, "kind"),
            "by_class": _counts(open_findings.exclude(label=""), "label"),
            "by_severity": _counts(open_findings, "severity"),
        },
        "annotators": _annotators(project_id, annotator_id, settings.gold.min_accuracy, pairwise),
    }
    if annotator_id is not None:
        pairs = [p for p in report["agreement"]["pairwise"] if annotator_id in (p["a"], p["b"])]
        report["agreement"]["pairwise"] = pairs
    return report


def _gold(project_id: int, annotator_id: int | None, threshold: float) -> dict[str, Any]:
    answers = GoldAnswer.objects.filter(project_id=project_id)
    if annotator_id is not None:
        answers = answers.filter(annotator_id=annotator_id)
    summary = answers.aggregate(n=Count("id"), mean=Avg("score"))
    return {"answers": summary["n"], "accuracy": summary["mean"], "min_accuracy": threshold}


def _annotators(
    project_id: int, only: int | None, threshold: float, pairwise: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    members = ProjectMember.objects.filter(project_id=project_id, role="annotator").select_related("user")
    if only is not None:
        members = ProjectMember.objects.filter(project_id=project_id, user_id=only).select_related("user")
    submitted = dict(
        Annotation.objects.filter(
            task__project_id=project_id,
            state=AnnotationState.SUBMITTED,
            deleted_at__isnull=True,
            ground_truth=False,
        )
        .values_list("author_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    flagged = dict(
        Finding.objects.filter(project_id=project_id, status=FindingStatus.OPEN, source="rule")
        .values_list("annotator_id")
        .annotate(n=Count("annotation_id", distinct=True))
        .order_by()
    )
    open_findings = dict(
        Finding.objects.filter(project_id=project_id, status=FindingStatus.OPEN)
        .values_list("annotator_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    gold = {
        a: (n, mean)
        for a, n, mean in GoldAnswer.objects.filter(project_id=project_id)
        .values_list("annotator_id")
        .annotate(n=Count("id"), mean=Avg("score"))
        .values_list("annotator_id", "n", "mean")
        .order_by()
    }
    # Each annotator's mean agreement with the others, weighted by the tasks they shared.
    shared: dict[int, list[float]] = {}
    for pair in pairwise:
        for who in (pair["a"], pair["b"]):
            totals = shared.setdefault(who, [0.0, 0.0])
            totals[0] += pair["agreement"] * pair["tasks"]
            totals[1] += pair["tasks"]
    out = []
    for member in members.order_by("user_id"):
        user: User = member.user
        n = submitted.get(user.pk, 0)
        answers, accuracy = gold.get(user.pk, (0, None))
        weighted, tasks = shared.get(user.pk, (0.0, 0.0))
        out.append(
            {
                "user": user.pk,
                "username": user.username,
                "submitted": n,
                "pass_rate": (n - flagged.get(user.pk, 0)) / n if n else None,
                "agreement": weighted / tasks if tasks else None,
                "gold_answers": answers,
                "gold_accuracy": accuracy,
                "below_gold_threshold": accuracy is not None and accuracy < threshold,
                "paused": member.paused_at is not None,
                "open_findings": open_findings.get(user.pk, 0),
                "gold_series": _series(project_id, user.pk),
            }
        )
    return out


def _series(project_id: int, annotator_id: int) -> list[dict[str, Any]]:
    """The annotator's gold answers over time, oldest first, with the running accuracy."""
    rows = list(
        GoldAnswer.objects.filter(project_id=project_id, annotator_id=annotator_id)
        .order_by("-at", "-id")
        .values_list("at", "score")[:SERIES_POINTS]
    )
    rows.reverse()
    series, total = [], 0.0
    for count, (at, score) in enumerate(rows, 1):
        total += score
        series.append({"at": at, "score": score, "accuracy": total / count})
    return series
