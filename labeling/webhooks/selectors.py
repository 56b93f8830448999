"""Reads of webhooks and their delivery log: managers only (they hold URLs and project data)."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from labeling.webhooks.models import Webhook, WebhookAttempt, WebhookDelivery
from projects.access import ProjectAccess, ProjectAction
from projects.exceptions import NotFound


def webhook_list(*, access: ProjectAccess) -> QuerySet[Webhook]:
    access.require(ProjectAction.WEBHOOKS_MANAGE)
    return Webhook.objects.filter(project_id=access.project.pk)


def webhook_get(*, access: ProjectAccess, webhook_id: int) -> Webhook:
    webhook = webhook_list(access=access).filter(id=webhook_id).first()
    if webhook is None:
        raise NotFound("Webhook not found.", webhook_id=webhook_id)
    return webhook


def delivery_list(*, access: ProjectAccess, webhook_id: int) -> QuerySet[WebhookDelivery]:
    """A webhook's deliveries with their attempts in order (newest delivery first, by the cursor)."""
    webhook = webhook_get(access=access, webhook_id=webhook_id)
    attempts = WebhookAttempt.objects.order_by("number")
    return WebhookDelivery.objects.filter(webhook_id=webhook.pk).prefetch_related(
        Prefetch("attempt_log", queryset=attempts)
    )
