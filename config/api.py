"""API plumbing shared by every app: the one error shape and cursor pagination."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, pagination, parsers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from projects.exceptions import DomainError

logger = logging.getLogger(__name__)

# DRF exception class -> stable code. Anything else keeps DRF's own default_code.
_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ValidationError: "invalid",
    exceptions.ParseError: "malformed_request",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map every handled error to ``{"error": {"code", "message", "details"}}``.

    Unknown exceptions return None so Django answers 500 and the traceback reaches the logs,
    never the client.
    """
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response

    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), exc.default_code)
    details: dict[str, Any] = {}
    if isinstance(exc, exceptions.ValidationError):
        message = "The request is not valid."
        details = {"fields": exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}}
    elif isinstance(exc, exceptions.Throttled):
        message = "Too many requests."
        details = {"retry_after_s": exc.wait}  # type: ignore[attr-defined]  # set by DRF at init
    else:
        message = str(exc.detail)
    response.data = error_body(code, message, details)
    return response


def _has_nul(document: Any) -> bool:
    """Whether any string (key or value) holds U+0000, iteratively: bodies can be deep."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


class JSONParser(parsers.JSONParser):
    """DRF's parser, refusing what PostgreSQL could never store or Python cannot parse safely.

    - nesting deep enough to exhaust the parser's recursion (``[[[[…``) is a 400, not a crash;
    - U+0000 anywhere: PostgreSQL text and jsonb cannot hold it, so it would fail at write time.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            document = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
        if _has_nul(document):
            # Well-formed JSON, but content no field may hold.
            raise exceptions.ValidationError({"non_field_errors": ["Strings may not contain U+0000."]})
        return document


class CursorPagination(pagination.CursorPagination):
    """Cursor pagination on every list: stable under inserts and O(page) at any depth."""

    ordering = "-id"
    page_size_query_param = "page_size"
    max_page_size = 500
