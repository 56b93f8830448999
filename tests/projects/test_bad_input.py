"""Bad input to every write endpoint: a 4xx in the one error shape, never a 500, and nothing written.

Every case snapshots every row the projects API writes (users, tokens, organizations,
memberships, projects, project members, jobs, audit events) before the request and compares
after it, so "refused" also proves "wrote nothing, not even an audit event".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from projects.models import OrgRole, ProjectRole
from projects.serializers import MAX_SETTINGS_BYTES
from projects.services import api_token_revoke
from tests.conftest import World, assert_error
from tests.projects.test_permissions import (
    ENDPOINTS,
    HUGE_ID,
    INSTANCE_ADMIN,
    Raw,
    Scene,
    db_state,
    send,
    url,
)

pytestmark = pytest.mark.django_db

MISSING_ID = 2**62  # fits a bigint, matches nothing
JSON = "application/json"


@dataclass(frozen=True)
class Bad:
    name: str
    caller: str
    method: str
    template: str
    path: Callable[[Scene], str]
    body: Any = None  # a JSON value, a Raw body, or a function of the Scene returning one
    status: int = 400
    code: str = "invalid"
    prepare: Callable[[Scene], object] | None = None


@dataclass(frozen=True)
class On:
    """A write endpoint and a caller allowed to use it; calling it makes a bad case for it."""

    method: str
    template: str  # a url() template
    caller: str

    def __call__(
        self,
        what: str,
        body: Any = None,
        status: int = 400,
        code: str = "invalid",
        prepare: Callable[[Scene], object] | None = None,
        **parts: str | int,
    ) -> Bad:
        name = f"{self.method} {self.template}: {what}"
        path = url(self.template, **parts)
        return Bad(name, self.caller, self.method, self.template, path, body, status, code, prepare)

    def missing_ids(self, body: Any = None) -> list[Bad]:
        """The request with each id of its path replaced by one that does not exist or overflows bigint."""
        parts = [
            part for part in ("org", "project", "user", "token", "job") if f"{{{part}}}" in self.template
        ]
        return [
            self(f"{part} id {label}", body, 404, "not_found", **{part: value})
            for part in parts
            for label, value in (("that does not exist", MISSING_ID), ("too large for bigint", HUGE_ID))
        ]


def params(cases: list[Any]) -> list[Any]:
    return [pytest.param(case, id=case.name) if isinstance(case, Bad) else case for case in cases]


token_create = On("POST", "/me/tokens", "annotator")
token_revoke = On("DELETE", "/me/tokens/{token}", "annotator")
user_create = On("POST", "/users", INSTANCE_ADMIN)
org_create = On("POST", "/organizations", "annotator")
org_update = On("PATCH", "/organizations/{org}", "owner")
org_delete = On("DELETE", "/organizations/{org}", "owner")
member_add = On("POST", "/organizations/{org}/members", "owner")
member_update = On("PATCH", "/organizations/{org}/members/{user}", "owner")
member_remove = On("DELETE", "/organizations/{org}/members/{user}", "owner")
project_create = On("POST", "/projects", "owner")
project_update = On("PATCH", "/projects/{project}", "manager")
project_delete = On("DELETE", "/projects/{project}", "owner")
project_member_add = On("POST", "/projects/{project}/members", "manager")
project_member_update = On("PATCH", "/projects/{project}/members/{user}", "manager")
project_member_remove = On("DELETE", "/projects/{project}/members/{user}", "manager")
stats_recount = On("POST", "/projects/{project}/stats/recount", "manager")
job_cancel = On("POST", "/jobs/{job}/cancel", "manager")

# Every endpoint that reads a JSON body.
JSON_WRITERS = [
    token_create,
    user_create,
    org_create,
    org_update,
    member_add,
    member_update,
    project_create,
    project_update,
    project_member_add,
    project_member_update,
    stats_recount,
]

# Bodies that no JSON endpoint accepts, whatever its fields: (what, body, status, code).
SHAPES: list[tuple[str, Any, int, str]] = [
    ("a JSON array", ["not", "an", "object"], 400, "invalid"),
    ("a JSON string", "text", 400, "invalid"),
    ("JSON null", Raw("null", JSON), 400, "invalid"),
    ("malformed JSON", Raw('{"name": ', JSON), 400, "malformed_request"),
    ("bytes that are not UTF-8", Raw(b"\xff\xfe{}", JSON), 400, "malformed_request"),
    ("NaN", Raw('{"chunk_size": NaN}', JSON), 400, "malformed_request"),
    ("text/plain", Raw('{"name": "x"}', "text/plain"), 415, "unsupported_media_type"),
    ("XML", Raw("<name>x</name>", "application/xml"), 415, "unsupported_media_type"),
]
DEEPLY_NESTED = Raw("[" * 100_000 + "]" * 100_000, JSON)

SHAPE_CASES: list[Any] = [
    *[writer(what, body, status, code) for writer in JSON_WRITERS for what, body, status, code in SHAPES],
    *[writer("deeply nested JSON", DEEPLY_NESTED, 400, "malformed_request") for writer in JSON_WRITERS],
]


def new_project(**fields: Any) -> Callable[[Scene], dict[str, Any]]:
    """A project-create body for acme with these fields."""
    return lambda s: {"organization": s.org.id, "name": "New", **fields}


TOO_BIG_SETTINGS = {"blob": "x" * MAX_SETTINGS_BYTES}
LONG_EMAIL = "a" * 64 + "@" + ("b" * 63 + ".") * 3 + "com"  # valid, and 260 characters

FIELD_CASES: list[Any] = [
    token_create("no name", {}),
    token_create("empty name", {"name": ""}),
    token_create("name too long", {"name": "x" * 101}),
    token_create("name not a string", {"name": ["a"]}),
    token_create("NUL in the name", {"name": "a\u0000b"}),
    token_create("expiry not a date", {"name": "a", "expires_at": "soon"}),
    token_create("expiry a number", {"name": "a", "expires_at": 12}),
    *token_revoke.missing_ids(),
    token_revoke(
        "already revoked",
        None,
        404,
        "not_found",
        prepare=lambda s: api_token_revoke(user=s.user, token_id=s.spare_token.pk),
    ),
    user_create("no username", {}),
    user_create("username with a space", {"username": "has space"}),
    user_create("username too long", {"username": "x" * 151}),
    user_create("bad email", {"username": "ok", "email": "nope"}),
    user_create("short password", {"username": "ok", "password": "short"}),
    user_create("superuser flag not a boolean", {"username": "ok", "is_superuser": "maybe"}),
    user_create("username taken", {"username": "owner"}, 409, "name_taken"),
    user_create("username taken in another case", {"username": "OWNER"}, 409, "name_taken"),
    user_create("email longer than 254", {"username": "ok", "email": LONG_EMAIL}),
    org_create("nothing", {}),
    org_create("no slug", {"name": "n"}),
    org_create("name too long", {"name": "x" * 201, "slug": "ok"}),
    org_create("name not a string", {"name": {"a": 1}, "slug": "ok"}),
    org_create("bad slug", {"name": "n", "slug": "no spaces"}),
    org_create("slug too long", {"name": "n", "slug": "x" * 101}),
    org_create("slug taken", {"name": "n", "slug": "acme"}, 409, "name_taken"),
    org_update("empty name", {"name": ""}),
    org_update("null name", {"name": None}),
    org_update("name too long", {"name": "x" * 201}),
    org_update("bad slug", {"slug": "a/b"}),
    org_update("slug taken", {"slug": "rival"}, 409, "name_taken"),
    *org_update.missing_ids({"name": "x"}),
    *org_delete.missing_ids(),
    member_add("nothing", {}),
    member_add("no role", {"username": "outsider"}),
    member_add("role god", {"username": "outsider", "role": "god"}),
    member_add("a project role", {"username": "outsider", "role": "manager"}),
    member_add("role not a string", {"username": "outsider", "role": ["owner"]}),
    member_add("username too long", {"username": "x" * 151, "role": "member"}),
    member_add("unknown username", {"username": "nobody", "role": "member"}, 404, "not_found"),
    member_add("already a member", {"username": "annotator", "role": "admin"}, 409, "already_member"),
    *member_add.missing_ids({"username": "outsider", "role": "member"}),
    member_update("no role", {}),
    member_update("role god", {"role": "god"}),
    member_update("role a number", {"role": 1}),
    member_update("role null", {"role": None}),
    member_update("not a member", {"role": "admin"}, 404, "not_found", user="outsider"),
    *member_update.missing_ids({"role": "admin"}),
    member_remove("not a member", None, 404, "not_found", user="outsider"),
    *member_remove.missing_ids(),
    project_create("nothing", {}),
    project_create("no organization", {"name": "New"}),
    project_create("organization not a number", {"organization": "acme", "name": "New"}),
    project_create("organization 0", {"organization": 0, "name": "New"}),
    project_create("organization negative", {"organization": -1, "name": "New"}),
    project_create(
        "organization that does not exist", {"organization": MISSING_ID, "name": "New"}, 404, "not_found"
    ),
    project_create(
        "organization too large for bigint", {"organization": HUGE_ID, "name": "New"}, 404, "not_found"
    ),
    project_create(
        "another organization",
        lambda s: {"organization": s.world.other_org.id, "name": "New"},
        404,
        "not_found",
    ),
    project_create("no name", lambda s: {"organization": s.org.id}),
    project_create("name too long", new_project(name="x" * 201)),
    project_create("description too long", new_project(description="x" * 10_001)),
    project_create("settings a string", new_project(settings="fast")),
    project_create("settings an array", new_project(settings=[1, 2])),
    project_create("settings null", new_project(settings=None)),
    project_create("settings over 64 KiB", new_project(settings=TOO_BIG_SETTINGS)),
    project_create("name taken", new_project(name="Street scenes"), 409, "name_taken"),
    project_create("NUL in settings", new_project(settings={"a": "\u0000"})),
    project_update("empty name", {"name": ""}),
    project_update("null name", {"name": None}),
    project_update("name too long", {"name": "x" * 201}),
    project_update("description too long", {"description": "x" * 10_001}),
    project_update("settings a string", {"settings": "fast"}),
    project_update("settings an array", {"settings": [1]}),
    project_update("settings over 64 KiB", {"settings": TOO_BIG_SETTINGS}),
    project_update("name taken", lambda s: {"name": s.back_office.name}, 409, "name_taken"),
    project_update("NUL in a settings value", {"settings": {"a": "\u0000"}}),
    project_update("NUL in a settings key", {"settings": {"a\u0000": 1}}),
    *project_update.missing_ids({"name": "x"}),
    *project_delete.missing_ids(),
    project_member_add("nothing", {}),
    project_member_add("no role", {"username": "member"}),
    project_member_add("role god", {"username": "member", "role": "god"}),
    project_member_add("an organization role", {"username": "member", "role": "owner"}),
    project_member_add("username too long", {"username": "x" * 151, "role": "annotator"}),
    project_member_add("unknown username", {"username": "nobody", "role": "annotator"}, 404, "not_found"),
    project_member_add(
        "already a member", {"username": "reviewer", "role": "annotator"}, 409, "already_member"
    ),
    *project_member_add.missing_ids({"username": "member", "role": "annotator"}),
    project_member_update("no role", {}),
    project_member_update("role god", {"role": "god"}),
    project_member_update("role a number", {"role": 7}),
    project_member_update("not a project member", {"role": "reviewer"}, 404, "not_found", user="newcomer"),
    *project_member_update.missing_ids({"role": "reviewer"}),
    project_member_remove("not a project member", None, 404, "not_found", user="newcomer"),
    *project_member_remove.missing_ids(),
    *[
        stats_recount(f"chunk_size {value!r}", {"chunk_size": value})
        for value in (0, 9, -5, 100_001, 10**9, "ten", 1.5, None, [100], {"n": 100})
    ],
    stats_recount(
        "one already running", {"chunk_size": 100}, 409, "job_already_running", prepare=lambda s: s.system_job
    ),
    *stats_recount.missing_ids({"chunk_size": 100}),
    job_cancel("already finished", None, 409, "job_finished", job="finished_system_job"),
    *job_cancel.missing_ids(),
]

# The rules that depend on state: each refusal writes nothing either.
STATE_RULES: list[Bad] = [
    member_update("the last owner demotes itself", {"role": "admin"}, 409, "last_owner", user="user"),
    member_remove("the last owner leaves", None, 409, "last_owner", user="user"),
    On("POST", member_add.template, "admin")(
        "an admin adds an owner", {"username": "outsider", "role": "owner"}, 403, "permission_denied"
    ),
    On("PATCH", member_update.template, "admin")(
        "an admin promotes a member to owner", {"role": OrgRole.OWNER}, 403, "permission_denied"
    ),
    On("PATCH", member_update.template, "admin")(
        "an admin demotes the owner", {"role": "member"}, 403, "permission_denied", user="owner"
    ),
    On("DELETE", member_remove.template, "admin")(
        "an admin removes the owner", None, 403, "permission_denied", user="owner"
    ),
    project_member_add(
        "a manager adds a manager",
        {"username": "member", "role": ProjectRole.MANAGER},
        403,
        "permission_denied",
    ),
    project_member_update(
        "a manager promotes an annotator to manager", {"role": ProjectRole.MANAGER}, 403, "permission_denied"
    ),
    project_member_update(
        "a manager demotes another manager",
        {"role": "annotator"},
        403,
        "permission_denied",
        user="co_manager",
    ),
    project_member_remove(
        "a manager removes another manager", None, 403, "permission_denied", user="co_manager"
    ),
    On("POST", project_member_add.template, "owner")(
        "a user outside the organization joins a project",
        {"username": "outsider", "role": "annotator"},
        409,
        "not_organization_member",
    ),
]


def check_refused(world: World, case: Bad) -> None:
    scene = Scene(world, case.caller)
    if case.prepare is not None:
        case.prepare(scene)
    path = case.path(scene)
    body = case.body(scene) if callable(case.body) else case.body
    before = db_state()
    response = send(scene.client, case.method, path, body)
    assert_error(response, case.status, case.code)
    assert db_state() == before, "a refused request wrote something"


@pytest.mark.parametrize("case", params(SHAPE_CASES))
def test_a_body_that_is_not_a_json_object_is_refused(world: World, case: Bad) -> None:
    check_refused(world, case)


@pytest.mark.parametrize("case", params(FIELD_CASES))
def test_bad_fields_and_ids_are_refused_and_write_nothing(world: World, case: Bad) -> None:
    check_refused(world, case)


@pytest.mark.parametrize("case", params(STATE_RULES))
def test_state_rules_refuse_and_write_nothing(world: World, case: Bad) -> None:
    check_refused(world, case)


def _unwrap(cases: list[Any]) -> list[Bad]:
    return [case if isinstance(case, Bad) else case.values[0] for case in cases]


def test_the_case_names_are_unique() -> None:
    names = [case.name for case in _unwrap([*SHAPE_CASES, *FIELD_CASES, *STATE_RULES])]
    assert len(names) == len(set(names))


def test_every_endpoint_that_reads_json_is_fed_bad_shapes() -> None:
    # ENDPOINTS covers every route and method of projects/urls.py (test_permissions checks that).
    reads_json = {(e.method, e.template) for e in ENDPOINTS if e.body is not None}
    assert reads_json == {(writer.method, writer.template) for writer in JSON_WRITERS}


def test_every_write_endpoint_gets_bad_input() -> None:
    writes = {(e.method, e.template) for e in ENDPOINTS if e.method != "GET"}
    assert writes == {(case.method, case.template) for case in _unwrap(FIELD_CASES)}
