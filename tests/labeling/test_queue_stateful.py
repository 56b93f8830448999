"""The work queue as a state machine: random sequences of queue calls against a model of what must hold.

Hypothesis drives the services (next, submit, late submit, autosave, skip, release, leases
running out and the beat sweeping them) for a few annotators on a few tasks; after every step the
database is checked against the model and against the invariants of docs/workflow.md. Each example
runs inside a transaction that is rolled back, so examples never see each other's rows.

The deterministic tests at the end pin down what the machine's rules do not reach (overlap changes,
review and rework) and one case of manager reservations, by name.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from labeling import services, workflow
from labeling.models import (
    Annotation,
    AnnotationState,
    Assignment,
    AssignmentState,
    Task,
    TaskState,
)
from projects.access import ProjectAccess, project_access
from projects.exceptions import Conflict
from projects.models import OrgRole, Project
from storage.models import Dataset, Item
from tests.conftest import World
from tests.factories import (
    BlobFactory,
    DatasetFactory,
    ItemFactory,
    MembershipFactory,
    ProjectMemberFactory,
    UserFactory,
)

BOX_SPEC: dict[str, Any] = {"classes": [{"name": "box", "color": "#ff0000", "tools": ["bbox"]}]}
ANNOTATORS = 3
TASKS = 5
LIVE = (AssignmentState.ACTIVE, AssignmentState.PENDING)
GIVEN_UP = (AssignmentState.SKIPPED, AssignmentState.RELEASED, AssignmentState.UNASSIGNED)


def regions(x: int) -> list[dict[str, Any]]:
    return [
        {"id": "r1", "type": "bbox", "label": "box", "geometry": {"x": x, "y": 20, "width": 30, "height": 30}}
    ]


def x_of(result: list[dict[str, Any]]) -> int:
    return int(result[0]["geometry"]["x"])


def queue_world(world: World, annotators: int) -> list[User]:
    """The world's project with a published one-class bbox schema and `annotators` annotators."""
    manager = world.users["manager"]
    services.schema_publish(
        actor=manager, access=project_access(user=manager, project_id=world.project.pk), spec=BOX_SPEC
    )
    users = []
    for i in range(annotators):
        user = cast(User, UserFactory(username=f"queue{i}"))
        MembershipFactory(organization=world.org, user=user, role=OrgRole.MEMBER)
        ProjectMemberFactory(project=world.project, user=user, role="annotator")
        users.append(user)
    return users


def add_tasks(world: World, count: int) -> list[int]:
    dataset = cast(Dataset, DatasetFactory(organization=world.org))
    dataset.projects.add(world.project)
    blob = BlobFactory()
    Item.objects.bulk_create(
        ItemFactory.build(dataset=dataset, primary=blob, name=f"q/{i:03d}.jpg") for i in range(count)
    )
    services.tasks_ensure(world.project.pk)
    return list(Task.objects.filter(project=world.project).order_by("id").values_list("id", flat=True))


# --- The model ---------------------------------------------------------------------------------


@dataclass
class Slot:
    """What the model knows of one assignment."""

    pk: int
    task: int
    user: int
    lease: uuid.UUID | None  # None while a manager's reservation waits to be taken
    state: str = AssignmentState.ACTIVE
    ran_out: bool = False  # lease_until is in the past, the sweeper has not seen it yet
    annotation: int | None = None
    x: int | None = None  # what the annotation holds (the geometry's x)
    started: int | None = None  # when its first lease began, as a step number (started_at)


@dataclass
class TaskModel:
    pk: int
    overlap: int
    slots: list[Slot] = field(default_factory=list)

    @property
    def active(self) -> int:
        return sum(s.state in LIVE for s in self.slots)

    @property
    def submitted(self) -> int:
        return sum(s.state == AssignmentState.SUBMITTED for s in self.slots)

    @property
    def done(self) -> bool:
        return self.submitted >= self.overlap and self.active == 0

    @property
    def open_slots(self) -> int:
        return 0 if self.done else max(self.overlap - self.active - self.submitted, 0)


