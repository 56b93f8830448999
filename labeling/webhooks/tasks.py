"""Celery entry points of webhooks (registered through labeling.tasks, which workers discover)."""

from __future__ import annotations

from celery import shared_task

from labeling.webhooks.services import deliveries_sweep, delivery_attempt


@shared_task(
    name="labeling.webhook_deliver",
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def webhook_deliver(*, delivery_id: int, **_: object) -> None:
    """Idempotent: each attempt is claimed by a conditional update, so a duplicate message (one the
    broker redelivered, one the sweep re-enqueued) finds nothing due and returns. Retries are new
    messages with a countdown, scheduled by the attempt that failed."""
    delivery_attempt(delivery_id=delivery_id)


@shared_task(
    name="labeling.webhook_sweep",
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def webhook_sweep(**_: object) -> dict[str, int]:
    """Idempotent: it only acts on what is overdue, and locks what it takes back (SKIP LOCKED)."""
    return deliveries_sweep()
