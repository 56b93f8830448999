"""Every labeling endpoint called by every kind of caller answers what the permission matrix says.

Expectations come from PROJECT_MATRIX (projects/access.py): no role in the project → 404, a role
the action does not allow → 403, else the endpoint's success status.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern
from django.utils import timezone

from labeling import urls as labeling_urls
from labeling.models import Annotation, Assignment, Comment, Task
from projects.access import PROJECT_MATRIX, ProjectAction
from tests.conftest import CALLERS
from tests.labeling.conftest import SPEC, Labeled

pytestmark = pytest.mark.django_db

BOX = {"id": "b", "type": "bbox", "label": "truck", "geometry": {"x": 1, "y": 1, "width": 5, "height": 5}}


@dataclass
class Case:
    method: str
    route: str  # the URL pattern, for the coverage check
    path: Callable[[Labeled], str]
    action: ProjectAction
    success: int
    body: Callable[[Labeled, str], dict[str, Any]] | None = None
    headers: Callable[[Labeled, str], dict[str, str]] | None = None
    multipart: bool = False
    # Annotations an annotator did not write are invisible to other annotators (404), and
    # changing one needs authorship or edit_any.
    owner_rule: bool = False
    # Endpoints acting on the annotator's own assignment: other callers allowed the action
    # do not see it (404).
    own_assignment: bool = False
    # Statuses that count as success besides `success` (the queue answers 204 when it is empty,
    # a review 409 when the task is not waiting for one): the permission check is what is tested.
    also: tuple[int, ...] = ()


def _annotation(labeled: Labeled) -> int:
    found = Annotation.objects.filter(task__project=labeled.world.project, deleted_at__isnull=True).first()
    if found is None:
        found = Annotation.objects.create(
            task_id=labeled.tasks["image"],
            author=labeled.world.users["annotator"],
            schema_version=1,
            result=[BOX],
        )
    return found.pk


def _fresh_annotation(labeled: Labeled) -> int:
    return Annotation.objects.create(
        task_id=labeled.tasks["image"],
        author=labeled.world.users["annotator"],
        schema_version=1,
        result=[BOX],
    ).pk


def _assignment(labeled: Labeled) -> Assignment:
    """The annotator's assignment on the image task, with a live lease (made if missing)."""
    found = Assignment.objects.filter(user=labeled.world.users["annotator"]).first()
    if found is None:
        found = Assignment.objects.create(
            task_id=labeled.tasks["image"],
            user=labeled.world.users["annotator"],
            state="active",
            lease_id=uuid.uuid4(),
            lease_until=timezone.now() + timedelta(hours=1),
            started_at=timezone.now(),
        )
        Task.objects.filter(id=labeled.tasks["image"]).update(active=1, open_slots=0, state="in_progress")
    return found


def _lease_body(labeled: Labeled, _: str) -> dict[str, Any]:
    return {"lease_id": str(_assignment(labeled).lease_id), "result": [BOX]}


def _comment(labeled: Labeled) -> int:
    return Comment.objects.create(
        task_id=labeled.tasks["image"], author=labeled.world.users["manager"], body="x"
    ).pk


def _etag(labeled: Labeled, _: str) -> dict[str, str]:
    return {"HTTP_IF_MATCH": f'"{Annotation.objects.get(id=_annotation(labeled)).version}"'}