class QueueMachine(RuleBasedStateMachine):
    """Three annotators and their manager on five tasks; each example in a rolled-back transaction."""

    world: World
    users: list[User]

    def __init__(self) -> None:
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self.tasks: dict[int, TaskModel] = {}
        self.slots: dict[int, Slot] = {}
        self.access: dict[int, ProjectAccess] = {}
        self.max_active = 1
        self.next_x = 1
        self.step = 0

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    @initialize(overlap=st.integers(1, 2), max_active=st.integers(1, 2))
    def setup(self, overlap: int, max_active: int) -> None:
        manager = self.world.users["manager"]
        workflow.workflow_update(
            actor=manager,
            access=project_access(user=manager, project_id=self.world.project.pk),
            changes={"overlap": overlap, "max_active": max_active},
        )
        self.max_active = max_active
        self.tasks = {pk: TaskModel(pk=pk, overlap=overlap) for pk in add_tasks(self.world, TASKS)}
        # Access is read after the workflow change: it carries the project's settings.
        self.access = {u.pk: project_access(user=u, project_id=self.world.project.pk) for u in self.users}
        self.manager = manager
        self.manager_access = project_access(user=manager, project_id=self.world.project.pk)

    # --- helpers ---

    def mine(self, user: User, *states: str) -> list[Slot]:
        """The user's assignments in `states`, oldest lease first (then never-leased, by id)."""
        return sorted(
            (s for s in self.slots.values() if s.user == user.pk and (not states or s.state in states)),
            key=lambda s: (s.started is None, s.started or 0, s.pk),
        )

    def started(self, slot: Slot) -> None:
        """A lease begins: the first one sets started_at, later ones (rework) keep it."""
        self.step += 1
        if slot.started is None:
            slot.started = self.step

    def result(self) -> tuple[int, list[dict[str, Any]]]:
        self.next_x = self.next_x % 500 + 1
        return self.next_x, regions(self.next_x)

    def submit(self, user: User, slot: Slot, x: int, lease: Any = None) -> tuple[Annotation, bool]:
        return workflow.assignment_submit(
            actor=user,
            access=self.access[user.pk],
            assignment_id=slot.pk,
            lease_id=slot.lease if lease is None else lease,
            result=regions(x),
        )

    def has_slot(self, state: str) -> bool:
        return any(s.state == state for s in self.slots.values())

    def choose(self, index: int, *states: str) -> tuple[User, Slot]:
        """One of the assignments in `states` (any state if none given), with its annotator."""
        found = sorted(
            (s for s in self.slots.values() if not states or s.state in states), key=lambda s: s.pk
        )
        slot = found[index % len(found)]
        return next(u for u in self.users if u.pk == slot.user), slot

    # --- rules ---

    @rule(who=st.integers(0, ANNOTATORS - 1))
    def take_next(self, who: int) -> None:
        user = self.users[who]
        held = self.mine(user, AssignmentState.ACTIVE)
        handed = workflow.task_next(actor=user, access=self.access[user.pk])
        if len(held) >= self.max_active:
            # At max_active the caller gets the lease it started first again, renewed: never a new slot.
            assert handed is not None
            assert handed.assignment.pk == held[0].pk
            assert handed.assignment.lease_id == held[0].lease
            renewed = handed.assignment.lease_until
            assert renewed is not None and renewed > timezone.now()
            held[0].ran_out = False
            return
        reserved = self.mine(user, AssignmentState.PENDING)
        if reserved:
            # What a manager assigned comes first (lowest task id: every priority is 0).
            slot = min(reserved, key=lambda s: s.task)
            assert handed is not None
            assert handed.assignment.pk == slot.pk, (handed.assignment.pk, slot)
            assert handed.assignment.lease_id is not None
            slot.state, slot.lease = AssignmentState.ACTIVE, handed.assignment.lease_id
            self.started(slot)
            return
        had = {s.task for s in self.mine(user)}
        eligible = sorted(t.pk for t in self.tasks.values() if t.open_slots > 0 and t.pk not in had)
        if not eligible:
            assert handed is None
            return
        assert handed is not None, eligible
        # Ordering "priority": every priority is 0, so the lowest task id that is still open.
        assert handed.task.pk == eligible[0], (handed.task.pk, eligible)
        assert handed.assignment.pk not in self.slots
        assert handed.assignment.lease_id is not None
        slot = Slot(
            pk=handed.assignment.pk, task=handed.task.pk, user=user.pk, lease=handed.assignment.lease_id
        )
        self.started(slot)
        self.slots[slot.pk] = slot
        self.tasks[slot.task].slots.append(slot)

    @precondition(lambda self: self.has_slot(AssignmentState.ACTIVE))
    @rule(pick=st.integers(0, 7))
    def submit_with_lease(self, pick: int) -> None:
        user, slot = self.choose(pick, AssignmentState.ACTIVE)
        x, _ = self.result()
        annotation, created = self.submit(user, slot, x)
        assert created
        if slot.annotation is not None:
            assert annotation.pk == slot.annotation  # the autosaved draft is what gets submitted
        slot.state, slot.annotation, slot.x, slot.ran_out = AssignmentState.SUBMITTED, annotation.pk, x, False

    @precondition(lambda self: bool(self.slots))
    @rule(pick=st.integers(0, 15))
    def submit_with_a_wrong_lease(self, pick: int) -> None:
        user, slot = self.choose(pick)
        x, _ = self.result()
        try:
            self.submit(user, slot, x, lease=uuid.uuid4())
        except workflow.LeaseInvalid:
            return
        raise AssertionError(f"a submit with a wrong lease was accepted ({slot})")

    @precondition(lambda self: self.has_slot(AssignmentState.EXPIRED))
    @rule(pick=st.integers(0, 7))
    def late_submit(self, pick: int) -> None:
        user, slot = self.choose(pick, AssignmentState.EXPIRED)
        task = self.tasks[slot.task]
        x, _ = self.result()
        free = task.open_slots > 0
        try:
            annotation, created = self.submit(user, slot, x)
        except workflow.SlotTaken as exc:
            assert not free, f"the slot was free, yet the late submit was refused ({slot})"
            draft_id = exc.details["draft_id"]
            if slot.annotation is not None:
                assert draft_id == slot.annotation  # one draft, updated: never a second
            draft = Annotation.objects.get(id=draft_id)
            assert (draft.state, draft.author_id, draft.task_id) == (AnnotationState.DRAFT, user.pk, task.pk)
            assert x_of(draft.result) == x  # nothing discarded
            slot.annotation, slot.x = draft_id, x
            return
        assert free, f"a late submit took a slot that was not free ({slot})"
        assert created
        slot.state, slot.annotation, slot.x = AssignmentState.SUBMITTED, annotation.pk, x

    @precondition(lambda self: self.has_slot(AssignmentState.SUBMITTED))
    @rule(pick=st.integers(0, 15))
    def retry_a_submit(self, pick: int) -> None:
        user, slot = self.choose(pick, AssignmentState.SUBMITTED)
        x, _ = self.result()
        annotation, created = self.submit(user, slot, x)
        assert not created
        assert annotation.pk == slot.annotation
        assert x_of(annotation.result) == slot.x  # the retry changed nothing

    @precondition(lambda self: any(s.state in GIVEN_UP and s.lease for s in self.slots.values()))
    @rule(pick=st.integers(0, 7))
    def submit_what_was_given_up(self, pick: int) -> None:
        """A skipped, released or withdrawn assignment takes no submit, even with its own lease id."""
        user, slot = self.choose(pick, *GIVEN_UP)
        if slot.lease is None:
            return
        x, _ = self.result()
        try:
            self.submit(user, slot, x)
        except workflow.LeaseInvalid:
            return
        raise AssertionError(f"a submit of a {slot.state} assignment was accepted ({slot})")

    @precondition(lambda self: self.has_slot(AssignmentState.ACTIVE))
    @rule(pick=st.integers(0, 7))
    def autosave(self, pick: int) -> None:
        user, slot = self.choose(pick, AssignmentState.ACTIVE)
        x, result = self.result()
        draft = workflow.assignment_draft(
            actor=user, access=self.access[user.pk], assignment_id=slot.pk, lease_id=slot.lease, result=result
        )
        if slot.annotation is not None:
            assert draft.pk == slot.annotation
        renewed = Assignment.objects.get(id=slot.pk).lease_until
        assert renewed is not None and renewed > timezone.now()
        slot.annotation, slot.x, slot.ran_out = draft.pk, x, False

    @precondition(lambda self: bool(self.slots))
    @rule(pick=st.integers(0, 15), skip=st.booleans())
    def give_back(self, pick: int, skip: bool) -> None:
        user, slot = self.choose(pick)
        try:
            workflow.assignment_give_back(
                actor=user,
                access=self.access[user.pk],
                assignment_id=slot.pk,
                lease_id=slot.lease,
                reason="blurry" if skip else "",
                skip=skip,
            )
        except workflow.LeaseInvalid:
            assert slot.state != AssignmentState.ACTIVE, f"a live lease could not be given back ({slot})"
            return
        assert slot.state == AssignmentState.ACTIVE, f"a {slot.state} assignment was given back"
        slot.state = AssignmentState.SKIPPED if skip else AssignmentState.RELEASED
        slot.ran_out = False

    @rule(
        who=st.lists(st.integers(0, ANNOTATORS - 1), min_size=1, max_size=2, unique=True),
        quota=st.integers(1, 2),
    )
    def manager_assigns(self, who: list[int], quota: int) -> None:
        """POST /assignments/bulk with no filter: up to `quota` free slots each, in queue order."""
        users = [self.users[i] for i in who]
        counts = workflow.assignments_bulk(
            actor=self.manager,
            access=self.manager_access,
            task_filter={},
            quotas=[workflow.Quota(user_id=u.pk, quota=quota) for u in users],
        )
        for user in users:
            had = {s.task for s in self.mine(user)}
            free = sorted(t.pk for t in self.tasks.values() if t.open_slots > 0 and t.pk not in had)
            chosen = free[:quota]
            assert counts[user.pk] == len(chosen), (counts, chosen)
            rows = Assignment.objects.filter(user=user, task_id__in=chosen, state=AssignmentState.PENDING)
            assert sorted(rows.values_list("task_id", flat=True)) == chosen
            for pk, task_id in rows.values_list("id", "task_id"):
                slot = Slot(pk=pk, task=task_id, user=user.pk, lease=None, state=AssignmentState.PENDING)
                self.slots[pk] = slot
                self.tasks[task_id].slots.append(slot)

    @precondition(lambda self: bool(self.slots))
    @rule(pick=st.integers(0, 15))
    def manager_withdraws(self, pick: int) -> None:
        """DELETE /assignments/{a}: a pending or active slot reopens; anything else is a conflict."""
        _, slot = self.choose(pick)
        try:
            workflow.assignment_unassign(
                actor=self.manager, access=self.manager_access, assignment_id=slot.pk
            )
        except Conflict as exc:
            assert slot.state not in LIVE, f"a {slot.state} assignment could not be withdrawn: {exc.code}"
            return
        assert slot.state in LIVE, f"a {slot.state} assignment was withdrawn"
        slot.state, slot.ran_out = AssignmentState.UNASSIGNED, False

    @precondition(lambda self: bool(self.slots))
    @rule(pick=st.integers(0, 15), to=st.integers(0, ANNOTATORS - 1))
    def manager_reassigns(self, pick: int, to: int) -> None:
        """POST /assignments/{a}/reassign: the slot moves, pending, to someone who never had the task."""
        _, slot = self.choose(pick)
        target = self.users[to]
        had_it = any(s.task == slot.task for s in self.mine(target))
        try:
            moved = workflow.assignment_reassign(
                actor=self.manager, access=self.manager_access, assignment_id=slot.pk, user_id=target.pk
            )
        except workflow.AlreadyAssigned:
            assert slot.state in LIVE and had_it, slot
            return
        except Conflict as exc:
            assert slot.state not in LIVE, f"a {slot.state} assignment could not be moved: {exc.code}"
            return
        assert slot.state in LIVE and not had_it, slot
        slot.state, slot.ran_out = AssignmentState.UNASSIGNED, False
        new = Slot(pk=moved.pk, task=slot.task, user=target.pk, lease=None, state=AssignmentState.PENDING)
        self.slots[new.pk] = new
        self.tasks[new.task].slots.append(new)

    @precondition(
        lambda self: any(s.state == AssignmentState.ACTIVE and not s.ran_out for s in self.slots.values())
    )
    @rule(pick=st.integers(0, 7))
    def lease_runs_out(self, pick: int) -> None:
        live = sorted(
            (s for s in self.slots.values() if s.state == AssignmentState.ACTIVE and not s.ran_out),
            key=lambda s: s.pk,
        )
        slot = live[pick % len(live)]
        Assignment.objects.filter(id=slot.pk).update(lease_until=timezone.now() - timedelta(seconds=5))
        slot.ran_out = True

    @precondition(lambda self: self.has_slot(AssignmentState.ACTIVE))
    @rule(pick=st.integers(0, 7))
    def lease_expires(self, pick: int) -> None:
        """A lease runs out and the beat sweeps it at once."""
        live = sorted(
            (s for s in self.slots.values() if s.state == AssignmentState.ACTIVE), key=lambda s: s.pk
        )
        live[pick % len(live)].ran_out = True
        Assignment.objects.filter(id=live[pick % len(live)].pk).update(
            lease_until=timezone.now() - timedelta(seconds=5)
        )
        self.sweep()

    @precondition(
        lambda self: any(s.state == AssignmentState.ACTIVE and s.ran_out for s in self.slots.values())
    )
    @rule()
    def sweep(self) -> None:
        ran_out = [s for s in self.slots.values() if s.state == AssignmentState.ACTIVE and s.ran_out]
        assert workflow.leases_expire() == len(ran_out)
        for slot in ran_out:
            slot.state, slot.ran_out = AssignmentState.EXPIRED, False

    # --- invariants ---

    @invariant()
    def the_database_agrees_with_the_model(self) -> None:
        if not self.tasks:
            return
        project_id = self.world.project.pk
        tasks = {t.pk: t for t in Task.objects.filter(project_id=project_id)}
        rows = list(
            Assignment.objects.filter(task__project_id=project_id).values_list(
                "id", "task_id", "user_id", "state", "lease_id", "lease_until", "annotation_id"
            )
        )
        annotations = {
            a.pk: a for a in Annotation.objects.filter(task__project_id=project_id, deleted_at__isnull=True)
        }
        now = timezone.now()

        # One assignment per (task, user); one annotation per (task, author).
        assert max(Counter((task, user) for _, task, user, *_ in rows).values(), default=1) == 1
        assert max(Counter((a.task_id, a.author_id) for a in annotations.values()).values(), default=1) == 1

        # Every assignment is what the model says.
        assert {pk for pk, *_ in rows} == set(self.slots)
        for pk, task_id, user_id, state, lease_id, lease_until, annotation_id in rows:
            slot = self.slots[pk]
            assert (task_id, user_id, state, lease_id) == (slot.task, slot.user, slot.state, slot.lease), slot
            assert annotation_id == slot.annotation, (slot, annotation_id)
            if state == AssignmentState.ACTIVE:
                assert lease_until is not None and (lease_until < now) == slot.ran_out, (slot, lease_until)
            else:
                assert lease_until is None, (slot, lease_until)
            if annotation_id is not None:
                annotation = annotations[annotation_id]
                assert (annotation.task_id, annotation.author_id) == (task_id, user_id)
                assert x_of(annotation.result) == slot.x, (slot, annotation.result)
                expected = (
                    AnnotationState.SUBMITTED if state == AssignmentState.SUBMITTED else AnnotationState.DRAFT
                )
                assert annotation.state == expected, (slot, annotation.state)

        # Counters: equal to the rows, within the overlap, open_slots derived from them.
        by_task = Counter((task, state) for _, task, _, state, *_ in rows)
        submitted_annotations = Counter(
            a.task_id for a in annotations.values() if a.state == AnnotationState.SUBMITTED
        )
        for pk, model in self.tasks.items():
            task = tasks[pk]
            live = by_task[(pk, AssignmentState.ACTIVE)] + by_task[(pk, AssignmentState.PENDING)]
            assert (task.active, task.submitted) == (live, by_task[(pk, AssignmentState.SUBMITTED)]), (
                pk,
                task.active,
                task.submitted,
                dict(by_task),
            )
            assert (task.active, task.submitted, task.open_slots) == (
                model.active,
                model.submitted,
                model.open_slots,
            ), pk
            assert task.active + task.submitted <= task.overlap, pk
            if task.state not in workflow.FINAL_STATES:
                assert task.open_slots == max(task.overlap - task.active - task.submitted, 0), pk
            else:
                assert (task.open_slots, task.active) == (0, 0), pk
            # Review is off: once the overlap is submitted the task is done, unless the annotators
            # disagreed (quality flags the task), which sends it to review under every policy.
            complete = submitted_annotations[pk] == task.overlap
            flagged = task.qc_status == "flagged"
            assert (task.state == TaskState.DONE) == (complete and not flagged), (
                pk,
                task.state,
                task.qc_status,
                submitted_annotations[pk],
            )
            assert (task.state == TaskState.IN_REVIEW) == (complete and flagged), (pk, task.state)
            if task.state not in (TaskState.DONE, TaskState.IN_REVIEW):
                # Open exactly when nobody works on it: a lease, a reservation or a submission.
                busy = task.active + task.submitted > 0
                assert task.state == (TaskState.IN_PROGRESS if busy else TaskState.OPEN), (pk, task.state)

        # Nobody holds more than max_active leases.
        leases = Counter(user for _, _, user, state, *_ in rows if state == AssignmentState.ACTIVE)
        assert max(leases.values(), default=0) <= self.max_active, leases


