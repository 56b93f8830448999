"""Celery entry points of the labeling app."""

from __future__ import annotations

import logging

from celery import shared_task

from labeling.webhooks import tasks as webhook_tasks  # noqa: F401  (workers discover labeling.tasks only)
from labeling.workflow import leases_expire

logger = logging.getLogger(__name__)


@shared_task(name="labeling.leases_expire", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def leases_expire_task(**_: object) -> int:
    """Idempotent: a lease already returned is not active any more, so it is never returned twice."""
    return leases_expire()


@shared_task(name="labeling.predict_one", ignore_result=True, acks_late=False)
def predict_one(*, task_id: int, model_version_id: int, reply: str, **_: object) -> None:
    """An annotator's interactive prediction: the answer goes to a Redis list the waiting request
    reads (no result backend). Not retried: the request has a short deadline, and a late answer
    would find nobody waiting (the list expires)."""
    import json

    from config.throttling import redis_client
    from labeling.prelabel import predict_one_run

    try:
        outcome = predict_one_run(task_id=task_id, model_version_id=model_version_id)
    except Exception as exc:  # the caller gets a 409 naming it, the log gets the traceback
        logger.exception("interactive prediction of task %s failed", task_id)
        outcome = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    client = redis_client()
    client.rpush(reply, json.dumps(outcome))
    client.expire(reply, 120)
