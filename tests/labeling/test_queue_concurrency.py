"""The work queue under real concurrency: many annotators, retries, leases that run out.

Threads run the services (or the API) on their own database connections, so the tests that use
them run with `transaction=True`: every thread sees what the others committed, and the row locks,
`SKIP LOCKED` and advisory locks of labeling.workflow do the real work.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar, cast

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from labeling import services, workflow
from labeling.models import (
    Annotation,
    AnnotationState,
    Assignment,
    AssignmentState,
    Task,
    TaskState,
)
from projects.access import project_access
from projects.exceptions import Conflict
from projects.models import OrgRole, Project
from storage.models import Dataset, Item
from tests.conftest import World, assert_error, client_for
from tests.factories import (
    BlobFactory,
    DatasetFactory,
    ItemFactory,
    MembershipFactory,
    ProjectMemberFactory,
    UserFactory,
)

API = "/api/v1"
BOX_SPEC: dict[str, Any] = {"classes": [{"name": "box", "color": "#ff0000", "tools": ["bbox"]}]}
T = TypeVar("T")


def regions(x: int = 10) -> list[dict[str, Any]]:
    """One bbox well inside a 640x480 image."""
    return [
        {
            "id": "r1",
            "type": "bbox",
            "label": "box",
            "geometry": {"x": x, "y": 20, "width": 100, "height": 50},
        }
    ]


def annotators(world: World, count: int, prefix: str = "ann") -> list[User]:
    """`count` users who are org members and annotators of the world's project."""
    users = []
    for i in range(count):
        user = cast(User, UserFactory(username=f"{prefix}{i:03d}"))
        MembershipFactory(organization=world.org, user=user, role=OrgRole.MEMBER)
        ProjectMemberFactory(project=world.project, user=user, role="annotator")
        users.append(user)
    return users


def queue_project(world: World, *, items: int, **changes: Any) -> Project:
    """The world's project with a one-class bbox schema, `items` image tasks and the given workflow."""
    manager = world.users["manager"]
    access = project_access(user=manager, project_id=world.project.pk)
    services.schema_publish(actor=manager, access=access, spec=BOX_SPEC)
    if changes:
        workflow.workflow_update(actor=manager, access=access, changes=changes)
    dataset = cast(Dataset, DatasetFactory(organization=world.org))
    dataset.projects.add(world.project)
    blob = BlobFactory()
    Item.objects.bulk_create(
        ItemFactory.build(dataset=dataset, primary=blob, name=f"frames/{i:06d}.jpg") for i in range(items)
    )
    assert services.tasks_ensure(world.project.pk) == items
    return Project.objects.get(id=world.project.pk)


def in_thread(fn: Callable[[], T]) -> Callable[[], T]:
    """Run `fn` on the thread's own connection and close it afterwards (threads leak no connection)."""

    def run() -> T:
        try:
            return fn()
        finally:
            connection.close()

    return run


def url(project: Project, path: str) -> str:
    return f"{API}/projects/{project.pk}{path}"