@pytest.mark.django_db
def test_the_queue_keeps_its_invariants_under_any_sequence_of_calls(world: World) -> None:
    users = queue_world(world, ANNOTATORS)

    class Machine(QueueMachine):
        pass

    Machine.world, Machine.users = world, users
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            database=None,
            # No shrinking: each attempt replays database steps, and a failure would take ~5 minutes
            # to shrink. The failing run prints its steps; add Phase.shrink locally for a minimal one.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# --- What the machine does not reach -----------------------------------------------------------


def counts_by_state(task_id: int) -> tuple[int, int]:
    """(live assignments: active + pending, submitted assignments) of a task, from the rows."""
    states = Counter(Assignment.objects.filter(task_id=task_id).values_list("state", flat=True))
    return states[AssignmentState.ACTIVE] + states[AssignmentState.PENDING], states[AssignmentState.SUBMITTED]


def access_of(user: User, project: Project) -> ProjectAccess:
    return project_access(user=user, project_id=project.pk)


def take_and_submit(user: User, project: Project, x: int = 10) -> Annotation:
    access = access_of(user, project)
    handed = workflow.task_next(actor=user, access=access)
    assert handed is not None
    annotation, created = workflow.assignment_submit(
        actor=user,
        access=access,
        assignment_id=handed.assignment.pk,
        lease_id=handed.assignment.lease_id,
        result=regions(x),
    )
    assert created
    return annotation


