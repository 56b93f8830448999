"""Work distribution: the queue, leases, drafts, submits, manager assignment, review and rework.

Invariants, kept by locking the task row in every transaction that changes its assignments:
- one assignment row per (task, user): a user never gets the same task twice;
- `active + submitted <= overlap`, with `open_slots = overlap - active - submitted`, where
  `active` counts live leases and slots a manager reserved (pending assignments);
- a task with `open_slots > 0` is the only kind the queue looks at (a partial index).

Lock order, everywhere: the caller's advisory lock (project, user) first, then task rows, then
assignment and annotation rows. Task state changes are written to the audit log.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from labeling import hooks
from labeling.models import (
    Annotation,
    AnnotationState,
    Assignment,
    AssignmentState,
    Comment,
    Prediction,
    Review,
    RevisionAction,
    Task,
    TaskState,
    Verdict,
)
from labeling.services import (
    CURRENT_SCHEMA_SQL,
    _require_schema,
    _validate,
    item_facts,
    parsed_schema,
    record_prediction_outcome,
    require_schema_id,
    revision_for,
)
from labeling.webhooks.services import emit
from projects.access import ProjectAccess, ProjectAction
from projects.audit import audit_record
from projects.exceptions import (
    Conflict,
    DomainError,
    InvalidInput,
    NotFound,
    SchemaViolation,
)
from projects.models import Organization, Project
from projects.rows import Columns, fetch_one, insert, prepared_cursor, together, update
from storage.models import Blob, Item

FINAL_STATES = (TaskState.ACCEPTED, TaskState.DONE)
QC_FLAGGED = "flagged"
QC_PASSED = "passed"
# Which gold task a `next` hands is no secret worth protecting: a plain generator will do.
_random = random.Random()  # noqa: S311
REVIEW_LEASE = timedelta(minutes=30)

# The queue's hot paths read through hand-written statements (projects/rows.py): every annotator
# calls next and submit all day, and building these joins through the ORM costs several times
# what PostgreSQL spends answering them.
_TASK = Columns(Task, "t")
_ASSIGNMENT = Columns(Assignment, "a")
_ITEM = Columns(Item, "i")
_BLOB = Columns(Blob, "b")


class LeaseInvalid(Conflict):
    code = "lease_invalid"
    default_message = "This assignment holds no lease with that id: take a task with next."


class SlotTaken(Conflict):
    code = "slot_taken"
    default_message = (
        "Your lease ran out and the slot went to someone else. "
        "Your work is kept as a draft (details.draft_id)."
    )


class OwnAnnotation(DomainError):
    code, status_code = "own_annotation", 403
    default_message = "Reviewers do not review their own annotations."


class NotInReview(Conflict):
    code = "not_in_review"
    default_message = "The task is not waiting for review."


class AnnotatorPaused(DomainError):
    code, status_code = "annotator_paused", 403
    default_message = "Your annotation work in this project is paused; ask a project manager."


class AlreadyAssigned(Conflict):
    code = "already_assigned"
    default_message = "That user already has this task."


# --- Settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workflow:
    overlap: int = 1
    assignment: str = "both"  # pull | manual | both
    ordering: str = "priority"  # priority | random | uncertainty
    seed: int = 0
    max_active: int = 1
    max_total: int | None = None
    lease_seconds: int = 1800
    blind: bool = True
    review: str = "none"  # all | sample | qc_flagged | none
    review_fraction: float = 0.1
    rejected_to: str = "author"  # author | pool
    # The share of `next` calls that hand a gold task (one the annotator has not had) instead of
    # the next regular one, while regular work is left for them.
    gold_rate: float = 0.0

    def needs_review(self, task: Task) -> bool:
        # Flagged by quality checks (annotators who disagree, a blocking finding after the fact):
        # reviewed whatever the routine policy, "none" included.
        if task.qc_status == QC_FLAGGED or self.review == "all":
            return True
        if self.review == "sample":
            # Stable per task and seed: the same tasks are sampled however often this is asked.
            digest = hashlib.sha256(f"{self.seed}:{task.pk}".encode()).digest()
            return int.from_bytes(digest[:8], "big") / 2**64 < self.review_fraction
        return False


def workflow_of(project: Project) -> Workflow:
    stored = (project.settings or {}).get("workflow") or {}
    known = {f.name for f in fields(Workflow)}
    return Workflow(**{k: v for k, v in stored.items() if k in known})


def workflow_for(project_id: int) -> Workflow:
    settings = Project.objects.filter(id=project_id).values_list("settings", flat=True).first() or {}
    return workflow_of(Project(settings=settings))


@transaction.atomic
def workflow_update(*, actor: User, access: ProjectAccess, changes: dict[str, Any]) -> Workflow:
    """Change the project's workflow; overlap and seed apply at once to the unfinished tasks."""
    access.require(ProjectAction.WORKFLOW_UPDATE)
    project = Project.objects.select_for_update().get(id=access.project.pk)
    before = workflow_of(project)
    after = replace(before, **changes)
    project.settings = {**(project.settings or {}), "workflow": asdict(after)}
    project.save(update_fields=["settings", "updated_at"])
    # Gold tasks keep overlap 0: they are handed by the gold rate, never through their slots.
    tasks = Task.objects.filter(project=project, is_gold=False).exclude(state__in=FINAL_STATES)
    if after.overlap != before.overlap:
        tasks.update(overlap=after.overlap)
        _recount_open_slots(project.pk)
        # Tasks whose submissions already reach a lowered overlap move on like any other full task.
        full = tasks.filter(
            state__in=(TaskState.OPEN, TaskState.IN_PROGRESS), active=0, submitted__gte=after.overlap
        )
        for task in full.select_for_update(of=("self",)).select_related("project"):
            _after_submission(task, after, actor)
            _save_task(task)
    if after.seed != before.seed:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE labeling_task SET random_key = hashtext(%s || ':' || item_id::text) "
                "WHERE project_id = %s",
                [str(after.seed), project.pk],
            )
    diff = {k: [v, getattr(after, k)] for k, v in asdict(before).items() if getattr(after, k) != v}
    audit_record(
        actor=actor,
        verb="workflow.update",
        obj=project,
        organization=project.organization,
        project=project,
        changes=diff,
    )
    return after


