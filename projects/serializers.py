"""Input and output shapes of the projects API. Inputs validate; outputs only render."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.utils import timezone
from rest_framework import serializers
from rest_framework.utils.serializer_helpers import BindingDict

from projects.models import (
    ApiToken,
    AuditEvent,
    Job,
    JobError,
    Membership,
    Organization,
    OrgRole,
    Project,
    ProjectMember,
    ProjectRole,
)

MAX_SETTINGS_BYTES = 64 * 1024

_BUILT: dict[type, BindingDict] = {}


class FieldsBuiltOnce:
    """An output serializer whose fields are built once per class instead of once per instance.

    DRF builds a serializer's fields every time one is instantiated (a ModelSerializer introspects
    its model for each), which on the queue's hot paths cost more than the database work. Only for
    serializers whose fields read nothing from the context or the instance they were built for
    (no SerializerMethodField, no hyperlinks): the shared fields are bound to a context-free
    prototype.
    """

    @property
    def fields(self) -> BindingDict:
        cls = type(self)
        built = _BUILT.get(cls)
        if built is None:
            prototype = cls()
            built = BindingDict(prototype)  # type: ignore[arg-type]
            for name, field in prototype.get_fields().items():  # type: ignore[attr-defined]
                built[name] = field
            _BUILT[cls] = built
        return built


class UserBriefOutput(FieldsBuiltOnce, serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class MeOutput(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    is_superuser = serializers.BooleanField()
    organizations = serializers.SerializerMethodField()

    def get_organizations(self, user: Any) -> list[dict[str, Any]]:
        memberships = Membership.objects.filter(user=user).select_related("organization").order_by("id")
        return [{"id": m.organization_id, "slug": m.organization.slug, "role": m.role} for m in memberships]


class UserCreateInput(serializers.Serializer):
    username = serializers.RegexField(r"^[\w.@+-]{1,150}$")
    email = serializers.EmailField(required=False, allow_blank=True, max_length=254)
    password = serializers.CharField(
        required=False, allow_null=True, default=None, min_length=8, max_length=128
    )
    is_superuser = serializers.BooleanField(required=False, default=False)


class ApiTokenCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_expires_at(self, value: datetime | None) -> datetime | None:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("expires_at must be in the future.")
        return value


class ApiTokenOutput(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "expires_at"]


class ApiTokenCreatedOutput(ApiTokenOutput):
    token = serializers.SerializerMethodField(help_text="The token itself. Shown only in this response.")

    class Meta(ApiTokenOutput.Meta):
        fields = [*ApiTokenOutput.Meta.fields, "token"]

    def get_token(self, _: ApiToken) -> str:
        return str(self.context["clear_token"])


class OrganizationInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=100)


class OrganizationUpdateInput(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    slug = serializers.SlugField(max_length=100, required=False)


class OrganizationOutput(serializers.ModelSerializer):
    class Meta:
        model = Organization
        fields = ["id", "name", "slug", "created_at"]


class MembershipInput(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=OrgRole.choices)


class OrgRoleInput(serializers.Serializer):
    role = serializers.ChoiceField(choices=OrgRole.choices)


class MembershipOutput(serializers.ModelSerializer):
    user = UserBriefOutput()

    class Meta:
        model = Membership
        fields = ["user", "role", "created_at"]


def _validate_settings(value: Any) -> None:
    if not isinstance(value, dict):
        raise serializers.ValidationError("settings must be a JSON object.")
    if len(json.dumps(value)) > MAX_SETTINGS_BYTES:
        raise serializers.ValidationError(f"settings may be at most {MAX_SETTINGS_BYTES} bytes of JSON.")


class ProjectCreateInput(serializers.Serializer):
    organization = serializers.IntegerField(min_value=1)
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)
    settings = serializers.JSONField(required=False, default=dict, validators=[_validate_settings])


class ProjectUpdateInput(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    settings = serializers.JSONField(required=False, validators=[_validate_settings])


class ProjectOutput(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "organization", "name", "description", "settings", "created_at", "updated_at"]


class ProjectDetailOutput(ProjectOutput):
    my_role = serializers.SerializerMethodField()

    class Meta(ProjectOutput.Meta):
        fields = [*ProjectOutput.Meta.fields, "my_role"]

    def get_my_role(self, _: Project) -> str:
        return str(self.context["role"])


class ProjectMemberInput(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=ProjectRole.choices)


class ProjectRoleInput(serializers.Serializer):
    role = serializers.ChoiceField(choices=ProjectRole.choices)


class ProjectMemberOutput(serializers.ModelSerializer):
    user = UserBriefOutput()

    class Meta:
        model = ProjectMember
        fields = ["user", "role", "created_at"]


class JobErrorOutput(serializers.ModelSerializer):
    class Meta:
        model = JobError
        fields = ["id", "chunk_index", "item", "code", "message", "at"]


class JobOutput(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField(help_text="done / total, from 0 to 1; null until planned.")

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "organization",
            "project",
            "created_by",
            "state",
            "params",
            "done",
            "total",
            "progress",
            "chunks_done",
            "chunks_total",
            "error_count",
            "result",
            "failure",
            "cancel_requested",
            "attempts",
            "created_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
        ]

    def get_progress(self, job: Job) -> float | None:
        if job.total is None:
            return None
        return 1.0 if job.total == 0 else round(min(job.done / job.total, 1.0), 4)


class StatsRecountInput(serializers.Serializer):
    chunk_size = serializers.IntegerField(required=False, min_value=10, max_value=100_000, default=5000)


class ProjectStatsOutput(serializers.Serializer):
    job = serializers.IntegerField(allow_null=True)
    computed_at = serializers.DateTimeField(allow_null=True)
    stats = serializers.DictField()


class AuditEventOutput(serializers.ModelSerializer):
    actor = UserBriefOutput(allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "at",
            "actor",
            "organization",
            "project",
            "verb",
            "object_type",
            "object_id",
            "changes",
            "request_id",
        ]