P = "projects/<int:project_id>"
CASES = [
    Case("GET", f"{P}/schemas", lambda w: w.url("/schemas"), ProjectAction.SCHEMA_VIEW, 200),
    Case(
        "POST",
        f"{P}/schemas",
        lambda w: w.url("/schemas"),
        ProjectAction.SCHEMA_PUBLISH,
        201,
        body=lambda w, who: {"spec": SPEC},
    ),
    Case("GET", f"{P}/schemas/<int:version>", lambda w: w.url("/schemas/1"), ProjectAction.SCHEMA_VIEW, 200),
    Case("GET", f"{P}/tasks", lambda w: w.url("/tasks"), ProjectAction.TASKS_VIEW, 200),
    Case(
        "POST",
        f"{P}/tasks",
        lambda w: w.url("/tasks"),
        ProjectAction.TASKS_CREATE,
        200,
        body=lambda w, who: {},
    ),
    Case(
        "GET",
        f"{P}/tasks/<int:task_id>",
        lambda w: w.url(f"/tasks/{w.tasks['image']}"),
        ProjectAction.TASKS_VIEW,
        200,
    ),
    Case(
        "GET",
        f"{P}/tasks/<int:task_id>/annotations",
        lambda w: w.url(f"/tasks/{w.tasks['image']}/annotations"),
        ProjectAction.TASKS_VIEW,
        200,
    ),
    Case(
        "POST",
        f"{P}/tasks/<int:task_id>/annotations",
        lambda w: w.url(f"/tasks/{w.tasks['dicom']}/annotations"),
        ProjectAction.ANNOTATE,
        201,
        body=lambda w, who: {"result": [BOX]},
    ),
    Case("GET", f"{P}/annotations", lambda w: w.url("/annotations"), ProjectAction.VIEW, 200),
    Case(
        "GET",
        f"{P}/annotations/<int:annotation_id>",
        lambda w: w.url(f"/annotations/{_annotation(w)}"),
        ProjectAction.ANNOTATIONS_VIEW_ALL,
        200,
        owner_rule=True,
    ),
    Case(
        "PATCH",
        f"{P}/annotations/<int:annotation_id>",
        lambda w: w.url(f"/annotations/{_annotation(w)}"),
        ProjectAction.ANNOTATIONS_EDIT_ANY,
        200,
        body=lambda w, who: {"result": [BOX]},
        headers=_etag,
        owner_rule=True,
    ),
    Case(
        "DELETE",
        f"{P}/annotations/<int:annotation_id>",
        lambda w: w.url(f"/annotations/{_fresh_annotation(w)}"),
        ProjectAction.ANNOTATIONS_EDIT_ANY,
        204,
        headers=lambda w, who: {"HTTP_IF_MATCH": '"1"'},
        owner_rule=True,
    ),
    Case(
        "GET",
        f"{P}/annotations/<int:annotation_id>/revisions",
        lambda w: w.url(f"/annotations/{_annotation(w)}/revisions"),
        ProjectAction.ANNOTATIONS_VIEW_ALL,
        200,
        owner_rule=True,
    ),
    Case("GET", f"{P}/predictions", lambda w: w.url("/predictions"), ProjectAction.PREDICTIONS_VIEW, 200),
    Case(
        "POST",
        f"{P}/predictions",
        lambda w: w.url("/predictions"),
        ProjectAction.PREDICTIONS_CREATE,
        201,
        body=lambda w, who: {
            "model_version": "m",
            "predictions": [{"task": w.tasks["dicom"], "result": [BOX]}],
        },
    ),
    Case(
        "POST",
        f"{P}/imports",
        lambda w: w.url("/imports"),
        ProjectAction.ANNOTATIONS_IMPORT,
        202,
        body=lambda w, who: {"file": SimpleUploadedFile("a.jsonl", b"\n"), "format": "jsonl"},
        multipart=True,
    ),
    Case(
        "POST",
        f"{P}/exports",
        lambda w: w.url("/exports"),
        ProjectAction.ANNOTATIONS_EXPORT,
        202,
        body=lambda w, who: {"format": "jsonl"},
    ),
]


def _path(suffix: str) -> Callable[[Labeled], str]:
    return lambda w: w.url(suffix)


def _on_assignment(action: str) -> Callable[[Labeled], str]:
    return lambda w: w.url(f"/assignments/{_assignment(w).pk}{action}")