def _recount_open_slots(project_id: int) -> None:
    Task.objects.filter(project_id=project_id).exclude(state__in=FINAL_STATES).update(
        open_slots=_slots_expression()
    )


def _slots_expression() -> Any:
    from django.db.models.functions import Greatest

    return Greatest(F("overlap") - F("active") - F("submitted"), 0)


# --- Task state --------------------------------------------------------------------------------


def _set_state(task: Task, state: str, *, actor: User | None, reason: str) -> None:
    if task.state == state:
        return
    project = task.project  # loaded with the locked task
    audit_record(
        actor=actor,
        verb="task.state",
        obj=task,
        project=project,
        organization=Organization(id=project.organization_id),
        changes={"state": [task.state, state], "reason": reason},
    )
    task.state = state


def _after_submission(task: Task, workflow: Workflow, actor: User) -> None:
    """A task whose slots are all submitted goes to review, or is done.

    Gold tasks never move: every annotator may answer them once, and their answers are scored
    against the ground truth (quality) rather than reviewed.
    """
    if task.is_gold:
        return
    if task.submitted < task.overlap or task.active > 0:
        if task.state == TaskState.OPEN:
            _set_state(task, TaskState.IN_PROGRESS, actor=actor, reason="submitted")
        return
    hooks.task_complete(task)  # may flag the task (qc_status) before the review decision
    if workflow.needs_review(task):
        _set_state(task, TaskState.IN_REVIEW, actor=actor, reason="all annotations submitted")
    else:
        _set_state(task, TaskState.DONE, actor=actor, reason="all annotations submitted, no review")
    task.open_slots = 0


_LOCKED_TASK_SQL = f"SELECT {_TASK.sql} FROM labeling_task t WHERE t.id = %s FOR UPDATE"  # noqa: S608


def _locked_task(task_id: int, project: Project) -> Task:
    """Lock a task row of `project` (the caller's access already loaded it, for audit entries)."""
    found = fetch_one(_LOCKED_TASK_SQL, [task_id], _TASK)
    if found is None:
        raise Task.DoesNotExist(f"task {task_id}")
    task = found[0]
    task.project = project
    return task


_LOCKED_ASSIGNMENT_SQL = f"SELECT {_ASSIGNMENT.sql} FROM labeling_assignment a WHERE a.id = %s FOR UPDATE"  # noqa: S608


def _locked_assignment(assignment_id: int) -> Assignment:
    found = fetch_one(_LOCKED_ASSIGNMENT_SQL, [assignment_id], _ASSIGNMENT)
    if found is None:
        raise Assignment.DoesNotExist(f"assignment {assignment_id}")
    return found[0]


# The task row is locked first (by the materialized CTE, which the join has to read before the
# outer lock can take the assignment), in the order every service locks them: a submit or a
# draft's first save inserts an annotation, which takes a key lock on the task row, so taking the
# assignment first could deadlock. Both rows come back as they are after any lock wait.
_LOCKED_PAIR_SQL = (
    f"WITH t AS MATERIALIZED (SELECT {_TASK.sql} FROM labeling_task t WHERE t.id = %s FOR UPDATE)"  # noqa: S608
    f" SELECT {_TASK.sql}, {_ASSIGNMENT.sql} FROM t JOIN labeling_assignment a ON a.task_id = t.id"
    " WHERE a.id = %s FOR UPDATE OF a"
)


def _locked_pair(task_id: int, assignment_id: int, project: Project) -> tuple[Task, Assignment]:
    """Lock a task of `project` and one of its assignments, task first, in one statement."""
    found = fetch_one(_LOCKED_PAIR_SQL, [task_id, assignment_id], _TASK, _ASSIGNMENT)
    if found is None:
        raise Assignment.DoesNotExist(f"assignment {assignment_id} of task {task_id}")
    task, assignment = found
    task.project = project
    return task, assignment


def _save_task(task: Task) -> None:
    """Write what the services change on a locked task: its state, counters and review lease."""
    update(
        task,
        [
            "state",
            "active",
            "submitted",
            "open_slots",
            "qc_status",
            "review_by_id",
            "review_until",
            "updated_at",
        ],
    )


def _free_slot(task: Task) -> None:
    task.active -= 1
    if task.is_gold:
        return
    if task.state not in FINAL_STATES and task.state != TaskState.IN_REVIEW:
        task.open_slots = max(task.overlap - task.active - task.submitted, 0)
    if task.active == 0 and task.submitted == 0 and task.state == TaskState.IN_PROGRESS:
        _set_state(task, TaskState.OPEN, actor=None, reason="no one is working on it")


def _take_slot(task: Task, actor: User) -> None:
    task.active += 1
    task.open_slots = max(task.overlap - task.active - task.submitted, 0)
    if task.state == TaskState.OPEN and not task.is_gold:
        _set_state(task, TaskState.IN_PROGRESS, actor=actor, reason="taken")


# --- The queue ---------------------------------------------------------------------------------


@dataclass
class Handed:
    """What `next` hands out: the assignment (with its lease) and the task."""

    assignment: Assignment
    task: Task
    draft: Annotation | None
    predictions: list[Prediction] = field(default_factory=list)  # newest first: pre-labels to start from


_ORDER = {
    "priority": "t.priority DESC, t.id",
    "random": "t.random_key, t.id",
    "uncertainty": "t.uncertainty ASC NULLS LAST, t.priority DESC, t.id",
}


def _lock_caller(project_id: int, user_id: int) -> None:
    """Serialize one user's queue calls in one project (two tabs asking at once get one slot)."""
    with prepared_cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [project_id, user_id])


