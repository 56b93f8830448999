"""The one error shape: every handled error becomes ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions
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
