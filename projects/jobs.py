"""The job engine: every long piece of work in Loupe is a Job of a registered kind.

How a job runs (projects.tasks.job_run calls job_execute):
1. Claim: one conditional UPDATE takes a queued job, or a running one whose heartbeat is stale
   (its worker died), and gives it a fresh ``run_token``. Two workers never both win.
2. Plan, once: the kind says how many items and chunks there are. The plan is stored, so a
   worker taking over continues the same plan.
3. Chunks: for each chunk not yet in JobChunk, the kind's slow part (``prepare_chunk``: network,
   files) runs outside any transaction; then one short transaction locks the job row, checks the
   lease and the cancel flag, applies the chunk's effect, records the JobChunk and the progress.
   A worker killed at any point either committed a chunk completely or not at all, so the next
   worker redoes nothing and misses nothing.
4. Slices: after LOUPE_JOB_SLICE_SECONDS the task hands the job back to the queue, so no message
   outlives the task time limit and big jobs share workers fairly.
5. Recovery: beat runs job_recover_stalled, which re-enqueues queued jobs whose message may have
   been lost and running jobs whose heartbeat is older than LOUPE_JOB_STALL_SECONDS.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from projects.access import ProjectAccess, ProjectAction
from projects.audit import audit_record
from projects.exceptions import JobAlreadyRunning, JobFinished, PermissionDenied
from projects.models import ChunkState, Job, JobChunk, JobError, JobState, Organization, Project

logger = logging.getLogger(__name__)

MAX_ERRORS_PER_CHUNK = 1000


@dataclass
class Plan:
    total: int  # items, in the unit users see in progress
    chunks: int


@dataclass
class ChunkError:
    item: str
    code: str
    message: str


@dataclass
class ChunkOutcome:
    items: int
    errors: list[ChunkError] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


class JobKind:
    """Base of every job kind. Subclasses set ``name`` and ``queue`` and implement the hooks."""

    name: ClassVar[str]
    queue: ClassVar[str] = "default"
    # At most one queued/running job of this kind per project.
    exclusive_per_project: ClassVar[bool] = False
    # Chunks apply strictly in index order: a chunk is leased only once every chunk before it is
    # done (kinds whose last chunks sum up or publish what the earlier ones wrote). A chunk held by
    # a dead runner then blocks the rest until its lease expires and the stalled-job sweep hands
    # the job over, instead of being overtaken.
    ordered: ClassVar[bool] = False

    def runners(self, job: Job) -> int:
        """How many workers may work on one job of this kind at once (chunks are leased)."""
        return 1

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def plan(self, job: Job) -> Plan:
        raise NotImplementedError

    def prepare_chunk(self, job: Job, index: int) -> Any:
        """Slow work for a chunk (I/O), outside any transaction. May run again after a crash."""
        return None

    def apply_chunk(self, job: Job, index: int, prepared: Any) -> ChunkOutcome:
        """The chunk's effect, inside the transaction that records the chunk as done."""
        raise NotImplementedError

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        return {**result, **delta}

    def finish(self, job: Job) -> dict[str, Any]:
        """The final result, computed inside the transaction that marks the job succeeded."""
        return job.result

    def after_chunk(self, job: Job, index: int, prepared: Any) -> None:
        """Clean-up once a chunk has committed, outside any transaction. Must tolerate a crash
        before it runs (the chunk will not run again): leave what it misses to a sweeper."""

    def after_finish(self, job: Job) -> None:
        """Clean-up once the job has succeeded, outside any transaction (same caveat)."""


_REGISTRY: dict[str, JobKind] = {}


def register(kind: type[JobKind]) -> type[JobKind]:
    """Class decorator: make a job kind runnable. Apps register kinds in their AppConfig.ready."""
    if kind.name in _REGISTRY:
        raise RuntimeError(f"job kind {kind.name!r} registered twice")
    _REGISTRY[kind.name] = kind()
    return kind


