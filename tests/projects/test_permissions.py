"""Who may call what: every endpoint and every caller, with the status the permission matrix implies.

Expectations are derived from ORG_MATRIX / PROJECT_MATRIX (projects/access.py), so the matrix and
these tests cannot drift apart; a short hand-written table of spot checks guards the derivation
itself. Each (endpoint, caller) pair is its own test with its own ``world``, rolled back after it,
so a successful DELETE destroys nothing another case needs.

The helpers at the top (Scene, send, db_state, ...) are shared by test_bad_input and test_audit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from string import Formatter
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Model
from django.urls import URLPattern
from rest_framework.test import APIClient

from projects import urls as project_urls
from projects.access import ORG_ADMIN, ORG_MATRIX, PROJECT_MATRIX, OrgAction, ProjectAction
from projects.jobs import job_start
from projects.models import (
    ApiToken,
    AuditEvent,
    Job,
    JobState,
    Membership,
    Organization,
    OrgRole,
    Project,
    ProjectMember,
    ProjectRole,
)
from projects.services import api_token_create
from tests.conftest import CALLERS, World, assert_error, client_for
from tests.factories import MembershipFactory, ProjectFactory, ProjectMemberFactory, UserFactory

pytestmark = pytest.mark.django_db

UserModel = get_user_model()
ApiResponse = Any  # the test client's response: an HttpResponse with .json()
API = "/api/v1"
ERROR_CODES = {403: "permission_denied", 404: "not_found"}
INSTANCE_ADMIN = "root"  # a Scene caller beyond CALLERS: a superuser, who may create users
# Larger than PostgreSQL's bigint: a path id like this must be a 404, never a 500.
HUGE_ID = 99_999_999_999_999_999_999


# --- Shared helpers ----------------------------------------------------------------------------


def api_client(user: AbstractBaseUser | None) -> APIClient:
    """A token-authenticated client that answers 500s as responses instead of re-raising them."""
    client = client_for(user)
    client.raise_request_exception = False
    return client


@dataclass(frozen=True)
class Raw:
    """A request body sent as these exact bytes with this content type."""

    content: bytes | str
    content_type: str


def send(client: APIClient, method: str, path: str, body: Any = None, **headers: str) -> ApiResponse:
    """One request; ``body`` is JSON-encoded unless it is None (no body) or Raw."""
    if body is None:
        return client.generic(method, path, **headers)
    if isinstance(body, Raw):
        return client.generic(method, path, body.content, content_type=body.content_type, **headers)
    return client.generic(method, path, json.dumps(body), content_type="application/json", **headers)


# What each placeholder of a url() template names by default: a Scene attribute with a pk.
_URL_PARTS = {
    "org": "org",
    "project": "project",
    "user": "target",
    "token": "spare_token",
    "job": "system_job",
}


def url(template: str, **parts: str | int) -> Callable[[Scene], str]:
    """An API path from a template like "/projects/{project}/members/{user}".

    A part given as a str names the Scene attribute whose pk fills it (``user="newcomer"``, or
    ``user="user"`` for the caller itself), else a user of the world (``user="owner"``); an int is
    used as it is (ids that do not exist). Attributes are read only when the path is built, so
    objects are created only for the cases that use them.
    """
    names = [name for _, name, _, _ in Formatter().parse(template) if name]

    def build(scene: Scene) -> str:
        values: dict[str, int] = {}
        for name in names:
            part = parts.get(name, _URL_PARTS[name])
            if isinstance(part, int):
                values[name] = part
            else:
                values[name] = (getattr(scene, part, None) or scene.world.users[part]).pk
        return API + template.format(**values)

    return build


_STATE_MODELS: tuple[type[Model], ...] = (
    UserModel,
    ApiToken,
    Organization,
    Membership,
    Project,
    ProjectMember,
    Job,
    AuditEvent,
)
# Written by authentication itself (token use, login), not by the request's own effect.
_VOLATILE_FIELDS = frozenset({"last_used_at", "last_login"})


def db_state() -> dict[str, list[dict[str, Any]]]:
    """Every row of every table the projects API writes, to prove a request wrote nothing."""
    return {
        model.__name__: [
            {k: v for k, v in row.items() if k not in _VOLATILE_FIELDS}
            for row in model.objects.order_by("pk").values()
        ]
        for model in _STATE_MODELS
    }


def result_ids(response: ApiResponse) -> set[int]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


class Scene:
    """A caller in the world, plus fresh objects made on demand for the case at hand."""

    def __init__(self, world: World, caller: str) -> None:
        if caller == INSTANCE_ADMIN and caller not in world.users:
            world.users[caller] = UserFactory(username=caller, is_superuser=True, is_staff=True)
        self.world = world
        self.caller = caller
        self.user = world.users[caller]
        self.client = api_client(self.user)

    @property
    def org(self) -> Organization:
        return self.world.org

    @property
    def project(self) -> Project:
        return self.world.project

    @cached_property
    def org_role(self) -> str | None:
        """The caller's role in acme, read from the fixture's rows (not from projects.access)."""
        roles = Membership.objects.filter(organization=self.org, user=self.user).values_list(
            "role", flat=True
        )
        return roles.first()

    @property
    def project_role(self) -> str | None:
        """The role the caller acts with on the world's project, as conftest declares it."""
        return CALLERS[self.caller]

    def _fresh_member(self, username: str, project_role: str | None) -> AbstractBaseUser:
        user = UserFactory(username=username)
        MembershipFactory(organization=self.org, user=user, role=OrgRole.MEMBER)
        if project_role is not None:
            ProjectMemberFactory(project=self.project, user=user, role=project_role)
        return user

    @cached_property
    def target(self) -> AbstractBaseUser:
        """A fresh org member who annotates the project: someone to promote or remove."""
        return self._fresh_member("target", ProjectRole.ANNOTATOR)

    @cached_property
    def newcomer(self) -> AbstractBaseUser:
        """A fresh org member with no project role: someone to add to the project."""
        return self._fresh_member("newcomer", None)

    @cached_property
    def co_manager(self) -> AbstractBaseUser:
        """A fresh second manager of the project."""
        return self._fresh_member("co-manager", ProjectRole.MANAGER)

    @cached_property
    def stranger(self) -> AbstractBaseUser:
        """A fresh user of no organization: someone to add to the organization."""
        return UserFactory(username="stranger")

    @cached_property
    def back_office(self) -> Project:
        """A second project of acme in which nobody holds a project role."""
        return ProjectFactory(organization=self.org, name="Back office")

    @cached_property
    def spare_token(self) -> ApiToken:
        return api_token_create(user=self.user, name="spare")[0]

    @cached_property
    def foreign_token(self) -> ApiToken:
        return api_token_create(user=self.stranger, name="not yours")[0]

    def job(self, *, by: AbstractBaseUser | None, project: Project | None = None, active: bool = True) -> Job:
        """A stats recount job; ``by=None`` is a system job nobody in the world created."""
        job = job_start(
            kind="project.stats_recount",
            actor=by,
            organization=self.org,
            project=project,
            params={"chunk_size": 100},
        )
        if not active:  # the kind allows one active job per project
            Job.objects.filter(id=job.pk).update(state=JobState.SUCCEEDED)
        return job

    @cached_property
    def system_job(self) -> Job:
        return self.job(by=None, project=self.project)

    @cached_property
    def finished_system_job(self) -> Job:
        return self.job(by=None, project=self.project, active=False)

    @cached_property
    def own_job(self) -> Job:
        return self.job(by=self.user, project=self.project)

    @cached_property
    def org_job(self) -> Job:
        """An organization-level system job (no project)."""
        return self.job(by=None)


