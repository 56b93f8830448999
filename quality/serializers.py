from __future__ import annotations

from typing import Any

from django.urls import reverse
from rest_framework import serializers

from labeling.releases.services import job_of
from projects.serializers import UserBriefOutput
from quality.charts import evaluation_plot_names
from quality.evaluation import evaluation_state
from quality.metrics.evaluation import summary_of
from quality.models import Evaluation, Finding, FindingStatus, TaskQuality


class QualitySettingsInput(serializers.Serializer):
    """The whole settings document (docs/quality.md): checked as a whole, every problem located."""

    rules = serializers.JSONField(required=False, help_text="The project's rules (docs/quality.md).")
    agreement = serializers.JSONField(required=False)
    gold = serializers.JSONField(required=False)


class FindingOutput(serializers.ModelSerializer):
    annotator = UserBriefOutput(allow_null=True)

    class Meta:
        model = Finding
        fields = [
            "id",
            "task",
            "annotation",
            "annotator",
            "region_id",
            "label",
            "source",
            "kind",
            "code",
            "severity",
            "score",
            "message",
            "details",
            "status",
            "status_by",
            "status_at",
            "job",
            "created_at",
            "updated_at",
        ]


class FindingStatusInput(serializers.Serializer):
    status = serializers.ChoiceField(choices=FindingStatus.choices)
    note = serializers.CharField(max_length=2000, required=False, default="", allow_blank=True)


class TaskQualityOutput(serializers.ModelSerializer):
    class Meta:
        model = TaskQuality
        fields = [
            "task",
            "annotators",
            "agreement",
            "pairs",
            "consensus",
            "method",
            "annotation_ids",
            "computed_at",
        ]


class QualityJobInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["rules", "agreement", "label_errors"])
    mode = serializers.ChoiceField(choices=["classification", "detection"], required=False)
    model_version = serializers.IntegerField(min_value=1, required=False)
    threshold = serializers.FloatField(min_value=0, max_value=1, required=False)
    folds = serializers.IntegerField(min_value=2, max_value=20, required=False)


class GoldInput(serializers.Serializer):
    tasks = serializers.ListField(
        child=serializers.IntegerField(min_value=1), min_length=1, max_length=10_000
    )
    is_gold = serializers.BooleanField(default=True)


class PauseInput(serializers.Serializer):
    paused = serializers.BooleanField()
    reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


class EvaluationInput(serializers.Serializer):
    model_version = serializers.IntegerField(min_value=1)
    split = serializers.CharField(
        max_length=16, required=False, default=None, allow_null=True,
        help_text="A split of the release (\"test\"); null: every item.",
    )  # fmt: skip
    threshold = serializers.FloatField(
        min_value=0, max_value=1, required=False, default=0.5,
        help_text="Score at or above which a predicted region counts (detection and span precision/recall).",
    )  # fmt: skip
    rerun = serializers.BooleanField(
        required=False, default=False, help_text="Compute it again even though it was made already."
    )


class EvaluationOutput(serializers.ModelSerializer):
    """An evaluation in a list: which model, on what, and its headline numbers."""

    release_version = serializers.IntegerField(source="release.version")
    model_version = serializers.SerializerMethodField()
    split = serializers.SerializerMethodField()
    state = serializers.SerializerMethodField()
    job = serializers.SerializerMethodField()
    summary = serializers.SerializerMethodField(help_text="Headline metrics per family of regions.")

    class Meta:
        model = Evaluation
        fields = [
            "id", "project", "release", "release_version", "model_version", "split", "threshold", "state",
            "job", "task_type", "summary", "counts", "created_by", "created_at", "evaluated_at",
        ]  # fmt: skip

    def get_model_version(self, evaluation: Evaluation) -> dict[str, Any]:
        version = evaluation.model_version
        return {
            "id": version.pk,
            "model": version.model.name,
            "version": version.version,
            "name": f"{version.model.name}:{version.version}",
            "kind": version.kind,
        }

    def get_split(self, evaluation: Evaluation) -> str | None:
        return evaluation.split or None

    def get_state(self, evaluation: Evaluation) -> str:
        return evaluation_state(evaluation)

    def get_job(self, evaluation: Evaluation) -> dict[str, Any] | None:
        return job_of(evaluation.job)

    def get_summary(self, evaluation: Evaluation) -> dict[str, Any]:
        return summary_of(evaluation.metrics)


class EvaluationDetailOutput(EvaluationOutput):
    """Everything: the metrics of each family and links to the plots."""

    plots = serializers.SerializerMethodField(help_text="Plot name → its PNG's URL.")

    class Meta(EvaluationOutput.Meta):
        fields = [*EvaluationOutput.Meta.fields, "metrics", "plots"]

    def get_plots(self, evaluation: Evaluation) -> dict[str, str]:
        if evaluation.evaluated_at is None:
            return {}
        return {
            name: reverse("evaluation-plot", kwargs={"evaluation_id": evaluation.pk, "name": name})
            for name in evaluation_plot_names(evaluation.metrics)
        }