def _lease(assignment: Assignment, workflow: Workflow, now: Any) -> None:
    assignment.state = AssignmentState.ACTIVE
    assignment.lease_id = assignment.lease_id or uuid.uuid4()
    assignment.lease_until = now + timedelta(seconds=workflow.lease_seconds)
    assignment.started_at = assignment.started_at or now


def task_next(*, actor: User, access: ProjectAccess) -> Handed | None:
    """The caller's next task with a lease, or None when nothing is left for them.

    The hot path of every annotator: a held lease or a pending assignment in one read, otherwise
    one SKIP LOCKED statement that locks and returns the task row, then two writes.
    """
    access.require(ProjectAction.ANNOTATE)
    if access.paused:
        raise AnnotatorPaused(project_id=access.project.pk)
    project = access.project
    workflow = workflow_of(project)
    now = timezone.now()
    with transaction.atomic():
        _lock_caller(project.pk, actor.pk)
        pulled: tuple[Task, list[Prediction]] | None = None
        if workflow.assignment == "manual" or workflow.max_total is not None:
            waiting = _waiting(project.pk, actor.pk, workflow.max_active + 1)
            pull_tried = False
        else:
            waiting, pulled = _waiting_then_pull(project, actor.pk, workflow)
            pull_tried = _pull_wanted(waiting, workflow)
        held = [a for a in waiting if a.state == AssignmentState.ACTIVE]
        if len(held) >= workflow.max_active:
            renewed = now + timedelta(seconds=workflow.lease_seconds)
            for assignment in held:
                # Renew only what is still active: the sweep may have expired it since it was read.
                if Assignment.objects.filter(id=assignment.pk, state=AssignmentState.ACTIVE).update(
                    lease_until=renewed
                ):
                    assignment.lease_until = renewed
                    return _handed(assignment, project)
        pending = next((a for a in waiting if a.state == AssignmentState.PENDING), None)
        if pending is not None and workflow.assignment in ("manual", "both"):
            # Lock it and read it again: a manager may be withdrawing or moving it right now.
            pending = (
                Assignment.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(id=pending.pk, state=AssignmentState.PENDING)
                .first()
            )
        if pending is not None and workflow.assignment in ("manual", "both"):
            _lease(pending, workflow, now)
            update(pending, ["state", "lease_id", "lease_until", "started_at"])
            return _handed(pending, project)
        if workflow.assignment == "manual":
            return None
        if workflow.max_total is not None and (
            Assignment.objects.filter(task__project_id=project.pk, user=actor).count() >= workflow.max_total
        ):
            return None
        if not pull_tried:  # skipped above for held leases or a reservation that have just gone
            pulled = _pull(project, actor.pk, _ORDER[workflow.ordering])
        if pulled is None:
            return None
        if workflow.gold_rate > 0 and _random.random() < workflow.gold_rate:
            # In place of the regular task (whose row lock ends with this transaction, untouched).
            pulled = _pull(project, actor.pk, _ORDER["random"], gold=True) or pulled
        task, predictions = pulled
        assignment = Assignment(task=task, user=actor)
        with together():  # the task's counters, its state's audit entry and the lease: one statement
            _take_slot(task, actor)
            _save_task(task)
            _lease(assignment, workflow, now)
            insert(assignment)
        return Handed(assignment=assignment, task=task, draft=None, predictions=predictions)


# The caller's held leases first (the one started first leads), then what a manager reserved for
# them (rework first, then by priority).
_WAITING_SQL = (
    f"SELECT {_ASSIGNMENT.sql} FROM labeling_assignment a"  # noqa: S608  (model metadata)
    " JOIN labeling_task t ON t.id = a.task_id"
    " WHERE t.project_id = %s AND a.user_id = %s AND a.state IN ('active', 'pending')"
    " ORDER BY a.state, a.started_at, a.rework DESC, t.priority DESC, a.task_id LIMIT %s"
)


def _waiting(project_id: int, user_id: int, limit: int) -> list[Assignment]:
    with prepared_cursor() as cursor:
        cursor.execute(_WAITING_SQL, [project_id, user_id, limit])
        return [_ASSIGNMENT.build(row) for row in cursor.fetchall()]


def _pull_sql(which: str, order: str, gate: str = "") -> str:
    """The first task passing `which` with a free slot the user (the second parameter) never had,
    locked, skipping locked rows; `gate` is a condition on other rows, checked once before the scan."""
    return f"""
        SELECT {_HANDED_COLUMNS} FROM labeling_task t
        JOIN storage_item i ON i.id = t.item_id JOIN storage_blob b ON b.id = i.primary_id
        WHERE t.project_id = %s AND {which}
          AND NOT EXISTS (SELECT 1 FROM labeling_assignment a WHERE a.task_id = t.id AND a.user_id = %s)
          {gate}
        ORDER BY {order}
        LIMIT 1
        FOR UPDATE OF t SKIP LOCKED
    """  # noqa: S608  (column names from model metadata, order, which and gate constant clauses)


def _pulled(project: Project, values: Sequence[Any]) -> tuple[Task, list[Prediction]]:
    """The task, its item and predictions from a row of _HANDED_COLUMNS."""
    task = _TASK.build(values[: _TASK.width])
    at = _TASK.width
    item = _ITEM.build(values[at : at + _ITEM.width])
    at += _ITEM.width
    item.primary = _BLOB.build(values[at : at + _BLOB.width])
    task.project, task.item = project, item
    return task, _predictions(values[at + _BLOB.width])


def _pull(
    project: Project, user_id: int, order: str, *, gold: bool = False
) -> tuple[Task, list[Prediction]] | None:
    """Lock and return the first task with a free slot the user never had, skipping locked rows;
    with `gold`, the first gold task the user never had (gold tasks have no slots to run out of).
    The task comes with its item and predictions, as `next` hands it out."""
    sql = _pull_sql("t.is_gold" if gold else "t.open_slots > 0", order)
    with prepared_cursor() as cursor:
        cursor.execute(sql, [project.pk, user_id])
        row = cursor.fetchone()
    return None if row is None else _pulled(project, row)


