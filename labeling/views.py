"""Label schemas, tasks, annotations (with ETag / If-Match), predictions, imports and exports."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import django_filters
from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from labeling import jobs as labeling_jobs
from labeling import prelabel, selectors, services, workflow
from labeling.models import (
    Annotation,
    AnnotationState,
    Assignment,
    AssignmentState,
    Comment,
    LabelSchema,
    ModelVersion,
    Prediction,
    Task,
    TaskState,
)
from labeling.serializers import (
    AnnotationCreateInput,
    AnnotationOutput,
    AnnotationUpdateInput,
    AssignmentOutput,
    BuiltinModelOutput,
    BulkAssignInput,
    CommentInput,
    CommentOutput,
    DownloadOutput,
    DraftInput,
    ExportInput,
    ForReviewOutput,
    ImportInput,
    ModelVersionInput,
    ModelVersionOutput,
    NextOutput,
    PredictInput,
    PredictionOutput,
    PredictionsCreatedOutput,
    PredictionsCreateInput,
    PrelabelInput,
    PrelabelReportOutput,
    PrelabelReportQuery,
    ReassignInput,
    ReviewInput,
    RevisionOutput,
    SchemaOutput,
    SchemaPublishInput,
    SkipInput,
    SubmitInput,
    TaskOutput,
    TasksCreateInput,
    WorkflowSerializer,
)
from projects.access import ProjectAccess, ProjectAction, project_access
from projects.idempotency import idempotency_parameter, idempotent
from projects.serializers import JobOutput
from projects.views import ListView, caller, parse
from storage.serializers import item_content_url
from storage.views import require_body_at_most

IF_MATCH = OpenApiParameter(
    "If-Match",
    str,
    location=OpenApiParameter.HEADER,
    required=True,
    description="The ETag of the annotation as read; 412 if it changed since, 428 if missing.",
)


def _access(request: Request, project_id: int) -> Any:
    return project_access(user=caller(request), project_id=project_id)


def _etag(annotation: Annotation) -> str:
    return f'"{annotation.version}"'


def _if_match(request: Request) -> int | None:
    """The version an If-Match header names; None when absent, -1 when it names no version."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = raw.strip()
    value = value.removeprefix("W/").strip('"')
    return int(value) if value.isdigit() else -1


def _annotation_response(annotation: Annotation, status_code: int = 200) -> Response:
    response = Response(AnnotationOutput(annotation).data, status=status_code)
    response["ETag"] = _etag(annotation)
    return response


# --- Schemas -----------------------------------------------------------------------------------


class SchemaListView(ListView):
    queryset = LabelSchema.objects.none()
    output_class = SchemaOutput

    @extend_schema(responses=SchemaOutput(many=True), tags=["schemas"])
    def get(self, request: Request, project_id: int) -> Response:
        return self.list_response(selectors.schema_list(access=_access(request, project_id)))

    @extend_schema(request=SchemaPublishInput, responses={201: SchemaOutput}, tags=["schemas"])
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(SchemaPublishInput, request)
        schema = services.schema_publish(actor=caller(request), access=access, **fields)
        return Response(SchemaOutput(schema).data, status=status.HTTP_201_CREATED)


class SchemaDetailView(generics.GenericAPIView):
    @extend_schema(responses=SchemaOutput, tags=["schemas"])
    def get(self, request: Request, project_id: int, version: int) -> Response:
        schema = selectors.schema_get(access=_access(request, project_id), version=version)
        return Response(SchemaOutput(schema).data)


# --- Tasks -------------------------------------------------------------------------------------


class TaskFilter(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=TaskState.choices)
    item = django_filters.NumberFilter(field_name="item_id")

    class Meta:
        model = Task
        fields = ["state", "item"]


