"""Error codes of the labeling app (the one error shape is built by config.api)."""

from __future__ import annotations

from projects.exceptions import Conflict, DomainError, SchemaViolation


class SpecRefused(SchemaViolation):
    code = "schema_spec_invalid"
    default_message = "The label schema is not valid; details.errors lists every problem."


class OperationsRefused(SchemaViolation):
    code = "migration_invalid"
    default_message = "The schema migration is not valid; details.errors lists every problem."


class RegionsRefused(SchemaViolation):
    code = "schema_violation"
    default_message = "The regions break the label schema or do not fit the item; details.errors lists them."


class NoLabelSchema(Conflict):
    code = "no_label_schema"
    default_message = "The project has no label schema yet: a manager publishes one first."


class StaleVersion(DomainError):
    code, status_code = "stale_version", 412
    default_message = "The annotation changed since you read it: read it again and re-apply your change."


class VersionRequired(DomainError):
    code, status_code = "if_match_required", 428
    default_message = "Send the annotation's ETag in If-Match to change it."
