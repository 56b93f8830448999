from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from projects.models import ApiToken, AuditEvent, ProjectMember
from tests.conftest import World, assert_error, client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_me_answers_with_the_caller_and_its_organizations(world: World) -> None:
    response = world.client("owner").get("/api/v1/me")
    assert response.status_code == 200
    body = response.json()
    assert body["username"] == "owner"
    assert body["organizations"] == [{"id": world.org.id, "slug": "acme", "role": "owner"}]


def test_it_refuses_anonymous_callers_in_the_error_shape(world: World) -> None:
    response = client_for(None).get("/api/v1/me")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"


def test_a_bad_token_is_refused(world: World) -> None:
    client = client_for(None)
    client.credentials(HTTP_AUTHORIZATION="Token lp_not-a-real-token")
    assert_error(client.get("/api/v1/me"), 401, "authentication_failed")
    client.credentials(HTTP_AUTHORIZATION="Token two parts")
    assert_error(client.get("/api/v1/me"), 401, "authentication_failed")


def test_tokens_are_shown_once_and_stored_hashed(world: World) -> None:
    client = world.client("annotator")
    response = client.post("/api/v1/me/tokens", {"name": "laptop"}, format="json")
    assert response.status_code == 201
    clear = response.json()["token"]
    assert clear.startswith("lp_") and len(clear) > 40
    stored = ApiToken.objects.get(id=response.json()["id"])
    assert clear not in (stored.digest, stored.prefix, stored.name)
    assert not ApiToken.objects.filter(digest=clear).exists()
    listing = client.get("/api/v1/me/tokens").json()["results"]
    assert {t["name"] for t in listing} == {"test", "laptop"}
    assert all("token" not in t for t in listing)


def test_revoking_a_token_takes_effect_at_once(world: World) -> None:
    creator = world.client("annotator")
    created = creator.post("/api/v1/me/tokens", {"name": "ci"}, format="json").json()
    ci = client_for(None)
    ci.credentials(HTTP_AUTHORIZATION=f"Token {created['token']}")
    assert ci.get("/api/v1/me").status_code == 200
    assert ci.delete(f"/api/v1/me/tokens/{created['id']}").status_code == 204
    assert_error(ci.get("/api/v1/me"), 401, "authentication_failed")
    assert AuditEvent.objects.filter(verb="api_token.revoke", object_id=str(created["id"])).exists()


def test_a_user_cannot_see_or_revoke_another_users_token(world: World) -> None:
    created = world.client("annotator").post("/api/v1/me/tokens", {"name": "mine"}, format="json").json()
    outsider = world.client("outsider")
    assert_error(outsider.delete(f"/api/v1/me/tokens/{created['id']}"), 404, "not_found")
    assert created["id"] not in [t["id"] for t in outsider.get("/api/v1/me/tokens").json()["results"]]


def test_expired_tokens_are_refused(world: World) -> None:
    client = world.client("annotator")
    created = client.post(
        "/api/v1/me/tokens", {"name": "short-lived", "expires_at": "2999-01-01T00:00:00Z"}, format="json"
    ).json()
    short_lived = client_for(None)
    short_lived.credentials(HTTP_AUTHORIZATION=f"Token {created['token']}")
    assert short_lived.get("/api/v1/me").status_code == 200
    ApiToken.objects.filter(id=created["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(short_lived.get("/api/v1/me"), 401, "authentication_failed")


def test_a_token_cannot_be_created_already_expired(world: World) -> None:
    response = world.client("annotator").post(
        "/api/v1/me/tokens", {"name": "old", "expires_at": "2001-01-01T00:00:00Z"}, format="json"
    )
    assert "expires_at" in assert_error(response, 400, "invalid")["details"]["fields"]


def test_only_instance_admins_create_users(world: World) -> None:
    assert_error(world.client("owner").post("/api/v1/users", {"username": "x"}, format="json"), 403)
    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    response = client_for(root).post(
        "/api/v1/users", {"username": "newbie", "email": "n@example.test"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["username"] == "newbie"
    assert_error(
        client_for(root).post("/api/v1/users", {"username": "newbie"}, format="json"), 409, "name_taken"
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 101},
        {"name": "ok", "expires_at": "yesterday"},
        ["not", "an", "object"],
    ],
)
def test_bad_token_requests_get_the_error_shape(world: World, body: Any) -> None:
    error = assert_error(world.client("annotator").post("/api/v1/me/tokens", body, format="json"), 400)
    assert error["code"] == "invalid"


def test_malformed_json_is_a_400_not_a_500(world: World) -> None:
    response = world.client("annotator").post(
        "/api/v1/me/tokens", data="{not json", content_type="application/json"
    )
    assert_error(response, 400, "malformed_request")


def test_unknown_urls_answer_in_the_error_shape(world: World) -> None:
    assert_error(world.client("annotator").get("/api/v1/nothing-here"), 404, "not_found")


def test_a_token_request_under_a_project_reads_the_callers_access_with_the_token(world: World) -> None:
    """One round trip authenticates and authorizes: the caller's roles in the project named by the
    URL come with the token, and the view asks the database nothing more about them."""
    statements: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(str(sql))
        return execute(sql, params, many, context)

    client = world.client("annotator")
    with connection.execute_wrapper(record):
        response = client.get(f"/api/v1/projects/{world.project.id}")
        hidden = client.get(f"/api/v1/projects/{world.other_project.id}")
    assert response.status_code == 200 and response.json()["my_role"] == "annotator"
    assert_error(hidden, 404, "not_found")
    reading_roles = [sql for sql in statements if "projects_projectmember" in sql]
    assert len(reading_roles) == 2  # one per request
    assert all("projects_apitoken" in sql for sql in reading_roles)


def test_a_role_taken_away_between_two_requests_counts_on_the_second(world: World) -> None:
    client = world.client("annotator")
    assert client.get(f"/api/v1/projects/{world.project.id}").status_code == 200
    ProjectMember.objects.filter(project=world.project, user=world.users["annotator"]).delete()
    assert_error(client.get(f"/api/v1/projects/{world.project.id}"), 404, "not_found")