class TaskListView(ListView):
    queryset = Task.objects.none()
    output_class = TaskOutput
    filterset_class = TaskFilter

    @extend_schema(responses=TaskOutput(many=True), tags=["tasks"])
    def get(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        return self.list_response(selectors.task_list(access=access), quality=_sees_quality(access))

    @extend_schema(request=TasksCreateInput, responses={200: dict}, tags=["tasks"])
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(TasksCreateInput, request)
        created = services.tasks_create(actor=caller(request), access=access, item_ids=fields["items"])
        return Response({"created": created})


class TaskDetailView(generics.GenericAPIView):
    @extend_schema(responses=TaskOutput, tags=["tasks"])
    def get(self, request: Request, project_id: int, task_id: int) -> Response:
        access = _access(request, project_id)
        task = selectors.task_get(access=access, task_id=task_id)
        return Response(TaskOutput(task, context={"quality": _sees_quality(access)}).data)


def _sees_quality(access: ProjectAccess) -> bool:
    return access.can(ProjectAction.QUALITY_VIEW)


# --- Annotations -------------------------------------------------------------------------------


class AnnotationFilter(django_filters.FilterSet):
    task = django_filters.NumberFilter(field_name="task_id")
    author = django_filters.NumberFilter(field_name="author_id")
    state = django_filters.ChoiceFilter(choices=AnnotationState.choices)
    ground_truth = django_filters.BooleanFilter()

    class Meta:
        model = Annotation
        fields = ["task", "author", "state", "ground_truth"]


class AnnotationListView(ListView):
    queryset = Annotation.objects.none()
    output_class = AnnotationOutput
    filterset_class = AnnotationFilter

    @extend_schema(responses=AnnotationOutput(many=True), tags=["annotations"])
    def get(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        return self.list_response(selectors.annotation_list(user=caller(request), access=access))


class TaskAnnotationListView(ListView):
    queryset = Annotation.objects.none()
    output_class = AnnotationOutput

    @extend_schema(responses=AnnotationOutput(many=True), tags=["annotations"])
    def get(self, request: Request, project_id: int, task_id: int) -> Response:
        access = _access(request, project_id)
        task = selectors.task_get(access=access, task_id=task_id)
        return self.list_response(
            selectors.annotation_list(user=caller(request), access=access).filter(task=task)
        )

    @extend_schema(
        request=AnnotationCreateInput,
        responses={201: AnnotationOutput},
        tags=["annotations"],
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request: Request, project_id: int, task_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(AnnotationCreateInput, request)
        annotation = services.annotation_create(
            actor=caller(request),
            access=access,
            task_id=task_id,
            result=fields["result"],
            state=fields["state"],
            lead_time_ms=fields["lead_time_ms"],
            ground_truth=fields["ground_truth"],
            from_prediction_id=fields["from_prediction"],
        )
        return _annotation_response(annotation, status.HTTP_201_CREATED)


class AnnotationDetailView(generics.GenericAPIView):
    @extend_schema(responses=AnnotationOutput, tags=["annotations"])
    def get(self, request: Request, project_id: int, annotation_id: int) -> Response:
        access = _access(request, project_id)
        annotation = services.annotation_visible(
            user=caller(request), access=access, annotation_id=annotation_id
        )
        return _annotation_response(annotation)

    @extend_schema(
        request=AnnotationUpdateInput, responses=AnnotationOutput, tags=["annotations"], parameters=[IF_MATCH]
    )
    def patch(self, request: Request, project_id: int, annotation_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(AnnotationUpdateInput, request)
        annotation = services.annotation_update(
            actor=caller(request),
            access=access,
            annotation_id=annotation_id,
            if_match=_if_match(request),
            change=services.AnnotationChange(**fields),
        )
        return _annotation_response(annotation)

    @extend_schema(responses={204: None}, tags=["annotations"], parameters=[IF_MATCH])
    def delete(self, request: Request, project_id: int, annotation_id: int) -> Response:
        access = _access(request, project_id)
        services.annotation_delete(
            actor=caller(request), access=access, annotation_id=annotation_id, if_match=_if_match(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class RevisionListView(ListView):
    queryset = Annotation.objects.none()
    output_class = RevisionOutput

    @extend_schema(responses=RevisionOutput(many=True), tags=["annotations"])
    def get(self, request: Request, project_id: int, annotation_id: int) -> Response:
        access = _access(request, project_id)
        annotation = services.annotation_visible(
            user=caller(request), access=access, annotation_id=annotation_id
        )
        return self.list_response(selectors.revision_list(annotation=annotation))


# --- Predictions -------------------------------------------------------------------------------


class PredictionFilter(django_filters.FilterSet):
    task = django_filters.NumberFilter(field_name="task_id")
    model_version = django_filters.CharFilter()

    class Meta:
        model = Prediction
        fields = ["task", "model_version"]


class PredictionListView(ListView):
    queryset = Prediction.objects.none()
    output_class = PredictionOutput
    filterset_class = PredictionFilter

    @extend_schema(responses=PredictionOutput(many=True), tags=["predictions"])
    def get(self, request: Request, project_id: int) -> Response:
        return self.list_response(selectors.prediction_list(access=_access(request, project_id)))

    @extend_schema(
        request=PredictionsCreateInput,
        responses={201: PredictionsCreatedOutput},
        tags=["predictions"],
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(PredictionsCreateInput, request)
        rows = [
            services.PredictionInput(
                result=p["result"], task_id=p["task"], item_id=p["item"], score=p["score"]
            )
            for p in fields["predictions"]
        ]
        created = services.predictions_create(
            actor=caller(request), access=access, model_version=fields["model_version"], predictions=rows
        )
        return Response({"created": len(created), "ids": created}, status=status.HTTP_201_CREATED)


# --- Imports and exports -----------------------------------------------------------------------


class ImportView(generics.GenericAPIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        request={"multipart/form-data": ImportInput},
        responses={202: JobOutput},
        tags=["formats"],
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        require_body_at_most(request, settings.LOUPE_UPLOAD_MAX_REQUEST_BYTES)
        fields = parse(ImportInput, request)
        upload = fields.pop("file")
        path = Path(upload.temporary_file_path())
        job = labeling_jobs.import_start(actor=caller(request), access=access, path=path, **fields)
        return Response(JobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class ExportView(generics.GenericAPIView):
    @extend_schema(request=ExportInput, responses={202: JobOutput}, tags=["formats"])
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(ExportInput, request)
        job = labeling_jobs.export_start(actor=caller(request), access=access, **fields)
        return Response(JobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class ExportDownloadView(generics.GenericAPIView):
    @extend_schema(responses=DownloadOutput, tags=["formats"])
    def get(self, request: Request, project_id: int, job_id: int) -> Response:
        access = _access(request, project_id)
        url, filename = labeling_jobs.export_url(user=caller(request), access=access, job_id=job_id)
        return Response({"url": url, "expires_in": settings.LOUPE_URL_EXPIRES_S, "filename": filename})


# --- Workflow: settings, queue, leases, assignment, review, comments, progress ------------------


class WorkflowView(generics.GenericAPIView):
    @extend_schema(responses=WorkflowSerializer, tags=["workflow"])
    def get(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        return Response(WorkflowSerializer(asdict(workflow.workflow_of(access.project))).data)

    @extend_schema(request=WorkflowSerializer, responses=WorkflowSerializer, tags=["workflow"])
    def patch(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        changes = parse(WorkflowSerializer, request, partial=True)
        settings_now = workflow.workflow_update(actor=caller(request), access=access, changes=changes)
        return Response(WorkflowSerializer(asdict(settings_now)).data)


def _handed_response(request: Request, handed: workflow.Handed) -> Response:
    item = handed.task.item
    return Response(
        {
            "task": TaskOutput(handed.task).data,
            "assignment": AssignmentOutput(handed.assignment).data,
            "draft": AnnotationOutput(handed.draft).data if handed.draft is not None else None,
            "predictions": [PredictionOutput(p).data for p in handed.predictions],
            "item": {
                "id": item.pk,
                "name": item.name,
                "modality": item.modality,
                "media_type": item.media_type,
                "meta": item.meta,
                "content_url": item_content_url(request, item),
            },
        }
    )


class NextView(generics.GenericAPIView):
    @extend_schema(request=None, responses={200: NextOutput, 204: None}, tags=["workflow"])
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        handed = workflow.task_next(actor=caller(request), access=access)
        if handed is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return _handed_response(request, handed)


class AssignmentFilter(django_filters.FilterSet):
    user = django_filters.NumberFilter(field_name="user_id")
    task = django_filters.NumberFilter(field_name="task_id")
    state = django_filters.MultipleChoiceFilter(choices=AssignmentState.choices)

    class Meta:
        model = Assignment
        fields = ["user", "task", "state"]


class AssignmentListView(ListView):
    queryset = Assignment.objects.none()
    output_class = AssignmentOutput
    filterset_class = AssignmentFilter

    @extend_schema(responses=AssignmentOutput(many=True), tags=["workflow"])
    def get(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        return self.list_response(selectors.assignment_list(user=caller(request), access=access))


class AssignmentDraftView(generics.GenericAPIView):
    @extend_schema(request=DraftInput, responses=AnnotationOutput, tags=["workflow"])
    def post(self, request: Request, project_id: int, assignment_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(DraftInput, request)
        draft = workflow.assignment_draft(
            actor=caller(request),
            access=access,
            assignment_id=assignment_id,
            lease_id=fields["lease_id"],
            result=fields["result"],
            from_prediction_id=fields["from_prediction"],
        )
        return _annotation_response(draft)


class AssignmentSubmitView(generics.GenericAPIView):
    @extend_schema(
        request=SubmitInput,
        responses={201: AnnotationOutput, 200: AnnotationOutput},
        tags=["workflow"],
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request: Request, project_id: int, assignment_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(SubmitInput, request)
        annotation, created = workflow.assignment_submit(
            actor=caller(request),
            access=access,
            assignment_id=assignment_id,
            lease_id=fields["lease_id"],
            result=fields["result"],
            lead_time_ms=fields["lead_time_ms"],
            from_prediction_id=fields["from_prediction"],
        )
        return _annotation_response(annotation, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class AssignmentSkipView(generics.GenericAPIView):
    skip = True

    @extend_schema(request=SkipInput, responses=AssignmentOutput, tags=["workflow"])
    def post(self, request: Request, project_id: int, assignment_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(SkipInput, request)
        assignment = workflow.assignment_give_back(
            actor=caller(request),
            access=access,
            assignment_id=assignment_id,
            lease_id=fields["lease_id"],
            reason=fields.get("reason", ""),
            skip=self.skip,
        )
        return Response(AssignmentOutput(assignment).data)


class AssignmentReleaseView(AssignmentSkipView):
    skip = False


class AssignmentBulkView(generics.GenericAPIView):
    @extend_schema(request=BulkAssignInput, responses={200: dict}, tags=["workflow"])
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(BulkAssignInput, request)
        counts = workflow.assignments_bulk(
            actor=caller(request),
            access=access,
            task_filter=dict(fields["filter"]),
            quotas=[workflow.Quota(user_id=q["user"], quota=q["quota"]) for q in fields["users"]],
        )
        return Response({"assigned": {str(user): count for user, count in counts.items()}})


class AssignmentReassignView(generics.GenericAPIView):
    @extend_schema(request=ReassignInput, responses=AssignmentOutput, tags=["workflow"])
    def post(self, request: Request, project_id: int, assignment_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(ReassignInput, request)
        moved = workflow.assignment_reassign(
            actor=caller(request), access=access, assignment_id=assignment_id, user_id=fields["user"]
        )
        return Response(AssignmentOutput(moved).data)


class AssignmentDetailView(generics.GenericAPIView):
    @extend_schema(responses={204: None}, tags=["workflow"])
    def delete(self, request: Request, project_id: int, assignment_id: int) -> Response:
        access = _access(request, project_id)
        workflow.assignment_unassign(actor=caller(request), access=access, assignment_id=assignment_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class NextReviewView(generics.GenericAPIView):
    @extend_schema(request=None, responses={200: ForReviewOutput, 204: None}, tags=["review"])
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        found = workflow.review_next(actor=caller(request), access=access)
        if found is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(ForReviewOutput({"task": found.task, "annotations": found.annotations}).data)


class ReviewView(generics.GenericAPIView):
    @extend_schema(request=ReviewInput, responses=AnnotationOutput, tags=["review"], parameters=[IF_MATCH])
    def post(self, request: Request, project_id: int, annotation_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(ReviewInput, request)
        annotation = workflow.annotation_review(
            actor=caller(request),
            access=access,
            annotation_id=annotation_id,
            verdict=fields["verdict"],
            comment=fields["comment"],
            result=fields["result"],
            if_match=_if_match(request),
        )
        return _annotation_response(annotation)


class CommentListView(ListView):
    queryset = Comment.objects.none()
    output_class = CommentOutput

    @extend_schema(responses=CommentOutput(many=True), tags=["review"])
    def get(self, request: Request, project_id: int, task_id: int) -> Response:
        access = _access(request, project_id)
        task = selectors.task_get(access=access, task_id=task_id)
        return self.list_response(selectors.comment_list(user=caller(request), access=access, task=task))

    @extend_schema(request=CommentInput, responses={201: CommentOutput}, tags=["review"])
    def post(self, request: Request, project_id: int, task_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(CommentInput, request)
        comment = workflow.comment_create(
            actor=caller(request),
            access=access,
            task_id=task_id,
            body=fields["body"],
            annotation_id=fields["annotation"],
            region=fields["region"],
            parent_id=fields["reply_to"],
        )
        return Response(CommentOutput(comment).data, status=status.HTTP_201_CREATED)


class CommentResolveView(generics.GenericAPIView):
    @extend_schema(request=None, responses=CommentOutput, tags=["review"])
    def post(self, request: Request, project_id: int, comment_id: int) -> Response:
        access = _access(request, project_id)
        comment = workflow.comment_resolve(actor=caller(request), access=access, comment_id=comment_id)
        return Response(CommentOutput(comment).data)


class ProgressView(generics.GenericAPIView):
    @extend_schema(responses={200: dict}, tags=["workflow"])
    def get(self, request: Request, project_id: int) -> Response:
        return Response(selectors.project_progress(access=_access(request, project_id)))


class AnnotatorStatsView(generics.GenericAPIView):
    @extend_schema(responses={200: dict}, tags=["workflow"])
    def get(self, request: Request, project_id: int) -> Response:
        return Response({"results": selectors.annotator_stats(access=_access(request, project_id))})


# --- Models and pre-labeling -------------------------------------------------------------------


class BuiltinModelListView(APIView):
    @extend_schema(responses=BuiltinModelOutput(many=True), tags=["models"])
    def get(self, request: Request) -> Response:
        return Response(BuiltinModelOutput(prelabel.builtin_catalog(), many=True).data)


class ModelVersionListView(ListView):
    queryset = ModelVersion.objects.none()
    output_class = ModelVersionOutput

    @extend_schema(responses=ModelVersionOutput(many=True), tags=["models"])
    def get(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        return self.list_response(selectors.model_version_list(access=access))

    @extend_schema(request=ModelVersionInput, responses={201: ModelVersionOutput}, tags=["models"])
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(ModelVersionInput, request)
        version = prelabel.model_register(
            actor=caller(request), access=access, spec=prelabel.VersionSpec(**fields)
        )
        return Response(ModelVersionOutput(version).data, status=status.HTTP_201_CREATED)


class PrelabelView(generics.GenericAPIView):
    @extend_schema(
        request=PrelabelInput,
        responses={202: JobOutput},
        tags=["models"],
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(PrelabelInput, request)
        job = prelabel.prelabel_start(
            actor=caller(request),
            access=access,
            model_version_id=fields["model_version"],
            task_filter=dict(fields["filter"]),
            overwrite=fields["overwrite"],
            label_map=fields["label_map"],
        )
        return Response(JobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class TaskPredictView(generics.GenericAPIView):
    @extend_schema(request=PredictInput, responses=PredictionOutput, tags=["models"])
    def post(self, request: Request, project_id: int, task_id: int) -> Response:
        access = _access(request, project_id)
        fields = parse(PredictInput, request)
        prediction = prelabel.task_predict(
            actor=caller(request), access=access, task_id=task_id, model_version_id=fields["model_version"]
        )
        return Response(PredictionOutput(prediction).data)


class PrelabelReportView(generics.GenericAPIView):
    @extend_schema(parameters=[PrelabelReportQuery], responses=PrelabelReportOutput, tags=["models"])
    def get(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        query = PrelabelReportQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        version = prelabel.model_version_get(access, query.validated_data["model_version"])
        report = selectors.prelabel_effectiveness(access=access, model_version_id=version.pk)
        return Response(PrelabelReportOutput(report).data)
