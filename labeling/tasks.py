"""Celery entry points of the labeling app."""

from __future__ import annotations

from celery import shared_task

from labeling.workflow import leases_expire


@shared_task(name="labeling.leases_expire", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def leases_expire_task(**_: object) -> int:
    """Idempotent: a lease already returned is not active any more, so it is never returned twice."""
    return leases_expire()