# --- 50 annotators, 2,000 tasks, overlap 2 ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_50_annotators_finish_2000_tasks_with_overlap_2_without_losing_or_doubling_work(world: World) -> None:
    project = queue_project(world, items=2000, overlap=2)
    assert set(Task.objects.filter(project=project).values_list("overlap", "open_slots")) == {(2, 2)}
    users = annotators(world, 50)
    box = regions()

    def annotate(user: User) -> list[tuple[int, int]]:
        """Take and submit until the queue is empty; (task id, annotation id) of every submit."""
        access = project_access(user=user, project_id=project.pk)
        done: list[tuple[int, int]] = []
        while True:
            handed = workflow.task_next(actor=user, access=access)
            if handed is None:
                return done
            annotation, created = workflow.assignment_submit(
                actor=user,
                access=access,
                assignment_id=handed.assignment.pk,
                lease_id=handed.assignment.lease_id,
                result=box,
            )
            assert created, (user.username, handed.assignment.pk)
            done.append((handed.task.pk, annotation.pk))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        futures = {user.pk: pool.submit(in_thread(partial(annotate, user))) for user in users}
        recorded = {user_id: future.result() for user_id, future in futures.items()}
    elapsed = time.perf_counter() - started
    print(f"\n50 annotators x 2000 tasks x overlap 2: {elapsed:.1f} s")

    # 0 lost submits: what each annotator was told it submitted is exactly what the server holds.
    for user in users:
        held = set(
            Annotation.objects.filter(
                author=user, task__project=project, state=AnnotationState.SUBMITTED
            ).values_list("task_id", "id")
        )
        assert set(recorded[user.pk]) == held, user.username
        assert len(recorded[user.pk]) == len(held)
    assert sum(len(done) for done in recorded.values()) == 4000
    assert Annotation.objects.filter(task__project=project).count() == 4000
    assert Annotation.objects.filter(task__project=project, state=AnnotationState.SUBMITTED).count() == 4000

    # Every task: two submitted annotations by two different people, one assignment per person.
    per_task = (
        Annotation.objects.filter(task__project=project)
        .values("task_id")
        .annotate(n=Count("id"), authors=Count("author", distinct=True))
    )
    assert len(per_task) == 2000
    assert {(row["n"], row["authors"]) for row in per_task} == {(2, 2)}
    pairs = Counter(Assignment.objects.filter(task__project=project).values_list("task_id", "user_id"))
    assert len(pairs) == 4000 and set(pairs.values()) == {1}
    assert set(Assignment.objects.filter(task__project=project).values_list("state", flat=True)) == {
        AssignmentState.SUBMITTED
    }
    # Each submitted assignment points at its user's annotation of that task.
    for task_id, user_id, author_id, annotation_task_id in Assignment.objects.filter(
        task__project=project
    ).values_list("task_id", "user_id", "annotation__author_id", "annotation__task_id"):
        assert (author_id, annotation_task_id) == (user_id, task_id)

    # Counters agree with the rows, and every task is finished (no review).
    assert set(
        Task.objects.filter(project=project).values_list("state", "active", "submitted", "open_slots")
    ) == {(TaskState.DONE, 0, 2, 0)}


# --- Retried submits ---------------------------------------------------------------------------


def take(client: Any, project: Project) -> dict[str, Any]:
    """POST next as `client`; the assignment it was handed."""
    response = client.post(url(project, "/next"))
    assert response.status_code == 200, response.content
    return dict(response.json()["assignment"])


def submit(
    client: Any, project: Project, assignment: dict[str, Any], key: str | None = None, **body: Any
) -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    payload = {"lease_id": assignment["lease_id"], "result": regions(), **body}
    return client.post(
        url(project, f"/assignments/{assignment['id']}/submit"), payload, format="json", **headers
    )


def test_a_submit_retried_after_a_timeout_creates_exactly_one_annotation(world: World) -> None:
    project = queue_project(world, items=1)
    client = client_for(world.users["annotator"])
    assignment = take(client, project)

    first = submit(client, project, assignment, key="submit-7f3a", lead_time_ms=1200)
    assert first.status_code == 201, first.content
    # The client timed out before it read the answer and sends the same request again.
    again = submit(client, project, assignment, key="submit-7f3a", lead_time_ms=1200)
    assert again.status_code == 201, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    # A client that forgets its key: the assignment is submitted, the same annotation comes back.
    no_key = submit(client, project, assignment, lead_time_ms=1200, result=regions(x=300))
    assert no_key.status_code == 200, no_key.content
    assert no_key.json()["id"] == first.json()["id"]

    annotation = Annotation.objects.get(task__project=project)
    assert annotation.pk == first.json()["id"]
    assert (annotation.state, annotation.version, annotation.lead_time_ms) == (
        AnnotationState.SUBMITTED,
        1,
        1200,
    )
    assert annotation.result[0]["geometry"]["x"] == 10  # the retry did not overwrite the work
    assert annotation.revisions.count() == 1
    task = Task.objects.get(project=project)
    assert (task.state, task.active, task.submitted, task.open_slots) == (TaskState.DONE, 0, 1, 0)
    assert Assignment.objects.get(task=task).state == AssignmentState.SUBMITTED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("key", ["race-1", None], ids=["same-key", "no-key"])
def test_two_copies_of_one_submit_racing_create_one_annotation(world: World, key: str | None) -> None:
    project = queue_project(world, items=1)
    annotator = world.users["annotator"]
    assignment = take(client_for(annotator), project)
    clients = [client_for(annotator), client_for(annotator)]
    barrier = threading.Barrier(2, timeout=120)

    def send(client: Any) -> tuple[int, dict[str, Any]]:
        barrier.wait()
        response = submit(client, project, assignment, key=key)
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = [future.result() for future in [pool.submit(in_thread(partial(send, c))) for c in clients]]

    annotation = Annotation.objects.get(task__project=project)
    statuses = sorted(status for status, _ in answers)
    if key is None:
        # The task lock serializes them: one creates, the other finds it submitted.
        assert statuses == [200, 201], answers
        assert {body["id"] for _, body in answers} == {annotation.pk}
    else:
        # The second copy either waits for the first answer (replayed) or is told to retry.
        assert statuses in ([201, 201], [201, 409]), answers
        for status, body in answers:
            if status == 409:
                assert body["error"]["code"] == "request_in_progress", body
            else:
                assert body["id"] == annotation.pk
    task = Task.objects.get(project=project)
    assert (task.state, task.active, task.submitted, task.open_slots) == (TaskState.DONE, 0, 1, 0)