# --- Expectations derived from the matrix ------------------------------------------------------

Expect = Callable[[Scene], int]


def everyone(status: int) -> Expect:
    return lambda scene: status


def matrix_status(role: str | None, allowed: frozenset[str], success: int) -> int:
    """404 for a caller with no role (it may not see the object), else success or 403 as allowed."""
    if role is None:
        return 404
    return success if role in allowed else 403


def by_org(action: OrgAction, success: int) -> Expect:
    return lambda scene: matrix_status(scene.org_role, ORG_MATRIX[action], success)


def by_project(action: ProjectAction, success: int) -> Expect:
    return lambda scene: matrix_status(scene.project_role, PROJECT_MATRIX[action], success)


def sees_system_job(scene: Scene) -> bool:
    role = scene.project_role
    return role is not None and role in PROJECT_MATRIX[ProjectAction.JOBS_VIEW_ALL]


def system_job_view(scene: Scene) -> int:
    return 200 if sees_system_job(scene) else 404


def system_job_cancel(scene: Scene) -> int:
    role = scene.project_role if sees_system_job(scene) else None
    return matrix_status(role, PROJECT_MATRIX[ProjectAction.JOBS_CANCEL_ANY], 200)


def own_job_view(scene: Scene) -> int:
    """Its creator sees a job as long as it may see the project."""
    return 200 if scene.project_role is not None else 404


