"""Who may do what: the permission matrix, and resolving a caller's role on an object.

The matrix below is the single source of truth; docs/permissions.md mirrors it and the
permission tests iterate over it. Rules of visibility:
- an organization is visible to its members; a project to its members and to the owners and
  admins of its organization (who act on it with the pseudo-role ``org_admin``);
- what a caller may not see is a 404 (NotFound), what it may see but not change is a 403.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.contrib.auth.models import User

from projects.exceptions import NotFound, PermissionDenied
from projects.models import Membership, Organization, OrgRole, Project, ProjectMember, ProjectRole
from projects.rows import Columns, prepared_cursor

ORG_ADMIN = "org_admin"  # pseudo project role of an organization's owners and admins


class OrgAction(StrEnum):
    VIEW = "org.view"
    UPDATE = "org.update"
    DELETE = "org.delete"
    MEMBERS_VIEW = "org.members.view"
    MEMBERS_MANAGE = "org.members.manage"
    PROJECT_CREATE = "org.project.create"
    AUDIT_VIEW = "org.audit.view"
    JOBS_VIEW_ALL = "org.jobs.view_all"


class ProjectAction(StrEnum):
    VIEW = "project.view"
    UPDATE = "project.update"
    DELETE = "project.delete"
    MEMBERS_VIEW = "project.members.view"
    MEMBERS_MANAGE = "project.members.manage"
    JOBS_VIEW_ALL = "project.jobs.view_all"
    JOBS_CANCEL_ANY = "project.jobs.cancel_any"
    STATS_VIEW = "project.stats.view"
    STATS_RECOUNT = "project.stats.recount"
    AUDIT_VIEW = "project.audit.view"
    SCHEMA_VIEW = "project.schema.view"
    SCHEMA_PUBLISH = "project.schema.publish"
    TASKS_VIEW = "project.tasks.view"
    TASKS_CREATE = "project.tasks.create"
    ANNOTATE = "project.annotations.create"
    ANNOTATIONS_VIEW_ALL = "project.annotations.view_all"
    ANNOTATIONS_EDIT_ANY = "project.annotations.edit_any"
    GROUND_TRUTH_SET = "project.annotations.ground_truth"
    ANNOTATIONS_IMPORT = "project.annotations.import"
    ANNOTATIONS_EXPORT = "project.annotations.export"
    PREDICTIONS_VIEW = "project.predictions.view"
    PREDICTIONS_CREATE = "project.predictions.create"
    WORKFLOW_UPDATE = "project.workflow.update"
    ASSIGN = "project.tasks.assign"
    REVIEW = "project.annotations.review"
    COMMENT = "project.comments.create"
    PROGRESS_VIEW = "project.progress.view"
    ANNOTATORS_VIEW = "project.annotators.view"
    QUALITY_VIEW = "project.quality.view"
    QUALITY_TRIAGE = "project.quality.triage"
    QUALITY_MANAGE = "project.quality.manage"
    WEBHOOKS_MANAGE = "project.webhooks.manage"
    RELEASES_VIEW = "project.releases.view"
    RELEASES_CREATE = "project.releases.create"
    RELEASES_EXPORT = "project.releases.export"
    MODELS_TRAIN = "project.models.train"
    MODELS_EVALUATE = "project.models.evaluate"


_ALL_ORG = frozenset(OrgRole.values)
_ORG_ADMINS = frozenset({OrgRole.OWNER, OrgRole.ADMIN})

ORG_MATRIX: dict[OrgAction, frozenset[str]] = {
    OrgAction.VIEW: _ALL_ORG,
    OrgAction.UPDATE: _ORG_ADMINS,
    OrgAction.DELETE: frozenset({OrgRole.OWNER}),
    OrgAction.MEMBERS_VIEW: _ALL_ORG,
    OrgAction.MEMBERS_MANAGE: _ORG_ADMINS,
    OrgAction.PROJECT_CREATE: _ORG_ADMINS,
    OrgAction.AUDIT_VIEW: _ORG_ADMINS,
    OrgAction.JOBS_VIEW_ALL: _ORG_ADMINS,
}

_ALL_PROJECT = frozenset({*ProjectRole.values, ORG_ADMIN})
_MANAGERS = frozenset({ProjectRole.MANAGER, ORG_ADMIN})

PROJECT_MATRIX: dict[ProjectAction, frozenset[str]] = {
    ProjectAction.VIEW: _ALL_PROJECT,
    ProjectAction.UPDATE: _MANAGERS,
    ProjectAction.DELETE: frozenset({ORG_ADMIN}),
    ProjectAction.MEMBERS_VIEW: _ALL_PROJECT,
    ProjectAction.MEMBERS_MANAGE: _MANAGERS,
    # Annotators see and cancel only the jobs they started themselves.
    ProjectAction.JOBS_VIEW_ALL: frozenset(
        {ProjectRole.MANAGER, ProjectRole.REVIEWER, ProjectRole.ML_ENGINEER, ORG_ADMIN}
    ),
    ProjectAction.JOBS_CANCEL_ANY: _MANAGERS,
    ProjectAction.STATS_VIEW: _ALL_PROJECT,
    ProjectAction.STATS_RECOUNT: _MANAGERS,
    ProjectAction.AUDIT_VIEW: _MANAGERS,
    ProjectAction.SCHEMA_VIEW: _ALL_PROJECT,
    ProjectAction.SCHEMA_PUBLISH: _MANAGERS,
    ProjectAction.TASKS_VIEW: _ALL_PROJECT,
    ProjectAction.TASKS_CREATE: _MANAGERS,
    ProjectAction.ANNOTATE: frozenset(
        {ProjectRole.ANNOTATOR, ProjectRole.REVIEWER, ProjectRole.MANAGER, ORG_ADMIN}
    ),
    # Annotators see and change only their own annotations; the others see every annotation.
    ProjectAction.ANNOTATIONS_VIEW_ALL: frozenset(
        {ProjectRole.MANAGER, ProjectRole.REVIEWER, ProjectRole.ML_ENGINEER, ORG_ADMIN}
    ),
    ProjectAction.ANNOTATIONS_EDIT_ANY: frozenset({ProjectRole.MANAGER, ProjectRole.REVIEWER, ORG_ADMIN}),
    ProjectAction.GROUND_TRUTH_SET: frozenset({ProjectRole.MANAGER, ProjectRole.REVIEWER, ORG_ADMIN}),
    ProjectAction.ANNOTATIONS_IMPORT: _MANAGERS,
    ProjectAction.ANNOTATIONS_EXPORT: frozenset(
        {ProjectRole.MANAGER, ProjectRole.REVIEWER, ProjectRole.ML_ENGINEER, ORG_ADMIN}
    ),
    ProjectAction.PREDICTIONS_VIEW: _ALL_PROJECT,
    ProjectAction.PREDICTIONS_CREATE: frozenset({ProjectRole.MANAGER, ProjectRole.ML_ENGINEER, ORG_ADMIN}),
    ProjectAction.WORKFLOW_UPDATE: _MANAGERS,
    ProjectAction.ASSIGN: _MANAGERS,
    ProjectAction.REVIEW: frozenset({ProjectRole.MANAGER, ProjectRole.REVIEWER, ORG_ADMIN}),
    ProjectAction.COMMENT: frozenset(
        {ProjectRole.MANAGER, ProjectRole.REVIEWER, ProjectRole.ANNOTATOR, ORG_ADMIN}
    ),
    ProjectAction.PROGRESS_VIEW: _ALL_PROJECT,
    ProjectAction.ANNOTATORS_VIEW: frozenset({ProjectRole.MANAGER, ProjectRole.REVIEWER, ORG_ADMIN}),
    # Findings, reports and scores: never annotators (a finding on a gold task would give it away).
    ProjectAction.QUALITY_VIEW: frozenset(
        {ProjectRole.MANAGER, ProjectRole.REVIEWER, ProjectRole.ML_ENGINEER, ORG_ADMIN}
    ),
    ProjectAction.QUALITY_TRIAGE: frozenset({ProjectRole.MANAGER, ProjectRole.REVIEWER, ORG_ADMIN}),
    ProjectAction.QUALITY_MANAGE: _MANAGERS,
    # Webhooks send project data to outside URLs: list, create, change, test and redeliver them.
    ProjectAction.WEBHOOKS_MANAGE: _MANAGERS,
    # Releases are read by the people who ship the data (never by annotators: they would see
    # everyone's work); only managers cut them. Exports of a release are derived, read-only files.
    ProjectAction.RELEASES_VIEW: frozenset(
        {ProjectRole.MANAGER, ProjectRole.REVIEWER, ProjectRole.ML_ENGINEER, ORG_ADMIN}
    ),
    ProjectAction.RELEASES_CREATE: _MANAGERS,
    ProjectAction.RELEASES_EXPORT: frozenset(
        {ProjectRole.MANAGER, ProjectRole.REVIEWER, ProjectRole.ML_ENGINEER, ORG_ADMIN}
    ),
    # Training and evaluating models on releases: the people who own the data and the models.
    ProjectAction.MODELS_TRAIN: frozenset({ProjectRole.MANAGER, ProjectRole.ML_ENGINEER, ORG_ADMIN}),
    ProjectAction.MODELS_EVALUATE: frozenset({ProjectRole.MANAGER, ProjectRole.ML_ENGINEER, ORG_ADMIN}),
}


@dataclass(frozen=True)
class OrgAccess:
    organization: Organization
    role: str

    def can(self, action: OrgAction) -> bool:
        return self.role in ORG_MATRIX[action]

    def require(self, action: OrgAction) -> OrgAccess:
        if not self.can(action):
            raise PermissionDenied(f"Your role in this organization ({self.role}) does not allow {action}.")
        return self


@dataclass(frozen=True)
class ProjectAccess:
    project: Project
    role: str
    # The caller's membership is paused: they may not take new tasks (labeling.workflow).
    paused: bool = False

    def can(self, action: ProjectAction) -> bool:
        return self.role in PROJECT_MATRIX[action]

    def require(self, action: ProjectAction) -> ProjectAccess:
        if not self.can(action):
            raise PermissionDenied(f"Your role in this project ({self.role}) does not allow {action}.")
        return self


def org_access(*, user: User, organization_id: int) -> OrgAccess:
    """The caller's role in an organization; NotFound when the caller is not a member."""
    membership = (
        Membership.objects.select_related("organization")
        .filter(organization_id=organization_id, user_id=user.pk)
        .first()
    )
    if membership is None:
        raise NotFound("Organization not found.", organization_id=organization_id)
    return OrgAccess(organization=membership.organization, role=membership.role)


