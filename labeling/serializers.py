"""Input and output shapes of the labeling API. Inputs validate shape; regions are validated
against the schema and the item by labeling.regions in the services."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from labeling.formats import FORMAT_NAMES
from labeling.models import (
    Annotation,
    AnnotationRevision,
    AnnotationState,
    Assignment,
    Comment,
    LabelSchema,
    ModelKind,
    ModelVersion,
    Prediction,
    Task,
    TaskState,
    Verdict,
)
from projects.serializers import FieldsBuiltOnce, UserBriefOutput

REGIONS_HELP = "Regions in the one region format (docs/annotations.md)."


@extend_schema_field({"type": "array", "items": {"type": "object"}})
class RegionsInput(serializers.Field):
    """A list of regions, passed through as parsed: labeling.regions validates every region
    against the schema and the item (with pointed errors), so checking the shape twice would only
    cost time on bulk requests. DRF's JSONField, for one, re-encodes the value to test it."""

    default_error_messages = {"not_a_list": "Expected a list of regions."}

    def to_internal_value(self, data: Any) -> list[Any]:
        if not isinstance(data, list):
            self.fail("not_a_list")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class SchemaPublishInput(serializers.Serializer):
    spec = serializers.JSONField(help_text="The label schema spec (docs/annotations.md).")
    operations = serializers.JSONField(
        required=False,
        default=list,  # type: ignore[arg-type]
        help_text="Migration of existing annotations: rename_class, merge_classes, …",
    )
    notes = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)


class SchemaOutput(serializers.ModelSerializer):
    created_by = UserBriefOutput(allow_null=True)

    class Meta:
        model = LabelSchema
        fields = [
            "id",
            "project",
            "version",
            "spec",
            "operations",
            "notes",
            "migration_job",
            "created_by",
            "created_at",
        ]


class TasksCreateInput(serializers.Serializer):
    items = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        allow_null=True,
        default=None,
        max_length=100_000,
        help_text="Item ids; omitted: every item of the project's linked datasets.",
    )


class TaskOutput(FieldsBuiltOnce, serializers.ModelSerializer):
    item_name = serializers.CharField(source="item.name")
    modality = serializers.CharField(source="item.modality")

    class Meta:
        model = Task
        fields = [
            "id",
            "project",
            "item",
            "item_name",
            "modality",
            "state",
            "priority",
            "overlap",
            "is_gold",
            "qc_status",
            "created_at",
            "updated_at",
        ]

    # What would tell an annotator a task is gold (its flag, its overlap 0) or what quality thinks
    # of it: shown only to callers who may see quality (serializer context `quality`).
    QUALITY_FIELDS = ("is_gold", "qc_status", "overlap")

    def to_representation(self, instance: Task) -> dict[str, Any]:
        data = super().to_representation(instance)
        if not self.context.get("quality", False):
            for name in self.QUALITY_FIELDS:
                data.pop(name, None)
        return data


class AnnotationCreateInput(serializers.Serializer):
    result = RegionsInput(help_text=REGIONS_HELP)
    state = serializers.ChoiceField(choices=AnnotationState.choices, default=AnnotationState.DRAFT)
    lead_time_ms = serializers.IntegerField(min_value=0, max_value=7 * 24 * 3600 * 1000, default=0)
    ground_truth = serializers.BooleanField(default=False)
    from_prediction = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)


class AnnotationUpdateInput(serializers.Serializer):
    result = RegionsInput(required=False, help_text=REGIONS_HELP)
    state = serializers.ChoiceField(choices=AnnotationState.choices, required=False)
    lead_time_ms = serializers.IntegerField(
        min_value=0,
        max_value=7 * 24 * 3600 * 1000,
        required=False,
        help_text="Milliseconds spent since the last save; added to the annotation's total.",
    )
    ground_truth = serializers.BooleanField(required=False)


class AnnotationOutput(FieldsBuiltOnce, serializers.ModelSerializer):
    author = UserBriefOutput()

    class Meta:
        model = Annotation
        fields = [
            "id",
            "task",
            "author",
            "schema_version",
            "state",
            "result",
            "archived",
            "version",
            "lead_time_ms",
            "ground_truth",
            "from_prediction",
            "created_at",
            "updated_at",
            "submitted_at",
        ]


class RevisionOutput(serializers.ModelSerializer):
    author = UserBriefOutput(allow_null=True)

    class Meta:
        model = AnnotationRevision
        fields = [
            "version",
            "action",
            "author",
            "state",
            "schema_version",
            "result",
            "changes",
            "job",
            "created_at",
        ]


class PredictionInputRow(serializers.Serializer):
    task = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)
    item = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)
    result = RegionsInput(help_text=REGIONS_HELP + " Each region may carry a score in [0, 1].")
    score = serializers.FloatField(min_value=0, max_value=1, required=False, allow_null=True, default=None)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if (attrs["task"] is None) == (attrs["item"] is None):
            raise serializers.ValidationError("Give exactly one of task and item.")
        return attrs


