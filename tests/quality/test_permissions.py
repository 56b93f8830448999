"""Every quality endpoint called by every kind of caller answers what the permission matrix says."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import URLPattern
from django.utils import timezone

from labeling.models import Annotation, MLModel, ModelVersion, Release
from projects.access import ProjectAction
from quality import urls as quality_urls
from quality.models import Evaluation, Finding, TaskQuality
from tests.labeling.conftest import Labeled
from tests.labeling.test_permissions import BOX, Case, check_every_caller

pytestmark = pytest.mark.django_db

P = "projects/<int:project_id>/quality"


def _finding(labeled: Labeled) -> int:
    found = Finding.objects.filter(project=labeled.world.project).first()
    if found is None:
        task_id = labeled.tasks["image"]
        found = Finding.objects.create(
            project=labeled.world.project,
            task_id=task_id,
            source="rule",
            kind="size",
            code="too_small",
            severity="warning",
            message="too small",
            key=f"rule:size:t{task_id}::too_small",
        )
    return found.pk


def _assessed(labeled: Labeled) -> int:
    task_id = labeled.tasks["image"]
    TaskQuality.objects.get_or_create(
        task_id=task_id, defaults={"project": labeled.world.project, "annotators": 2}
    )
    return task_id


def _gold_task(labeled: Labeled) -> dict[str, Any]:
    task_id = labeled.tasks["image"]
    if not Annotation.objects.filter(task_id=task_id, ground_truth=True).exists():
        Annotation.objects.create(
            task_id=task_id,
            author=labeled.world.users["manager"],
            schema_version=1,
            result=[BOX],
            state="submitted",
            ground_truth=True,
        )
    return {"tasks": [task_id], "is_gold": True}


def _release(labeled: Labeled) -> int:
    found, _ = Release.objects.get_or_create(
        project=labeled.world.project,
        version=1,
        defaults={"name": "r", "schema_version": 1, "state": "ready", "counts": {"by_split": {"test": 0}}},
    )
    return found.pk


def _model_version(labeled: Labeled) -> int:
    model, _ = MLModel.objects.get_or_create(organization=labeled.world.org, name="detector")
    found, _ = ModelVersion.objects.get_or_create(
        model=model, version="1",
        defaults={"kind": "http", "endpoint": "http://127.0.0.1:9", "task_type": "detection",
                  "modalities": ["image"], "outputs": ["bbox"]},
    )  # fmt: skip
    return found.pk


def _evaluation(labeled: Labeled) -> int:
    """A finished classification evaluation (its confusion matrix can be drawn)."""
    metrics = {"classification": {"accuracy": 1.0, "confusion": {"labels": ["sunny"], "matrix": [[1]]}}}
    found, _ = Evaluation.objects.get_or_create(
        project=labeled.world.project,
        release_id=_release(labeled),
        model_version_id=_model_version(labeled),
        defaults={"task_type": "classification", "evaluated_at": timezone.now(), "metrics": metrics},
    )
    return found.pk


CASES = [
    Case("GET", f"{P}/settings", lambda w: w.url("/quality/settings"), ProjectAction.QUALITY_VIEW, 200),
    Case(
        "PUT",
        f"{P}/settings",
        lambda w: w.url("/quality/settings"),
        ProjectAction.QUALITY_MANAGE,
        200,
        body=lambda w, who: {"rules": [{"rule": "size", "severity": "warning", "min_area": 4}]},
    ),
    Case(
        "POST",
        f"{P}/jobs",
        lambda w: w.url("/quality/jobs"),
        ProjectAction.QUALITY_MANAGE,
        202,
        body=lambda w, who: {"kind": "rules"},
        also=(409,),  # one rules job at a time per project: a second caller finds it running
    ),
    Case("GET", f"{P}/findings", lambda w: w.url("/quality/findings"), ProjectAction.QUALITY_VIEW, 200),
    Case(
        "GET",
        f"{P}/findings/<int:finding_id>",
        lambda w: w.url(f"/quality/findings/{_finding(w)}"),
        ProjectAction.QUALITY_VIEW,
        200,
    ),
    Case(
        "POST",
        f"{P}/findings/<int:finding_id>/status",
        lambda w: w.url(f"/quality/findings/{_finding(w)}/status"),
        ProjectAction.QUALITY_TRIAGE,
        200,
        body=lambda w, who: {"status": "dismissed"},
    ),
    Case("GET", f"{P}/report", lambda w: w.url("/quality/report"), ProjectAction.QUALITY_VIEW, 200),
    Case("GET", f"{P}/report.png", lambda w: w.url("/quality/report.png"), ProjectAction.QUALITY_VIEW, 200),
    Case(
        "GET",
        f"{P}/tasks/<int:task_id>",
        lambda w: w.url(f"/quality/tasks/{_assessed(w)}"),
        ProjectAction.QUALITY_VIEW,
        200,
    ),
    Case(
        "POST",
        f"{P}/gold",
        lambda w: w.url("/quality/gold"),
        ProjectAction.QUALITY_MANAGE,
        200,
        body=lambda w, who: _gold_task(w),
    ),
    Case(
        "POST",
        f"{P}/annotators/<int:user_id>/pause",
        lambda w: w.url(f"/quality/annotators/{w.world.users['annotator'].pk}/pause"),
        ProjectAction.QUALITY_MANAGE,
        200,
        body=lambda w, who: {"paused": True, "reason": "test"},
    ),
    Case(
        "GET",
        "releases/<int:release_id>/evaluations",
        lambda w: f"/api/v1/releases/{_release(w)}/evaluations",
        ProjectAction.RELEASES_VIEW,
        200,
    ),
    Case(
        "POST",
        "releases/<int:release_id>/evaluations",
        lambda w: f"/api/v1/releases/{_release(w)}/evaluations",
        ProjectAction.MODELS_EVALUATE,
        202,
        body=lambda w, who: {"model_version": _model_version(w)},
        also=(200,),  # asked already by an earlier caller: the same evaluation
    ),
    Case(
        "GET",
        "evaluations/<int:evaluation_id>",
        lambda w: f"/api/v1/evaluations/{_evaluation(w)}",
        ProjectAction.RELEASES_VIEW,
        200,
    ),
    Case(
        "GET",
        "evaluations/<int:evaluation_id>/plots/<str:name>.png",
        lambda w: f"/api/v1/evaluations/{_evaluation(w)}/plots/confusion_matrix.png",
        ProjectAction.RELEASES_VIEW,
        200,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.method} {c.route}" for c in CASES])
def test_every_caller_gets_what_the_matrix_says(labeled: Labeled, case: Case) -> None:
    check_every_caller(labeled, case)


def test_the_cases_cover_every_quality_endpoint_and_method() -> None:
    served = set()
    for pattern in quality_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        view_class = pattern.callback.view_class  # type: ignore[attr-defined]
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view_class, method):
                served.add((str(pattern.pattern), method.upper()))
    assert {(c.route, c.method) for c in CASES} == served