CASES += [
    Case("GET", f"{P}/workflow", _path("/workflow"), ProjectAction.VIEW, 200),
    Case(
        "PATCH",
        f"{P}/workflow",
        _path("/workflow"),
        ProjectAction.WORKFLOW_UPDATE,
        200,
        body=lambda w, who: {"overlap": 2},
    ),
    Case("POST", f"{P}/next", _path("/next"), ProjectAction.ANNOTATE, 200, also=(204,)),
    Case("GET", f"{P}/assignments", _path("/assignments"), ProjectAction.VIEW, 200),
    Case(
        "POST",
        f"{P}/assignments/bulk",
        _path("/assignments/bulk"),
        ProjectAction.ASSIGN,
        200,
        body=lambda w, who: {"users": [{"user": w.world.users["annotator"].pk, "quota": 1}]},
    ),
    Case(
        "DELETE",
        f"{P}/assignments/<int:assignment_id>",
        _on_assignment(""),
        ProjectAction.ASSIGN,
        204,
        also=(409,),
    ),
    Case(
        "POST",
        f"{P}/assignments/<int:assignment_id>/reassign",
        _on_assignment("/reassign"),
        ProjectAction.ASSIGN,
        200,
        body=lambda w, who: {"user": w.world.users["reviewer"].pk},
        also=(409,),
    ),
    Case(
        "POST",
        f"{P}/assignments/<int:assignment_id>/draft",
        _on_assignment("/draft"),
        ProjectAction.ANNOTATE,
        200,
        body=_lease_body,
        own_assignment=True,
    ),
    Case(
        "POST",
        f"{P}/assignments/<int:assignment_id>/submit",
        _on_assignment("/submit"),
        ProjectAction.ANNOTATE,
        201,
        body=_lease_body,
        own_assignment=True,
    ),
    Case(
        "POST",
        f"{P}/assignments/<int:assignment_id>/skip",
        _on_assignment("/skip"),
        ProjectAction.ANNOTATE,
        200,
        body=_lease_body,
        own_assignment=True,
    ),
    Case(
        "POST",
        f"{P}/assignments/<int:assignment_id>/release",
        _on_assignment("/release"),
        ProjectAction.ANNOTATE,
        200,
        body=_lease_body,
        own_assignment=True,
    ),
    Case("POST", f"{P}/next-review", _path("/next-review"), ProjectAction.REVIEW, 200, also=(204,)),
    Case(
        "POST",
        f"{P}/annotations/<int:annotation_id>/review",
        lambda w: w.url(f"/annotations/{_annotation(w)}/review"),
        ProjectAction.REVIEW,
        200,
        body=lambda w, who: {"verdict": "accept"},
        headers=_etag,
        also=(409, 403),
    ),
    Case(
        "GET",
        f"{P}/tasks/<int:task_id>/comments",
        lambda w: w.url(f"/tasks/{w.tasks['image']}/comments"),
        ProjectAction.TASKS_VIEW,
        200,
    ),
    Case(
        "POST",
        f"{P}/tasks/<int:task_id>/comments",
        lambda w: w.url(f"/tasks/{w.tasks['image']}/comments"),
        ProjectAction.COMMENT,
        201,
        body=lambda w, who: {"body": "Look here."},
    ),
    Case(
        "POST",
        f"{P}/comments/<int:comment_id>/resolve",
        lambda w: w.url(f"/comments/{_comment(w)}/resolve"),
        ProjectAction.COMMENT,
        200,
    ),
    Case("GET", f"{P}/progress", _path("/progress"), ProjectAction.PROGRESS_VIEW, 200),
    Case("GET", f"{P}/annotators", _path("/annotators"), ProjectAction.ANNOTATORS_VIEW, 200),
]


def _model_version(labeled: Labeled) -> int:
    """A registered model server of the project's organization (a public address: no request is
    made while registering it)."""
    from labeling.models import MLModel, ModelVersion

    model, _ = MLModel.objects.get_or_create(organization=labeled.world.org, name="boxes")
    version, _ = ModelVersion.objects.get_or_create(
        model=model,
        version="1",
        defaults={"kind": "http", "endpoint": "http://93.184.216.34/", "task_type": "detection",
                  "modalities": ["image"], "outputs": ["bbox"], "labels": ["truck"]},
    )  # fmt: skip
    return version.pk


CASES += [
    Case("GET", f"{P}/models", _path("/models"), ProjectAction.PREDICTIONS_VIEW, 200),
    Case(
        "POST",
        f"{P}/models",
        _path("/models"),
        ProjectAction.PREDICTIONS_CREATE,
        201,
        body=lambda w, who: {
            "name": "boxes",
            "version": f"by-{who}",
            "kind": "http",
            "endpoint": "http://93.184.216.34/",
            "task_type": "detection",
            "modalities": ["image"],
            "outputs": ["bbox"],
        },
    ),
    Case(
        "POST",
        f"{P}/prelabel",
        _path("/prelabel"),
        ProjectAction.PREDICTIONS_CREATE,
        202,
        body=lambda w, who: {"model_version": _model_version(w)},
    ),
    Case(
        "GET",
        f"{P}/prelabel/report",
        lambda w: w.url(f"/prelabel/report?model_version={_model_version(w)}"),
        ProjectAction.PROGRESS_VIEW,
        200,
    ),
    # No worker runs here: an allowed caller waits out the (shortened) deadline and gets 504.
    Case(
        "POST",
        f"{P}/tasks/<int:task_id>/predict",
        lambda w: w.url(f"/tasks/{w.tasks['image']}/predict"),
        ProjectAction.ANNOTATE,
        200,
        body=lambda w, who: {"model_version": _model_version(w)},
        also=(504,),
    ),
]


def _webhook(labeled: Labeled) -> int:
    """A webhook of the project to a public address (nothing is sent while the test runs)."""
    from labeling.webhooks.models import Webhook

    return Webhook.objects.create(
        project=labeled.world.project, url="http://93.184.216.34/hook", events=["task.accepted"],
        secret="s" * 32,
    ).pk  # fmt: skip


def _finished_delivery(labeled: Labeled) -> str:
    """A failed delivery of a fresh webhook: each allowed caller redelivers its own."""
    from labeling.webhooks.models import WebhookDelivery

    webhook_id = _webhook(labeled)
    delivery = WebhookDelivery.objects.create(
        webhook_id=webhook_id, event="ping", body="{}", state="failed", attempts=1, attempt_limit=1
    )
    return labeled.url(f"/webhooks/{webhook_id}/deliveries/{delivery.pk}/redeliver")