class PredictionsCreateInput(serializers.Serializer):
    model_version = serializers.CharField(max_length=200)
    predictions = PredictionInputRow(many=True, allow_empty=False)


class PredictionOutput(FieldsBuiltOnce, serializers.ModelSerializer):
    class Meta:
        model = Prediction
        fields = ["id", "task", "source", "model_version", "schema_version", "result", "score", "created_at"]


class PredictionsCreatedOutput(serializers.Serializer):
    created = serializers.IntegerField()
    ids = serializers.ListField(child=serializers.IntegerField())


class ImportInput(serializers.Serializer):
    file = serializers.FileField()
    format = serializers.ChoiceField(choices=FORMAT_NAMES)
    target = serializers.ChoiceField(choices=["ground_truth", "predictions"], default="ground_truth")
    model_version = serializers.CharField(max_length=200, required=False, default="import")
    partial = serializers.BooleanField(  # type: ignore[assignment]
        default=False,
        help_text="Import the valid records even when some are refused (else nothing is written).",
    )


class ExportInput(serializers.Serializer):
    format = serializers.ChoiceField(choices=FORMAT_NAMES)
    source = serializers.ChoiceField(  # type: ignore[assignment]
        choices=["annotations", "ground_truth", "predictions"],
        default="annotations",
        help_text="annotations: per task, its ground truth if any, else its latest submitted annotation.",
    )
    model_version = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class DownloadOutput(serializers.Serializer):
    url = serializers.CharField()
    expires_in = serializers.IntegerField()
    filename = serializers.CharField()


# --- Workflow ----------------------------------------------------------------------------------


class WorkflowSerializer(serializers.Serializer):
    """The project's workflow settings (docs/workflow.md); every field optional on PATCH."""

    overlap = serializers.IntegerField(min_value=1, max_value=20)
    assignment = serializers.ChoiceField(choices=["pull", "manual", "both"])
    ordering = serializers.ChoiceField(choices=["priority", "random", "uncertainty"])
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    max_active = serializers.IntegerField(min_value=1, max_value=100)
    max_total = serializers.IntegerField(min_value=1, allow_null=True)
    lease_seconds = serializers.IntegerField(min_value=30, max_value=7 * 24 * 3600)
    blind = serializers.BooleanField()
    review = serializers.ChoiceField(choices=["all", "sample", "qc_flagged", "none"])
    review_fraction = serializers.FloatField(min_value=0, max_value=1)
    rejected_to = serializers.ChoiceField(choices=["author", "pool"])
    gold_rate = serializers.FloatField(
        min_value=0,
        max_value=0.5,
        help_text="The share of `next` calls that hand a gold task the annotator has not had yet.",
    )


class AssignmentOutput(FieldsBuiltOnce, serializers.ModelSerializer):
    class Meta:
        model = Assignment
        fields = [
            "id",
            "task",
            "user",
            "state",
            "lease_id",
            "lease_until",
            "rework",
            "skip_reason",
            "assigned_by",
            "annotation",
            "created_at",
            "started_at",
            "finished_at",
        ]


class HandedItemOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    modality = serializers.CharField()
    media_type = serializers.CharField()
    meta = serializers.JSONField()
    content_url = serializers.CharField()


class NextOutput(serializers.Serializer):
    task = TaskOutput()
    assignment = AssignmentOutput()
    draft = AnnotationOutput(allow_null=True)
    item = HandedItemOutput()
    predictions = PredictionOutput(
        many=True, help_text="Pre-labels to start from (newest per model version)."
    )


class LeaseInput(serializers.Serializer):
    lease_id = serializers.UUIDField()


class DraftInput(LeaseInput):
    result = RegionsInput(help_text="Work in progress: kept as it is, validated at submit.")
    from_prediction = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        default=None,
        help_text="The prediction the work started from.",
    )


class SubmitInput(LeaseInput):
    result = RegionsInput(help_text=REGIONS_HELP)
    lead_time_ms = serializers.IntegerField(min_value=0, max_value=7 * 24 * 3600 * 1000, default=0)
    from_prediction = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        default=None,
        help_text="The prediction the work started from.",
    )


class SkipInput(LeaseInput):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class TaskFilterInput(serializers.Serializer):
    state = serializers.ListField(child=serializers.ChoiceField(choices=TaskState.choices), required=False)
    dataset = serializers.IntegerField(min_value=1, required=False)
    priority_min = serializers.IntegerField(required=False)
    tasks = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, max_length=100_000
    )


class QuotaInput(serializers.Serializer):
    user = serializers.IntegerField(min_value=1)
    quota = serializers.IntegerField(min_value=1, max_value=100_000)


class BulkAssignInput(serializers.Serializer):
    filter = TaskFilterInput(required=False, default=dict)
    users = QuotaInput(many=True, allow_empty=False)


class ReassignInput(serializers.Serializer):
    user = serializers.IntegerField(min_value=1)


class ReviewInput(serializers.Serializer):
    verdict = serializers.ChoiceField(choices=Verdict.choices)
    comment = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")
    result = RegionsInput(
        required=False, allow_null=True, default=None, help_text="The corrected regions (fix)."
    )