def kind_for(name: str) -> JobKind:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LookupError(f"unknown job kind {name!r}") from None


# --- Starting and cancelling -------------------------------------------------------------------


def _enqueue_on_commit(job: Job, *, helper: bool = False) -> list[str]:
    """Send the job's message once the surrounding transaction commits.

    Returns the job's Celery task ids with the new one appended (the last few are kept, for
    operators matching worker logs); the caller saves them with the change it is making.
    """
    from projects.tasks import job_run

    task_id = uuid.uuid4().hex
    queue = kind_for(job.kind).queue
    kwargs: dict[str, Any] = {"job_id": job.pk, **({"helper": True} if helper else {})}
    transaction.on_commit(lambda: job_run.apply_async(kwargs=kwargs, queue=queue, task_id=task_id))
    return [*job.celery_task_ids[-9:], task_id]


@transaction.atomic
def job_start(
    *,
    kind: str,
    actor: User | None,
    organization: Organization,
    project: Project | None = None,
    params: dict[str, Any] | None = None,
) -> Job:
    """Create a job and enqueue it on commit. Callers have authorized the actor already."""
    job_kind = kind_for(kind)
    clean = job_kind.validate_params(dict(params or {}))
    if project is not None and job_kind.exclusive_per_project:
        # Serialize concurrent starts for one project on its row.
        Project.objects.select_for_update().filter(id=project.pk).first()
        if Job.objects.filter(project=project, kind=kind, state__in=Job.ACTIVE_STATES).exists():
            raise JobAlreadyRunning(kind=kind)
    job = Job.objects.create(
        kind=kind,
        organization=organization,
        project=project,
        created_by=actor,
        params=clean,
        heartbeat_at=timezone.now(),
    )
    audit_record(
        actor=actor,
        verb="job.start",
        obj=job,
        organization=organization,
        project=project,
        changes={"kind": kind, "params": clean},
    )
    job.celery_task_ids = _enqueue_on_commit(job)
    job.save(update_fields=["celery_task_ids"])
    return job


def job_cancel(*, actor: User, job: Job, access: ProjectAccess | None) -> Job:
    """Cancel a job: a queued one at once, a running one at its next chunk boundary.

    The creator may always cancel its own job; others need the project's cancel right (or, for an
    organization-level job, to be allowed to see it, which only org admins are).
    """
    if job.created_by_id != actor.pk and access is not None and not access.can(ProjectAction.JOBS_CANCEL_ANY):
        raise PermissionDenied("Only the job's creator or a project manager may cancel it.")
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(id=job.pk)
        if locked.is_finished:
            raise JobFinished(state=locked.state)
        if locked.state == JobState.QUEUED:
            locked.state = JobState.CANCELLED
            locked.finished_at = timezone.now()
        locked.cancel_requested = True
        locked.save(update_fields=["state", "finished_at", "cancel_requested"])
        audit_record(
            actor=actor,
            verb="job.cancel",
            obj=locked,
            organization=locked.organization,
            project=locked.project,
            changes={"state": locked.state},
        )
    return locked


# --- Running -----------------------------------------------------------------------------------


def _stale_before() -> Any:
    return timezone.now() - timedelta(seconds=settings.LOUPE_JOB_STALL_SECONDS)


def _claim(job_id: int, token: str) -> bool:
    now = timezone.now()
    claimable = (
        Q(state=JobState.QUEUED)
        | Q(state=JobState.RUNNING, run_token="")  # handed back by its lead at the end of a slice
        | Q(state=JobState.RUNNING, heartbeat_at__lt=_stale_before())
    )
    return bool(
        Job.objects.filter(claimable, id=job_id, cancel_requested=False).update(
            state=JobState.RUNNING,
            run_token=token,
            heartbeat_at=now,
            started_at=Coalesce(F("started_at"), now),
            attempts=F("attempts") + 1,
        )
    )