def project_role(*, user: User, project: Project) -> str | None:
    """The caller's effective role: its project role, else org_admin for org owners/admins."""
    member_role = (
        ProjectMember.objects.filter(project_id=project.pk, user_id=user.pk)
        .values_list("role", flat=True)
        .first()
    )
    org_role = (
        Membership.objects.filter(organization_id=project.organization_id, user_id=user.pk)
        .values_list("role", flat=True)
        .first()
    )
    return _effective_role(member_role, org_role)


def _effective_role(member_role: str | None, org_role: str | None) -> str | None:
    if org_role in _ORG_ADMINS:
        # An org admin who also holds a project role acts with the wider of the two.
        return ORG_ADMIN
    if org_role is None:
        return None  # left the organization: project roles lapse with it
    return member_role


_PROJECT = Columns(Project, "p")
_ORG = Columns(Organization, "o")


def access_columns(user_id: str) -> str:
    """The SELECT list a caller's access is read from: the project `p`, its organization `o` and
    the two roles of the user whose id is the SQL expression `user_id`."""
    return (
        f"{_PROJECT.sql}, {_ORG.sql}"  # noqa: S608  (model metadata; `user_id` is an alias or a %s)
        ", (SELECT m.role || CASE WHEN m.paused_at IS NULL THEN '' ELSE ':paused' END"
        f" FROM projects_projectmember m WHERE m.project_id = p.id AND m.user_id = {user_id})"
        ", (SELECT r.role FROM projects_membership r"
        f" WHERE r.organization_id = p.organization_id AND r.user_id = {user_id})"
    )


