"""What quality decides, written by labeling: tasks' QC status and routing to review, gold tasks,
and annotators paused for poor accuracy.

`quality` judges and never writes labeling's tables itself; these services do, with the same locks
and audit entries as the rest of the workflow. Managers call the gold and pause services through
the API as well.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from labeling.models import Annotation, AnnotationState, Task, TaskState
from labeling.workflow import (
    FINAL_STATES,
    QC_FLAGGED,
    QC_PASSED,
    _save_task,
    _set_state,
    _slots_expression,
    workflow_for,
)
from projects.access import ProjectAccess, ProjectAction
from projects.audit import audit_record
from projects.exceptions import Conflict, InvalidInput, NotFound
from projects.models import Organization, Project, ProjectMember, ProjectRole

QC_STATUSES = ("", QC_PASSED, QC_FLAGGED)


class GoldNeedsTruth(Conflict):
    code = "gold_needs_ground_truth"
    default_message = "A gold task needs a ground-truth annotation (an annotation with ground_truth true)."


class GoldInUse(Conflict):
    code = "gold_in_use"
    default_message = "Regular annotation work has started on these tasks; they cannot become gold tasks."


def tasks_qc_set(
    *,
    project_id: int,
    statuses: dict[int, str],
    reason: str,
    actor: User | None = None,
) -> dict[str, int]:
    """Record QC verdicts on tasks of a project; flagged tasks that left annotation go to review.

    A task still being annotated keeps its state (the workflow routes it when its last slot is
    submitted: flagged tasks are reviewed whatever the policy). A submitted, done or accepted task
    that is flagged goes back to review, its annotations waiting for a verdict again; the reviews
    it had stay in its history. Returns {"updated": n, "to_review": m}.
    """
    bad = sorted({s for s in statuses.values() if s not in QC_STATUSES})
    if bad:
        raise ValueError(f"unknown QC statuses {bad}")
    if not statuses:
        return {"updated": 0, "to_review": 0}
    updated = to_review = 0
    with transaction.atomic():
        project = Project.objects.get(id=project_id)
        tasks = (
            Task.objects.select_for_update(of=("self",))
            .filter(project_id=project_id, id__in=list(statuses))
            .order_by("id")  # one lock order for every caller
        )
        for task in tasks:
            status = statuses[task.pk]
            task.project = project
            changed = task.qc_status != status
            task.qc_status = status
            if (
                status == QC_FLAGGED
                and task.state in (TaskState.SUBMITTED, *FINAL_STATES)
                and not task.is_gold
            ):
                _to_review(task, actor, reason)
                to_review += 1
                changed = True
            if changed:
                _save_task(task)
                updated += 1
    return {"updated": updated, "to_review": to_review}


def _to_review(task: Task, actor: User | None, reason: str) -> None:
    Annotation.objects.filter(task=task, state=AnnotationState.SUBMITTED, deleted_at__isnull=True).exclude(
        review_status="rejected"
    ).update(review_status="", updated_at=timezone.now())
    task.review_by, task.review_until = None, None
    _set_state(task, TaskState.IN_REVIEW, actor=actor, reason=f"quality: {reason}")


def tasks_gold_set(*, actor: User, access: ProjectAccess, task_ids: list[int], is_gold: bool) -> int:
    """Make tasks gold (answered by every annotator once, scored against their ground truth) or
    regular again. A gold task needs a ground-truth annotation and no regular work on it yet;
    a task made regular again gets the project's overlap and joins the queue."""
    access.require(ProjectAction.QUALITY_MANAGE)
    ids = sorted(set(task_ids))
    with transaction.atomic():
        tasks = list(
            Task.objects.select_for_update(of=("self",))
            .filter(project_id=access.project.pk, id__in=ids)
            .order_by("id")
        )
        missing = sorted(set(ids) - {t.pk for t in tasks})
        if missing:
            raise NotFound("Some tasks are not in this project.", task_ids=missing[:20])
        changing = [t for t in tasks if t.is_gold != is_gold]
        if is_gold and changing:
            with_truth = set(
                Annotation.objects.filter(
                    task__in=changing, ground_truth=True, deleted_at__isnull=True
                ).values_list("task_id", flat=True)
            )
            untrue = [t.pk for t in changing if t.pk not in with_truth]
            if untrue:
                raise GoldNeedsTruth(task_ids=untrue[:20])
            busy = [t.pk for t in changing if t.active or t.submitted or t.state != TaskState.OPEN]
            if busy:
                raise GoldInUse(task_ids=busy[:20])
        overlap = workflow_for(access.project.pk).overlap
        ids_changing = [t.pk for t in changing]
        if is_gold:
            Task.objects.filter(id__in=ids_changing).update(is_gold=True, overlap=0, open_slots=0)
        else:
            Task.objects.filter(id__in=ids_changing).update(is_gold=False, overlap=overlap)
            Task.objects.filter(id__in=ids_changing).exclude(state__in=FINAL_STATES).update(
                open_slots=_slots_expression()
            )
        if ids_changing:
            audit_record(
                actor=actor,
                verb="tasks.gold",
                obj=access.project,
                organization=access.project.organization,
                project=access.project,
                changes={"is_gold": is_gold, "task_ids": ids_changing[:1000], "count": len(ids_changing)},
            )
    return len(changing)


def ground_truth_of(task_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """The ground-truth regions of each task that has them (the newest ground-truth annotation)."""
    rows = (
        Annotation.objects.filter(task_id__in=list(task_ids), ground_truth=True, deleted_at__isnull=True)
        .order_by("task_id", "-id")
        .values_list("task_id", "result")
    )
    truth: dict[int, list[dict[str, Any]]] = {}
    for task_id, result in rows:
        truth.setdefault(task_id, result)
    return truth


def annotator_pause(
    *, project_id: int, user_id: int, reason: str, actor: User | None = None, pause: bool = True
) -> bool:
    """Pause (or resume) an annotator in a project: a paused annotator's `next` is refused (work
    a manager reserved for them stays theirs until the manager moves it). Returns whether anything
    changed."""
    with transaction.atomic():
        member = (
            ProjectMember.objects.select_for_update()
            .select_related("project")
            .filter(project_id=project_id, user_id=user_id)
            .first()
        )
        if member is None:
            raise NotFound("The user is not a member of this project.", user_id=user_id)
        if member.role != ProjectRole.ANNOTATOR and pause:
            raise InvalidInput("Only annotators are paused.", field="user", role=member.role)
        if (member.paused_at is not None) == pause:
            return False
        member.paused_at = timezone.now() if pause else None
        member.paused_reason = reason[:500] if pause else ""
        member.save(update_fields=["paused_at", "paused_reason"])
        audit_record(
            actor=actor,
            verb="annotator.pause" if pause else "annotator.resume",
            obj=member,
            organization=Organization(id=member.project.organization_id),
            project=member.project,
            changes={"user": user_id, "reason": reason},
        )
    return True
