"""Webhook subscriptions and their delivery log (imported by labeling.models).

A `Webhook` subscribes one URL to some of a project's events. Each event it listens to becomes one
`WebhookDelivery`, created in the transaction of the change it reports and sent after commit; every
try at sending it is a `WebhookAttempt`. docs/webhooks.md describes what receivers get.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from projects.models import Project

__all__ = [
    "DeliveryState",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEvent",
]


class WebhookEvent(models.TextChoices):
    RELEASE_CREATED = "release.created"
    EXPORT_READY = "export.ready"
    TASK_ACCEPTED = "task.accepted"
    ANNOTATION_SUBMITTED = "annotation.submitted"
    # Sent on request to one webhook, to test it; never subscribed to.
    PING = "ping"


class Webhook(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks")
    url = models.CharField(max_length=2000)
    events = models.JSONField(default=list)  # subscribed WebhookEvent values, never "ping"
    description = models.CharField(max_length=500, blank=True, default="")
    active = models.BooleanField(default=True)
    # Kept readable because every delivery is signed with it; never serialized, logged or audited.
    secret = models.CharField(max_length=200)
    # Why Loupe turned the webhook off by itself ("gone": the receiver answered 410); cleared when a
    # manager turns it on again.
    disabled_reason = models.CharField(max_length=200, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"webhook {self.pk} of project {self.project_id}"


class DeliveryState(models.TextChoices):
    PENDING = "pending"  # waiting for its next attempt (at next_attempt_at)
    SENDING = "sending"  # claimed by a worker until lease_until
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(models.Model):
    """One event for one webhook. The body is fixed when the event happens: every attempt (and a
    redelivery) sends the same bytes with the same `uuid`, so receivers can drop duplicates."""

    webhook = models.ForeignKey(Webhook, db_index=False, on_delete=models.CASCADE, related_name="deliveries")
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    event = models.CharField(max_length=64, choices=WebhookEvent.choices)
    body = models.TextField()  # the JSON document sent, exactly as signed
    state = models.CharField(max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.IntegerField(default=0)  # attempts started (claimed)
    attempt_limit = models.IntegerField()  # no attempt is started beyond this count
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["webhook", "-id"], name="webhook_delivery_log"),
            # The sweep's scan: only unfinished deliveries, a small part of the table.
            models.Index(
                fields=["state", "next_attempt_at"],
                name="webhook_delivery_due",
                condition=models.Q(state__in=["pending", "sending"]),
            ),
            models.Index(
                fields=["finished_at"],
                name="webhook_delivery_finished",
                condition=models.Q(finished_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"delivery {self.uuid} ({self.event})"


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(
        WebhookDelivery, db_index=False, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.IntegerField()  # 1 for the first attempt of the delivery
    at = models.DateTimeField()  # when the request started
    status_code = models.IntegerField(null=True, blank=True)  # None: no HTTP answer
    error = models.CharField(max_length=500, blank=True, default="")
    duration_ms = models.IntegerField(default=0)
    response_body = models.TextField(blank=True, default="")  # the start of the answer

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_number_unique")
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}"