def _pull_wanted(waiting: list[Assignment], workflow: Workflow) -> bool:
    """The gate of _NEXT_SQL, on the waiting rows it read."""
    held = sum(a.state == AssignmentState.ACTIVE for a in waiting)
    reserved = any(a.state == AssignmentState.PENDING for a in waiting)
    return held < workflow.max_active and not (reserved and workflow.assignment == "both")


def _waiting_then_pull(
    project: Project, user_id: int, workflow: Workflow
) -> tuple[list[Assignment], tuple[Task, list[Prediction]] | None]:
    params = [project.pk, user_id, workflow.max_active + 1, project.pk, user_id]
    params += [workflow.max_active, workflow.assignment == "both"]
    with prepared_cursor() as cursor:
        cursor.execute(_NEXT_SQL[workflow.ordering], params)
        rows = cursor.fetchall()
    waiting = [_ASSIGNMENT.build(row[: _ASSIGNMENT.width]) for row in rows if row[0] is not None]
    pull = rows[0][_ASSIGNMENT.width :]
    return waiting, None if pull[0] is None else _pulled(project, pull)


# The task with its item, and the newest prediction of each model version of the task (at most
# five versions) as one JSON array: predictions ride along instead of costing a round trip.
_HANDED_PREDICTION = (
    "id",
    "task_id",
    "source_id",
    "model_version",
    "schema_version",
    "result",
    "score",
    "created_at",
)
_HANDED_COLUMNS = (
    f"{_TASK.sql}, {_ITEM.sql}, {_BLOB.sql}, "  # noqa: S608  (model metadata)
    f"(SELECT json_agg(json_build_array({', '.join(f'p.{c}' for c in _HANDED_PREDICTION)})"
    " ORDER BY p.model_version)"
    " FROM (SELECT DISTINCT ON (p.model_version) p.* FROM labeling_prediction p WHERE p.task_id = t.id"
    " ORDER BY p.model_version, p.id DESC LIMIT 5) p)"
)
_HANDED_SQL = (
    f"SELECT {_HANDED_COLUMNS}"  # noqa: S608  (model metadata)
    " FROM labeling_task t JOIN storage_item i ON i.id = t.item_id JOIN storage_blob b ON b.id = i.primary_id"
    " WHERE t.id = %s"
)


# `next` in one statement for what it nearly always does: the caller's waiting work (as _waiting)
# and, when that leaves room for a new lease (fewer held than max_active, and no reserved
# assignment to take first), the task _pull would lock. The gate is a one-time filter on the
# materialized waiting rows: when it fails, the task scan never runs and nothing is locked.
_PULL_GATE = (
    "AND (SELECT count(*) FROM w WHERE w.state = 'active') < %s"
    " AND NOT (%s AND EXISTS (SELECT 1 FROM w WHERE w.state = 'pending'))"
)
_NEXT_SQL = {
    ordering: f"WITH w AS MATERIALIZED ({_WAITING_SQL}),"  # noqa: S608  (constant clauses)
    f" p AS ({_pull_sql('t.open_slots > 0', order, _PULL_GATE)})"
    " SELECT w.*, p.* FROM (SELECT) AS one LEFT JOIN w ON true LEFT JOIN p ON true"
    for ordering, order in _ORDER.items()
}


def _handed(assignment: Assignment, project: Project) -> Handed:
    """The task of an assignment as `next` hands it out: its item, its predictions and the
    caller's draft, if any."""
    with prepared_cursor() as cursor:
        cursor.execute(_HANDED_SQL, [assignment.task_id])
        row = cursor.fetchone()
    if row is None:
        raise Task.DoesNotExist(f"task {assignment.task_id}")
    task, predictions = _pulled(project, row)
    draft = None
    if assignment.annotation_id is not None:  # a lease handed again, or rework: rare
        draft = Annotation.objects.filter(id=assignment.annotation_id).first()
    return Handed(assignment=assignment, task=task, draft=draft, predictions=predictions)


def _predictions(found: str | list[list[Any]] | None) -> list[Prediction]:
    """Predictions from the JSON arrays of _HANDED_SQL (psycopg parses `json` values; the regions
    come as they are, the timestamp as ISO text)."""
    rows = json.loads(found) if isinstance(found, str) else found or []
    for row in rows:
        row[-1] = datetime.fromisoformat(row[-1])
    return [Prediction.from_db(connection.alias, _HANDED_PREDICTION, row) for row in rows]


# The caller's assignment in this project, with its task, item and the current schema version.
_OWN_SQL = (
    f"SELECT {_ASSIGNMENT.sql}, {_TASK.sql}, {_ITEM.sql}, "  # noqa: S608  (model metadata)
    + CURRENT_SCHEMA_SQL.format(project="t.project_id")
    + " FROM labeling_assignment a JOIN labeling_task t ON t.id = a.task_id"
    " JOIN storage_item i ON i.id = t.item_id"
    " WHERE a.id = %s AND a.user_id = %s AND t.project_id = %s"
)


def _own_assignment(actor: User, access: ProjectAccess, assignment_id: int) -> tuple[Assignment, int | None]:
    """(the caller's assignment with its task and item, the current schema version's id)."""
    found = fetch_one(_OWN_SQL, [assignment_id, actor.pk, access.project.pk], _ASSIGNMENT, _TASK, _ITEM)
    if found is None:
        raise NotFound("Assignment not found.", assignment_id=assignment_id)
    assignment, task, task.item, schema_id = found
    task.project = access.project
    assignment.task = task
    return assignment, schema_id


def _check_lease(assignment: Assignment, lease_id: Any) -> None:
    if assignment.lease_id is None or str(assignment.lease_id) != str(lease_id):
        raise LeaseInvalid(assignment_id=assignment.pk)


def _regions_list(result: Any) -> list[Any]:
    if not isinstance(result, list):
        raise SchemaViolation("result must be a list of regions.", field="result")
    return result


