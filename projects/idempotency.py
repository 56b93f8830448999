"""``Idempotency-Key`` on writes that clients retry (imports, submits).

A client that timed out may send the same request again with the same key: it gets the first
answer back (with ``Idempotent-Replayed: true``) and nothing is done twice. The key is claimed
before the write runs, so two copies racing each other cannot both run it: the second gets 409
until the first is done. A failed write (4xx/5xx) releases the key for a genuine retry. Keys are
per user; a key reused for another endpoint is refused (422).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from projects.exceptions import Conflict, InvalidInput, SchemaViolation
from projects.models import IdempotencyRecord
from projects.rows import prepared_cursor

HEADER = "Idempotency-Key"
_VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# A claim whose request never finished (its process died) may be taken over after this long.
ABANDONED_AFTER = timedelta(minutes=10)

View = Callable[..., Response]


class RequestInProgress(Conflict):
    code = "request_in_progress"
    default_message = "A request with this Idempotency-Key is still running; retry shortly."


class KeyReused(SchemaViolation):
    code = "idempotency_key_reused"
    default_message = "This Idempotency-Key was used for another request."


def idempotent(view: View) -> View:
    """Decorate a DRF view method (``post``) so retries with the same key are answered once."""

    @functools.wraps(view)
    def wrapper(self: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return view(self, request, *args, **kwargs)
        if not _VALID_KEY.match(key):
            raise InvalidInput(f"{HEADER} must be 1-255 visible ASCII characters.", field=HEADER)
        fingerprint = hashlib.sha256(f"{request.method} {request.path}".encode()).hexdigest()
        if request.user.pk is None:  # authentication runs first; anonymous writes never get here
            return view(self, request, *args, **kwargs)
        record, replay = _claim(request.user.pk, key, fingerprint)
        if replay is not None:
            return replay
        try:
            response = view(self, request, *args, **kwargs)
        except BaseException:
            IdempotencyRecord.objects.filter(id=record.pk, status=0).delete()
            raise
        if 200 <= response.status_code < 300:
            with prepared_cursor() as cursor:
                cursor.execute(
                    "UPDATE projects_idempotencyrecord SET status = %s, body = %s::jsonb WHERE id = %s",
                    [response.status_code, json.dumps(response.data), record.pk],
                )
        else:
            IdempotencyRecord.objects.filter(id=record.pk, status=0).delete()
        return response

    return wrapper


# Claims are on the path of every retry-safe write (each submit): one statement, no savepoint.
_CLAIM_SQL = (
    "INSERT INTO projects_idempotencyrecord (user_id, key, fingerprint, status, created_at)"
    " VALUES (%s, %s, %s, 0, %s) ON CONFLICT (user_id, key) DO NOTHING RETURNING id"
)


def _claim(user_id: int, key: str, fingerprint: str) -> tuple[IdempotencyRecord, Response | None]:
    with prepared_cursor() as cursor:
        cursor.execute(_CLAIM_SQL, [user_id, key, fingerprint, timezone.now()])
        claimed = cursor.fetchone()
    if claimed is not None:
        return IdempotencyRecord(id=claimed[0], user_id=user_id, key=key, fingerprint=fingerprint), None
    existing = IdempotencyRecord.objects.get(user_id=user_id, key=key)
    if existing.fingerprint != fingerprint:
        raise KeyReused()
    if existing.status:
        replay = Response(existing.body, status=existing.status)
        replay["Idempotent-Replayed"] = "true"
        return existing, replay
    abandoned = timezone.now() - ABANDONED_AFTER
    if IdempotencyRecord.objects.filter(id=existing.pk, status=0, created_at__lt=abandoned).update(
        created_at=timezone.now()
    ):
        return existing, None  # its first request died without an answer: run it now
    raise RequestInProgress()


def idempotency_parameter() -> Any:
    """The header, for the OpenAPI schema of every view that honours it."""
    from drf_spectacular.utils import OpenApiParameter

    return OpenApiParameter(
        HEADER, str, location=OpenApiParameter.HEADER, required=False,
        description="Retry-safe: the same key returns the first answer and does nothing twice.",
    )  # fmt: skip
