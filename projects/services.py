"""Writes for accounts, organizations, projects and memberships.

Every service owns its transaction and records an AuditEvent inside it, so a change and its audit
trail commit or roll back together. Callers pass what they have already authorized (an
OrgAccess / ProjectAccess from projects.access); services check the rules that depend on state.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from projects.access import ORG_ADMIN, OrgAccess, OrgAction, ProjectAccess, ProjectAction
from projects.audit import audit_record, diff_fields, snapshot
from projects.exceptions import (
    AlreadyMember,
    DomainError,
    LastOwner,
    NameTaken,
    NotFound,
    NotOrganizationMember,
    PermissionDenied,
    SchemaViolation,
)
from projects.models import ApiToken, Membership, Organization, OrgRole, Project, ProjectMember

UserModel = get_user_model()

T = TypeVar("T")

TOKEN_PREFIX = "lp_"  # noqa: S105 (a marker that makes leaked tokens greppable, not a secret)


def _unique(write: Callable[[], T], error: DomainError) -> T:
    """Run a write that a unique constraint guards; a clash (even a concurrent one) is ``error``.

    The constraint, not a prior SELECT, is the arbiter: two concurrent requests cannot both pass.
    """
    try:
        with transaction.atomic():
            return write()
    except IntegrityError:
        raise error from None


# --- API tokens --------------------------------------------------------------------------------


def api_token_digest(token: str) -> str:
    # Tokens carry 256 bits of randomness, so a fast hash is enough: no dictionary to attack.
    return hashlib.sha256(token.encode()).hexdigest()


@transaction.atomic
def api_token_create(*, user: User, name: str, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Create a personal token; the clear token is returned once and never stored."""
    clear = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, prefix=clear[:10], digest=api_token_digest(clear), expires_at=expires_at
    )
    audit_record(
        actor=user, verb="api_token.create", obj=token, changes={"name": name, "prefix": token.prefix}
    )
    return token, clear


@transaction.atomic
def api_token_revoke(*, user: User, token_id: int) -> ApiToken:
    token = ApiToken.objects.select_for_update().filter(id=token_id, user_id=user.pk).first()
    if token is None or token.revoked_at is not None:
        raise NotFound("Token not found.", token_id=token_id)
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit_record(actor=user, verb="api_token.revoke", obj=token, changes={"prefix": token.prefix})
    return token


# --- Users (instance administrators only) ------------------------------------------------------


@transaction.atomic
def user_create(
    *,
    actor: User | None,
    username: str,
    email: str = "",
    password: str | None = None,
    is_superuser: bool = False,
) -> User:
    # Usernames are unique case-insensitively here (the model's constraint is case-sensitive).
    if UserModel.objects.filter(username__iexact=username).exists():
        raise NameTaken("A user with this username exists.", field="username")
    user = _unique(
        lambda: UserModel.objects.create_user(username=username, email=email, password=password),
        NameTaken("A user with this username exists.", field="username"),
    )
    if is_superuser:
        user.is_superuser = True
        user.is_staff = True
        user.save(update_fields=["is_superuser", "is_staff"])
    audit_record(
        actor=actor,
        verb="user.create",
        obj=user,
        changes={"username": username, "email": email, "is_superuser": is_superuser},
    )
    return user


# --- Organizations -----------------------------------------------------------------------------

_ORG_FIELDS = ("name", "slug")


@transaction.atomic
def organization_create(*, actor: User, name: str, slug: str) -> Organization:
    """Create an organization; its creator becomes its owner."""
    organization = _unique(
        lambda: Organization.objects.create(name=name, slug=slug),
        NameTaken("An organization with this slug exists.", field="slug"),
    )
    Membership.objects.create(organization=organization, user=actor, role=OrgRole.OWNER)
    audit_record(
        actor=actor,
        verb="organization.create",
        obj=organization,
        organization=organization,
        changes=snapshot(organization, _ORG_FIELDS),
    )
    return organization


@transaction.atomic
def organization_update(*, actor: User, access: OrgAccess, **fields: Any) -> Organization:
    access.require(OrgAction.UPDATE)
    organization = Organization.objects.select_for_update().get(id=access.organization.pk)
    before = snapshot(organization, _ORG_FIELDS)
    for name, value in fields.items():
        setattr(organization, name, value)
    changes = diff_fields(before, snapshot(organization, _ORG_FIELDS))
    if not changes:
        return organization  # nothing changed: nothing to save or audit
    _unique(
        lambda: organization.save(update_fields=list(changes)),
        NameTaken("An organization with this slug exists.", field="slug"),
    )
    audit_record(
        actor=actor, verb="organization.update", obj=organization, organization=organization, changes=changes
    )
    return organization