def assignment_draft(
    *,
    actor: User,
    access: ProjectAccess,
    assignment_id: int,
    lease_id: Any,
    result: Any,
    from_prediction_id: int | None = None,
) -> Annotation:
    """Autosave: keep the caller's work as a draft (not validated until submit) and renew the lease.

    A draft is saved even when the lease has run out: work is never refused for being late.
    """
    access.require(ProjectAction.ANNOTATE)
    regions = _regions_list(result)
    workflow = workflow_of(access.project)
    found, schema_id = _own_assignment(actor, access, assignment_id)
    schema = require_schema_id(access.project.pk, schema_id)
    _check_prediction(found.task_id, from_prediction_id)
    with transaction.atomic():
        _, assignment = _locked_pair(found.task_id, found.pk, access.project)
        _check_lease(assignment, lease_id)
        if assignment.state not in (AssignmentState.ACTIVE, AssignmentState.EXPIRED):
            # Submitted, skipped, released or withdrawn: an autosave arriving late changes nothing.
            raise LeaseInvalid(assignment_id=assignment.pk, state=assignment.state)
        with together():  # the annotation, its revision and the renewed lease: one statement
            annotation = _write_draft(assignment, actor, regions, schema.version, from_prediction_id)
            if assignment.state == AssignmentState.ACTIVE:
                assignment.lease_until = timezone.now() + timedelta(seconds=workflow.lease_seconds)
            assignment.annotation = annotation
            update(assignment, ["lease_until", "annotation_id"])
    return annotation


def _check_prediction(task_id: int, prediction_id: int | None) -> None:
    """The prediction an annotator says they started from must be one of this task's."""
    if (
        prediction_id is not None
        and not Prediction.objects.filter(id=prediction_id, task_id=task_id).exists()
    ):
        raise InvalidInput("from_prediction is not a prediction of this task.", field="from_prediction")


def _write_draft(
    assignment: Assignment,
    actor: User,
    regions: list[Any],
    schema_version: int,
    from_prediction_id: int | None = None,
) -> Annotation:
    annotation = None
    if assignment.annotation_id is not None:
        annotation = Annotation.objects.select_for_update().filter(id=assignment.annotation_id).first()
    if annotation is None:
        annotation = Annotation(
            task_id=assignment.task_id,
            author=actor,
            schema_version=schema_version,
            state=AnnotationState.DRAFT,
            result=regions,
            from_prediction_id=from_prediction_id,
        )
        insert(annotation)
        before: list[Any] = []
        action = RevisionAction.CREATE
    else:
        before, action = annotation.result, RevisionAction.UPDATE
        annotation.result, annotation.schema_version = regions, schema_version
        annotation.from_prediction_id = from_prediction_id or annotation.from_prediction_id
        annotation.version += 1
        update(annotation, ["result", "schema_version", "from_prediction_id", "version", "updated_at"])
    _revision(annotation, action, actor, before)
    return annotation


def _revision(annotation: Annotation, action: str, actor: User, before: list[Any]) -> None:
    insert(revision_for(annotation, action, actor, before))  # statement built once: the hot path


def assignment_submit(
    *,
    actor: User,
    access: ProjectAccess,
    assignment_id: int,
    lease_id: Any,
    result: Any,
    lead_time_ms: int = 0,
    from_prediction_id: int | None = None,
) -> tuple[Annotation, bool]:
    """Submit the work of a lease: exactly one annotation per assignment, whatever the retries.

    Returns (annotation, created). A retried submit of an assignment already submitted returns the
    same annotation. A lease that ran out is honoured while its slot is free; when someone else took
    the slot the work is saved as a draft and SlotTaken names it.
    """
    access.require(ProjectAction.ANNOTATE)
    found, schema_id = _own_assignment(actor, access, assignment_id)
    schema = require_schema_id(access.project.pk, schema_id)
    workflow = workflow_of(access.project)
    facts = item_facts(found.task.item)
    regions = _validate(result, schema, facts)
    _check_prediction(found.task_id, from_prediction_id)
    record = hooks.submit_checks(
        hooks.Submitted(access.project, found.task, actor.pk, regions, parsed_schema(schema), facts)
    )
    with transaction.atomic():
        task, assignment = _locked_pair(found.task_id, found.pk, access.project)
        _check_lease(assignment, lease_id)
        if assignment.state == AssignmentState.SUBMITTED and assignment.annotation_id is not None:
            return Annotation.objects.get(id=assignment.annotation_id), False
        slot_lost = False
        if assignment.state == AssignmentState.EXPIRED:
            # A gold task has no slots to lose: every annotator answers it once.
            if task.is_gold or (task.open_slots > 0 and task.state not in FINAL_STATES):
                _take_slot(task, actor)
            else:
                slot_lost = True
        elif assignment.state != AssignmentState.ACTIVE:
            raise LeaseInvalid(assignment_id=assignment.pk, state=assignment.state)
        if not slot_lost:
            annotation = _submit(
                assignment, task, actor, regions, schema.version, lead_time_ms, workflow, from_prediction_id
            )
            record(annotation)
            emit(
                access.project,
                "annotation.submitted",
                {
                    "task": task.pk,
                    "item": task.item_id,
                    "annotation": annotation.pk,
                    "version": annotation.version,
                    "author": actor.pk,
                    "submitted_at": annotation.submitted_at,
                },
            )
            return annotation, True
    # The slot is gone: keep the work as the caller's draft, in its own transaction, then say so.
    with transaction.atomic():
        assignment = _locked_assignment(found.pk)
        draft = _write_draft(assignment, actor, regions, schema.version, from_prediction_id)
        assignment.annotation = draft
        assignment.save(update_fields=["annotation"])
    raise SlotTaken(draft_id=draft.pk, task_id=found.task_id)


_SUBMITTED_FIELDS = [
    "result",
    "schema_version",
    "state",
    "submitted_at",
    "review_status",
    "lead_time_ms",
    "from_prediction_id",
    "prediction_outcome",
    "version",
    "updated_at",
]