def org_job_view(scene: Scene) -> int:
    return 200 if scene.org_role in ORG_MATRIX[OrgAction.JOBS_VIEW_ALL] else 404


# --- Checks on successful answers ---------------------------------------------------------------


def check_org_list(scene: Scene, response: ApiResponse) -> None:
    ids = result_ids(response)
    assert (scene.org.id in ids) == (scene.org_role is not None)
    assert (scene.world.other_org.id in ids) == (scene.caller == "outsider")


def check_project_list(scene: Scene, response: ApiResponse) -> None:
    expected = set()
    if scene.project_role is not None:
        expected.add(scene.project.id)
    if scene.project_role == ORG_ADMIN:  # org admins see every project of the organization
        expected.add(scene.back_office.id)
    if scene.caller == "outsider":  # the outsider owns the rival organization
        expected.add(scene.world.other_project.id)
    assert result_ids(response) == expected


def check_job_list(scene: Scene, response: ApiResponse) -> None:
    others = {scene.finished_system_job.id} if sees_system_job(scene) else set()
    expected = {scene.own_job.id} | others
    assert result_ids(response) == expected


def check_token_list(scene: Scene, response: ApiResponse) -> None:
    ids = result_ids(response)
    assert ids == set(ApiToken.objects.filter(user=scene.user).values_list("id", flat=True))
    assert scene.foreign_token.id not in ids


def check_project_detail(scene: Scene, response: ApiResponse) -> None:
    assert response.json()["my_role"] == scene.project_role


def gone(model: type[Model], pk: Callable[[Scene], int]) -> Callable[[Scene, ApiResponse], None]:
    def check(scene: Scene, response: ApiResponse) -> None:
        assert not model.objects.filter(pk=pk(scene)).exists()

    return check


def project_member_gone(scene: Scene, response: ApiResponse) -> None:
    assert not ProjectMember.objects.filter(project=scene.project, user=scene.target).exists()


def membership_gone(scene: Scene, response: ApiResponse) -> None:
    assert not Membership.objects.filter(organization=scene.org, user=scene.target).exists()


def job_cancelled(job: str) -> Callable[[Scene, ApiResponse], None]:
    def check(scene: Scene, response: ApiResponse) -> None:
        assert response.json()["state"] == JobState.CANCELLED
        assert Job.objects.get(id=getattr(scene, job).id).state == JobState.CANCELLED

    return check


# --- The endpoints -------------------------------------------------------------------------------

# How each url() placeholder is spelled in projects/urls.py.
_ROUTE_PARTS = {
    "org": "<int:organization_id>",
    "project": "<int:project_id>",
    "user": "<int:user_id>",
    "token": "<int:token_id>",
    "job": "<int:job_id>",
}


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str  # a url() template
    expect: Expect
    body: Callable[[Scene], Any] | None = None
    check: Callable[[Scene, ApiResponse], None] | None = None
    prepare: Callable[[Scene], object] | None = None
    variant: str = ""
    parts: dict[str, str] = field(default_factory=dict)  # url() parts other than the defaults

    @property
    def route(self) -> str:
        """The pattern of projects/urls.py this endpoint calls."""
        return self.template.lstrip("/").format(**_ROUTE_PARTS)

    @property
    def path(self) -> Callable[[Scene], str]:
        return url(self.template, **self.parts)

    @property
    def id(self) -> str:
        return f"{self.method} {self.route}" + (f" ({self.variant})" if self.variant else "")