class _LeaseLost(Exception):
    """Another worker took the job over (ours was presumed dead), or it was finished meanwhile."""


def _lock_owned(job_id: int, token: str) -> Job:
    job = Job.objects.select_for_update().get(id=job_id)
    if job.state != JobState.RUNNING or job.run_token != token:
        raise _LeaseLost
    return job


def _finish(job: Job, state: str, **fields: Any) -> None:
    job.state = state
    job.finished_at = timezone.now()
    job.run_token = ""
    for name, value in fields.items():
        setattr(job, name, value)
    job.save()


def job_execute(
    *, job_id: int, on_chunk: Callable[[Job, int], None] | None = None, helper: bool = False
) -> str:
    """Work on a job for one slice. Returns what happened: for logs and tests.

    The lead runner claims the job (exclusively), plans it once, and enqueues helper runners when
    the kind allows several; every runner then leases chunks one at a time.
    """
    token = uuid.uuid4().hex
    if helper:
        job = Job.objects.filter(
            id=job_id, state=JobState.RUNNING, chunks_total__isnull=False, cancel_requested=False
        ).first()
        if job is None:
            return "not_joined"
    else:
        if not _claim(job_id, token):
            _cancel_if_requested_while_idle(job_id)
            return "not_claimed"
        job = Job.objects.get(id=job_id)
    kind = kind_for(job.kind)
    try:
        return _run(job, kind, token, on_chunk, lead=not helper)
    except _LeaseLost:
        # Give back at once what this runner still holds, rather than after its leases expire.
        JobChunk.objects.filter(job_id=job_id, token=token, state=ChunkState.LEASED).delete()
        logger.warning("job %s: lease lost, another worker continues it", job_id)
        return "lease_lost"
    except Exception as exc:
        logger.exception("job %s (%s) failed", job_id, job.kind)
        with transaction.atomic():
            locked = Job.objects.select_for_update().get(id=job_id)
            JobChunk.objects.filter(job=locked, token=token, state=ChunkState.LEASED).delete()
            if locked.state == JobState.RUNNING:
                _finish(locked, JobState.FAILED, failure=f"{type(exc).__name__}: {exc}"[:2000])
        raise


def _plan_and_call_helpers(job: Job, kind: JobKind, token: str) -> Job:
    if job.chunks_total is None:
        plan = kind.plan(job)
        with transaction.atomic():
            job = _lock_owned(job.pk, token)
            job.total, job.chunks_total = plan.total, plan.chunks
            job.save(update_fields=["total", "chunks_total"])
    helpers = min(kind.runners(job), job.chunks_total or 0) - 1
    if helpers > 0:
        with transaction.atomic():
            job = _lock_owned(job.pk, token)
            for _ in range(helpers):
                job.celery_task_ids = _enqueue_on_commit(job, helper=True)
            job.save(update_fields=["celery_task_ids"])
    return job


