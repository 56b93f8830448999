from __future__ import annotations

from typing import Any

from rest_framework import serializers

from labeling.models import Training
from labeling.releases.services import job_of
from labeling.serializers import ModelVersionOutput
from labeling.training import services


class TrainingInput(serializers.Serializer):
    recipe = serializers.CharField(max_length=50, help_text="text-logreg, image-logreg or spacy-ner.")
    params = serializers.DictField(
        required=False,
        default=dict,
        help_text="The recipe's parameters, and train_splits (default train and val) and eval_split "
        "(default test): see docs/training.md.",
    )
    name = serializers.CharField(
        max_length=200, required=False, help_text="The model's name (default: '<project name> <recipe>')."
    )


class TrainingOutput(serializers.ModelSerializer):
    name = serializers.CharField(source="model_name")
    release = serializers.SerializerMethodField()
    state = serializers.SerializerMethodField()
    phase = serializers.SerializerMethodField()
    job = serializers.SerializerMethodField()
    model_version = serializers.SerializerMethodField()
    card = serializers.SerializerMethodField()

    class Meta:
        model = Training
        fields = [
            "id", "project", "release", "recipe", "params", "name", "state", "phase", "job",
            "model_version", "card", "created_by", "created_at",
        ]  # fmt: skip

    def get_release(self, training: Training) -> dict[str, Any]:
        release = training.release
        return {"id": release.pk, "version": release.version, "name": release.name}

    def get_state(self, training: Training) -> str:
        return services.training_state(training)

    def get_phase(self, training: Training) -> str | None:
        return services.training_phase(training)

    def get_job(self, training: Training) -> dict[str, Any] | None:
        shown = job_of(training.job)
        if shown is not None and training.job is not None:
            shown["result"] = training.job.result
        return shown

    def get_model_version(self, training: Training) -> dict[str, Any] | None:
        version = training.model_version
        if version is None:
            return None
        shown = dict(ModelVersionOutput(version).data)
        shown.pop("card", None)  # shown once, below
        return shown

    def get_card(self, training: Training) -> dict[str, Any] | None:
        return training.model_version.card if training.model_version is not None else None