def _job_endpoints(job: str, view: Expect, cancel: Expect, variant: str) -> list[Endpoint]:
    return [
        Endpoint("GET", "/jobs/{job}", view, variant=variant, parts={"job": job}),
        Endpoint("GET", "/jobs/{job}/errors", view, variant=variant, parts={"job": job}),
        Endpoint(
            "POST",
            "/jobs/{job}/cancel",
            cancel,
            check=job_cancelled(job),
            variant=variant,
            parts={"job": job},
        ),
    ]


ORG = "/organizations/{org}"
PROJECT = "/projects/{project}"
MANAGE_ORG = OrgAction.MEMBERS_MANAGE
MANAGE_PROJECT = ProjectAction.MEMBERS_MANAGE

ENDPOINTS: list[Endpoint] = [
    # Accounts: everyone acts on its own things; nobody in the world is an instance administrator.
    Endpoint("GET", "/me", everyone(200)),
    Endpoint("GET", "/me/tokens", everyone(200), check=check_token_list, prepare=lambda s: s.foreign_token),
    Endpoint("POST", "/me/tokens", everyone(201), body=lambda s: {"name": "ci"}),
    Endpoint("DELETE", "/me/tokens/{token}", everyone(204), variant="own token"),
    Endpoint(
        "DELETE",
        "/me/tokens/{token}",
        everyone(404),
        parts={"token": "foreign_token"},
        variant="another user's token",
    ),
    Endpoint("POST", "/users", everyone(403), body=lambda s: {"username": "newbie"}),
    # Organizations. Any signed-in user may start one (and becomes its owner).
    Endpoint("GET", "/organizations", everyone(200), check=check_org_list),
    Endpoint("POST", "/organizations", everyone(201), body=lambda s: {"name": "Fresh", "slug": "fresh"}),
    Endpoint("GET", ORG, by_org(OrgAction.VIEW, 200)),
    Endpoint("PATCH", ORG, by_org(OrgAction.UPDATE, 200), body=lambda s: {"name": "Renamed"}),
    Endpoint("DELETE", ORG, by_org(OrgAction.DELETE, 204), check=gone(Organization, lambda s: s.org.id)),
    Endpoint("GET", f"{ORG}/members", by_org(OrgAction.MEMBERS_VIEW, 200)),
    Endpoint(
        "POST",
        f"{ORG}/members",
        by_org(MANAGE_ORG, 201),
        body=lambda s: {"username": s.stranger.username, "role": OrgRole.MEMBER},
    ),
    Endpoint(
        "PATCH", f"{ORG}/members/{{user}}", by_org(MANAGE_ORG, 200), body=lambda s: {"role": OrgRole.ADMIN}
    ),
    Endpoint("DELETE", f"{ORG}/members/{{user}}", by_org(MANAGE_ORG, 204), check=membership_gone),
    Endpoint("GET", f"{ORG}/audit-events", by_org(OrgAction.AUDIT_VIEW, 200)),
    # Projects
    Endpoint("GET", "/projects", everyone(200), check=check_project_list, prepare=lambda s: s.back_office),
    Endpoint(
        "POST",
        "/projects",
        by_org(OrgAction.PROJECT_CREATE, 201),
        body=lambda s: {"organization": s.org.id, "name": "Night scenes"},
    ),
    Endpoint("GET", PROJECT, by_project(ProjectAction.VIEW, 200), check=check_project_detail),
    Endpoint("PATCH", PROJECT, by_project(ProjectAction.UPDATE, 200), body=lambda s: {"description": "New"}),
    Endpoint(
        "DELETE", PROJECT, by_project(ProjectAction.DELETE, 204), check=gone(Project, lambda s: s.project.id)
    ),
    Endpoint("GET", f"{PROJECT}/members", by_project(ProjectAction.MEMBERS_VIEW, 200)),
    Endpoint(
        "POST",
        f"{PROJECT}/members",
        by_project(MANAGE_PROJECT, 201),
        body=lambda s: {"username": s.newcomer.username, "role": ProjectRole.ANNOTATOR},
    ),
    Endpoint(
        "PATCH",
        f"{PROJECT}/members/{{user}}",
        by_project(MANAGE_PROJECT, 200),
        body=lambda s: {"role": ProjectRole.REVIEWER},
    ),
    Endpoint(
        "DELETE", f"{PROJECT}/members/{{user}}", by_project(MANAGE_PROJECT, 204), check=project_member_gone
    ),
    # Seeing the project is enough to list its jobs; which jobs is what JOBS_VIEW_ALL decides.
    Endpoint(
        "GET",
        f"{PROJECT}/jobs",
        by_project(ProjectAction.VIEW, 200),
        check=check_job_list,
        prepare=lambda s: (s.finished_system_job, s.own_job),
    ),
    Endpoint("GET", f"{PROJECT}/audit-events", by_project(ProjectAction.AUDIT_VIEW, 200)),
    Endpoint("GET", f"{PROJECT}/stats", by_project(ProjectAction.STATS_VIEW, 200)),
    Endpoint(
        "POST",
        f"{PROJECT}/stats/recount",
        by_project(ProjectAction.STATS_RECOUNT, 202),
        body=lambda s: {"chunk_size": 100},
    ),
    # Jobs
    *_job_endpoints("system_job", system_job_view, system_job_cancel, "system job"),
    *_job_endpoints("own_job", own_job_view, own_job_view, "own job"),
    *_job_endpoints("org_job", org_job_view, org_job_view, "organization-level system job"),
]
ENDPOINTS_BY_ID = {endpoint.id: endpoint for endpoint in ENDPOINTS}
assert len(ENDPOINTS_BY_ID) == len(ENDPOINTS), "endpoint ids must be unique"


