"""COPY-based bulk writes: ids come back in order, JSON round-trips, updates touch only what is named."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from projects.bulk import copy_insert, copy_update
from projects.models import AuditEvent

pytestmark = pytest.mark.django_db


# COPY applies no Django defaults: callers name every NOT NULL column (request_id here).
def test_copy_insert_returns_the_new_ids_in_order_and_stores_json() -> None:
    now = timezone.now()
    rows = [("tool.test", f"o{n}", str(n), {"n": n, "tags": ["a", "ü"]}, now, "") for n in range(50)]
    with transaction.atomic():
        ids = copy_insert(
            AuditEvent, ["verb", "object_type", "object_id", "changes", "at", "request_id"], rows
        )
    assert len(ids) == 50 and ids == sorted(ids)
    stored = {e.pk: e for e in AuditEvent.objects.filter(id__in=ids)}
    assert [stored[i].object_id for i in ids] == [str(n) for n in range(50)]
    assert stored[ids[7]].changes == {"n": 7, "tags": ["a", "ü"]}
    assert copy_insert(AuditEvent, ["verb"], []) == []


@pytest.mark.parametrize("array_rows", [2_000, 0], ids=["one statement over arrays", "by COPY"])
def test_copy_update_sets_only_the_named_columns_of_the_named_rows(array_rows: int) -> None:
    now = timezone.now()
    with transaction.atomic():
        ids = copy_insert(
            AuditEvent, ["verb", "object_type", "object_id", "changes", "at", "request_id"],
            [("tool.test", "o", str(n), {"n": n}, now, "") for n in range(5)],
        )  # fmt: skip
        updated = copy_update(
            AuditEvent,
            ["changes", "object_id", "at"],
            [(ids[1], {"n": "one"}, "x'1", now), (ids[3], [1, 2], "ü", now), (10**12, {}, "gone", now)],
            array_rows=array_rows,
        )
    assert updated == 2  # the third id names no row
    after = {e.pk: e for e in AuditEvent.objects.filter(id__in=ids)}
    assert after[ids[1]].changes == {"n": "one"} and after[ids[3]].changes == [1, 2]
    assert (after[ids[1]].object_id, after[ids[3]].object_id, after[ids[1]].at) == ("x'1", "ü", now)
    assert after[ids[0]].changes == {"n": 0} and after[ids[1]].verb == "tool.test"
    assert copy_update(AuditEvent, ["changes"], []) == 0


def test_insert_on_conflict_skips_or_updates_the_rows_it_meets() -> None:
    from labeling.models import MLModel, ModelVersion, Prediction, Task
    from labeling.services import tasks_ensure
    from projects.bulk import insert_on_conflict
    from tests.factories import DatasetFactory, ItemFactory, ProjectFactory

    project = ProjectFactory()
    dataset = DatasetFactory(organization=project.organization)
    dataset.projects.add(project)
    ItemFactory.create_batch(2, dataset=dataset)
    tasks_ensure(project.pk)
    tasks = list(Task.objects.filter(project=project).order_by("id"))
    model = MLModel.objects.create(organization=project.organization, name="m")
    version = ModelVersion.objects.create(model=model, version="1", kind="http")
    columns = ["task_id", "source_id", "model_version", "schema_version", "result", "archived", "score",
               "created_at"]  # fmt: skip
    now = timezone.now()

    def row(task: Task, text: str, score: float | None) -> tuple[object, ...]:
        regions = [{"id": "p1", "label": "a", "geometry": {"text": text + ' "quoted" \\ ü'}}]
        return (task.pk, version.pk, "m:1", 1, regions, [], score, now)

    with transaction.atomic():
        first = insert_on_conflict(
            Prediction, columns, [row(tasks[0], "one", 0.5)], conflict=["task_id", "source_id"]
        )
        skipped = insert_on_conflict(
            Prediction, columns, [row(tasks[0], "again", 0.9), row(tasks[1], "two", None)],
            conflict=["task_id", "source_id"],
        )  # fmt: skip
    assert (first, skipped) == (1, 1)  # the second task's row only
    stored = {p.task_id: p for p in Prediction.objects.filter(source=version)}
    assert stored[tasks[0].pk].result[0]["geometry"]["text"] == 'one "quoted" \\ ü'
    assert stored[tasks[1].pk].score is None

    with transaction.atomic():
        updated = insert_on_conflict(
            Prediction, columns, [row(tasks[0], "new", 0.7)], conflict=["task_id", "source_id"],
            update=["result", "score"],
        )  # fmt: skip
    assert updated == 1
    again = Prediction.objects.get(task_id=tasks[0].pk, source=version)
    kept = stored[tasks[0].pk].pk
    assert (again.result[0]["geometry"]["text"], again.score, again.pk) == ('new "quoted" \\ ü', 0.7, kept)
    assert Prediction.objects.filter(source=version).count() == 2


def test_a_refused_row_is_djangos_integrity_error_and_writes_nothing() -> None:
    from django.db import IntegrityError

    from labeling.models import Prediction
    from projects.bulk import insert_on_conflict

    with pytest.raises(IntegrityError), transaction.atomic():
        insert_on_conflict(Prediction, ["task_id", "result"], [(1, [])], conflict=["task_id", "source_id"])
    assert not Prediction.objects.exists()


def test_a_bulk_write_inside_together_comes_after_the_writes_waiting_before_it() -> None:
    """rows.together sends its waiting writes before any other statement on the connection, bulk
    writes included: the upsert meets the membership queued before it and leaves it alone."""
    from projects.bulk import insert_on_conflict
    from projects.models import Membership
    from projects.rows import insert, together
    from tests.factories import OrganizationFactory, UserFactory

    org, user = OrganizationFactory(), UserFactory()
    with transaction.atomic(), together():
        insert(Membership(organization=org, user=user, role="admin"))
        written = insert_on_conflict(
            Membership,
            ["organization_id", "user_id", "role", "created_at"],
            [(org.pk, user.pk, "member", timezone.now())],
            conflict=("organization_id", "user_id"),
        )
    assert written == 0
    assert list(Membership.objects.filter(organization=org).values_list("role", flat=True)) == ["admin"]


def test_an_uncounted_upsert_inside_together_goes_in_the_blocks_statement(
    django_assert_num_queries: Any,
) -> None:
    """An upsert not counted waits with the writes of a rows.together block and is sent with them,
    as one statement (how a submit's quality records ride along with it); outside a block it runs
    at once."""
    from projects.bulk import insert_on_conflict
    from projects.models import Membership
    from projects.rows import insert, together
    from tests.factories import OrganizationFactory, UserFactory

    org, admin, member, other = OrganizationFactory(), UserFactory(), UserFactory(), UserFactory()
    columns = ["organization_id", "user_id", "role", "created_at"]
    with transaction.atomic():
        with django_assert_num_queries(1), together():
            insert(Membership(organization=org, user=admin, role="admin"))
            insert_on_conflict(
                Membership,
                columns,
                [(org.pk, member.pk, "member", timezone.now())],
                conflict=("organization_id", "user_id"),
                counted=False,
            )
        roles = dict(Membership.objects.filter(organization=org).values_list("user_id", "role"))
        assert roles == {admin.pk: "admin", member.pk: "member"}
        written = insert_on_conflict(
            Membership,
            columns,
            [(org.pk, member.pk, "reviewer", timezone.now()), (org.pk, other.pk, "member", timezone.now())],
            conflict=("organization_id", "user_id"),
            update=["role"],
            counted=False,
        )
        assert written == 0  # outside a block it ran at once, uncounted
    roles = dict(Membership.objects.filter(organization=org).values_list("user_id", "role"))
    assert roles == {admin.pk: "admin", member.pk: "reviewer", other.pk: "member"}