def test_an_autosave_arriving_after_the_submit_does_not_rewrite_the_submitted_annotation(
    world: World,
) -> None:
    """An autosave still in flight when the annotator clicks submit lands after it (same lease id)."""
    project = queue_project(world, items=1)
    client = client_for(world.users["annotator"])
    assignment = take(client, project)
    submitted = submit(client, project, assignment)
    assert submitted.status_code == 201, submitted.content

    not_valid = [{"id": "r9", "type": "bbox", "label": "no-such-class", "geometry": {"x": -5, "y": 0}}]
    late = client.post(
        url(project, f"/assignments/{assignment['id']}/draft"),
        {"lease_id": assignment["lease_id"], "result": not_valid},
        format="json",
    )

    annotation = Annotation.objects.get(id=submitted.json()["id"])
    assert annotation.state == AnnotationState.SUBMITTED
    assert (annotation.version, annotation.result) == (1, submitted.json()["result"]), (
        "a draft rewrote a submitted annotation, without validation",
        late.status_code,
        annotation.result,
    )
    assert_error(late, 409, "lease_invalid")


# --- Leases that run out -----------------------------------------------------------------------


def run_out(assignment_id: int) -> None:
    """Test setup: the lease ended a minute ago (the annotator walked away)."""
    Assignment.objects.filter(id=assignment_id).update(lease_until=timezone.now() - timedelta(minutes=1))


def counters(project: Project) -> tuple[str, int, int, int]:
    task = Task.objects.get(project=project)
    return task.state, task.active, task.submitted, task.open_slots


def test_a_late_submit_is_honoured_when_nobody_took_the_slot(world: World) -> None:
    project = queue_project(world, items=1)
    client = client_for(world.users["annotator"])
    assignment = take(client, project)
    assert counters(project) == (TaskState.IN_PROGRESS, 1, 0, 0)
    run_out(assignment["id"])

    assert workflow.leases_expire() == 1
    assert workflow.leases_expire() == 0  # a lease is returned once
    expired = Assignment.objects.get(id=assignment["id"])
    assert (expired.state, expired.lease_until) == (AssignmentState.EXPIRED, None)
    assert counters(project) == (TaskState.OPEN, 0, 0, 1)

    late = submit(client, project, assignment)
    assert late.status_code == 201, late.content
    assert counters(project) == (TaskState.DONE, 0, 1, 0)
    assert Assignment.objects.get(id=assignment["id"]).state == AssignmentState.SUBMITTED
    assert Annotation.objects.filter(task__project=project, state=AnnotationState.SUBMITTED).count() == 1


def test_a_late_submit_takes_back_the_free_slot_next_to_a_live_lease(world: World) -> None:
    project = queue_project(world, items=1, overlap=2)
    first, second = (client_for(user) for user in annotators(world, 2))
    late_one, live_one = take(first, project), take(second, project)
    assert late_one["task"] == live_one["task"]
    run_out(late_one["id"])
    assert workflow.leases_expire() == 1
    assert counters(project) == (TaskState.IN_PROGRESS, 1, 0, 1)

    late = submit(first, project, late_one)
    assert late.status_code == 201, late.content
    assert counters(project) == (TaskState.IN_PROGRESS, 1, 1, 0)
    on_time = submit(second, project, live_one)
    assert on_time.status_code == 201, on_time.content
    assert counters(project) == (TaskState.DONE, 0, 2, 0)