def call_endpoint(endpoint: Endpoint, scene: Scene, expected: int) -> ApiResponse:
    """Call an endpoint as the scene's caller and assert the status; errors write nothing."""
    if endpoint.prepare is not None:
        endpoint.prepare(scene)
    path = endpoint.path(scene)
    body = endpoint.body(scene) if endpoint.body is not None else None
    before = db_state()
    response = send(scene.client, endpoint.method, path, body)
    if expected >= 400:
        assert_error(response, expected, ERROR_CODES[expected])
        assert db_state() == before, "a refused request changed something"
    else:
        assert response.status_code == expected, (response.status_code, response.content)
        if endpoint.check is not None:
            endpoint.check(scene, response)
    return response


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.id for e in ENDPOINTS])
def test_every_caller_gets_the_status_the_matrix_implies(
    world: World, endpoint: Endpoint, caller: str
) -> None:
    scene = Scene(world, caller)
    call_endpoint(endpoint, scene, endpoint.expect(scene))


# Written by hand, not derived: a bug in the derivation above cannot hide these.
SPOT_CHECKS: list[tuple[str, str, int]] = [
    ("PATCH projects/<int:project_id>", "annotator", 403),
    ("PATCH projects/<int:project_id>", "manager", 200),
    ("DELETE projects/<int:project_id>", "manager", 403),
    ("DELETE projects/<int:project_id>", "admin", 204),
    ("GET projects/<int:project_id>", "member", 404),
    ("GET projects/<int:project_id>", "outsider", 404),
    ("GET projects/<int:project_id>", "owner", 200),
    ("GET jobs/<int:job_id> (system job)", "outsider", 404),
    ("GET jobs/<int:job_id> (system job)", "annotator", 404),
    ("GET jobs/<int:job_id> (system job)", "reviewer", 200),
    ("GET jobs/<int:job_id> (system job)", "ml_engineer", 200),
    ("POST jobs/<int:job_id>/cancel (system job)", "ml_engineer", 403),
    ("POST jobs/<int:job_id>/cancel (system job)", "reviewer", 403),
    ("POST jobs/<int:job_id>/cancel (system job)", "manager", 200),
    ("POST jobs/<int:job_id>/cancel (own job)", "annotator", 200),
    ("POST jobs/<int:job_id>/cancel (own job)", "member", 404),
    ("GET jobs/<int:job_id> (organization-level system job)", "member", 404),
    ("POST projects", "member", 403),
    ("POST projects", "outsider", 404),
    ("POST projects", "admin", 201),
    ("POST projects/<int:project_id>/stats/recount", "reviewer", 403),
    ("POST projects/<int:project_id>/stats/recount", "manager", 202),
    ("GET projects/<int:project_id>/audit-events", "reviewer", 403),
    ("GET projects/<int:project_id>/audit-events", "manager", 200),
    ("DELETE organizations/<int:organization_id>", "admin", 403),
    ("DELETE organizations/<int:organization_id>", "owner", 204),
    ("GET organizations/<int:organization_id>", "outsider", 404),
    ("GET organizations/<int:organization_id>", "annotator", 200),
    ("POST organizations/<int:organization_id>/members", "manager", 403),
    ("GET organizations/<int:organization_id>/audit-events", "member", 403),
    ("DELETE me/tokens/<int:token_id> (another user's token)", "owner", 404),
    ("POST users", "owner", 403),
]


