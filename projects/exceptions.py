"""Domain errors with stable, machine-readable codes.

Services raise these; config.api turns them into the one error shape
``{"error": {"code", "message", "details"}}`` with the status code declared here. Every app
subclasses DomainError (or one of the generic kinds below) for its own codes.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "domain_error"
    status_code = 400
    default_message = "The request cannot be carried out."

    def __init__(self, message: str | None = None, *, code: str | None = None, **details: Any) -> None:
        """``code`` names a variant of the class's code for families of errors (``archive_link``)."""
        self.message = message or self.default_message
        self.details = details
        if code is not None:
            self.code = code
        super().__init__(self.message)


class InvalidInput(DomainError):
    code, status_code = "invalid", 400
    default_message = "The request is not valid."


class SchemaViolation(DomainError):
    """Well-formed JSON whose content breaks a schema or a rule of the domain."""

    code, status_code = "unprocessable", 422
    default_message = "The request is well-formed but breaks a rule."


class NotFound(DomainError):
    code, status_code = "not_found", 404
    default_message = "Not found."


class PermissionDenied(DomainError):
    code, status_code = "permission_denied", 403
    default_message = "You may see this object but not change it."


class TooLarge(DomainError):
    code, status_code = "too_large", 413
    default_message = "The request is too large."


class Conflict(DomainError):
    code, status_code = "conflict", 409
    default_message = "The object is not in a state that allows this."


# --- Codes of the projects app ------------------------------------------------------------------


class NameTaken(Conflict):
    code = "name_taken"
    default_message = "This name is already in use."


class AlreadyMember(Conflict):
    code = "already_member"
    default_message = "This user is already a member."


class NotOrganizationMember(Conflict):
    code = "not_organization_member"
    default_message = "Add the user to the organization first."


class LastOwner(Conflict):
    code = "last_owner"
    default_message = "An organization keeps at least one owner."


class JobAlreadyRunning(Conflict):
    code = "job_already_running"
    default_message = "A job of this kind is already queued or running for this project."


class JobFinished(Conflict):
    code = "job_finished"
    default_message = "The job has already finished."
