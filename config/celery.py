"""The Celery application: JSON only, explicit queues, tasks enqueued after commit.

Workers consume the queues ingest, prelabel, quality, export, training and default; a GPU machine
can run `loupe worker -Q prelabel`. Celery never runs tasks in-process: with the broker down, enqueueing
fails loudly.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# DjangoTask gives every task delay_on_commit / apply_async_on_commit.
app = Celery("loupe", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.on_after_finalize.connect
def _configure(sender: Celery, **_: object) -> None:
    from django.conf import settings

    sender.conf.task_queues = [Queue(name) for name in settings.LOUPE_QUEUES]
    sender.conf.beat_schedule = {
        "projects.job_recover_stalled": {
            "task": "projects.job_recover_stalled",
            "schedule": float(settings.LOUPE_JOB_RECOVER_INTERVAL),
            "options": {"queue": "default", "expires": float(settings.LOUPE_JOB_RECOVER_INTERVAL)},
        },
        "labeling.leases_expire": {
            "task": "labeling.leases_expire",
            "schedule": 60.0,
            "options": {"queue": "default", "expires": 60.0},
        },
        "labeling.webhook_sweep": {
            "task": "labeling.webhook_sweep",
            "schedule": 60.0,
            "options": {"queue": "default", "expires": 60.0},
        },
        "storage.store_sweep": {
            "task": "storage.store_sweep",
            "schedule": float(settings.LOUPE_SWEEP_INTERVAL_S),
            "options": {"queue": "default", "expires": float(settings.LOUPE_SWEEP_INTERVAL_S)},
        },
    }


app.autodiscover_tasks()