def _submit(
    assignment: Assignment,
    task: Task,
    actor: User,
    regions: list[Any],
    schema_version: int,
    lead_time_ms: int,
    workflow: Workflow,
    from_prediction_id: int | None = None,
) -> Annotation:
    now = timezone.now()
    annotation = (
        Annotation.objects.select_for_update().filter(id=assignment.annotation_id).first()
        if assignment.annotation_id is not None
        else None
    )
    if annotation is None:
        annotation = Annotation(task=task, author=actor, result=[], version=0)
    before = annotation.result
    annotation.result, annotation.schema_version = regions, schema_version
    annotation.state, annotation.submitted_at, annotation.review_status = AnnotationState.SUBMITTED, now, ""
    annotation.lead_time_ms += lead_time_ms
    annotation.from_prediction_id = from_prediction_id or annotation.from_prediction_id
    record_prediction_outcome(annotation, save=False)
    annotation.version += 1
    # The annotation, its revision, the assignment, the task and its audit entries go as one
    # statement (two when the task is complete: quality reads the annotations first, and what it
    # records goes with the second).
    with together():
        if annotation.pk is None:
            insert(annotation)
        else:
            update(annotation, _SUBMITTED_FIELDS)
        _revision(annotation, RevisionAction.SUBMIT, actor, before)
        assignment.state, assignment.annotation, assignment.finished_at = (
            AssignmentState.SUBMITTED,
            annotation,
            now,
        )
        assignment.lease_until = None
        update(assignment, ["state", "annotation_id", "finished_at", "lease_until"])
        task.active -= 1
        task.submitted += 1
        task.open_slots = max(task.overlap - task.active - task.submitted, 0)
        if task.state == TaskState.REJECTED and not _unreviewed_rejections(task):
            _set_state(task, TaskState.IN_PROGRESS, actor=actor, reason="rework submitted")
        _after_submission(task, workflow, actor)
        _save_task(task)
    return annotation


def _unreviewed_rejections(task: Task) -> bool:
    return Annotation.objects.filter(
        task=task, review_status="rejected", state=AnnotationState.DRAFT
    ).exists()


def assignment_give_back(
    *, actor: User, access: ProjectAccess, assignment_id: int, lease_id: Any, reason: str = "", skip: bool
) -> Assignment:
    """Skip (with a reason) or release a task: the slot reopens for others, never for the caller."""
    access.require(ProjectAction.ANNOTATE)
    found, _ = _own_assignment(actor, access, assignment_id)
    with transaction.atomic():
        task, assignment = _locked_pair(found.task_id, found.pk, access.project)
        _check_lease(assignment, lease_id)
        if assignment.state != AssignmentState.ACTIVE:
            raise LeaseInvalid(assignment_id=assignment.pk, state=assignment.state)
        assignment.state = AssignmentState.SKIPPED if skip else AssignmentState.RELEASED
        assignment.skip_reason, assignment.finished_at, assignment.lease_until = reason, timezone.now(), None
        update(assignment, ["state", "skip_reason", "finished_at", "lease_until"])
        _free_slot(task)
        _save_task(task)
    return assignment


def leases_expire(*, batch: int = 500) -> int:
    """Return the slots of leases that ran out (beat task). Returns how many expired.

    Locks in the order every other writer uses — the task, then its assignments — so it never
    deadlocks with a late submit of the same assignment; tasks another request holds are left for
    the next run.
    """
    expired = 0
    while True:
        now = timezone.now()
        task_ids = list(
            Assignment.objects.filter(state=AssignmentState.ACTIVE, lease_until__lt=now)
            .order_by("task_id")
            .values_list("task_id", flat=True)
            .distinct()[:batch]
        )
        if not task_ids:
            return expired
        done = 0
        with transaction.atomic():
            tasks = Task.objects.select_for_update(skip_locked=True, of=("self",)).select_related("project")
            for task in tasks.filter(id__in=task_ids).order_by("id"):
                ran_out = list(
                    Assignment.objects.select_for_update()
                    .filter(task=task, state=AssignmentState.ACTIVE, lease_until__lt=now)
                    .values_list("id", flat=True)
                )
                for _ in ran_out:
                    _free_slot(task)
                _save_task(task)
                Assignment.objects.filter(id__in=ran_out).update(
                    state=AssignmentState.EXPIRED, lease_until=None
                )
                done += len(ran_out)
        expired += done
        if done == 0:
            return expired  # every candidate task is busy right now: the next run takes them


# --- Manager assignment ------------------------------------------------------------------------


@dataclass(frozen=True)
class Quota:
    user_id: int
    quota: int


def assignments_bulk(
    *, actor: User, access: ProjectAccess, task_filter: dict[str, Any], quotas: list[Quota]
) -> dict[int, int]:
    """Reserve up to `quota` open slots matching the filter for each user; returns user → count."""
    access.require(ProjectAction.ASSIGN)
    from projects.models import ProjectMember

    project_id = access.project.pk
    members = set(
        ProjectMember.objects.filter(
            project_id=project_id, user_id__in=[q.user_id for q in quotas]
        ).values_list("user_id", flat=True)
    )
    missing = [q.user_id for q in quotas if q.user_id not in members]
    if missing:
        raise InvalidInput("Every user must be a member of the project.", users=missing)
    workflow = workflow_of(access.project)
    counts: dict[int, int] = {}
    with transaction.atomic():
        for user_id in sorted({q.user_id for q in quotas}):
            _lock_caller(project_id, user_id)  # no `next` of theirs picks a task being reserved for them
        for quota in quotas:
            tasks = (
                tasks_filtered(Task.objects.filter(project_id=project_id, open_slots__gt=0), task_filter)
                .exclude(assignments__user_id=quota.user_id)
                .select_for_update(skip_locked=True, of=("self",))
                .order_by(*_orm_order(workflow.ordering))[: quota.quota]
            )
            chosen = list(tasks)
            for task in chosen:
                task.project = access.project
                _take_slot(task, actor)  # a reserved slot is work in progress, like a lease
            Task.objects.bulk_update(chosen, ["active", "open_slots", "state"])
            Assignment.objects.bulk_create(
                Assignment(task=task, user_id=quota.user_id, state=AssignmentState.PENDING, assigned_by=actor)
                for task in chosen
            )
            counts[quota.user_id] = len(chosen)
        audit_record(
            actor=actor,
            verb="tasks.assign",
            obj=access.project,
            organization=access.project.organization,
            project=access.project,
            changes={"filter": task_filter, "assigned": counts},
        )
    return counts


