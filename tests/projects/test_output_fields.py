"""Output serializers built once per class render each instance as a freshly built one would."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework import serializers

from labeling.models import Assignment
from labeling.serializers import AssignmentOutput
from projects.serializers import FieldsBuiltOnce, UserBriefOutput
from tests.factories import UserFactory


class FreshAssignmentOutput(serializers.ModelSerializer):
    class Meta:
        model = Assignment
        fields = AssignmentOutput.Meta.fields


def test_the_fields_are_built_once_and_shared() -> None:
    first, second = AssignmentOutput(), AssignmentOutput()
    assert first.fields is second.fields
    assert list(first.fields) == AssignmentOutput.Meta.fields


@pytest.mark.django_db
def test_each_instance_renders_its_own_values_like_a_fresh_serializer() -> None:
    users = [UserFactory(username=f"brief{i}") for i in range(3)]
    assert [UserBriefOutput(u).data for u in users] == [{"id": u.pk, "username": u.username} for u in users]
    assignments = [
        Assignment(id=7, task_id=3, user_id=users[0].pk, state="active", skip_reason="", rework=False),
        Assignment(id=8, task_id=4, user_id=users[1].pk, state="skipped", skip_reason="blurry", rework=True),
    ]
    for assignment in assignments:
        assert AssignmentOutput(assignment).data == FreshAssignmentOutput(assignment).data
    many: Any = AssignmentOutput(assignments, many=True).data
    assert [row["skip_reason"] for row in many] == ["", "blurry"]


def test_a_subclass_gets_its_own_fields() -> None:
    class WithName(FieldsBuiltOnce, serializers.Serializer):
        name = serializers.CharField()

    class WithNameAndSize(WithName):
        size = serializers.IntegerField()

    assert list(WithName().fields) == ["name"]
    assert list(WithNameAndSize().fields) == ["name", "size"]
    assert WithNameAndSize({"name": "a", "size": 3}).data == {"name": "a", "size": 3}