class ForReviewOutput(serializers.Serializer):
    task = TaskOutput()
    annotations = AnnotationOutput(many=True)


class CommentInput(serializers.Serializer):
    body = serializers.CharField(max_length=10_000)
    annotation = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)
    region = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    reply_to = serializers.IntegerField(
        min_value=1, required=False, allow_null=True, default=None, help_text="The comment this one answers."
    )


class CommentOutput(serializers.ModelSerializer):
    author = UserBriefOutput()

    class Meta:
        model = Comment
        fields = [
            "id",
            "task",
            "annotation",
            "region",
            "parent",
            "author",
            "body",
            "resolved_at",
            "resolved_by",
            "created_at",
        ]


# --- Models and pre-labeling -------------------------------------------------------------------


class BuiltinModelOutput(serializers.Serializer):
    name = serializers.CharField()
    title = serializers.CharField()
    task_type = serializers.CharField()
    modalities = serializers.ListField(child=serializers.CharField())
    outputs = serializers.ListField(child=serializers.CharField())
    labels = serializers.ListField(child=serializers.CharField())
    params = serializers.DictField()
    extra = serializers.CharField(
        allow_null=True, help_text="The pyproject extra it needs (pip install 'loupe[…]')."
    )
    available = serializers.BooleanField(help_text="Whether it can run on this installation.")


class ModelVersionInput(serializers.Serializer):
    name = serializers.CharField(max_length=200, help_text="The model; created with its first version.")
    version = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=[k for k in ModelKind.values if k != ModelKind.TRAINED])
    builtin = serializers.CharField(max_length=100, required=False, default="", allow_blank=True)
    endpoint = serializers.URLField(max_length=2000, required=False, default="", allow_blank=True)
    task_type = serializers.CharField(max_length=50, required=False, default="", allow_blank=True)
    modalities = serializers.ListField(
        child=serializers.CharField(max_length=30), required=False, default=list
    )
    outputs = serializers.ListField(child=serializers.CharField(max_length=30), required=False, default=list)
    labels = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, default=list, max_length=10_000
    )
    params = serializers.DictField(required=False, default=dict)
    label_map = serializers.DictField(
        child=serializers.CharField(max_length=100),
        required=False,
        default=dict,
        help_text="The model's label → the schema class it becomes; labels left out are dropped.",
    )
    description = serializers.CharField(max_length=5000, required=False, default="", allow_blank=True)


class ModelVersionOutput(FieldsBuiltOnce, serializers.ModelSerializer):
    name = serializers.CharField(source="model.name")

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "version",
            "kind",
            "builtin",
            "endpoint",
            "task_type",
            "modalities",
            "outputs",
            "labels",
            "params",
            "label_map",
            "release",
            "card",
            "created_at",
        ]


class PrelabelInput(serializers.Serializer):
    model_version = serializers.IntegerField(min_value=1)
    filter = TaskFilterInput(required=False, default=dict)
    overwrite = serializers.BooleanField(
        default=False, help_text="Replace this version's earlier predictions (else those tasks are skipped)."
    )
    label_map = serializers.DictField(
        child=serializers.CharField(max_length=100),
        required=False,
        allow_null=True,
        default=None,
        help_text="For this project, instead of the version's own label map.",
    )


class PredictInput(serializers.Serializer):
    model_version = serializers.IntegerField(min_value=1)


class PrelabelReportOutput(serializers.Serializer):
    model_version = serializers.IntegerField()
    predictions = serializers.IntegerField()
    tasks_predicted = serializers.IntegerField()
    annotations_from_predictions = serializers.IntegerField()
    regions_predicted = serializers.IntegerField()
    regions_kept = serializers.IntegerField(help_text="Predicted regions submitted unchanged.")
    regions_edited = serializers.IntegerField(
        help_text="Predicted regions moved, resized, relabelled or retyped."
    )
    regions_deleted = serializers.IntegerField()
    regions_added = serializers.IntegerField(help_text="Regions annotators drew that no prediction had.")
    acceptance_rate = serializers.FloatField(allow_null=True, help_text="kept / predicted")
    used_rate = serializers.FloatField(allow_null=True, help_text="(kept + edited) / predicted")
    mean_similarity = serializers.FloatField(
        allow_null=True, help_text="IoU (shapes, spans, segments) or 1 - normalized edit distance (text)."
    )
    mean_similarity_edited = serializers.FloatField(allow_null=True)
    regions_added_per_task = serializers.FloatField(allow_null=True)
    annotations_without_predictions = serializers.IntegerField()
    median_lead_time_ms_with = serializers.FloatField(allow_null=True)
    median_lead_time_ms_without = serializers.FloatField(allow_null=True)
    time_saved_ratio = serializers.FloatField(
        allow_null=True, help_text="1 - median time with a prediction / median time without."
    )


class PrelabelReportQuery(serializers.Serializer):
    model_version = serializers.IntegerField(min_value=1)
