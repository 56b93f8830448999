"""Quality's API: settings, jobs, findings, reports, gold tasks, pausing annotators, and model
evaluations against releases."""

from __future__ import annotations

from typing import Any

import django_filters
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response

from labeling import verdicts
from labeling.releases.services import release_get
from projects.access import ProjectAccess, ProjectAction, project_access
from projects.exceptions import InvalidInput, NotFound
from projects.idempotency import idempotency_parameter, idempotent
from projects.serializers import JobOutput
from projects.views import ListView, caller, parse
from quality import evaluation, jobs, selectors, services
from quality.charts import report_png
from quality.models import Evaluation, Finding, FindingSource, FindingStatus, TaskQuality
from quality.serializers import (
    EvaluationDetailOutput,
    EvaluationInput,
    EvaluationOutput,
    FindingOutput,
    FindingStatusInput,
    GoldInput,
    PauseInput,
    QualityJobInput,
    QualitySettingsInput,
    TaskQualityOutput,
)

_KINDS = {"rules": jobs.RULES_KIND, "agreement": jobs.AGREEMENT_KIND, "label_errors": jobs.LABEL_ERRORS_KIND}


def _access(request: Request, project_id: int) -> ProjectAccess:
    return project_access(user=caller(request), project_id=project_id)


class QualitySettingsView(generics.GenericAPIView):
    @extend_schema(responses={200: dict}, tags=["quality"])
    def get(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id).require(ProjectAction.QUALITY_VIEW)
        return Response(services.quality_settings(access.project).as_json())

    @extend_schema(request=QualitySettingsInput, responses={200: dict}, tags=["quality"])
    def put(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        if not isinstance(request.data, dict):
            raise InvalidInput("Quality settings are a JSON object.")
        saved = services.quality_settings_update(actor=caller(request), access=access, raw=dict(request.data))
        return Response(saved.as_json())


class QualityJobView(generics.GenericAPIView):
    @extend_schema(
        request=QualityJobInput,
        responses={202: JobOutput},
        tags=["quality"],
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(QualityJobInput, request)
        kind = fields.pop("kind")
        job = jobs.quality_job_start(actor=caller(request), access=access, kind=_KINDS[kind], params=fields)
        return Response(JobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class FindingFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=FindingStatus.choices)
    source = django_filters.MultipleChoiceFilter(choices=FindingSource.choices)
    kind = django_filters.CharFilter()
    severity = django_filters.ChoiceFilter(choices=[("blocking", "blocking"), ("warning", "warning")])
    task = django_filters.NumberFilter(field_name="task_id")
    annotation = django_filters.NumberFilter(field_name="annotation_id")
    annotator = django_filters.NumberFilter(field_name="annotator_id")
    label = django_filters.CharFilter()
    min_score = django_filters.NumberFilter(field_name="score", lookup_expr="gte")

    class Meta:
        model = Finding
        fields = ["status", "source", "kind", "severity", "task", "annotation", "annotator", "label"]


class FindingListView(ListView):
    queryset = Finding.objects.none()
    output_class = FindingOutput
    filterset_class = FindingFilter

    @extend_schema(responses=FindingOutput(many=True), tags=["quality"])
    def get(self, request: Request, project_id: int) -> Response:
        return self.list_response(selectors.finding_list(access=_access(request, project_id)))


class FindingDetailView(generics.GenericAPIView):
    @extend_schema(responses=FindingOutput, tags=["quality"])
    def get(self, request: Request, project_id: int, finding_id: int) -> Response:
        found = selectors.finding_get(access=_access(request, project_id), finding_id=finding_id)
        return Response(FindingOutput(found).data)


class FindingStatusView(generics.GenericAPIView):
    @extend_schema(request=FindingStatusInput, responses=FindingOutput, tags=["quality"])
    def post(self, request: Request, project_id: int, finding_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(FindingStatusInput, request)
        found = services.finding_set_status(
            actor=caller(request),
            access=access,
            finding_id=finding_id,
            status=fields["status"],
            note=fields["note"],
        )
        return Response(FindingOutput(found).data)


_ANNOTATOR = OpenApiParameter("annotator", int, description="One annotator's report (a user id).")


def _annotator(request: Request) -> int | None:
    raw = request.query_params.get("annotator") or ""
    if not raw:
        return None
    if not raw.isdigit():
        raise InvalidInput("annotator is a user id.", field="annotator")
    return int(raw)


class QualityReportView(generics.GenericAPIView):
    @extend_schema(responses={200: dict}, parameters=[_ANNOTATOR], tags=["quality"])
    def get(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        return Response(selectors.quality_report(access=access, annotator_id=_annotator(request)))


class QualityReportChartView(generics.GenericAPIView):
    @extend_schema(
        responses={(200, "image/png"): OpenApiResponse(description="The report as a PNG chart.")},
        parameters=[_ANNOTATOR],
        tags=["quality"],
    )
    def get(self, request: Request, project_id: int) -> HttpResponse:
        access = _access(request, project_id)
        report = selectors.quality_report(access=access, annotator_id=_annotator(request))
        return HttpResponse(report_png(report), content_type="image/png")


class TaskQualityView(generics.GenericAPIView):
    @extend_schema(responses=TaskQualityOutput, tags=["quality"])
    def get(self, request: Request, project_id: int, task_id: int) -> Response:
        access = _access(request, project_id).require(ProjectAction.QUALITY_VIEW)
        found = TaskQuality.objects.filter(project_id=access.project.pk, task_id=task_id).first()
        if found is None:
            raise NotFound("This task has no agreement assessment.", task_id=task_id)
        return Response(TaskQualityOutput(found).data)


class GoldView(generics.GenericAPIView):
    @extend_schema(request=GoldInput, responses={200: dict}, tags=["quality"])
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(GoldInput, request)
        changed = verdicts.tasks_gold_set(
            actor=caller(request), access=access, task_ids=fields["tasks"], is_gold=fields["is_gold"]
        )
        return Response({"changed": changed})


class AnnotatorPauseView(generics.GenericAPIView):
    @extend_schema(request=PauseInput, responses={200: dict}, tags=["quality"])
    def post(self, request: Request, project_id: int, user_id: int) -> Response:
        access = _access(request, project_id).require(ProjectAction.QUALITY_MANAGE)
        fields: dict[str, Any] = parse(PauseInput, request)
        changed = verdicts.annotator_pause(
            project_id=access.project.pk,
            user_id=user_id,
            reason=fields["reason"] or "paused by a manager",
            actor=caller(request),
            pause=fields["paused"],
        )
        return Response({"user": user_id, "paused": fields["paused"], "changed": changed})


# --- Model evaluations ---------------------------------------------------------------------------

_EVALUATION_TAGS = ["evaluations"]


class ReleaseEvaluationListView(ListView):
    queryset = Evaluation.objects.none()
    output_class = EvaluationOutput

    @extend_schema(
        parameters=[
            OpenApiParameter("split", str, description='Only evaluations of this split ("" = all items).')
        ],
        responses=EvaluationOutput(many=True),
        tags=_EVALUATION_TAGS,
    )
    def get(self, request: Request, release_id: int) -> Response:
        release, _ = release_get(user=caller(request), release_id=release_id)
        split = request.query_params.get("split")
        if split is not None and len(split) > 16:
            raise InvalidInput("No such split.", field="split")
        return self.list_response(evaluation.evaluations_of(release, split=split))

    @extend_schema(
        request=EvaluationInput,
        responses={200: EvaluationOutput, 202: EvaluationOutput},
        tags=_EVALUATION_TAGS,
    )
    def post(self, request: Request, release_id: int) -> Response:
        user = caller(request)
        release, access = release_get(user=user, release_id=release_id, action=ProjectAction.MODELS_EVALUATE)
        fields = parse(EvaluationInput, request)
        found, created = evaluation.evaluation_request(
            actor=user,
            access=access,
            release=release,
            model_version_id=fields["model_version"],
            split=fields["split"],
            threshold=fields["threshold"],
            rerun=fields["rerun"],
        )
        return Response(
            EvaluationOutput(found).data, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        )


class EvaluationDetailView(generics.GenericAPIView):
    @extend_schema(responses=EvaluationDetailOutput, tags=_EVALUATION_TAGS)
    def get(self, request: Request, evaluation_id: int) -> Response:
        found = evaluation.evaluation_get(user=caller(request), evaluation_id=evaluation_id)
        return Response(EvaluationDetailOutput(found).data)


class EvaluationPlotView(generics.GenericAPIView):
    @extend_schema(
        responses={(200, "image/png"): OpenApiResponse(description="The plot as a PNG.")},
        tags=_EVALUATION_TAGS,
    )
    def get(self, request: Request, evaluation_id: int, name: str) -> HttpResponse:
        found = evaluation.evaluation_get(user=caller(request), evaluation_id=evaluation_id)
        return HttpResponse(evaluation.plot_png(found, name), content_type="image/png")
