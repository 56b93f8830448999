"""The audit log: every state change records who did what, from which request, in its transaction."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import models, transaction

from projects.context import request_id_var
from projects.models import AuditEvent, Organization, Project
from projects.rows import insert


def snapshot(obj: models.Model, fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in fields}


def diff_fields(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """``{"field": [before, after]}`` for every field whose value changed."""
    return {name: [before[name], after[name]] for name in after if before.get(name) != after[name]}


def audit_record(
    *,
    actor: User | AnonymousUser | None,
    verb: str,
    obj: models.Model,
    organization: Organization | None = None,
    project: Project | None = None,
    changes: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record an event. Must run inside the transaction of the change it describes."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change it records")
    if project is not None and organization is None:
        organization = project.organization
    event = AuditEvent(
        actor=actor if actor is not None and actor.is_authenticated else None,
        verb=verb,
        object_type=obj._meta.model_name or type(obj).__name__.lower(),
        object_id=str(obj.pk),
        organization=organization,
        project=project,
        changes=changes or {},
        request_id=request_id_var.get(),
    )
    insert(event)  # on the queue's hot path (task state changes): statement built once
    return event