@transaction.atomic
def organization_delete(*, actor: User, access: OrgAccess) -> None:
    access.require(OrgAction.DELETE)
    organization = Organization.objects.select_for_update().get(id=access.organization.pk)
    # The organization's own events go with it (cascade); the deletion itself is kept at
    # instance level so an operator can still see who removed what.
    audit_record(
        actor=actor,
        verb="organization.delete",
        obj=organization,
        changes={**snapshot(organization, _ORG_FIELDS), "projects": organization.projects.count()},
    )
    organization.delete()


def _user_by_username(username: str) -> User:
    user = UserModel.objects.filter(username=username, is_active=True).first()
    if user is None:
        raise NotFound("No active user with this username.", username=username)
    return user


def _owner_count(organization_id: int) -> int:
    return Membership.objects.filter(organization_id=organization_id, role=OrgRole.OWNER).count()


def _check_owner_change(access: OrgAccess, *roles: str) -> None:
    if OrgRole.OWNER in roles and access.role != OrgRole.OWNER:
        raise PermissionDenied("Only an owner may grant or take away the owner role.")


@transaction.atomic
def membership_add(*, actor: User, access: OrgAccess, username: str, role: str) -> Membership:
    access.require(OrgAction.MEMBERS_MANAGE)
    _check_owner_change(access, role)
    user = _user_by_username(username)
    membership = _unique(
        lambda: Membership.objects.create(organization=access.organization, user=user, role=role),
        AlreadyMember(username=username),
    )
    audit_record(
        actor=actor,
        verb="membership.create",
        obj=membership,
        organization=access.organization,
        changes={"user": user.get_username(), "role": role},
    )
    return membership


def _locked_membership(access: OrgAccess, user_id: int) -> Membership:
    # Lock the organization row first: owner-count rules read every membership of it.
    Organization.objects.select_for_update().get(id=access.organization.pk)
    membership = (
        Membership.objects.select_for_update()
        .select_related("user")
        .filter(organization_id=access.organization.pk, user_id=user_id)
        .first()
    )
    if membership is None:
        raise NotFound("Member not found.", user_id=user_id)
    return membership


@transaction.atomic
def membership_update(*, actor: User, access: OrgAccess, user_id: int, role: str) -> Membership:
    access.require(OrgAction.MEMBERS_MANAGE)
    membership = _locked_membership(access, user_id)
    _check_owner_change(access, role, membership.role)
    if (
        membership.role == OrgRole.OWNER
        and role != OrgRole.OWNER
        and _owner_count(access.organization.pk) == 1
    ):
        raise LastOwner()
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        actor=actor,
        verb="membership.update",
        obj=membership,
        organization=access.organization,
        changes={"user": membership.user.get_username(), "role": [before, role]},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: User, access: OrgAccess, user_id: int) -> None:
    """Remove a member; leaving is allowed to everyone, removing others needs members.manage."""
    if user_id != actor.pk:
        access.require(OrgAction.MEMBERS_MANAGE)
    membership = _locked_membership(access, user_id)
    if user_id != actor.pk:
        _check_owner_change(access, membership.role)
    if membership.role == OrgRole.OWNER and _owner_count(access.organization.pk) == 1:
        raise LastOwner()
    # Project roles lapse with the organization membership.
    dropped = ProjectMember.objects.filter(project__organization_id=access.organization.pk, user_id=user_id)
    dropped_projects = list(dropped.values_list("project_id", flat=True))
    dropped.delete()
    audit_record(
        actor=actor,
        verb="membership.delete",
        obj=membership,
        organization=access.organization,
        changes={
            "user": membership.user.get_username(),
            "role": membership.role,
            "projects": dropped_projects,
        },
    )
    membership.delete()


# --- Projects ----------------------------------------------------------------------------------

_PROJECT_FIELDS = ("name", "description", "settings")

# Keys of `Project.settings` another part of Loupe keeps, each changed through its own endpoint
# where it is checked as a whole (the workflow, quality's rules, the webhook index). The free-form
# settings a client writes keep them as they are. Apps register theirs as they start.
_MANAGED_SETTINGS: dict[str, str] = {}


def settings_key_managed(key: str, endpoint: str) -> None:
    """`key` of the project settings is kept by `endpoint` (named in errors)."""
    _MANAGED_SETTINGS[key] = endpoint


class SettingsKeyManaged(SchemaViolation):
    code = "settings_key_managed"


