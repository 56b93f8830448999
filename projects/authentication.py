"""``Authorization: Token …`` with hashed personal tokens; revocation takes effect at once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from projects.access import ACCESS_JOIN, access_columns, preload_access
from projects.models import ApiToken
from projects.rows import Columns, fetch_one
from projects.services import api_token_digest

# last_used_at is for people auditing their tokens, not for accounting: refreshing it at most
# this often keeps authentication a single indexed read on the hot path.
_LAST_USED_RESOLUTION = timedelta(minutes=5)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header: expected 'Token <token>'.")
        try:
            clear = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Invalid token header.") from None
        now = timezone.now()
        token = token_lookup(api_token_digest(clear), now, project_id=_project_in_path(request))
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        if token.last_used_at is None or now - token.last_used_at > _LAST_USED_RESOLUTION:
            ApiToken.objects.filter(id=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Documents the token scheme in the OpenAPI schema (Swagger UI's Authorize button)."""

    target_class = "projects.authentication.ApiTokenAuthentication"
    name = "TokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "Personal API token, sent as `Token lp_…`.",
        }


_USER = Columns(User, "u")
_TOKEN = Columns(ApiToken, "t", ["id", "user_id", "name", "prefix", "last_used_at", "expires_at"])
# One hand-written statement: every API request authenticates, and building the same query through
# the ORM (select_related, Q objects, compiling) costs more CPU than PostgreSQL spends answering it.
_LIVE = " WHERE t.digest = %s AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > %s)"
_TOKEN_SQL = (
    f"SELECT {_TOKEN.sql}, {_USER.sql}"  # noqa: S608  (column names from model metadata)
    f" FROM projects_apitoken t JOIN auth_user u ON u.id = t.user_id{_LIVE}"
)
# A request under /projects/{id}/ reads the caller's access to that project in the same statement:
# nearly every such view asks for it next, and that was one more round trip on each of them.
_TOKEN_ACCESS_SQL = (
    f"SELECT {_TOKEN.sql}, {_USER.sql}, {access_columns('u.id')}"  # noqa: S608  (model metadata)
    f" FROM projects_apitoken t JOIN auth_user u ON u.id = t.user_id {ACCESS_JOIN}{_LIVE}"
)


def _project_in_path(request: Request) -> int | None:
    """The project the URL names (`<int:project_id>`), if any."""
    project_id = (request.parser_context or {}).get("kwargs", {}).get("project_id")
    return project_id if isinstance(project_id, int) else None


def token_lookup(digest: str, now: Any, *, project_id: int | None = None) -> ApiToken | None:
    """The live token with this digest, with its user loaded; None if revoked, expired or unknown.
    With `project_id`, the user's access to that project is read too (`preload_access`)."""
    if project_id is None:
        found = fetch_one(_TOKEN_SQL, [digest, now], _TOKEN, _USER)
    else:
        found = fetch_one(_TOKEN_ACCESS_SQL, [project_id, digest, now], _TOKEN, _USER)
    if found is None:
        return None
    token, token.user, *access = found
    if project_id is not None:
        preload_access(token.user, project_id, access)
    return token
