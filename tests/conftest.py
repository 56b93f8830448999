"""Fixtures shared by the suite: a world of users with every role, and API clients per user."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from projects.access import ORG_ADMIN
from projects.models import Organization, OrgRole, Project, ProjectRole
from projects.services import api_token_create
from storage.objects import ObjectStore, object_store
from tests.factories import (
    MembershipFactory,
    OrganizationFactory,
    ProjectFactory,
    ProjectMemberFactory,
    UserFactory,
)
from tests.s3 import S3Endpoint, seaweedfs  # noqa: F401  (the session fixture, registered once here)


def client_for(user: User | None) -> APIClient:
    """An API client authenticated the way scripts are: with a personal token."""
    client = APIClient()
    if user is not None:
        _, clear = api_token_create(user=user, name="test")
        client.credentials(HTTP_AUTHORIZATION=f"Token {clear}")
    return client


@dataclass
class World:
    """One organization with a project, a user per role, and an outsider from another org.

    Keys of ``users``: org roles (owner, admin, member: a member with no project role),
    project roles (manager, reviewer, annotator, ml_engineer) and ``outsider``.
    """

    org: Organization
    project: Project
    other_org: Organization
    other_project: Project
    users: dict[str, User]

    def client(self, who: str) -> APIClient:
        return client_for(self.users[who])


PROJECT_ROLES = [role.value for role in ProjectRole]
# Every caller a permission test must cover, with the project role it acts with (None: no access).
CALLERS: dict[str, str | None] = {
    "owner": ORG_ADMIN,
    "admin": ORG_ADMIN,
    "member": None,
    **{role: role for role in PROJECT_ROLES},
    "outsider": None,
}


@pytest.fixture
def world(db: Any) -> World:
    org = OrganizationFactory(slug="acme")
    project = ProjectFactory(organization=org, name="Street scenes")
    other_org = OrganizationFactory(slug="rival")
    other_project = ProjectFactory(organization=other_org, name="Rival project")
    users: dict[str, User] = {}
    for role in (OrgRole.OWNER, OrgRole.ADMIN, OrgRole.MEMBER):
        users[role] = UserFactory(username=role)
        MembershipFactory(organization=org, user=users[role], role=role)
    for role in PROJECT_ROLES:
        users[role] = UserFactory(username=role)
        MembershipFactory(organization=org, user=users[role], role=OrgRole.MEMBER)
        ProjectMemberFactory(project=project, user=users[role], role=role)
    users["outsider"] = UserFactory(username="outsider")
    MembershipFactory(organization=other_org, user=users["outsider"], role=OrgRole.OWNER)
    return World(org=org, project=project, other_org=other_org, other_project=other_project, users=users)


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error shape, with the expected status (and code, when given)."""
    assert response.status_code == status, (response.status_code, getattr(response, "data", response.content))
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# --- A real S3 server (SeaweedFS), one per test session for every test folder -----------------


@pytest.fixture
def s3_store(
    seaweedfs: S3Endpoint,  # noqa: F811  (pytest injects the imported fixture)
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ObjectStore]:
    """Loupe configured on the S3 server with a bucket of its own for this test."""
    bucket = f"loupe-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    settings.LOUPE_STORAGE = "s3"
    settings.LOUPE_S3_BUCKET = bucket
    settings.LOUPE_S3_ENDPOINT_URL = seaweedfs.url
    settings.LOUPE_S3_ADDRESSING = "path"
    yield object_store()
