"""Row locks held by other requests never hide a caller's own work from the queue."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction

from labeling import workflow
from labeling.models import Assignment, Task
from projects.access import project_access
from tests.conftest import World
from tests.factories import DatasetFactory, ItemFactory
from tests.labeling.conftest import SPEC, publish

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_assigned_task_is_handed_out_while_a_co_annotator_holds_its_row(world: World) -> None:
    assert publish(world, SPEC).status_code == 201
    dataset = DatasetFactory(organization=world.org)
    ItemFactory.create_batch(3, dataset=dataset)
    dataset.projects.add(world.project)
    from labeling.services import tasks_ensure

    tasks_ensure(world.project.pk)
    manager, annotator = world.users["manager"], world.users["annotator"]
    access = project_access(user=manager, project_id=world.project.pk)
    workflow.workflow_update(actor=manager, access=access, changes={"overlap": 2})
    target = Task.objects.filter(project=world.project).order_by("-id").first()
    assert target is not None
    workflow.assignments_bulk(
        actor=manager,
        access=access,
        task_filter={"tasks": [target.pk]},
        quotas=[workflow.Quota(annotator.pk, 1)],
    )
    locked, release = threading.Event(), threading.Event()

    def hold_the_task_row() -> None:
        try:
            with transaction.atomic():
                Task.objects.select_for_update().get(id=target.pk)  # e.g. a co-annotator's submit
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_task_row)
    holder.start()
    try:
        assert locked.wait(10)
        handed = workflow.task_next(
            actor=annotator, access=project_access(user=annotator, project_id=world.project.pk)
        )
    finally:
        release.set()
        holder.join()
    assert handed is not None and handed.task.pk == target.pk
    assert Assignment.objects.get(task=target, user=annotator).state == "active"


def _lock_waiters() -> int:
    """Backends of this database waiting for a row lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


def test_a_submit_locks_its_task_before_its_assignment(world: World) -> None:
    """Every service takes the task row first (an annotation insert takes a key lock on it), so a
    submit waiting for its task must not hold its assignment meanwhile: that order is what keeps
    a submit and a co-annotator's draft or a manager's reassign from deadlocking."""
    assert publish(world, SPEC).status_code == 201
    dataset = DatasetFactory(organization=world.org)
    ItemFactory.create_batch(2, dataset=dataset)
    dataset.projects.add(world.project)
    from labeling.services import tasks_ensure

    tasks_ensure(world.project.pk)
    annotator = world.users["annotator"]
    access = project_access(user=annotator, project_id=world.project.pk)
    handed = workflow.task_next(actor=annotator, access=access)
    assert handed is not None
    assignment = handed.assignment
    locked, release = threading.Event(), threading.Event()
    submitted: list[bool] = []

    def hold_the_task_row() -> None:
        try:
            with transaction.atomic():
                Task.objects.select_for_update().get(id=assignment.task_id)
                locked.set()
                release.wait(20)
        finally:
            connection.close()

    def submit() -> None:
        try:
            _, created = workflow.assignment_submit(
                actor=annotator,
                access=project_access(user=annotator, project_id=world.project.pk),
                assignment_id=assignment.pk,
                lease_id=assignment.lease_id,
                result=[
                    {
                        "id": "r1",
                        "type": "bbox",
                        "label": "vehicle",
                        "geometry": {"x": 1, "y": 1, "width": 5, "height": 5},
                    }
                ],
            )
            submitted.append(created)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_task_row)
    holder.start()
    submitter = threading.Thread(target=submit)
    try:
        assert locked.wait(10)
        submitter.start()
        for _ in range(200):  # until the submit waits for the task row
            if _lock_waiters():
                break
            threading.Event().wait(0.05)
        assert _lock_waiters() == 1
        with transaction.atomic():  # the assignment is free while the submit waits for the task
            Assignment.objects.select_for_update(nowait=True).get(id=assignment.pk)
    finally:
        release.set()
        holder.join()
    submitter.join(20)
    assert submitted == [True]
    assert Assignment.objects.get(id=assignment.pk).state == "submitted"
