"""Reads of the labeling app, always scoped to what the caller may see in the project."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from labeling.models import (
    Annotation,
    AnnotationRevision,
    Assignment,
    Comment,
    LabelSchema,
    ModelVersion,
    Prediction,
    Task,
    TaskState,
)
from projects.access import ProjectAccess, ProjectAction
from projects.exceptions import NotFound


def schema_list(*, access: ProjectAccess) -> QuerySet[LabelSchema]:
    access.require(ProjectAction.SCHEMA_VIEW)
    return LabelSchema.objects.filter(project_id=access.project.pk).select_related("created_by")


def schema_get(*, access: ProjectAccess, version: int) -> LabelSchema:
    schema = schema_list(access=access).filter(version=version).first()
    if schema is None:
        raise NotFound("Schema version not found.", version=version)
    return schema


def task_list(*, access: ProjectAccess) -> QuerySet[Task]:
    access.require(ProjectAction.TASKS_VIEW)
    return Task.objects.filter(project_id=access.project.pk).select_related("item")


def task_get(*, access: ProjectAccess, task_id: int) -> Task:
    task = task_list(access=access).filter(id=task_id).first()
    if task is None:
        raise NotFound("Task not found.", task_id=task_id)
    return task


def annotation_list(*, user: User, access: ProjectAccess) -> QuerySet[Annotation]:
    """Live annotations of the project the caller may see (see visible_annotations)."""
    found = Annotation.objects.filter(task__project_id=access.project.pk, deleted_at__isnull=True)
    return visible_annotations(found, user=user, access=access).select_related("author")


def visible_annotations(
    found: QuerySet[Annotation], *, user: User, access: ProjectAccess
) -> QuerySet[Annotation]:
    """Reviewers, managers and ML engineers see every annotation. Annotators see their own, and —
    when the project is not blind — the others' on the tasks they were given."""
    from labeling.workflow import workflow_of

    if access.can(ProjectAction.ANNOTATIONS_VIEW_ALL):
        return found
    if workflow_of(access.project).blind:
        return found.filter(author=user)
    return found.filter(Q(author=user) | Q(task__assignments__user=user)).distinct()


def revision_list(*, annotation: Annotation) -> QuerySet[AnnotationRevision]:
    return AnnotationRevision.objects.filter(annotation=annotation).select_related("author")


def prediction_list(*, access: ProjectAccess) -> QuerySet[Prediction]:
    access.require(ProjectAction.PREDICTIONS_VIEW)
    return Prediction.objects.filter(task__project_id=access.project.pk)


def assignment_list(*, user: User, access: ProjectAccess) -> QuerySet[Assignment]:
    """Assignments of the project; annotators see their own, managers and reviewers everyone's."""
    found = Assignment.objects.filter(task__project_id=access.project.pk)
    if not access.can(ProjectAction.ANNOTATORS_VIEW):
        found = found.filter(user=user)
    return found


def comment_list(*, user: User, access: ProjectAccess, task: Task) -> QuerySet[Comment]:
    """A task's comments. In blind mode an annotator sees comments on their own annotations and
    task-level ones only, never what was said about somebody else's work."""
    from labeling.workflow import workflow_of

    found = Comment.objects.filter(task=task).select_related("author")
    if not access.can(ProjectAction.ANNOTATIONS_VIEW_ALL) and workflow_of(access.project).blind:
        found = found.filter(Q(annotation__isnull=True) | Q(annotation__author=user))
    return found


def project_progress(*, access: ProjectAccess) -> dict[str, Any]:
    """Tasks by state and submitted annotations per day (last 30 days): two grouped counts on indexes."""
    access.require(ProjectAction.PROGRESS_VIEW)
    project_id = access.project.pk
    by_state = dict(
        Task.objects.filter(project_id=project_id).values_list("state").annotate(n=Count("id")).order_by()
    )
    since = timezone.now() - timedelta(days=30)
    per_day = (
        Annotation.objects.filter(task__project_id=project_id, state="submitted", submitted_at__gte=since)
        .annotate(day=TruncDate("submitted_at"))
        .values("day")
        .annotate(n=Count("id"))
        .order_by("day")
    )
    return {
        "tasks": sum(by_state.values()),
        "tasks_by_state": {state: by_state.get(state, 0) for state in TaskState.values},
        "annotations_per_day": [{"day": row["day"].isoformat(), "submitted": row["n"]} for row in per_day],
    }


