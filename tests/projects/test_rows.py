"""Hand-written statements for hot paths write and read rows exactly as the ORM would."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from labeling.models import Annotation, AnnotationRevision, Assignment, AssignmentState, Task
from projects.models import ApiToken, AuditEvent, Project
from projects.rows import Columns, fetch_one, insert, together, update
from tests.factories import BlobFactory, DatasetFactory, ItemFactory, ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_insert_fills_defaults_auto_now_and_json_and_returns_the_key() -> None:
    project = ProjectFactory()
    before = timezone.now()
    event = AuditEvent(verb="thing.made", object_type="thing", object_id="7", project=project,
                       changes={"name": [None, "ü \u2603"], "n": [1, 2]})  # fmt: skip
    insert(event)
    assert event.pk is not None and not event._state.adding
    stored = AuditEvent.objects.get(id=event.pk)
    assert stored.changes == {"name": [None, "ü \u2603"], "n": [1, 2]}
    assert stored.request_id == ""  # the model default
    assert stored.at >= before and stored.at == event.at  # auto_now_add, as save() sets it
    assert (stored.project_id, stored.organization_id, stored.actor_id) == (project.pk, None, None)


def test_update_writes_only_the_listed_fields() -> None:
    project = ProjectFactory()
    item = ItemFactory(dataset=DatasetFactory(organization=project.organization), primary=BlobFactory())
    task = Task.objects.create(project=project, item=item, overlap=2, open_slots=2)
    stale_updated_at = task.updated_at
    task.active, task.open_slots, task.priority = 1, 1, 99  # priority is changed but not listed
    update(task, ["active", "open_slots", "updated_at"])
    stored = Task.objects.get(id=task.pk)
    assert (stored.active, stored.open_slots, stored.priority) == (1, 1, 0)
    assert stored.updated_at > stale_updated_at  # auto_now applies when listed


def test_columns_build_instances_with_converters_and_fetch_one_splits_the_row() -> None:
    user = UserFactory()
    project = ProjectFactory()
    item = ItemFactory(dataset=DatasetFactory(organization=project.organization), primary=BlobFactory())
    task = Task.objects.create(project=project, item=item, overlap=1, open_slots=1)
    lease = uuid.uuid4()
    assignment = Assignment.objects.create(
        task=task, user=user, state=AssignmentState.ACTIVE, lease_id=lease,
        lease_until=timezone.now() + timedelta(minutes=5),
    )  # fmt: skip
    a, t, p = Columns(Assignment, "a"), Columns(Task, "t"), Columns(Project, "p")
    found = fetch_one(
        f"SELECT {a.sql}, {t.sql}, {p.sql}, 41 + 1 FROM labeling_assignment a"  # noqa: S608
        " JOIN labeling_task t ON t.id = a.task_id JOIN projects_project p ON p.id = t.project_id"
        " WHERE a.id = %s",
        [assignment.pk],
        a, t, p,
    )  # fmt: skip
    assert found is not None
    got_assignment, got_task, got_project, extra = found
    assert got_assignment.lease_id == lease and isinstance(got_assignment.lease_id, uuid.UUID)
    assert (got_task.pk, got_task.open_slots, got_project.settings) == (task.pk, 1, project.settings)
    assert extra == 42
    assert not got_task._state.adding
    assert fetch_one(f"SELECT {a.sql} FROM labeling_assignment a WHERE a.id = %s", [-1], a) is None  # noqa: S608


def test_columns_of_a_subset_leave_the_rest_deferred() -> None:
    token_columns = Columns(ApiToken, "t", ["id", "name"])
    assert token_columns.sql == "t.id, t.name" and token_columns.width == 2
    token = token_columns.build([5, "laptop"])
    assert (token.pk, token.name) == (5, "laptop")
    assert token.get_deferred_fields() >= {"digest", "user_id"}


def _task(project: Project | None = None) -> Task:
    project = project or ProjectFactory()
    item = ItemFactory(dataset=DatasetFactory(organization=project.organization), primary=BlobFactory())
    return Task.objects.create(project=project, item=item, overlap=2, open_slots=2)


def test_writes_together_are_one_statement_with_keys_filled_in(django_assert_num_queries: Any) -> None:
    task, user = _task(), UserFactory()
    with transaction.atomic():
        annotation = Annotation(task=task, author=user, schema_version=1, result=[{"id": "r1"}])
        with django_assert_num_queries(1), together():
            insert(annotation)
            revision = AnnotationRevision(annotation=annotation, version=1, action="create", author=user,
                                          state="draft", schema_version=1, result=[], changes={})  # fmt: skip
            insert(revision)
            assignment = Assignment(
                task=task, user=user, state=AssignmentState.SUBMITTED, annotation=annotation
            )
            insert(assignment)
            task.submitted, task.open_slots = 1, 1
            update(task, ["submitted", "open_slots"])
            assert annotation.pk is None  # not sent yet
        assert annotation.pk is not None and revision.pk is not None and assignment.pk is not None
        assert assignment.annotation_id == annotation.pk and revision.annotation_id == annotation.pk
    assert AnnotationRevision.objects.get(id=revision.pk).annotation_id == annotation.pk
    assert Assignment.objects.get(id=assignment.pk).annotation_id == annotation.pk
    stored = Task.objects.get(id=task.pk)
    assert (stored.submitted, stored.open_slots) == (1, 1)


def test_a_read_in_the_block_sees_every_write_before_it() -> None:
    task, user = _task(), UserFactory()
    with transaction.atomic(), together():
        task.active = 1
        update(task, ["active"])
        insert(Assignment(task=task, user=user, state=AssignmentState.ACTIVE))
        assert Task.objects.get(id=task.pk).active == 1  # the read sent the writes first
        assert Assignment.objects.filter(task=task, user=user).count() == 1
        task.active = 2
        update(task, ["active"])
    assert Task.objects.get(id=task.pk).active == 2


def test_a_row_updated_twice_in_a_block_ends_with_the_second_update(django_assert_num_queries: Any) -> None:
    task = _task()
    # The first update goes when the second is asked for; the second when the block ends.
    with transaction.atomic(), together(), django_assert_num_queries(1):
        task.active, task.priority = 1, 3
        update(task, ["active", "priority"])
        task.active = 2
        update(task, ["active"])
    stored = Task.objects.get(id=task.pk)
    assert (stored.active, stored.priority) == (2, 3)


def test_writes_are_taken_as_they_were_when_queued() -> None:
    task = _task()
    with transaction.atomic(), together():
        task.priority = 5
        update(task, ["priority"])
        task.priority = 9  # changed after the update was asked for, and never written
    assert Task.objects.get(id=task.pk).priority == 5


def test_a_failing_write_fails_the_block_and_writes_nothing() -> None:
    task, user = _task(), UserFactory()
    with pytest.raises(IntegrityError), transaction.atomic(), together():
        task.active = 1
        update(task, ["active"])
        insert(Assignment(task=task, user=user, state=AssignmentState.ACTIVE))
        insert(Assignment(task=task, user=user, state=AssignmentState.ACTIVE))  # (task, user) twice
    assert Task.objects.get(id=task.pk).active == 0
    assert not Assignment.objects.filter(task=task).exists()


def test_hot_path_statements_are_prepared_once_per_connection() -> None:
    task = _task()
    a = Columns(Task, "t")
    sql = f"SELECT {a.sql} FROM labeling_task t WHERE t.id = %s"  # noqa: S608
    for _ in range(3):
        fetch_one(sql, [task.pk], a)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", [f"{sql[:40]}%"]
        )
        assert cursor.fetchone()[0] == 1