def _client_settings(given: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The settings a client sent, with every managed key kept as it is now. Sending a managed
    key back unchanged (a read, edited elsewhere, written back) is fine; changing it is refused,
    naming the endpoint that changes it."""
    for key, endpoint in _MANAGED_SETTINGS.items():
        if key in given and given[key] != current.get(key):
            raise SettingsKeyManaged(
                f"settings.{key} is kept by Loupe; change it through {endpoint}.",
                field=f"settings.{key}",
                endpoint=endpoint,
            )
    kept = {key: current[key] for key in _MANAGED_SETTINGS if key in current}
    return {**{k: v for k, v in given.items() if k not in _MANAGED_SETTINGS}, **kept}


def _project_name_taken() -> NameTaken:
    return NameTaken("A project with this name exists in the organization.", field="name")


@transaction.atomic
def project_create(
    *,
    actor: User,
    access: OrgAccess,
    name: str,
    description: str = "",
    settings: dict[str, Any] | None = None,
) -> Project:
    access.require(OrgAction.PROJECT_CREATE)
    settings = _client_settings(settings or {}, {})
    project = _unique(
        lambda: Project.objects.create(
            organization=access.organization,
            name=name,
            description=description,
            settings=settings,
            created_by=actor,
        ),
        _project_name_taken(),
    )
    # The creator manages what it created, even if it later stops being an org admin.
    ProjectMember.objects.create(project=project, user=actor, role="manager")
    audit_record(
        actor=actor,
        verb="project.create",
        obj=project,
        project=project,
        changes=snapshot(project, _PROJECT_FIELDS),
    )
    return project


@transaction.atomic
def project_update(*, actor: User, access: ProjectAccess, **fields: Any) -> Project:
    access.require(ProjectAction.UPDATE)
    project = Project.objects.select_for_update().get(id=access.project.pk)
    before = snapshot(project, _PROJECT_FIELDS)
    if "settings" in fields:
        fields["settings"] = _client_settings(fields["settings"], project.settings or {})
    for name, value in fields.items():
        setattr(project, name, value)
    changes = diff_fields(before, snapshot(project, _PROJECT_FIELDS))
    if not changes:
        return project  # nothing changed: nothing to save or audit
    _unique(lambda: project.save(update_fields=[*changes, "updated_at"]), _project_name_taken())
    audit_record(actor=actor, verb="project.update", obj=project, project=project, changes=changes)
    return project


@transaction.atomic
def project_delete(*, actor: User, access: ProjectAccess) -> None:
    access.require(ProjectAction.DELETE)
    project = Project.objects.select_for_update().get(id=access.project.pk)
    # Recorded against the organization: the project's own events are deleted with it.
    audit_record(
        actor=actor,
        verb="project.delete",
        obj=project,
        organization=project.organization,
        changes=snapshot(project, ("name",)),
    )
    project.delete()


def _check_role_grant(access: ProjectAccess, *roles: str) -> None:
    # Managers run a project's staffing, but only org admins create or remove other managers.
    if "manager" in roles and access.role != ORG_ADMIN:
        raise PermissionDenied("Only organization owners and admins grant or take away the manager role.")


@transaction.atomic
def project_member_add(*, actor: User, access: ProjectAccess, username: str, role: str) -> ProjectMember:
    access.require(ProjectAction.MEMBERS_MANAGE)
    _check_role_grant(access, role)
    user = _user_by_username(username)
    if not Membership.objects.filter(
        organization_id=access.project.organization_id, user_id=user.pk
    ).exists():
        raise NotOrganizationMember(username=username)
    member = _unique(
        lambda: ProjectMember.objects.create(project=access.project, user=user, role=role),
        AlreadyMember("This user is already a project member.", username=username),
    )
    audit_record(
        actor=actor,
        verb="project_member.create",
        obj=member,
        project=access.project,
        changes={"user": user.get_username(), "role": role},
    )
    return member


def _locked_project_member(access: ProjectAccess, user_id: int) -> ProjectMember:
    member = (
        ProjectMember.objects.select_for_update()
        .select_related("user")
        .filter(project_id=access.project.pk, user_id=user_id)
        .first()
    )
    if member is None:
        raise NotFound("Project member not found.", user_id=user_id)
    return member


@transaction.atomic
def project_member_update(*, actor: User, access: ProjectAccess, user_id: int, role: str) -> ProjectMember:
    access.require(ProjectAction.MEMBERS_MANAGE)
    member = _locked_project_member(access, user_id)
    _check_role_grant(access, role, member.role)
    before = member.role
    member.role = role
    member.save(update_fields=["role"])
    audit_record(
        actor=actor,
        verb="project_member.update",
        obj=member,
        project=access.project,
        changes={"user": member.user.get_username(), "role": [before, role]},
    )
    return member


@transaction.atomic
def project_member_remove(*, actor: User, access: ProjectAccess, user_id: int) -> None:
    if user_id != actor.pk:
        access.require(ProjectAction.MEMBERS_MANAGE)
    member = _locked_project_member(access, user_id)
    if user_id != actor.pk:
        _check_role_grant(access, member.role)
    audit_record(
        actor=actor,
        verb="project_member.delete",
        obj=member,
        project=access.project,
        changes={"user": member.user.get_username(), "role": member.role},
    )
    member.delete()
