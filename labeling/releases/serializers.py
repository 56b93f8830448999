from __future__ import annotations

from typing import Any

from rest_framework import serializers

from labeling.formats import FORMAT_NAMES
from labeling.models import Release, ReleaseExport, TaskState
from labeling.releases import services


class ReleaseFilterInput(serializers.Serializer):
    states = serializers.ListField(
        child=serializers.ChoiceField(choices=TaskState.choices), required=False, max_length=10,
        help_text="Task states taken (default: accepted and done).",
    )  # fmt: skip
    qc_status = serializers.ListField(
        child=serializers.CharField(max_length=16, allow_blank=True), required=False, allow_null=True,
        help_text='Quality statuses taken ("" = never flagged); default: any.',
    )  # fmt: skip
    datasets = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, max_length=1000
    )
    metadata = serializers.DictField(
        required=False, help_text="Items whose importer-supplied metadata (meta.user) contains these values."
    )
    classes = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=1000,
        help_text="Keep only regions of these classes.",
    )  # fmt: skip
    only_with_classes = serializers.BooleanField(required=False, default=False)


class SplitsInput(serializers.Serializer):
    ratios = serializers.DictField(
        child=serializers.FloatField(),
        required=False,
        help_text='Default {"train": 0.8, "val": 0.1, "test": 0.1}.',
    )
    stratify = serializers.BooleanField(required=False, default=False)
    seed = serializers.CharField(required=False, default="", allow_blank=True, max_length=100)


class ReleaseInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    notes = serializers.CharField(required=False, default="", allow_blank=True, max_length=10_000)
    filter = ReleaseFilterInput(required=False, default=dict)
    splits = SplitsInput(required=False, default=dict)
    # A field named like Field.parent, which the serializer's metaclass moves into its fields.
    parent = serializers.IntegerField(  # type: ignore[assignment]
        required=False, allow_null=True, min_value=1,
        help_text="The version this release follows (default: the latest ready one; null: none).",
    )  # fmt: skip


class ReleaseOutput(serializers.ModelSerializer):
    state = serializers.SerializerMethodField()
    parent_version = serializers.SerializerMethodField()
    manifest = serializers.SerializerMethodField()
    job = serializers.SerializerMethodField()

    class Meta:
        model = Release
        fields = [
            "id", "project", "version", "name", "notes", "state", "parent", "parent_version",
            "schema_version", "filter", "splits", "counts", "manifest", "job", "created_by", "created_at",
            "ready_at",
        ]  # fmt: skip

    def get_state(self, release: Release) -> str:
        return services.release_state(release, release.job.state if release.job else None)

    def get_parent_version(self, release: Release) -> int | None:
        return release.parent.version if release.parent else None

    def get_manifest(self, release: Release) -> dict[str, Any] | None:
        if not release.manifest_key:
            return None
        return {"sha256": release.manifest_sha256, "size": release.manifest_size}

    def get_job(self, release: Release) -> dict[str, Any] | None:
        return services.job_of(release.job)


class ReleaseExportInput(serializers.Serializer):
    format = serializers.ChoiceField(choices=FORMAT_NAMES)
    include_media = serializers.BooleanField(required=False, default=False)


class ReleaseExportOutput(serializers.ModelSerializer):
    state = serializers.SerializerMethodField()
    job = serializers.SerializerMethodField()
    download = serializers.SerializerMethodField()

    class Meta:
        model = ReleaseExport
        fields = [
            "id", "release", "format", "include_media", "state", "job", "filename", "size", "sha256",
            "media_type", "created_by", "created_at", "ready_at", "download",
        ]  # fmt: skip

    def get_state(self, export: ReleaseExport) -> str:
        return services.export_state(export)

    def get_job(self, export: ReleaseExport) -> dict[str, Any] | None:
        return services.job_of(export.job)

    def get_download(self, export: ReleaseExport) -> dict[str, Any] | None:
        return services.export_download(export)