@pytest.mark.parametrize(
    ("endpoint_id", "caller", "expected"), SPOT_CHECKS, ids=[f"{e} {c}" for e, c, _ in SPOT_CHECKS]
)
def test_hand_written_spot_checks_agree(world: World, endpoint_id: str, caller: str, expected: int) -> None:
    scene = Scene(world, caller)
    endpoint = ENDPOINTS_BY_ID[endpoint_id]
    assert endpoint.expect(scene) == expected, "the derivation disagrees with the spot check"
    call_endpoint(endpoint, scene, expected)


def _served() -> set[tuple[str, str]]:
    served = set()
    for pattern in project_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        view_class = pattern.callback.view_class  # type: ignore[attr-defined]
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view_class, method):
                served.add((str(pattern.pattern), method.upper()))
    return served


def test_the_table_covers_every_endpoint_and_method_of_the_urls() -> None:
    assert {(e.route, e.method) for e in ENDPOINTS} == _served()


def test_the_spot_checks_cover_every_kind_of_caller() -> None:
    assert {caller for _, caller, _ in SPOT_CHECKS} == set(CALLERS)
    assert {status for _, _, status in SPOT_CHECKS} >= {200, 403, 404}


def test_a_method_the_endpoint_does_not_serve_is_a_405_in_the_error_shape(world: World) -> None:
    response = api_client(world.users["owner"]).put(f"{API}/projects/{world.project.id}", {}, format="json")
    assert_error(response, 405, "method_not_allowed")


def test_an_instance_administrator_may_create_users(world: World) -> None:
    response = Scene(world, INSTANCE_ADMIN).client.post(f"{API}/users", {"username": "newbie"}, format="json")
    assert response.status_code == 201
    assert UserModel.objects.filter(username="newbie").exists()


# --- Leaving, and losing access ---------------------------------------------------------------------


@pytest.mark.parametrize("caller", list(CALLERS))
def test_anyone_may_leave_the_organization_except_its_last_owner(world: World, caller: str) -> None:
    scene = Scene(world, caller)
    role = scene.org_role  # read before leaving
    response = scene.client.delete(f"{API}/organizations/{world.org.id}/members/{scene.user.pk}")
    if role is None:
        assert_error(response, 404, "not_found")
    elif role == OrgRole.OWNER:
        assert_error(response, 409, "last_owner")
    else:
        assert response.status_code == 204
        assert not Membership.objects.filter(organization=world.org, user=scene.user).exists()


@pytest.mark.parametrize("caller", list(CALLERS))
def test_anyone_with_a_project_role_may_leave_the_project(world: World, caller: str) -> None:
    scene = Scene(world, caller)
    response = scene.client.delete(f"{API}/projects/{world.project.id}/members/{scene.user.pk}")
    if scene.project_role is None:
        assert_error(response, 404, "not_found")  # may not see the project
    elif scene.project_role == ORG_ADMIN:
        assert_error(response, 404, "not_found")  # sees it, but holds no project role to give up
    else:
        assert response.status_code == 204
        assert not ProjectMember.objects.filter(project=world.project, user=scene.user).exists()


def test_a_user_removed_from_the_organization_loses_its_projects_at_once(world: World) -> None:
    annotator = world.users["annotator"]
    client = api_client(annotator)
    assert client.get(f"{API}/projects/{world.project.id}").status_code == 200
    response = api_client(world.users["owner"]).delete(
        f"{API}/organizations/{world.org.id}/members/{annotator.pk}"
    )
    assert response.status_code == 204
    assert_error(client.get(f"{API}/projects/{world.project.id}"), 404, "not_found")
    assert_error(client.get(f"{API}/organizations/{world.org.id}"), 404, "not_found")
    assert result_ids(client.get(f"{API}/projects")) == set()
    assert not ProjectMember.objects.filter(user=annotator).exists()