def test_a_late_submit_whose_slot_was_taken_is_kept_as_a_draft(world: World) -> None:
    project = queue_project(world, items=1)
    late_user, other_user = annotators(world, 2)
    late_client, other_client = client_for(late_user), client_for(other_user)
    mine = take(late_client, project)
    run_out(mine["id"])
    assert workflow.leases_expire() == 1
    theirs = take(other_client, project)
    assert theirs["task"] == mine["task"]
    assert counters(project) == (TaskState.IN_PROGRESS, 1, 0, 0)

    work = regions(x=123)
    late = submit(late_client, project, mine, result=work)
    error = assert_error(late, 409, "slot_taken")
    draft = Annotation.objects.get(id=error["details"]["draft_id"])
    assert (draft.author_id, draft.task_id, draft.state) == (
        late_user.pk,
        mine["task"],
        AnnotationState.DRAFT,
    )
    assert [(r["id"], r["label"], r["geometry"]) for r in draft.result] == [
        (r["id"], r["label"], r["geometry"]) for r in work
    ]
    assert Assignment.objects.get(id=mine["id"]).annotation_id == draft.pk
    # The retry keeps the one draft (updated), and the other annotator's slot is untouched.
    again = assert_error(submit(late_client, project, mine, result=work), 409, "slot_taken")
    assert again["details"]["draft_id"] == draft.pk
    assert Annotation.objects.filter(task__project=project).count() == 1
    assert counters(project) == (TaskState.IN_PROGRESS, 1, 0, 0)

    assert submit(other_client, project, theirs).status_code == 201
    assert counters(project) == (TaskState.DONE, 0, 1, 0)
    assert Annotation.objects.filter(task__project=project, state=AnnotationState.SUBMITTED).count() == 1
    assert Annotation.objects.get(id=draft.pk).state == AnnotationState.DRAFT


# --- One annotator, two tabs -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_tabs_of_one_annotator_asking_next_at_once_get_the_same_assignment(world: World) -> None:
    project = queue_project(world, items=12)
    annotator = world.users["annotator"]
    access = project_access(user=annotator, project_id=project.pk)
    barrier = threading.Barrier(2, timeout=120)

    def ask() -> workflow.Handed | None:
        barrier.wait()
        return workflow.task_next(actor=annotator, access=access)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for round_ in range(12):
            a, b = (future.result() for future in [pool.submit(in_thread(ask)), pool.submit(in_thread(ask))])
            assert a is not None and b is not None
            assert (a.assignment.pk, a.assignment.lease_id) == (b.assignment.pk, b.assignment.lease_id), (
                round_
            )
            assert Assignment.objects.filter(user=annotator, state=AssignmentState.ACTIVE).count() == 1
            assert Task.objects.get(id=a.task.pk).active == 1
            workflow.assignment_submit(
                actor=annotator,
                access=access,
                assignment_id=a.assignment.pk,
                lease_id=a.assignment.lease_id,
                result=regions(),
            )
    assert Assignment.objects.filter(user=annotator).count() == 12
    assert set(Task.objects.filter(project=project).values_list("state", "active", "submitted")) == {
        (TaskState.DONE, 0, 1)
    }


@pytest.mark.django_db(transaction=True)
def test_concurrent_next_calls_never_take_more_than_max_active_leases(world: World) -> None:
    project = queue_project(world, items=10, max_active=3)
    annotator = world.users["annotator"]
    access = project_access(user=annotator, project_id=project.pk)
    barrier = threading.Barrier(8, timeout=120)

    def ask() -> int:
        barrier.wait()
        handed = workflow.task_next(actor=annotator, access=access)
        assert handed is not None
        return handed.assignment.pk

    with ThreadPoolExecutor(max_workers=8) as pool:
        handed = [future.result() for future in [pool.submit(in_thread(ask)) for _ in range(8)]]
    assert len(set(handed)) == 3, handed
    active = Assignment.objects.filter(user=annotator, state=AssignmentState.ACTIVE)
    assert set(active.values_list("id", flat=True)) == set(handed)
    assert sorted(Task.objects.filter(project=project).values_list("active", flat=True)) == [0] * 7 + [1] * 3


# --- Lock order --------------------------------------------------------------------------------


def outcomes(futures: list[Future[T]]) -> tuple[list[T], list[str]]:
    """The results of `futures`, and the exceptions some raised (named, for the assertion)."""
    results: list[T] = []
    failures: list[str] = []
    for future in futures:
        try:
            results.append(future.result())
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
    return results, failures


def late_submit(user: User, access: Any, assignment: Assignment, start: threading.Barrier) -> bool:
    start.wait()
    _, created = workflow.assignment_submit(
        actor=user, access=access, assignment_id=assignment.pk, lease_id=assignment.lease_id, result=regions()
    )
    return created


