from __future__ import annotations

import django_filters

from projects.models import AuditEvent, Job, JobState, Project


class ProjectFilter(django_filters.FilterSet):
    organization = django_filters.NumberFilter(field_name="organization_id")
    name = django_filters.CharFilter(field_name="name", lookup_expr="icontains")

    class Meta:
        model = Project
        fields = ["organization", "name"]


class JobFilter(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=JobState.choices)
    kind = django_filters.CharFilter()
    created_by = django_filters.NumberFilter(field_name="created_by_id")

    class Meta:
        model = Job
        fields = ["state", "kind", "created_by"]


class AuditEventFilter(django_filters.FilterSet):
    verb = django_filters.CharFilter()
    actor = django_filters.NumberFilter(field_name="actor_id")
    object_type = django_filters.CharFilter()
    object_id = django_filters.CharFilter()
    since = django_filters.IsoDateTimeFilter(field_name="at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["verb", "actor", "object_type", "object_id", "since", "until"]