def _run(
    job: Job, kind: JobKind, token: str, on_chunk: Callable[[Job, int], None] | None, *, lead: bool
) -> str:
    if lead:
        job = _plan_and_call_helpers(job, kind, token)
    assert job.chunks_total is not None
    deadline = time.monotonic() + settings.LOUPE_JOB_SLICE_SECONDS
    cursor = 0
    while True:
        if time.monotonic() > deadline:
            if not lead:
                return "sliced"  # the lead's next slice calls helpers again
            # Hand the lead back (the job stays running, so helpers carry on) and queue its next slice.
            with transaction.atomic():
                job = _lock_owned(job.pk, token)
                job.run_token, job.heartbeat_at = "", timezone.now()
                job.celery_task_ids = _enqueue_on_commit(job)
                job.save(update_fields=["run_token", "heartbeat_at", "celery_task_ids"])
            return "sliced"
        if Job.objects.filter(id=job.pk, cancel_requested=True).exists():
            break  # before the chunk's work, which may be minutes of a model's time; finished below
        index = _lease_in_order(job, token) if kind.ordered else _lease_next_chunk(job, token, cursor)
        if index is None:
            break
        cursor = index + 1
        with _LeaseKeeper(job.pk, index, token):
            prepared = kind.prepare_chunk(job, index)
        with transaction.atomic():
            job = _lock_running(job.pk)
            if job.cancel_requested:
                JobChunk.objects.filter(job=job, index=index, token=token, state=ChunkState.LEASED).delete()
                _finish(job, JobState.CANCELLED)
                return "cancelled"
            outcome = kind.apply_chunk(job, index, prepared)
            # The chunk counts only if its lease is still ours: a runner presumed dead whose lease
            # was taken over rolls back everything it applied here.
            if not JobChunk.objects.filter(job=job, index=index, token=token, state=ChunkState.LEASED).update(
                state=ChunkState.DONE, items=outcome.items, finished_at=timezone.now()
            ):
                raise _LeaseLost
            errors = outcome.errors[:MAX_ERRORS_PER_CHUNK]
            JobError.objects.bulk_create(
                JobError(job=job, chunk_index=index, item=e.item[:500], code=e.code, message=e.message)
                for e in errors
            )
            job.done += outcome.items
            job.chunks_done += 1
            job.error_count += len(outcome.errors)
            job.result = kind.merge_result(job.result, outcome.result)
            job.heartbeat_at = timezone.now()
            job.save(update_fields=["done", "chunks_done", "error_count", "result", "heartbeat_at"])
        kind.after_chunk(job, index, prepared)
        if on_chunk is not None:
            on_chunk(job, index)
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job.pk)
        if job.state != JobState.RUNNING:
            return "finished"  # another runner committed the last chunk and closed the job
        if job.cancel_requested:
            _finish(job, JobState.CANCELLED)
            return "cancelled"
        if JobChunk.objects.filter(job=job, state=ChunkState.DONE).count() < (job.chunks_total or 0):
            return "waiting"  # other runners hold the last leases; whoever commits last finishes
        _finish(job, JobState.SUCCEEDED, result=kind.finish(job))
    kind.after_finish(job)
    return "succeeded"


_LOOKAHEAD = 64


class _LeaseKeeper:
    """Renews a chunk's lease and its job's heartbeat while the chunk's slow part runs.

    Without it a chunk slower than LOUPE_JOB_STALL_SECONDS (a few large files) would look dead:
    its lease taken over, its job re-queued, and every retry fenced out the same way.
    """

    def __init__(self, job_id: int, index: int, token: str) -> None:
        self.job_id, self.index, self.token = job_id, index, token
        self.every = max(0.5, settings.LOUPE_JOB_STALL_SECONDS / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}-{index}", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every):
                now = timezone.now()
                renewed = JobChunk.objects.filter(
                    job_id=self.job_id, index=self.index, token=self.token, state=ChunkState.LEASED
                ).update(lease_until=now + timedelta(seconds=settings.LOUPE_JOB_STALL_SECONDS))
                if not renewed:
                    return  # taken over meanwhile: the apply will find out and roll back
                Job.objects.filter(id=self.job_id, state=JobState.RUNNING).update(heartbeat_at=now)
        finally:
            connection.close()  # this thread's own database connection


def _lease_next_chunk(job: Job, token: str, cursor: int) -> int | None:
    """Lease the next chunk nobody holds: one not started, or one whose runner's lease expired."""
    assert job.chunks_total is not None
    now = timezone.now()
    until = now + timedelta(seconds=settings.LOUPE_JOB_STALL_SECONDS)
    start = cursor
    while start < job.chunks_total:
        end = min(start + _LOOKAHEAD, job.chunks_total)
        taken = set(
            JobChunk.objects.filter(job=job, index__gte=start, index__lt=end).values_list("index", flat=True)
        )
        for index in range(start, end):
            if index not in taken and _insert_lease(job.pk, index, token, until):
                return index
        start = end
    expired = (
        JobChunk.objects.filter(job=job, state=ChunkState.LEASED, lease_until__lt=now)
        .order_by("index")
        .values_list("index", flat=True)
    )
    for index in expired[:_LOOKAHEAD]:
        if JobChunk.objects.filter(job=job, index=index, state=ChunkState.LEASED, lease_until__lt=now).update(
            token=token, lease_until=until
        ):
            return index
    return None


