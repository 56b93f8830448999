"""Who may see and change a dataset.

Datasets belong to an organization and are linked to projects. They are visible to the
organization's owners and admins and to every member of a linked project; they are managed
(renamed, linked, filled by ingest) by the organization's owners and admins and by the managers of
a linked project. Items follow their dataset. Invisible → 404, visible but not allowed → 403.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db.models import Exists, OuterRef, Q, QuerySet

from projects.exceptions import NotFound, PermissionDenied
from projects.models import Membership, OrgRole, ProjectMember, ProjectRole
from storage.models import Dataset

_ORG_ADMINS = (OrgRole.OWNER, OrgRole.ADMIN)


def dataset_list_for_user(*, user: User) -> QuerySet[Dataset]:
    administers = Membership.objects.filter(
        organization_id=OuterRef("organization_id"), user_id=user.pk, role__in=_ORG_ADMINS
    )
    in_linked_project = ProjectMember.objects.filter(
        project__datasets=OuterRef("pk"),
        user_id=user.pk,
        project__organization__memberships__user_id=user.pk,
    )
    return Dataset.objects.filter(Q(Exists(administers)) | Q(Exists(in_linked_project)))


@dataclass(frozen=True)
class DatasetAccess:
    dataset: Dataset
    can_manage: bool

    def require_manage(self) -> DatasetAccess:
        if not self.can_manage:
            raise PermissionDenied(
                "Only organization owners/admins and managers of a linked project change a dataset."
            )
        return self


def dataset_access(*, user: User, dataset_id: int) -> DatasetAccess:
    dataset = dataset_list_for_user(user=user).select_related("organization").filter(id=dataset_id).first()
    if dataset is None:
        raise NotFound("Dataset not found.", dataset_id=dataset_id)
    org_admin = Membership.objects.filter(
        organization_id=dataset.organization_id, user_id=user.pk, role__in=_ORG_ADMINS
    ).exists()
    manages_linked = ProjectMember.objects.filter(
        project__datasets=dataset, user_id=user.pk, role=ProjectRole.MANAGER
    ).exists()
    return DatasetAccess(dataset=dataset, can_manage=org_admin or manages_linked)