W = f"{P}/webhooks"
CASES += [
    Case("GET", W, _path("/webhooks"), ProjectAction.WEBHOOKS_MANAGE, 200),
    Case(
        "POST",
        W,
        _path("/webhooks"),
        ProjectAction.WEBHOOKS_MANAGE,
        201,
        body=lambda w, who: {"url": "http://93.184.216.34/hook", "events": ["task.accepted"]},
    ),
    Case(
        "GET",
        f"{W}/<int:webhook_id>",
        lambda w: w.url(f"/webhooks/{_webhook(w)}"),
        ProjectAction.WEBHOOKS_MANAGE,
        200,
    ),
    Case(
        "PATCH",
        f"{W}/<int:webhook_id>",
        lambda w: w.url(f"/webhooks/{_webhook(w)}"),
        ProjectAction.WEBHOOKS_MANAGE,
        200,
        body=lambda w, who: {"description": who},
    ),
    Case(
        "DELETE",
        f"{W}/<int:webhook_id>",
        lambda w: w.url(f"/webhooks/{_webhook(w)}"),
        ProjectAction.WEBHOOKS_MANAGE,
        204,
    ),
    Case(
        "GET",
        f"{W}/<int:webhook_id>/deliveries",
        lambda w: w.url(f"/webhooks/{_webhook(w)}/deliveries"),
        ProjectAction.WEBHOOKS_MANAGE,
        200,
    ),
    Case(
        "POST",
        f"{W}/<int:webhook_id>/deliveries/<int:delivery_id>/redeliver",
        _finished_delivery,
        ProjectAction.WEBHOOKS_MANAGE,
        202,
    ),
    Case(
        "POST",
        f"{W}/<int:webhook_id>/ping",
        lambda w: w.url(f"/webhooks/{_webhook(w)}/ping"),
        ProjectAction.WEBHOOKS_MANAGE,
        202,
    ),
]


@pytest.fixture(autouse=True)
def _short_predict_deadline(settings: Any) -> None:
    settings.LOUPE_PREDICT_TIMEOUT_S = 1


def expected(case: Case, role: str | None, who: str) -> int:
    if role is None:
        return 404
    if case.own_assignment:
        if role not in PROJECT_MATRIX[case.action]:
            return 403
        return case.success if who == "annotator" else 404
    if case.owner_rule:
        # The annotation was written by the annotator: annotators see only their own.
        sees = role in PROJECT_MATRIX[ProjectAction.ANNOTATIONS_VIEW_ALL] or who == "annotator"
        if not sees:
            return 404
        if case.method in ("PATCH", "DELETE"):
            allowed = role in PROJECT_MATRIX[case.action] or who == "annotator"
            return case.success if allowed else 403
        return case.success
    return case.success if role in PROJECT_MATRIX[case.action] else 403


@pytest.mark.parametrize("case", CASES, ids=[f"{c.method} {c.route}" for c in CASES])
def test_every_caller_gets_what_the_matrix_says(labeled: Labeled, case: Case) -> None:
    check_every_caller(labeled, case)


def check_every_caller(labeled: Labeled, case: Case) -> None:
    """Call the case's endpoint as every kind of caller; each gets what the matrix says."""
    outcomes = {}
    for who, role in CALLERS.items():
        client = labeled.world.client(who)
        kwargs: dict[str, Any] = {}
        if case.body is not None:
            kwargs["data"] = case.body(labeled, who)
            kwargs["format"] = "multipart" if case.multipart else "json"
        if case.headers is not None:
            kwargs.update(case.headers(labeled, who))
        response = getattr(client, case.method.lower())(case.path(labeled), **kwargs)
        want = expected(case, role, who)
        got = want if want == case.success and response.status_code in case.also else response.status_code
        outcomes[who] = (got, want)
    wrong = {who: got for who, got in outcomes.items() if got[0] != got[1]}
    assert not wrong, f"(got, expected) per caller: {wrong}"


def test_the_cases_cover_every_labeling_endpoint_and_method() -> None:
    served = set()
    for pattern in labeling_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        view_class = pattern.callback.view_class  # type: ignore[attr-defined]
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view_class, method):
                served.add((str(pattern.pattern), method.upper()))
    served.add((f"{P}/exports/<int:job_id>/download", "GET"))  # tested with a finished export
    served.discard(("models/builtin", "GET"))  # not project-scoped: every signed-in user reads it
    assert {(c.route, c.method) for c in CASES} | {(f"{P}/exports/<int:job_id>/download", "GET")} == served
