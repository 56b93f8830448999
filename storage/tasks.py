"""Celery entry points of the storage app."""

from __future__ import annotations

from dataclasses import asdict

from celery import shared_task

from storage.maintenance import store_sweep


@shared_task(name="storage.store_sweep", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def store_sweep_task(**_: object) -> dict[str, int]:
    """Idempotent: deleting an orphan twice or flagging a row twice changes nothing."""
    return asdict(store_sweep())