def _orm_order(ordering: str) -> list[Any]:
    if ordering == "random":
        return ["random_key", "id"]
    if ordering == "uncertainty":
        return [F("uncertainty").asc(nulls_last=True), "-priority", "id"]
    return ["-priority", "id"]


def tasks_filtered(tasks: Any, task_filter: dict[str, Any]) -> Any:
    """Tasks matching a manager's filter (TaskFilterInput): states, dataset, priority, ids."""
    if task_filter.get("state"):
        tasks = tasks.filter(state__in=task_filter["state"])
    if task_filter.get("dataset"):
        tasks = tasks.filter(item__dataset_id=task_filter["dataset"])
    if task_filter.get("priority_min") is not None:
        tasks = tasks.filter(priority__gte=task_filter["priority_min"])
    if task_filter.get("tasks"):
        tasks = tasks.filter(id__in=task_filter["tasks"])
    return tasks


def _managed_assignment(access: ProjectAccess, assignment_id: int) -> Assignment:
    access.require(ProjectAction.ASSIGN)
    found = Assignment.objects.filter(id=assignment_id, task__project_id=access.project.pk).first()
    if found is None:
        raise NotFound("Assignment not found.", assignment_id=assignment_id)
    return found


def assignment_reassign(
    *, actor: User, access: ProjectAccess, assignment_id: int, user_id: int
) -> Assignment:
    """Move an unfinished assignment to another member; the slot moves with it."""
    found = _managed_assignment(access, assignment_id)
    from projects.models import ProjectMember

    if not ProjectMember.objects.filter(project_id=access.project.pk, user_id=user_id).exists():
        raise InvalidInput("The user must be a member of the project.", user=user_id)
    with transaction.atomic():
        _lock_caller(access.project.pk, user_id)
        _locked_task(found.task_id, access.project)
        assignment = Assignment.objects.select_for_update().get(id=found.pk)
        if assignment.state not in (AssignmentState.PENDING, AssignmentState.ACTIVE):
            raise Conflict("Only pending or active assignments move.", code="assignment_finished")
        if Assignment.objects.filter(task_id=assignment.task_id, user_id=user_id).exists():
            raise AlreadyAssigned(user=user_id)
        assignment.state, assignment.lease_until, assignment.finished_at = (
            AssignmentState.UNASSIGNED,
            None,
            timezone.now(),
        )
        assignment.save(update_fields=["state", "lease_until", "finished_at"])
        moved = Assignment.objects.create(
            task_id=assignment.task_id,
            user_id=user_id,
            state=AssignmentState.PENDING,
            assigned_by=actor,
            rework=assignment.rework,
        )
        audit_record(
            actor=actor,
            verb="assignment.reassign",
            obj=moved,
            project=access.project,
            organization=access.project.organization,
            changes={"from": assignment.user_id, "to": user_id},
        )
    return moved


def assignment_unassign(*, actor: User, access: ProjectAccess, assignment_id: int) -> None:
    found = _managed_assignment(access, assignment_id)
    with transaction.atomic():
        task = _locked_task(found.task_id, access.project)
        assignment = Assignment.objects.select_for_update().get(id=found.pk)
        if assignment.state not in (AssignmentState.PENDING, AssignmentState.ACTIVE):
            raise Conflict("Only pending or active assignments are withdrawn.", code="assignment_finished")
        assignment.state, assignment.lease_until, assignment.finished_at = (
            AssignmentState.UNASSIGNED,
            None,
            timezone.now(),
        )
        assignment.save(update_fields=["state", "lease_until", "finished_at"])
        _free_slot(task)
        _save_task(task)
        audit_record(
            actor=actor,
            verb="assignment.unassign",
            obj=assignment,
            project=access.project,
            organization=access.project.organization,
            changes={"user": assignment.user_id},
        )


# --- Review ------------------------------------------------------------------------------------


@dataclass
class ForReview:
    task: Task
    annotations: list[Annotation]


def _submitted_annotations(task: Task) -> list[Annotation]:
    return list(
        Annotation.objects.filter(
            id__in=Assignment.objects.filter(task=task, state=AssignmentState.SUBMITTED).values(
                "annotation_id"
            ),
            deleted_at__isnull=True,
        ).order_by("id")
    )


def review_next(*, actor: User, access: ProjectAccess) -> ForReview | None:
    """A task waiting for review with none of the caller's annotations, leased to the caller."""
    access.require(ProjectAction.REVIEW)
    now = timezone.now()
    with transaction.atomic():
        task = (
            Task.objects.filter(project_id=access.project.pk, state=TaskState.IN_REVIEW)
            .filter(Q(review_by__isnull=True) | Q(review_until__lt=now) | Q(review_by=actor))
            .exclude(annotations__author=actor)
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("-review_by", "-priority", "id")
            .first()
        )
        if task is None:
            return None
        task.review_by, task.review_until = actor, now + REVIEW_LEASE
        task.save(update_fields=["review_by", "review_until", "updated_at"])
    # What waits for a verdict: annotations accepted in an earlier round (before a rework) are done.
    return ForReview(task=task, annotations=[a for a in _submitted_annotations(task) if not a.review_status])