def configure(world: World, **changes: Any) -> Project:
    manager = world.users["manager"]
    workflow.workflow_update(actor=manager, access=access_of(manager, world.project), changes=changes)
    return Project.objects.get(id=world.project.pk)


@pytest.mark.django_db
def test_lowering_the_overlap_finishes_the_tasks_that_already_have_enough_annotations(world: World) -> None:
    first, second = queue_world(world, 2)
    project = configure(world, overlap=2)
    (task_id,) = add_tasks(world, 1)
    take_and_submit(first, project)
    task = Task.objects.get(id=task_id)
    assert (task.state, task.active, task.submitted, task.open_slots) == (TaskState.IN_PROGRESS, 0, 1, 1)

    project = configure(world, overlap=1)

    # One annotation is all the task needs now: it moves on like any full task (docs: review none).
    task = Task.objects.get(id=task_id)
    assert (task.overlap, task.submitted, task.open_slots) == (1, 1, 0)
    assert task.state == TaskState.DONE, f"the task is stuck in {task.state} with nothing left to hand out"
    assert workflow.task_next(actor=second, access=access_of(second, project)) is None


@pytest.mark.django_db
def test_a_task_whose_manager_assigned_slot_is_being_worked_on_is_in_progress(world: World) -> None:
    (annotator,) = queue_world(world, 1)
    project = configure(world)
    (task_id,) = add_tasks(world, 1)
    manager = world.users["manager"]
    reserved = workflow.assignments_bulk(
        actor=manager,
        access=access_of(manager, project),
        task_filter={},
        quotas=[workflow.Quota(user_id=annotator.pk, quota=5)],
    )
    assert reserved == {annotator.pk: 1}
    task = Task.objects.get(id=task_id)
    assert (task.active, task.submitted, task.open_slots) == (1, 0, 0)
    assert (task.active, task.submitted) == counts_by_state(task_id)

    handed = workflow.task_next(actor=annotator, access=access_of(annotator, project))
    assert handed is not None and handed.task.pk == task_id
    assert Assignment.objects.get(id=handed.assignment.pk).state == AssignmentState.ACTIVE

    # docs/workflow.md: open → in_progress "(someone holds a lease)".
    task = Task.objects.get(id=task_id)
    assert task.state == TaskState.IN_PROGRESS, f"{task.state} while {annotator.username} holds a lease"


