"""Reads, always scoped to what the caller may see."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import Exists, OuterRef, Q, QuerySet

from projects.access import (
    OrgAction,
    ProjectAccess,
    ProjectAction,
    org_access,
    project_access,
)
from projects.exceptions import NotFound
from projects.models import (
    ApiToken,
    AuditEvent,
    Job,
    JobError,
    JobState,
    Membership,
    Organization,
    OrgRole,
    Project,
    ProjectMember,
)


def api_token_list_for_user(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user_id=user.pk, revoked_at__isnull=True)


def organization_list_for_user(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user_id=user.pk)


def membership_list_for_user(*, user: User, organization_id: int) -> QuerySet[Membership]:
    org_access(user=user, organization_id=organization_id)
    return Membership.objects.filter(organization_id=organization_id).select_related("user")


def project_list_for_user(*, user: User) -> QuerySet[Project]:
    """Projects the caller is a member of, plus every project of organizations it administers."""
    administers = Membership.objects.filter(
        organization_id=OuterRef("organization_id"),
        user_id=user.pk,
        role__in=[OrgRole.OWNER, OrgRole.ADMIN],
    )
    is_member = ProjectMember.objects.filter(
        project_id=OuterRef("pk"),
        user_id=user.pk,
        project__organization__memberships__user_id=user.pk,
    )
    return Project.objects.filter(Q(Exists(administers)) | Q(Exists(is_member))).select_related(
        "organization"
    )


def project_member_list_for_user(*, user: User, project_id: int) -> QuerySet[ProjectMember]:
    project_access(user=user, project_id=project_id).require(ProjectAction.MEMBERS_VIEW)
    return ProjectMember.objects.filter(project_id=project_id).select_related("user")


def _jobs_visible_in_project(access: ProjectAccess, user: User) -> QuerySet[Job]:
    jobs = Job.objects.filter(project_id=access.project.pk)
    if not access.can(ProjectAction.JOBS_VIEW_ALL):
        jobs = jobs.filter(created_by_id=user.pk)
    return jobs


def job_list_for_user(*, user: User, project_id: int) -> QuerySet[Job]:
    access = project_access(user=user, project_id=project_id)
    return _jobs_visible_in_project(access, user)


def job_get_for_user(*, user: User, job_id: int) -> tuple[Job, ProjectAccess | None]:
    """A job the caller may see, with its access to the job's project (None for org-level jobs)."""
    job = Job.objects.filter(id=job_id).first()
    if job is None:
        raise NotFound("Job not found.", job_id=job_id)
    if job.project_id is None:
        try:
            access = org_access(user=user, organization_id=job.organization_id)
        except NotFound:
            raise NotFound("Job not found.", job_id=job_id) from None  # say nothing of its organization
        if job.created_by_id != user.pk and not access.can(OrgAction.JOBS_VIEW_ALL):
            raise NotFound("Job not found.", job_id=job_id)
        return job, None
    try:
        project = project_access(user=user, project_id=job.project_id)
    except NotFound:
        raise NotFound("Job not found.", job_id=job_id) from None
    if not _jobs_visible_in_project(project, user).filter(id=job.pk).exists():
        raise NotFound("Job not found.", job_id=job_id)
    return job, project


def job_error_list_for_user(*, user: User, job_id: int) -> QuerySet[JobError]:
    job, _ = job_get_for_user(user=user, job_id=job_id)
    return JobError.objects.filter(job_id=job.pk)


def project_stats_for_user(*, user: User, project_id: int) -> Job | None:
    """The latest finished statistics recount of a project, or None when none has run yet."""
    project_access(user=user, project_id=project_id).require(ProjectAction.STATS_VIEW)
    return (
        Job.objects.filter(project_id=project_id, kind="project.stats_recount", state=JobState.SUCCEEDED)
        .order_by("-finished_at", "-id")
        .first()
    )


def audit_event_list_for_project(*, user: User, project_id: int) -> QuerySet[AuditEvent]:
    project_access(user=user, project_id=project_id).require(ProjectAction.AUDIT_VIEW)
    return AuditEvent.objects.filter(project_id=project_id).select_related("actor")


def audit_event_list_for_organization(*, user: User, organization_id: int) -> QuerySet[AuditEvent]:
    org_access(user=user, organization_id=organization_id).require(OrgAction.AUDIT_VIEW)
    return AuditEvent.objects.filter(organization_id=organization_id).select_related("actor")
