"""The audit trail: one event per change, in the change's transaction, readable by those who manage.

Atomicity is proven with a test-only PostgreSQL trigger that makes the write of an AuditEvent
fail: the API must answer 500 and the change itself must be gone. The test runs inside one outer
transaction, so the service's own atomic block is a savepoint; a change written outside that block
would survive the failed audit write and show in the comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection
from django.db.models import Max, Model

from projects.models import AuditEvent, Membership, Organization, Project, ProjectMember
from tests.conftest import CALLERS, World, assert_error
from tests.projects.test_permissions import (
    API,
    INSTANCE_ADMIN,
    ApiResponse,
    Scene,
    db_state,
    result_ids,
    send,
    url,
)

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Change:
    """A successful state-changing call and the event it must leave."""

    name: str
    caller: str
    request: str  # "METHOD url-template"
    verb: str  # "<object>.<action>"; the event's object_type is the object's model name
    # Where the event is filed: None (instance level), "org" (acme), "project" (acme and the project),
    # "new org" / "new project" (the organization or project the call created).
    filed: str | None
    body: Any = None
    # The object the call acts on, read before the call (it may be gone after it); None: the object
    # the call created, whose id the answer holds (or ``created`` finds).
    target: Callable[[Scene], Model] | None = None
    created: Callable[[Scene], Model] | None = None
    parts: dict[str, str] = field(default_factory=dict)
    status: int = 0  # 0: what the method implies

    @property
    def method(self) -> str:
        return self.request.split()[0]

    @property
    def expected_status(self) -> int:
        return self.status or {"POST": 201, "PATCH": 200, "DELETE": 204}[self.method]

    def subject(self, scene: Scene, response: ApiResponse, target: Model | None) -> tuple[str, str, Any, Any]:
        """(object_type, object_id, organization_id, project_id) the event must name."""
        if target is not None:
            object_id = target.pk
        elif self.created is not None:
            object_id = self.created(scene).pk
        else:
            object_id = response.json()["id"]
        org, project = scene.org.id, scene.project.id
        filed = {
            None: (None, None),
            "org": (org, None),
            "project": (org, project),
            "new org": (object_id, None),
            "new project": (org, object_id),
        }[self.filed]
        object_type = self.verb.split(".")[0].replace("_", "")
        return (object_type, str(object_id), *filed)


def membership_of(who: str) -> Callable[[Scene], Membership]:
    return lambda s: Membership.objects.get(organization=s.org, user=getattr(s, who))


def project_member_of(who: str) -> Callable[[Scene], ProjectMember]:
    return lambda s: ProjectMember.objects.get(project=s.project, user=getattr(s, who))


ORG_MEMBER = "/organizations/{org}/members/{user}"
PROJECT_MEMBER = "/projects/{project}/members/{user}"
CALLER = {"user": "user"}  # url() parts: the member is the caller itself

# A table: one change per row reads better than one argument per line.
# fmt: off
CHANGES: list[Change] = [
    Change("create a token", "annotator", "POST /me/tokens", "api_token.create", None, {"name": "ci"}),
    Change("revoke a token", "annotator", "DELETE /me/tokens/{token}", "api_token.revoke", None,
           target=lambda s: s.spare_token),
    Change("create a user", INSTANCE_ADMIN, "POST /users", "user.create", None, {"username": "newbie"}),
    Change("create an organization", "annotator", "POST /organizations", "organization.create", "new org",
           {"name": "N", "slug": "new"}),
    Change("rename the organization", "owner", "PATCH /organizations/{org}", "organization.update", "org",
           {"name": "Acme 2"}, target=lambda s: s.org),
    # Kept at instance level: the organization's own events go with it.
    Change("delete the organization", "owner", "DELETE /organizations/{org}", "organization.delete", None,
           target=lambda s: s.org),
    Change("add an organization member", "owner", "POST /organizations/{org}/members", "membership.create",
           "org", lambda s: {"username": s.stranger.username, "role": "member"},
           created=membership_of("stranger")),
    Change("change an organization role", "admin", f"PATCH {ORG_MEMBER}", "membership.update", "org",
           {"role": "admin"}, target=membership_of("target")),
    Change("remove an organization member", "owner", f"DELETE {ORG_MEMBER}", "membership.delete", "org",
           target=membership_of("target")),
    Change("leave the organization", "reviewer", f"DELETE {ORG_MEMBER}", "membership.delete", "org",
           target=membership_of("user"), parts=CALLER),
    Change("create a project", "admin", "POST /projects", "project.create", "new project",
           lambda s: {"organization": s.org.id, "name": "Night scenes"}),
    Change("update the project", "manager", "PATCH /projects/{project}", "project.update", "project",
           {"settings": {"overlap": 2}}, target=lambda s: s.project),
    # Filed under the organization: the project's own events go with it.
    Change("delete the project", "owner", "DELETE /projects/{project}", "project.delete", "org",
           target=lambda s: s.project),
    Change("add a project member", "manager", "POST /projects/{project}/members", "project_member.create",
           "project", lambda s: {"username": s.newcomer.username, "role": "annotator"},
           created=project_member_of("newcomer")),
    Change("change a project role", "manager", f"PATCH {PROJECT_MEMBER}", "project_member.update", "project",
           {"role": "reviewer"}, target=project_member_of("target")),
    Change("remove a project member", "owner", f"DELETE {PROJECT_MEMBER}", "project_member.delete", "project",
           target=project_member_of("target")),
    Change("leave the project", "annotator", f"DELETE {PROJECT_MEMBER}", "project_member.delete", "project",
           target=project_member_of("user"), parts=CALLER),
    Change("start a statistics recount", "manager", "POST /projects/{project}/stats/recount", "job.start",
           "project", {"chunk_size": 50}, status=202),
    Change("cancel a job", "manager", "POST /jobs/{job}/cancel", "job.cancel", "project",
           target=lambda s: s.system_job, status=200),
]
# fmt: on
CHANGE_IDS = [change.name for change in CHANGES]


def last_event_id() -> int:
    return AuditEvent.objects.aggregate(last=Max("id"))["last"] or 0


@dataclass
class Prepared:
    scene: Scene
    target: Model | None  # the object the change acts on, read before it
    path: str
    body: Any


def prepare_change(world: World, change: Change) -> Prepared:
    """Everything a change needs, made before it (the caller's token, the objects it acts on)."""
    scene = Scene(world, change.caller)
    target = change.target(scene) if change.target is not None else None
    body = change.body(scene) if callable(change.body) else change.body
    return Prepared(scene, target, url(change.request.split()[1], **change.parts)(scene), body)


@pytest.mark.parametrize(
    "supplied", [None, "trace-42.a:b"], ids=["generated request id", "caller's request id"]
)
@pytest.mark.parametrize("change", CHANGES, ids=CHANGE_IDS)
def test_every_change_writes_exactly_one_audit_event(
    world: World, change: Change, supplied: str | None
) -> None:
    ready = prepare_change(world, change)
    since = last_event_id()
    headers = {"HTTP_X_REQUEST_ID": supplied} if supplied else {}
    response = send(ready.scene.client, change.method, ready.path, ready.body, **headers)
    assert response.status_code == change.expected_status, response.content
    events = list(AuditEvent.objects.filter(id__gt=since))
    assert len(events) == 1, [(e.verb, e.object_type) for e in events]
    event = events[0]
    assert event.verb == change.verb
    assert event.actor_id == ready.scene.user.pk
    subject = (event.object_type, event.object_id, event.organization_id, event.project_id)
    assert subject == change.subject(ready.scene, response, ready.target)
    assert event.request_id and event.request_id == response["X-Request-ID"]
    if supplied:
        assert response["X-Request-ID"] == supplied


@pytest.mark.parametrize("supplied", ["has spaces", "x" * 65, "semi;colon"])
def test_a_request_id_that_is_not_safe_is_replaced(world: World, supplied: str) -> None:
    scene = Scene(world, "manager")
    response = scene.client.patch(
        f"{API}/projects/{world.project.id}", {"description": "x"}, format="json", HTTP_X_REQUEST_ID=supplied
    )
    assert response.status_code == 200
    generated = response["X-Request-ID"]
    assert generated != supplied and len(generated) == 32
    assert AuditEvent.objects.get(verb="project.update").request_id == generated


@contextmanager
def failing_writes(model: type[Model], operation: str) -> Iterator[None]:
    """A trigger that makes every ``operation`` (INSERT/UPDATE/DELETE) on the model's table fail."""
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION loupe_test_refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused by a test trigger'; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER loupe_test_refuse BEFORE {operation} ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION loupe_test_refuse()"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER IF EXISTS loupe_test_refuse ON {table}")
            cursor.execute("DROP FUNCTION IF EXISTS loupe_test_refuse()")


@pytest.mark.parametrize("change", CHANGES, ids=CHANGE_IDS)
def test_a_change_whose_audit_event_cannot_be_written_is_rolled_back(world: World, change: Change) -> None:
    ready = prepare_change(world, change)
    before = db_state()
    with failing_writes(AuditEvent, "INSERT"):
        response = send(ready.scene.client, change.method, ready.path, ready.body)
    assert_error(response, 500, "server_error")
    assert db_state() == before, f"{change.name}: the change survived its failed audit write"


def test_a_deletion_that_fails_leaves_no_audit_event(world: World) -> None:
    # Deletions record their event before deleting; the event must go when the delete fails.
    client = Scene(world, "owner").client
    before = db_state()
    with failing_writes(Project, "DELETE"):
        response = client.delete(f"{API}/projects/{world.project.id}")
    assert_error(response, 500, "server_error")
    assert db_state() == before


def test_organization_deletion_is_audited_after_its_own_events_are_gone(world: World) -> None:
    client = Scene(world, "owner").client
    client.patch(f"{API}/organizations/{world.org.id}", {"name": "Acme 2"}, format="json")
    assert AuditEvent.objects.filter(organization=world.org).exists()
    assert client.delete(f"{API}/organizations/{world.org.id}").status_code == 204
    assert not Organization.objects.filter(id=world.org.id).exists()
    event = AuditEvent.objects.get(verb="organization.delete")
    assert (event.organization_id, event.object_id) == (None, str(world.org.id))
    assert event.changes["slug"] == "acme"


# --- Reading the trail ---------------------------------------------------------------------------

PROJECT_AUDIT_STATUS = {
    "owner": 200,
    "admin": 200,
    "manager": 200,
    "reviewer": 403,
    "annotator": 403,
    "ml_engineer": 403,
    "member": 404,
    "outsider": 404,
}


def test_the_audit_status_table_names_every_caller() -> None:
    assert set(PROJECT_AUDIT_STATUS) == set(CALLERS)


@pytest.mark.parametrize(("caller", "status"), PROJECT_AUDIT_STATUS.items())
def test_managers_and_org_admins_read_the_project_trail(world: World, caller: str, status: int) -> None:
    Scene(world, "manager").client.patch(
        f"{API}/projects/{world.project.id}", {"description": "x"}, format="json"
    )
    response = Scene(world, caller).client.get(f"{API}/projects/{world.project.id}/audit-events")
    if status == 200:
        events = response.json()["results"]
        assert [e["verb"] for e in events] == ["project.update"]
        assert events[0]["actor"]["username"] == "manager"
    else:
        assert_error(response, status)


def _events(client: Any, path: str, **filters: str | int) -> list[dict[str, Any]]:
    response = client.get(path, filters)
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_the_trail_filters_by_verb_actor_and_time(world: World) -> None:
    manager, owner = Scene(world, "manager"), Scene(world, "owner")
    project = f"{API}/projects/{world.project.id}"
    manager.client.patch(project, {"description": "one"}, format="json")
    manager.client.patch(project, {"description": "two"}, format="json")
    owner.client.patch(project, {"description": "three"}, format="json")
    manager.client.post(
        f"{project}/members", {"username": manager.newcomer.username, "role": "annotator"}, format="json"
    )
    old = AuditEvent.objects.filter(project=world.project).order_by("id")[:2]
    AuditEvent.objects.filter(id__in=[e.id for e in old]).update(at=datetime(2020, 1, 1, tzinfo=UTC))
    trail = f"{project}/audit-events"

    updates = _events(manager.client, trail, verb="project.update")
    assert [e["changes"]["description"][1] for e in updates] == ["three", "two", "one"]
    by_owner = _events(manager.client, trail, actor=owner.user.pk)
    assert [e["changes"]["description"][1] for e in by_owner] == ["three"]
    recent = _events(manager.client, trail, since="2021-01-01T00:00:00Z")
    assert [e["verb"] for e in recent] == ["project_member.create", "project.update"]
    assert (
        _events(
            manager.client, trail, verb="project.update", actor=owner.user.pk, since="2030-01-01T00:00:00Z"
        )
        == []
    )
    assert_error(manager.client.get(trail, {"since": "last tuesday"}), 400, "invalid")


def test_the_trail_is_cursor_paginated_newest_first(world: World) -> None:
    manager = Scene(world, "manager")
    project = f"{API}/projects/{world.project.id}"
    for n in range(7):
        manager.client.patch(project, {"description": f"v{n}"}, format="json")
    seen: list[int] = []
    page_url: str | None = f"{project}/audit-events?page_size=3"
    pages = 0
    while page_url:
        body = manager.client.get(page_url).json()
        assert set(body) == {"next", "previous", "results"}
        seen += [e["id"] for e in body["results"]]
        page_url, pages = body["next"], pages + 1
    assert pages == 3
    assert seen == sorted(seen, reverse=True)
    assert seen == list(
        AuditEvent.objects.filter(project=world.project).order_by("-id").values_list("id", flat=True)
    )
    assert "cursor=" in manager.client.get(f"{project}/audit-events?page_size=3").json()["next"]


def test_a_manager_reads_only_its_own_projects_trail(world: World) -> None:
    manager, owner = Scene(world, "manager"), Scene(world, "owner")
    owner.client.patch(f"{API}/projects/{manager.back_office.id}", {"description": "x"}, format="json")
    assert_error(
        manager.client.get(f"{API}/projects/{manager.back_office.id}/audit-events"), 404, "not_found"
    )
    assert _events(manager.client, f"{API}/projects/{world.project.id}/audit-events") == []
    assert_error(
        manager.client.get(f"{API}/projects/{world.other_project.id}/audit-events"), 404, "not_found"
    )


def test_the_organization_trail_holds_its_projects_events_for_owners_and_admins(world: World) -> None:
    owner = Scene(world, "owner")
    owner.client.patch(f"{API}/organizations/{world.org.id}", {"name": "Acme 2"}, format="json")
    owner.client.patch(f"{API}/projects/{world.project.id}", {"description": "x"}, format="json")
    trail = f"{API}/organizations/{world.org.id}/audit-events"
    for caller in ("owner", "admin"):
        assert [e["verb"] for e in _events(Scene(world, caller).client, trail)] == [
            "project.update",
            "organization.update",
        ]
    assert_error(Scene(world, "manager").client.get(trail), 403, "permission_denied")
    assert_error(Scene(world, "outsider").client.get(trail), 404, "not_found")
    assert result_ids(Scene(world, "outsider").client.get(f"{API}/organizations")) == {world.other_org.id}