@pytest.mark.django_db
def test_a_caller_at_max_active_gets_the_lease_they_started_first_not_the_oldest_reservation(
    world: World,
) -> None:
    (annotator,) = queue_world(world, 1)
    project = configure(world, max_active=2)
    low, high = add_tasks(world, 2)
    manager = world.users["manager"]
    manager_access = access_of(manager, project)
    # Reserved in the opposite order of the queue: the later reservation's task comes first.
    for task_id in (high, low):
        workflow.assignments_bulk(
            actor=manager,
            access=manager_access,
            task_filter={"tasks": [task_id]},
            quotas=[workflow.Quota(user_id=annotator.pk, quota=1)],
        )
    reserved = dict(Assignment.objects.filter(user=annotator).values_list("task_id", "id"))
    assert reserved[high] < reserved[low]
    access = access_of(annotator, project)
    first = workflow.task_next(actor=annotator, access=access)
    second = workflow.task_next(actor=annotator, access=access)
    assert first is not None and second is not None
    assert (first.task.pk, second.task.pk) == (low, high)

    again = workflow.task_next(actor=annotator, access=access)

    assert again is not None
    assert again.assignment.pk == first.assignment.pk == reserved[low]
    assert again.assignment.lease_id == first.assignment.lease_id


@pytest.mark.django_db
def test_a_rejection_back_to_the_author_keeps_the_counters_and_ends_accepted(world: World) -> None:
    (annotator,) = queue_world(world, 1)
    project = configure(world, review="all", rejected_to="author")
    (task_id,) = add_tasks(world, 1)
    reviewer = world.users["reviewer"]
    first = take_and_submit(annotator, project)
    assert Task.objects.get(id=task_id).state == TaskState.IN_REVIEW

    workflow.annotation_review(
        actor=reviewer,
        access=access_of(reviewer, project),
        annotation_id=first.pk,
        verdict="reject",
        comment="the box is too loose",
        if_match=first.version,
    )
    task = Task.objects.get(id=task_id)
    assert (task.state, task.active, task.submitted, task.open_slots) == (TaskState.REJECTED, 1, 0, 0)
    assert (task.active, task.submitted) == counts_by_state(task_id)

    reworked = take_and_submit(annotator, project, x=11)
    assert reworked.pk == first.pk  # the same annotation, a new version
    task = Task.objects.get(id=task_id)
    assert (task.state, task.active, task.submitted) == (TaskState.IN_REVIEW, 0, 1)
    assert (task.active, task.submitted) == counts_by_state(task_id)
    reworked.refresh_from_db()
    workflow.annotation_review(
        actor=reviewer,
        access=access_of(reviewer, project),
        annotation_id=reworked.pk,
        verdict="accept",
        if_match=reworked.version,
    )
    assert Task.objects.get(id=task_id).state == TaskState.ACCEPTED