def annotation_review(
    *,
    actor: User,
    access: ProjectAccess,
    annotation_id: int,
    verdict: str,
    comment: str = "",
    result: Any = None,
    if_match: int | None,
) -> Annotation:
    """Accept, reject (back for rework) or fix (the reviewer's result becomes a revision, then accepted)."""
    from labeling.exceptions import VersionRequired

    access.require(ProjectAction.REVIEW)
    found = (
        Annotation.objects.select_related("task__item")
        .filter(id=annotation_id, task__project_id=access.project.pk, deleted_at__isnull=True)
        .first()
    )
    if found is None:
        raise NotFound("Annotation not found.", annotation_id=annotation_id)
    if found.author_id == actor.pk:
        raise OwnAnnotation(annotation_id=annotation_id)
    if if_match is None:
        raise VersionRequired()
    if verdict == Verdict.REJECT and not comment.strip():
        raise InvalidInput("Say what to change: a rejection needs a comment.", field="comment")
    regions = None
    record: hooks.Recorder | None = None
    if verdict == Verdict.FIX:
        if result is None:
            raise InvalidInput("A fix carries the corrected result.", field="result")
        schema, facts = _require_schema(access.project.pk), item_facts(found.task.item)
        regions = _validate(result, schema, facts)
        # The fix is held to the project's rules like any submit (it becomes the accepted labels).
        record = hooks.submit_checks(
            hooks.Submitted(
                access.project, found.task, found.author_id, regions, parsed_schema(schema), facts
            )
        )
    workflow = workflow_of(access.project)
    with transaction.atomic():
        task = _locked_task(found.task_id, access.project)
        annotation = Annotation.objects.select_for_update().get(id=found.pk)
        reviewable = task.state in (TaskState.IN_REVIEW, TaskState.REJECTED)
        if not reviewable or annotation.state != AnnotationState.SUBMITTED or annotation.review_status:
            raise NotInReview(task_state=task.state, review_status=annotation.review_status)
        if annotation.version != if_match:
            from labeling.exceptions import StaleVersion

            raise StaleVersion(current_version=annotation.version, your_version=if_match)
        if regions is not None:
            before = annotation.result
            annotation.result = regions
            annotation.version += 1
            annotation.save(update_fields=["result", "version", "updated_at"])
            _revision(annotation, RevisionAction.UPDATE, actor, before)
            if record is not None:
                record(annotation)
        Review.objects.create(
            annotation=annotation,
            reviewer=actor,
            verdict=verdict,
            comment=comment,
            annotation_version=annotation.version,
        )
        if comment.strip():
            Comment.objects.create(task=task, annotation=annotation, author=actor, body=comment)
        if verdict == Verdict.REJECT:
            _reject(annotation, task, workflow)
        else:
            annotation.review_status = "accepted"
            annotation.save(update_fields=["review_status", "updated_at"])
        _after_review(task, actor)
        _save_task(task)
    return annotation


def _reject(annotation: Annotation, task: Task, workflow: Workflow) -> None:
    """Send a rejected annotation back: to its author (same annotation, back to draft, first in
    their queue) or to the pool (the slot reopens for anyone who has not had the task)."""
    annotation.review_status = "rejected"
    author_assignment = (
        Assignment.objects.select_for_update().filter(task=task, user_id=annotation.author_id).first()
    )
    task.submitted -= 1
    if workflow.rejected_to == "author" and author_assignment is not None:
        annotation.state = AnnotationState.DRAFT
        author_assignment.state, author_assignment.rework, author_assignment.finished_at = (
            AssignmentState.PENDING,
            True,
            None,
        )
        task.active += 1
    elif author_assignment is not None:
        author_assignment.state = AssignmentState.REJECTED
    if author_assignment is not None:
        author_assignment.save(update_fields=["state", "rework", "finished_at"])
    annotation.save(update_fields=["review_status", "state", "updated_at"])
    task.open_slots = max(task.overlap - task.active - task.submitted, 0)


def _after_review(task: Task, actor: User) -> None:
    """Once every submitted annotation has a verdict: accepted if all are, else rework (rejected)."""
    submitted = _submitted_annotations(task)
    if any(a.review_status == "" for a in submitted):
        return  # the reviewer has not finished with this task
    task.review_by, task.review_until = None, None
    if task.submitted < task.overlap or task.active > 0:
        _set_state(task, TaskState.REJECTED, actor=actor, reason="annotation rejected")
    else:
        _set_state(task, TaskState.ACCEPTED, actor=actor, reason="every annotation accepted")
        task.open_slots = 0
        accepted = [a.pk for a in submitted if a.review_status == "accepted"]
        emit(task.project, "task.accepted", {"task": task.pk, "item": task.item_id, "annotations": accepted})


# --- Comments ----------------------------------------------------------------------------------


def comment_create(
    *,
    actor: User,
    access: ProjectAccess,
    task_id: int,
    body: str,
    annotation_id: int | None = None,
    region: str = "",
    parent_id: int | None = None,
) -> Comment:
    access.require(ProjectAction.COMMENT)
    task = Task.objects.filter(id=task_id, project_id=access.project.pk).first()
    if task is None:
        raise NotFound("Task not found.", task_id=task_id)
    if annotation_id is not None and not Annotation.objects.filter(id=annotation_id, task=task).exists():
        raise InvalidInput("The annotation is not one of this task's.", field="annotation")
    if parent_id is not None and not Comment.objects.filter(id=parent_id, task=task).exists():
        raise InvalidInput("The parent comment is not on this task.", field="parent")
    return Comment.objects.create(
        task=task, annotation_id=annotation_id, region=region, parent_id=parent_id, author=actor, body=body
    )


def comment_resolve(*, actor: User, access: ProjectAccess, comment_id: int) -> Comment:
    access.require(ProjectAction.COMMENT)
    with transaction.atomic():
        comment = (
            Comment.objects.select_for_update()
            .filter(id=comment_id, task__project_id=access.project.pk)
            .first()
        )
        if comment is None:
            raise NotFound("Comment not found.", comment_id=comment_id)
        if comment.resolved_at is None:
            comment.resolved_at, comment.resolved_by = timezone.now(), actor
            comment.save(update_fields=["resolved_at", "resolved_by"])
    return comment