# Every project-scoped request starts here: one statement for the project, its organization and
# the caller's two roles, instead of three ORM queries (whose building costs more than running).
_ACCESS_SQL = (
    f"SELECT {access_columns('%s')}"  # noqa: S608  (column names from model metadata)
    " FROM projects_project p JOIN projects_organization o ON o.id = p.organization_id WHERE p.id = %s"
)
# The same columns joined onto another statement (authentication's), for the project `%s`: NULLs
# when it does not exist.
ACCESS_JOIN = (
    "LEFT JOIN (projects_project p JOIN projects_organization o ON o.id = p.organization_id) ON p.id = %s"
)


def _access_from(values: Sequence[Any] | None) -> ProjectAccess | None:
    """The access that a row of `access_columns` grants; None when the caller may not see it."""
    if values is None or values[0] is None:
        return None
    at = _PROJECT.width + _ORG.width
    member_role, _, paused = (values[at] or "").partition(":")
    role = _effective_role(member_role or None, values[at + 1])
    if role is None:
        return None
    project = _PROJECT.build(values[: _PROJECT.width])
    project.organization = _ORG.build(values[_PROJECT.width : at])
    return ProjectAccess(project=project, role=role, paused=bool(paused))


@dataclass(frozen=True)
class _Preloaded:
    project_id: int
    access: ProjectAccess | None


def preload_access(user: User, project_id: int, values: Sequence[Any]) -> None:
    """Keep the caller's access to `project_id`, read in the statement that authenticated them
    (`access_columns` there): the request's first `project_access` to that project takes it
    instead of asking the database again. Later calls read afresh, as before."""
    user._preloaded_access = _Preloaded(project_id, _access_from(values))  # type: ignore[attr-defined]


def project_access(*, user: User, project_id: int) -> ProjectAccess:
    """The caller's access to a project; NotFound when the caller may not see it."""
    preloaded = user.__dict__.pop("_preloaded_access", None)
    if preloaded is not None and preloaded.project_id == project_id:
        access = preloaded.access
    else:
        with prepared_cursor() as cursor:
            cursor.execute(_ACCESS_SQL, [user.pk, user.pk, project_id])
            access = _access_from(cursor.fetchone())
    if access is None:
        raise NotFound("Project not found.", project_id=project_id)
    return access
