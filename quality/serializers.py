from __future__ import annotations

from rest_framework import serializers

from projects.serializers import UserBriefOutput
from quality.models import Finding, FindingStatus, TaskQuality


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