@pytest.mark.django_db
def test_a_rejection_back_to_the_pool_keeps_the_counters_and_ends_accepted(world: World) -> None:
    author, other = queue_world(world, 2)
    project = configure(world, review="all", rejected_to="pool")
    (task_id,) = add_tasks(world, 1)
    reviewer = world.users["reviewer"]
    review_access = access_of(reviewer, project)
    rejected = take_and_submit(author, project)
    workflow.annotation_review(
        actor=reviewer,
        access=review_access,
        annotation_id=rejected.pk,
        verdict="reject",
        comment="wrong class",
        if_match=rejected.version,
    )
    task = Task.objects.get(id=task_id)
    assert (task.state, task.active, task.submitted, task.open_slots) == (TaskState.REJECTED, 0, 0, 1)
    # The counters are the rows: the rejected annotation's assignment no longer counts as submitted.
    assert (task.active, task.submitted) == counts_by_state(task_id), (
        "task.submitted was decremented but the author's assignment is still 'submitted'"
    )

    replacement = take_and_submit(other, project, x=40)
    assert Task.objects.get(id=task_id).state == TaskState.IN_REVIEW
    for_review = workflow.review_next(actor=reviewer, access=review_access)
    assert for_review is not None
    assert [a.pk for a in for_review.annotations] == [replacement.pk]  # not the rejected one again
    workflow.annotation_review(
        actor=reviewer,
        access=review_access,
        annotation_id=replacement.pk,
        verdict="accept",
        if_match=replacement.version,
    )
    assert Task.objects.get(id=task_id).state == TaskState.ACCEPTED