def sweep_until(stop: threading.Event, start: threading.Barrier) -> int:
    """The beat, running leases_expire over and over until told to stop."""
    start.wait()
    swept = 0
    while not stop.is_set():
        swept += workflow.leases_expire()
    return swept


@pytest.mark.django_db(transaction=True)
def test_the_lease_sweeper_racing_submits_of_ran_out_leases_never_deadlocks(world: World) -> None:
    """Submits of leases whose time is up while the beat sweeps them: every submit lands, no deadlock.

    Nobody else wants the slots, so every submit must succeed whichever goes first: the sweep
    (then the submit takes the free slot back) or the submit.
    """
    users = annotators(world, 16)
    project = queue_project(world, items=16 * 8)
    accesses = {user.pk: project_access(user=user, project_id=project.pk) for user in users}
    created: list[bool] = []
    for _ in range(8):
        held: dict[int, Assignment] = {}
        for user in users:
            handed = workflow.task_next(actor=user, access=accesses[user.pk])
            assert handed is not None
            held[user.pk] = handed.assignment
        Assignment.objects.filter(id__in=[a.pk for a in held.values()]).update(
            lease_until=timezone.now() - timedelta(seconds=1)
        )
        start, stop = threading.Barrier(len(users) + 1, timeout=120), threading.Event()
        with ThreadPoolExecutor(max_workers=len(users) + 1) as pool:
            sweeper = pool.submit(in_thread(partial(sweep_until, stop, start)))
            submits = [
                pool.submit(in_thread(partial(late_submit, user, accesses[user.pk], held[user.pk], start)))
                for user in users
            ]
            made, failures = outcomes(submits)
            stop.set()
            failures += outcomes([sweeper])[1]
        assert not failures, failures
        created += made
    assert created == [True] * 16 * 8
    assert set(
        Task.objects.filter(project=project).values_list("state", "active", "submitted", "open_slots")
    ) == {(TaskState.DONE, 0, 1, 0)}


def autosave(user: User, access: Any, handed: workflow.Handed, start: threading.Barrier) -> None:
    start.wait()
    with suppress(workflow.LeaseInvalid):  # refusing an autosave that lands after the submit is fine
        workflow.assignment_draft(
            actor=user,
            access=access,
            assignment_id=handed.assignment.pk,
            lease_id=handed.assignment.lease_id,
            result=regions(x=50),
        )


def send(user: User, access: Any, handed: workflow.Handed, start: threading.Barrier) -> None:
    start.wait()
    workflow.assignment_submit(
        actor=user,
        access=access,
        assignment_id=handed.assignment.pk,
        lease_id=handed.assignment.lease_id,
        result=regions(),
    )


@pytest.mark.django_db(transaction=True)
def test_a_first_autosave_racing_the_submit_never_deadlocks(world: World) -> None:
    """The autosave timer fires as the annotator clicks submit (two requests, one assignment)."""
    users = annotators(world, 8)
    project = queue_project(world, items=8 * 8)
    accesses = {user.pk: project_access(user=user, project_id=project.pk) for user in users}
    for _ in range(8):
        held: dict[int, workflow.Handed] = {}
        for user in users:
            handed = workflow.task_next(actor=user, access=accesses[user.pk])
            assert handed is not None and handed.draft is None
            held[user.pk] = handed
        start = threading.Barrier(2 * len(users), timeout=120)
        with ThreadPoolExecutor(max_workers=2 * len(users)) as pool:
            futures = [
                pool.submit(in_thread(partial(call, user, accesses[user.pk], held[user.pk], start)))
                for user in users
                for call in (autosave, send)
            ]
            _, failures = outcomes(futures)
        assert not failures, failures
    assert Annotation.objects.filter(task__project=project, state=AnnotationState.SUBMITTED).count() == 64


def take_pending(user: User, access: Any, start: threading.Barrier) -> workflow.Handed | None:
    start.wait()
    return workflow.task_next(actor=user, access=access)


def withdraw(manager: User, access: Any, assignment_id: int, start: threading.Barrier) -> bool:
    start.wait()
    try:
        workflow.assignment_unassign(actor=manager, access=access, assignment_id=assignment_id)
    except Conflict:
        return False  # the annotator submitted it first (not in this test) or it was withdrawn already
    return True