def test_an_admin_demoted_to_member_stops_seeing_projects_it_has_no_role_in(world: World) -> None:
    admin = world.users["admin"]
    client = api_client(admin)
    assert client.get(f"{API}/projects/{world.project.id}").status_code == 200
    response = api_client(world.users["owner"]).patch(
        f"{API}/organizations/{world.org.id}/members/{admin.pk}", {"role": OrgRole.MEMBER}, format="json"
    )
    assert response.status_code == 200
    assert_error(client.get(f"{API}/projects/{world.project.id}"), 404, "not_found")
    assert_error(client.patch(f"{API}/organizations/{world.org.id}", {"name": "x"}, format="json"), 403)


def test_the_creator_of_a_project_manages_it_after_losing_its_org_admin_role(world: World) -> None:
    admin = world.users["admin"]
    client = api_client(admin)
    created = client.post(f"{API}/projects", {"organization": world.org.id, "name": "Mine"}, format="json")
    assert created.status_code == 201
    api_client(world.users["owner"]).patch(
        f"{API}/organizations/{world.org.id}/members/{admin.pk}", {"role": OrgRole.MEMBER}, format="json"
    )
    response = client.get(f"{API}/projects/{created.json()['id']}")
    assert response.status_code == 200
    assert response.json()["my_role"] == ProjectRole.MANAGER


# --- docs/permissions.md mirrors the matrix -------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "permissions.md"
MATRIX_START, MATRIX_END = "<!-- matrix:start -->", "<!-- matrix:end -->"


def _table(corner: str, roles: list[str], matrix: dict[Any, frozenset[str]]) -> list[str]:
    lines = [
        f"| {corner} | " + " | ".join(f"`{role}`" for role in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for action, allowed in matrix.items():
        cells = ["yes" if role in allowed else "—" for role in roles]
        lines.append(f"| `{action}` | " + " | ".join(cells) + " |")
    return lines


def render_matrix() -> str:
    """The tables of docs/permissions.md, rendered from ORG_MATRIX and PROJECT_MATRIX."""
    return "\n".join(
        [
            "### Organization actions (by organization role)",
            "",
            *_table("action", list(OrgRole.values), ORG_MATRIX),
            "",
            "### Project actions (by project role; `org_admin` = owner or admin of the organization)",
            "",
            *_table("action", [*ProjectRole.values, ORG_ADMIN], PROJECT_MATRIX),
        ]
    )


def test_the_permissions_doc_shows_exactly_the_matrix() -> None:
    text = DOC.read_text()
    found = re.search(re.escape(MATRIX_START) + r"\n(.*?)\n" + re.escape(MATRIX_END), text, re.DOTALL)
    assert found is not None, f"{DOC} lacks the {MATRIX_START} … {MATRIX_END} markers"
    stale = "docs/permissions.md is stale; put this between the markers:\n" + render_matrix()
    assert found.group(1) == render_matrix(), stale


# --- Leaks and inconsistencies once found here -------------------------------------------------------------


def test_an_outsider_cannot_tell_an_organization_level_job_from_a_missing_one(world: World) -> None:
    scene = Scene(world, "outsider")
    existing = assert_error(scene.client.get(f"{API}/jobs/{scene.org_job.id}"), 404, "not_found")
    missing = assert_error(scene.client.get(f"{API}/jobs/{scene.org_job.id + 1000}"), 404, "not_found")
    assert existing["message"] == missing["message"]
    assert str(world.org.id) not in json.dumps(existing["details"])


def test_the_creator_gets_the_same_role_when_creating_and_reading_a_project(world: World) -> None:
    client = Scene(world, "admin").client
    created = client.post(f"{API}/projects", {"organization": world.org.id, "name": "Mine"}, format="json")
    assert created.status_code == 201
    read = client.get(f"{API}/projects/{created.json()['id']}")
    assert created.json()["my_role"] == read.json()["my_role"]