def _lease_in_order(job: Job, token: str) -> int | None:
    """Lease the first chunk not done, if nobody holds it (or its holder's lease expired)."""
    assert job.chunks_total is not None
    now = timezone.now()
    until = now + timedelta(seconds=settings.LOUPE_JOB_STALL_SECONDS)
    done = set(JobChunk.objects.filter(job=job, state=ChunkState.DONE).values_list("index", flat=True))
    index = next((i for i in range(job.chunks_total) if i not in done), None)
    if index is None:
        return None
    if _insert_lease(job.pk, index, token, until):
        return index
    expired = JobChunk.objects.filter(job=job, index=index, state=ChunkState.LEASED, lease_until__lt=now)
    return index if expired.update(token=token, lease_until=until) else None


def _insert_lease(job_id: int, index: int, token: str, until: Any) -> bool:
    """Claim a chunk no one has started; the unique (job, index) makes exactly one runner win."""
    with connection.cursor() as cursor:
        table = JobChunk._meta.db_table  # from the model, never from input; every value is a parameter
        cursor.execute(
            f'INSERT INTO "{table}" (job_id, "index", items, state, token, lease_until)'  # noqa: S608
            ' VALUES (%s, %s, 0, %s, %s, %s) ON CONFLICT (job_id, "index") DO NOTHING RETURNING id',
            [job_id, index, ChunkState.LEASED, token, until],
        )
        return cursor.fetchone() is not None


def _lock_running(job_id: int) -> Job:
    job = Job.objects.select_for_update().get(id=job_id)
    if job.state != JobState.RUNNING:
        raise _LeaseLost
    return job


def _cancel_if_requested_while_idle(job_id: int) -> None:
    """A running job whose worker died after a cancel request: finish it as cancelled."""
    Job.objects.filter(
        id=job_id, cancel_requested=True, state=JobState.RUNNING, heartbeat_at__lt=_stale_before()
    ).update(state=JobState.CANCELLED, finished_at=timezone.now(), run_token="")


def job_recover_stalled() -> list[int]:
    """Re-enqueue jobs nobody is working on: queued ones whose message may be lost, running ones
    whose worker stopped heartbeating. A stalled running job goes back to queued, which also
    fences off its old worker should it still be alive (its next chunk finds the lease gone).
    Duplicate messages are harmless: claims are exclusive.
    """
    stale = _stale_before()
    Job.objects.filter(state=JobState.RUNNING, cancel_requested=True, heartbeat_at__lt=stale).update(
        state=JobState.CANCELLED, finished_at=timezone.now(), run_token=""
    )
    recovered: list[int] = []
    candidates = Job.objects.filter(
        state__in=Job.ACTIVE_STATES, heartbeat_at__lt=stale, cancel_requested=False
    ).values_list("id", flat=True)[:500]
    for job_id in candidates:
        with transaction.atomic():
            job = (
                Job.objects.select_for_update(skip_locked=True)
                .filter(
                    id=job_id, state__in=Job.ACTIVE_STATES, heartbeat_at__lt=stale, cancel_requested=False
                )
                .first()
            )
            if job is None:
                continue  # picked up or finished meanwhile
            job.state, job.run_token, job.heartbeat_at = JobState.QUEUED, "", timezone.now()
            job.celery_task_ids = _enqueue_on_commit(job)
            job.save(update_fields=["state", "run_token", "heartbeat_at", "celery_task_ids"])
            recovered.append(job.pk)
    if recovered:
        logger.info("re-enqueued stalled jobs %s", recovered)
    return recovered
