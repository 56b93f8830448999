"""Jobs on real Celery workers over the real broker: progress, cancel, and a worker SIGKILLed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db.models import Count

from projects.models import AuditEvent, Job, JobChunk, JobState
from tests.conftest import World
from tests.workers import celery_worker, purge_queues

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def make_events(world: World, n: int) -> None:
    verbs = ["task.submit", "task.review", "project.update", "task.skip"]
    AuditEvent.objects.bulk_create(
        (
            AuditEvent(
                project=world.project,
                organization=world.org,
                verb=verbs[i % 4],
                actor=world.users["annotator"] if i % 2 else None,
                object_type="task",
                object_id=str(i),
            )
            for i in range(n)
        ),
        batch_size=5000,
    )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start(world: World, chunk_size: int) -> dict[str, Any]:
    response = world.client("manager").post(
        f"/api/v1/projects/{world.project.id}/stats/recount", {"chunk_size": chunk_size}, format="json"
    )
    assert response.status_code == 202, response.content
    return response.json()


def watch(world: World, job_id: int) -> dict[str, Any]:
    return world.client("manager").get(f"/api/v1/jobs/{job_id}").json()


def assert_counted_exactly_once(world: World, job: Job) -> None:
    truth = AuditEvent.objects.filter(project=world.project, id__lte=job.params["last_id"])
    assert job.result["events"] == truth.count() == job.total == job.done
    assert job.result["events_by_verb"] == dict(truth.values_list("verb").annotate(n=Count("id")).order_by())
    chunks = list(JobChunk.objects.filter(job=job).values_list("index", flat=True))
    assert sorted(chunks) == list(range(job.chunks_total or 0))  # every chunk, each once


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    purge_queues()


def test_a_job_runs_on_a_worker_and_reports_progress(world: World) -> None:
    make_events(world, 3000)
    job_id = start(world, chunk_size=20)["id"]
    seen_progress: set[float] = set()
    with celery_worker():

        def finished() -> bool:
            body = watch(world, job_id)
            if body["progress"] is not None:
                seen_progress.add(body["progress"])
            return body["state"] == "succeeded"

        wait_for(finished, 90, "the job to succeed")
    body = watch(world, job_id)
    assert body["progress"] == 1.0 and body["done"] == body["total"] > 3000
    assert any(0 < p < 1 for p in seen_progress), seen_progress  # progress was visible on the way
    assert_counted_exactly_once(world, Job.objects.get(id=job_id))
    stats = world.client("reviewer").get(f"/api/v1/projects/{world.project.id}/stats").json()
    assert stats["job"] == job_id and stats["stats"]["events"] == body["total"]


def test_a_job_cancelled_midway_stops(world: World) -> None:
    make_events(world, 20_000)
    job_id = start(world, chunk_size=10)["id"]
    with celery_worker():
        wait_for(lambda: watch(world, job_id)["done"] > 0, 60, "the job to make progress")
        response = world.client("manager").post(f"/api/v1/jobs/{job_id}/cancel")
        assert response.status_code == 200
        assert response.json()["cancel_requested"] is True
        wait_for(lambda: watch(world, job_id)["state"] == "cancelled", 30, "the job to stop")
        stopped_at = Job.objects.get(id=job_id).chunks_done
        time.sleep(0.5)
    job = Job.objects.get(id=job_id)
    assert job.state == JobState.CANCELLED
    assert job.chunks_done == stopped_at < (job.chunks_total or 0)
    assert JobChunk.objects.filter(job=job).count() == job.chunks_done


def test_a_job_survives_its_worker_being_killed_and_no_chunk_runs_twice(world: World) -> None:
    make_events(world, 20_000)
    job_id = start(world, chunk_size=20)["id"]
    fast_recovery = {"LOUPE_JOB_STALL_SECONDS": "2", "LOUPE_JOB_RECOVER_INTERVAL": "1"}
    with celery_worker(env=fast_recovery) as first:
        wait_for(
            lambda: Job.objects.get(id=job_id).chunks_done >= 20, 60, "the first worker to make progress"
        )
        first.kill()
    killed = Job.objects.get(id=job_id)
    assert killed.state == JobState.RUNNING and killed.chunks_done < (killed.chunks_total or 0)
    # The new worker runs beat too, whose stalled-job sweep hands the job over.
    with celery_worker(beat=True, env=fast_recovery) as second:
        try:
            wait_for(lambda: Job.objects.get(id=job_id).state == JobState.SUCCEEDED, 60, "the job to finish")
        except AssertionError:
            raise AssertionError("".join(second.log[-60:])) from None
    job = Job.objects.get(id=job_id)
    assert job.attempts >= 2
    assert job.chunks_done == job.chunks_total
    assert_counted_exactly_once(world, job)


def test_two_workers_share_one_big_job(world: World, tmp_path: Any) -> None:
    """An ingest job leases its chunks to every worker that helps: both processes do real work."""
    import json

    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import override_settings

    from storage.models import Item

    objects = tmp_path / "objects"
    env = {"LOUPE_OBJECTS_DIR": str(objects), "LOUPE_STORAGE": "local", "LOUPE_INGEST_CHUNK": "5",
           "LOUPE_INGEST_RUNNERS": "2"}  # fmt: skip
    with override_settings(LOUPE_OBJECTS_DIR=objects, LOUPE_STORAGE="local"):
        client = world.client("manager")
        body = {"organization": world.org.id, "name": "notes", "projects": [world.project.id]}
        dataset = client.post("/api/v1/datasets", body, format="json").json()
        names = [f"notes/{i:03d}.txt" for i in range(600)]
        with celery_worker(env=env) as first, celery_worker(env=env) as second:
            response = client.post(
                f"/api/v1/datasets/{dataset['id']}/uploads",
                {"files": [SimpleUploadedFile(n.split("/")[1], f"note {n}".encode()) for n in names],
                 "paths": json.dumps(names)},
                format="multipart",
            )  # fmt: skip
            job_id = response.json()["id"]
            wait_for(lambda: Job.objects.get(id=job_id).is_finished, 120, "the ingest to finish")
            logs = "".join(first.log[-30:]) + "\n----\n" + "".join(second.log[-30:])
    job = Job.objects.get(id=job_id)
    assert job.state == JobState.SUCCEEDED and job.result["created"] == 600
    assert Item.objects.filter(dataset_id=dataset["id"]).count() == 600
    chunks = list(JobChunk.objects.filter(job=job).values_list("index", "token", "state"))
    assert sorted(i for i, _, _ in chunks) == list(range(job.chunks_total or 0))  # each chunk once
    assert {state for _, _, state in chunks} == {"done"}
    assert len({token for _, token, _ in chunks}) >= 2, logs  # more than one runner did chunks
