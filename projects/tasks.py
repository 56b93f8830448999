"""Celery entry points of the projects app. Tasks take ids, re-read, and are safe to redeliver."""

from __future__ import annotations

from celery import shared_task

from projects import jobs


@shared_task(name="projects.job_run", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def job_run(*, job_id: int, helper: bool = False, **_: object) -> str:
    """Work on one job for a slice. Redelivery is safe: claims are exclusive, chunks run once."""
    return jobs.job_execute(job_id=job_id, helper=helper)


@shared_task(name="projects.job_recover_stalled", ignore_result=True)
def job_recover_stalled(**_: object) -> int:
    return len(jobs.job_recover_stalled())