def annotator_stats(*, access: ProjectAccess) -> list[dict[str, Any]]:
    """Per annotator of the project: submitted, accepted, rejected, accepted rate, median lead time per
    task and current load — grouped aggregates over indexed columns, no DISTINCT over JSON."""
    access.require(ProjectAction.ANNOTATORS_VIEW)
    project_id = access.project.pk
    sql = """
        SELECT a.author_id, u.username,
               count(*) FILTER (WHERE a.state = 'submitted') AS submitted,
               count(*) FILTER (WHERE a.review_status = 'accepted') AS accepted,
               count(*) FILTER (WHERE a.review_status = 'rejected') AS rejected,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY a.lead_time_ms)
                   FILTER (WHERE a.state = 'submitted') AS median_lead_time_ms,
               (SELECT count(*) FROM labeling_assignment s
                  JOIN labeling_task st ON st.id = s.task_id
                 WHERE s.user_id = a.author_id AND st.project_id = %s
                   AND s.state IN ('active', 'pending')) AS load
        FROM labeling_annotation a
        JOIN labeling_task t ON t.id = a.task_id
        JOIN auth_user u ON u.id = a.author_id
        WHERE t.project_id = %s AND a.deleted_at IS NULL
        GROUP BY a.author_id, u.username
        ORDER BY u.username
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [project_id, project_id])
        rows = cursor.fetchall()
    stats = []
    for user_id, username, submitted, accepted, rejected, median, load in rows:
        reviewed = accepted + rejected
        stats.append(
            {
                "user": {"id": user_id, "username": username},
                "submitted": submitted,
                "accepted": accepted,
                "rejected": rejected,
                "accepted_rate": round(accepted / reviewed, 4) if reviewed else None,
                "median_lead_time_ms": round(median) if median is not None else None,
                "active_load": load,
            }
        )
    return stats


def model_version_list(*, access: ProjectAccess) -> QuerySet[ModelVersion]:
    """The registered versions of the organization's models (every member of a project sees them)."""
    access.require(ProjectAction.PREDICTIONS_VIEW)
    return (
        ModelVersion.objects.filter(model__organization_id=access.project.organization_id)
        .select_related("model")
        .order_by("-id")
    )


def prelabel_effectiveness(*, access: ProjectAccess, model_version_id: int) -> dict[str, Any]:
    """How much of a model version's predictions annotators kept in this project, and how long
    their work took with and without a prediction to start from (submitted annotations only).

    Aggregated in PostgreSQL over the outcomes recorded at submit (labeling/regions/compare.py);
    medians with percentile_cont, no per-row Python.
    """
    access.require(ProjectAction.PROGRESS_VIEW)
    project_id = access.project.pk
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*), count(DISTINCT task_id) FROM labeling_prediction p
            WHERE p.source_id = %s AND p.task_id IN (SELECT id FROM labeling_task WHERE project_id = %s)
            """,
            [model_version_id, project_id],
        )
        predictions, tasks_predicted = cursor.fetchone()
        cursor.execute(
            """
            SELECT count(*),
                   coalesce(sum((a.prediction_outcome->>'predicted')::int), 0),
                   coalesce(sum((a.prediction_outcome->>'kept')::int), 0),
                   coalesce(sum((a.prediction_outcome->>'edited')::int), 0),
                   coalesce(sum((a.prediction_outcome->>'deleted')::int), 0),
                   coalesce(sum((a.prediction_outcome->>'added')::int), 0),
                   sum((a.prediction_outcome->>'mean_similarity')::float
                       * ((a.prediction_outcome->>'kept')::int + (a.prediction_outcome->>'edited')::int)),
                   sum((a.prediction_outcome->>'mean_similarity_edited')::float
                       * (a.prediction_outcome->>'edited')::int),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY a.lead_time_ms)
            FROM labeling_annotation a JOIN labeling_prediction p ON p.id = a.from_prediction_id
            JOIN labeling_task t ON t.id = a.task_id
            WHERE t.project_id = %s AND p.source_id = %s AND a.state = 'submitted'
              AND a.deleted_at IS NULL AND a.prediction_outcome IS NOT NULL
            """,
            [project_id, model_version_id],
        )
        annotations, predicted, kept, edited, deleted, added, similarity_sum, edited_sum, median_with = (
            cursor.fetchone()
        )
        cursor.execute(
            """
            SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY a.lead_time_ms)
            FROM labeling_annotation a JOIN labeling_task t ON t.id = a.task_id
            WHERE t.project_id = %s AND a.from_prediction_id IS NULL AND a.state = 'submitted'
              AND a.deleted_at IS NULL AND a.lead_time_ms > 0
            """,
            [project_id],
        )
        annotations_without, median_without = cursor.fetchone()
    matched = kept + edited
    return {
        "model_version": model_version_id,
        "predictions": predictions,
        "tasks_predicted": tasks_predicted,
        "annotations_from_predictions": annotations,
        "regions_predicted": predicted,
        "regions_kept": kept,
        "regions_edited": edited,
        "regions_deleted": deleted,
        "regions_added": added,
        "acceptance_rate": kept / predicted if predicted else None,
        "used_rate": matched / predicted if predicted else None,
        "mean_similarity": similarity_sum / matched if matched and similarity_sum is not None else None,
        "mean_similarity_edited": edited_sum / edited if edited and edited_sum is not None else None,
        "regions_added_per_task": added / annotations if annotations else None,
        "annotations_without_predictions": annotations_without,
        "median_lead_time_ms_with": median_with,
        "median_lead_time_ms_without": median_without,
        "time_saved_ratio": (
            1.0 - median_with / median_without if median_with is not None and median_without else None
        ),
    }