@pytest.mark.django_db(transaction=True)
def test_a_manager_withdrawing_an_assignment_as_the_annotator_takes_it_keeps_the_counters(
    world: World,
) -> None:
    """`next` leasing a pending assignment races `DELETE /assignments/{a}`: either may win, never both.

    Either the annotator gets the lease (and the withdrawal then frees an active slot) or the
    withdrawal wins (and `next` hands out nothing). Never an active lease the task does not count.
    """
    rounds = 40
    project = queue_project(world, items=rounds, assignment="manual")
    manager, annotator = world.users["manager"], world.users["annotator"]
    manager_access = project_access(user=manager, project_id=project.pk)
    access = project_access(user=annotator, project_id=project.pk)
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            for round_ in range(rounds):
                reserved = workflow.assignments_bulk(
                    actor=manager,
                    access=manager_access,
                    task_filter={"state": [TaskState.OPEN]},
                    quotas=[workflow.Quota(user_id=annotator.pk, quota=1)],
                )
                assert reserved == {annotator.pk: 1}
                pending = Assignment.objects.get(user=annotator, state=AssignmentState.PENDING)
                start = threading.Barrier(2, timeout=120)
                taking = pool.submit(take_pending, annotator, access, start)
                withdrawing = pool.submit(withdraw, manager, manager_access, pending.pk, start)
                taking.result(), withdrawing.result()
                task = Task.objects.get(id=pending.task_id)
                row = Assignment.objects.get(id=pending.pk)
                assert row.state == AssignmentState.UNASSIGNED, (round_, row.state)
                assert (task.active, task.submitted, task.open_slots) == (0, 0, 1), (
                    round_,
                    row.state,
                    task.active,
                )
        finally:
            # Both threads close their connections (the barrier makes each take one of the two calls).
            closing = threading.Barrier(2, timeout=120)
            for future in [pool.submit(close_connection, closing) for _ in range(2)]:
                future.result()


def close_connection(start: threading.Barrier) -> None:
    start.wait()
    connection.close()


def ask_next(user: User, access: Any, start: threading.Barrier) -> int:
    start.wait()
    handed = workflow.task_next(actor=user, access=access)
    assert handed is not None
    return handed.assignment.pk


@pytest.mark.django_db(transaction=True)
def test_next_renewing_a_ran_out_lease_as_the_sweeper_expires_it_hands_out_a_live_lease(world: World) -> None:
    """A retried `next` (held lease, time up) racing the beat: whoever wins, what `next` hands out is live.

    Either `next` renews the lease first (the sweep then leaves it alone) or the sweep expires it
    first (`next` then takes a new slot). Never a lease handed out as renewed that the sweep expired.
    """
    users = annotators(world, 16)
    project = queue_project(world, items=16 * 8 * 2)
    accesses = {user.pk: project_access(user=user, project_id=project.pk) for user in users}
    for round_ in range(8):
        for user in users:
            assert workflow.task_next(actor=user, access=accesses[user.pk]) is not None
        ran_out = Assignment.objects.filter(task__project=project, state=AssignmentState.ACTIVE)
        assert ran_out.count() == len(users)
        ran_out.update(lease_until=timezone.now() - timedelta(seconds=1))
        start, stop = threading.Barrier(len(users) + 1, timeout=120), threading.Event()
        with ThreadPoolExecutor(max_workers=len(users) + 1) as pool:
            sweeper = pool.submit(in_thread(partial(sweep_until, stop, start)))
            asks = [pool.submit(in_thread(partial(ask_next, u, accesses[u.pk], start))) for u in users]
            handed, failures = outcomes(asks)
            stop.set()
            failures += outcomes([sweeper])[1]
        assert not failures, failures
        now = timezone.now()
        for assignment_id in handed:
            row = Assignment.objects.get(id=assignment_id)
            assert row.state == AssignmentState.ACTIVE, (round_, row.state, row.lease_until)
            assert row.lease_until is not None and row.lease_until > now, (round_, row.lease_until)
        stray = Assignment.objects.filter(task__project=project).exclude(state=AssignmentState.ACTIVE)
        assert not stray.filter(lease_until__isnull=False).exists(), "a finished assignment keeps a lease"
        for task in Task.objects.filter(project=project):
            rows = Counter(task.assignments.values_list("state", flat=True))
            assert (task.active, task.submitted) == (
                rows[AssignmentState.ACTIVE],
                rows[AssignmentState.SUBMITTED],
            )
        for user in users:  # finish the round: submit what each holds
            for held in Assignment.objects.filter(user=user, state=AssignmentState.ACTIVE):
                workflow.assignment_submit(
                    actor=user,
                    access=accesses[user.pk],
                    assignment_id=held.pk,
                    lease_id=held.lease_id,
                    result=regions(),
                )
